"""Where a result came from: the git commit (and uncommitted changes) of the code that produced it."""
from __future__ import annotations

import subprocess
from pathlib import Path


def git_commit(repo: Path | None = None) -> dict:
    """``{commit, dirty, modified}`` of the repository holding this package (None outside a checkout);
    ``modified`` lists the tracked files that differ from the commit (untracked files are ignored)."""
    repo = repo or Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                                capture_output=True, text=True, timeout=10).stdout
        modified = [line[3:] for line in status.splitlines() if line.strip()]
        return {"commit": commit, "dirty": bool(modified) if commit else None, "modified": modified}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None, "modified": []}
