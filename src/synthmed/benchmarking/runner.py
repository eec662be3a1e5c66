"""Child processes, measured one way for every benchmark.

A benchmark runs each ``synthmed`` step (phantom, prepare, train, translate) in its own process, so that the step's
peak resident memory is its own (``ru_maxrss`` of that child, from ``os.wait4``) and a crash cannot take the
benchmark down with it. The engineering scripts in ``benchmarks/`` (speed, memory, scaling, GPU checks) use the
same runner, so every figure of wall time and memory means the same thing.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synthmed.errors import SynthmedError

# Variables of a torchrun process group: a child that inherited them would try to join the group.
_PROCESS_GROUP_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Usage:
    """What one child process cost: wall seconds (start-up included), its own peak resident memory and CPU time."""

    wall_seconds: float
    peak_rss_mb: float
    user_cpu_seconds: float = 0.0
    system_cpu_seconds: float = 0.0

    def as_record(self) -> dict[str, float]:
        return {
            "wall_seconds": self.wall_seconds,
            "peak_rss_mb": self.peak_rss_mb,
            "user_cpu_seconds": self.user_cpu_seconds,
            "system_cpu_seconds": self.system_cpu_seconds,
        }


def child_env(threads: int | None = None, extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment for a child: ``threads`` OMP/MKL threads when given, and never the variables of
    a torchrun process group."""
    env = {k: v for k, v in os.environ.items() if k not in _PROCESS_GROUP_VARIABLES}
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    env.update(extra or {})
    return env


def synthmed_command(arguments: list[str], processes: int = 1) -> list[str]:
    """``python -m synthmed ARGS`` with this interpreter, or under torchrun with ``processes`` processes."""
    if processes == 1:
        return [sys.executable, "-m", "synthmed", *arguments]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(processes),
        "-m",
        "synthmed",
        *arguments,
    ]


def run_measured(
    command: list[str],
    log_path: Path,
    *,
    threads: int | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    tail_lines: int = 12,
) -> Usage:
    """Run ``command`` with its output appended to ``log_path``; its wall time and its own peak RSS.

    A non-zero exit raises a :class:`SynthmedError` quoting the command and the last lines of the log, so a failed
    step stops the benchmark with the reason on screen rather than a missing file later.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = env if env is not None else child_env(threads)
    with log_path.open("a", encoding="utf-8") as stream:
        shown_threads = f"OMP_NUM_THREADS={env['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in env else ""
        stream.write(f"$ {shown_threads}{shlex.join(command)}\n")
        stream.flush()
        start = time.perf_counter()
        process = subprocess.Popen(command, env=env, stdout=stream, stderr=subprocess.STDOUT, cwd=cwd)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - start
    if process.returncode != 0:
        tail = "\n".join(log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-tail_lines:])
        shown = shlex.join(command[2:6] if command[1:3] == ["-m", "synthmed"] else command[:4])
        raise SynthmedError(f"`{shown} ...` failed (exit {process.returncode}); log {log_path}:\n{tail}")
    # ru_maxrss is in KiB on Linux
    return Usage(
        wall_seconds=round(seconds, 2),
        peak_rss_mb=round(usage.ru_maxrss / 1024, 1),
        user_cpu_seconds=round(usage.ru_utime, 2),
        system_cpu_seconds=round(usage.ru_stime, 2),
    )


def load_average() -> list[float]:
    """The machine's 1/5/15-minute load: a timing taken on a busy machine says so."""
    return [round(v, 2) for v in os.getloadavg()]


def source_state(repository: Path | None = None) -> dict[str, Any]:
    """The repository's commit and its uncommitted files under src/ (the code the child processes import);
    ``repository`` defaults to the checkout this package is imported from."""
    repository = repository or Path(__file__).resolve().parents[3]

    def git(*arguments: str) -> str:
        try:
            return subprocess.run(
                ["git", *arguments], cwd=repository, capture_output=True, text=True, check=True
            ).stdout
        except (OSError, subprocess.CalledProcessError):
            return ""

    return {
        "commit": git("rev-parse", "HEAD").strip() or None,
        "src_uncommitted": [line[3:] for line in git("status", "--porcelain", "--", "src").splitlines()],
    }


def inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` lies inside ``folder`` (real data must never be written into the repository)."""
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False
