"""The installed package: console scripts compose the repository's configs from any working directory."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = ["vqformer-train", "vqformer-eval", "vqformer-sample", "vqformer-bench"]


def _script(name: str) -> str:
    path = Path(sys.executable).parent / name
    if not path.exists():
        path = shutil.which(name)
        if path is None:
            pytest.skip(f"{name} is not installed (pip install -e .)")
    return str(path)


@pytest.mark.parametrize("name", SCRIPTS)
def test_console_script_composes_from_another_directory(name, tmp_path):
    out = subprocess.run([_script(name), "--cfg", "job"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip(), "the composed config was not printed"


def test_tab_completion_installs():
    out = subprocess.run([_script("vqformer-train"), "-sc", "install=bash"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "complete" in out.stdout and "vqformer-train" in out.stdout
