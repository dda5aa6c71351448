"""The git commit a file or folder is checked out at: recorded with answers, index builds and eval reports."""

from __future__ import annotations

import subprocess
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=8)
def git_commit(path: Path) -> str | None:
    """The commit checked out around ``path`` (12 hex digits), or None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
