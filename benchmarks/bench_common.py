"""Helpers the benchmark scripts share: strict-JSON output written atomically, a path check, the machine load,
the environment of child processes and the state of the source tree."""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path
from typing import Any


def finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (strict JSON has no inf/nan)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def write_json(path: Path, report: dict) -> None:
    """Write atomically (a kill never leaves half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    partial.write_text(json.dumps(finite(report), indent=2, allow_nan=False) + "\n")
    os.replace(partial, path)


def inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` lies inside ``folder`` (real data must never be written into the repository)."""
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


REPO = Path(__file__).resolve().parents[1]


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def thread_env(threads: int) -> dict[str, str]:
    """This process's environment with ``threads`` OMP/MKL threads, and without the variables of a torchrun
    process group (a child must never join one by inheritance)."""
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(threads)
    env["MKL_NUM_THREADS"] = str(threads)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def source_state() -> dict[str, Any]:
    """The repository's commit and its uncommitted files under src/ (the code the subprocesses import)."""
    def git(*arguments: str) -> str:
        try:
            return subprocess.run(["git", *arguments], cwd=REPO, capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            return ""

    return {"commit": git("rev-parse", "HEAD").strip() or None,
            "src_uncommitted": [line[3:] for line in git("status", "--porcelain", "--", "src").splitlines()]}
