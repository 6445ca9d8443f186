"""Long Range Arena data (``docs/longvq.md`` §4): generators, real loaders, the classification data module."""
from .tasks import SPLITS, TASKS, TaskSpec, build_task

__all__ = ["SPLITS", "TASKS", "TaskSpec", "build_task"]
