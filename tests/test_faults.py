"""Faults: a training process killed with SIGKILL at a random moment resumes from an intact checkpoint and ends
with exactly the weights (EMA included) of a run that was never interrupted."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import torch

from synthmed.engine.checkpoint import load_checkpoint

STEPS = 60


def train_command(prepared, out, *extra):
    return [
        sys.executable,
        "-m",
        "synthmed",
        "train",
        str(prepared),
        "--model",
        "ddpm",
        "--out",
        str(out),
        "--steps",
        str(STEPS),
        "--batch-size",
        "2",
        "--set",
        "channels=[8,16]",
        "--set",
        "attention_levels=[false,false]",
        "--set",
        "norm_num_groups=8",
        "--set",
        "num_head_channels=8",
        "--checkpoint-every",
        "1",
        "--val-every",
        "1000",
        "--log-every",
        "1",
        "--quiet",
        *extra,
    ]


def environment():
    # One thread in every process: the same reduction order, so "exactly" can mean bitwise.
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def last_step(run):
    log = run / "log.csv"
    if not log.is_file():
        return 0
    rows = log.read_text().splitlines()[1:]
    return int(rows[-1].split(",")[0]) if rows else 0


def test_kill_minus_9_then_resume_gives_the_uninterrupted_weights(prepared, tmp_path):
    straight = tmp_path / "straight"
    subprocess.run(train_command(prepared, straight), check=True, env=environment(), timeout=600, capture_output=True)

    killed = tmp_path / "killed"
    rng = random.Random()
    kill_after = rng.randint(3, STEPS // 2)  # a random step, then a random moment within the next one
    process = subprocess.Popen(
        train_command(prepared, killed), env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    while last_step(killed) < kill_after and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(rng.uniform(0, 0.05))  # checkpoints are written every step: this lands in or between writes
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "training finished before it could be killed"
    stopped_at = load_checkpoint(killed / "checkpoints" / "last.pt")["step"]  # intact, whatever the moment
    assert 1 <= stopped_at < STEPS

    resumed = subprocess.run(
        train_command(prepared, killed, "--resume"), env=environment(), timeout=600, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    final, reference = (load_checkpoint(run / "checkpoints" / "last.pt") for run in (killed, straight))
    assert final["step"] == reference["step"] == STEPS
    for name, value in reference["state"].items():
        assert torch.equal(final["state"][name], value), name
    for module, values in reference["ema"].items():
        for name, value in values.items():
            assert torch.equal(final["ema"][module][name], value), f"ema {module}.{name}"
    assert not list((killed / "checkpoints").glob(".*.tmp"))  # a write cut short by the kill is cleared on resume
    summary = json.loads((killed / "train_summary.json").read_text())
    assert summary["steps"] == STEPS and summary["trained_steps"] == STEPS - stopped_at
