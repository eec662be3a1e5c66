"""Data-parallel training under torchrun, tested with two CPU processes on the gloo backend."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from synthmed.engine.trainer import epoch_batches

PIX2PIX_DETERMINISTIC = [
    "--set",
    "generator_channels=8",
    "--set",
    "discriminator_channels=8",
    "--set",
    "norm=instance",
    "--set",
    "dropout=0",
]
DDPM_TINY = [
    "--set",
    "channels=[16,16]",
    "--set",
    "attention_levels=[false,false]",
    "--set",
    "num_head_channels=16",
    "--set",
    "norm_num_groups=8",
    "--set",
    "validation_steps=2",
]
SYNDIFF_TINY = [
    "--set",
    "generator_channels=8",
    "--set",
    "channel_mult=[1,2,2]",
    "--set",
    "nz=8",
    "--set",
    "z_embedding=16",
    "--set",
    "n_mlp=1",
    "--set",
    "discriminator_channels=8",
    "--set",
    "t_embedding=16",
    "--set",
    "cycle_generator_channels=8",
    "--set",
    "resnet_blocks=1",
    "--set",
    "cycle_discriminator_channels=8",
]


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def train_arguments(prepared: Path, out: Path, model: str, steps: int, batch_size: int, extra: list[str]) -> list[str]:
    """``-m synthmed train ...`` as every test here runs it (after the python or torchrun launcher)."""
    return [
        "-m",
        "synthmed",
        "train",
        str(prepared),
        "--model",
        model,
        "--out",
        str(out),
        "--steps",
        str(steps),
        "--batch-size",
        str(batch_size),
        "--log-every",
        "1",
        "--val-every",
        "3",
        "--checkpoint-every",
        "3",
        "--quiet",
        "--device",
        "cpu",
        *extra,
    ]


def train(
    prepared: Path,
    out: Path,
    model: str,
    steps: int,
    batch_size: int,
    extra: list[str],
    processes: int = 1,
    resume: bool = False,
    check: bool = True,
) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command = [
        *(launcher if processes > 1 else [sys.executable]),
        *train_arguments(prepared, out, model, steps, batch_size, extra),
    ]
    if resume:
        command.append("--resume")
    result = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=600)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def loss_rows(run: Path) -> list[dict[str, float]]:
    with (run / "log.csv").open() as stream:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(stream)]


def weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)["state"]


def test_each_rank_takes_its_share_of_the_same_global_batches():
    single = epoch_batches(20, 4, seed=3, epoch=1)
    ranks = [epoch_batches(20, 2, seed=3, epoch=1, rank=r, world_size=2) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(single) == 5
    for whole, first, second in zip(single, *ranks):
        assert first + second == whole  # together the ranks see exactly the one-process batch
        assert not set(first) & set(second)
    assert epoch_batches(10, 4, seed=0, epoch=0, rank=1, world_size=2) == [epoch_batches(10, 8, 0, 0)[0][4:]]


def test_two_processes_match_one_process_at_twice_the_batch(prepared, tmp_path):
    """A deterministic method (pix2pix with instance norm, no dropout): 2 x batch 2 must give the loss curve and
    weights of 1 x batch 4, since each rank takes half of the same global batch and gradients are averaged."""
    train(prepared, tmp_path / "one", "pix2pix", 6, 4, PIX2PIX_DETERMINISTIC)
    two = train(prepared, tmp_path / "two", "pix2pix", 6, 2, PIX2PIX_DETERMINISTIC, processes=2)
    assert "x 2 processes" in two.stdout and two.stdout.count("trained 6 steps") == 1  # rank 0 reports
    rows_one, rows_two = loss_rows(tmp_path / "one"), loss_rows(tmp_path / "two")
    assert [r["step"] for r in rows_one] == [r["step"] for r in rows_two] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(rows_one, rows_two):
        for key in ("loss_g", "loss_d", "gan", "l1", "val_psnr"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), (a["step"], key)
    # Convolution kernels; not the biases before instance norm, whose true gradient is zero, so that Adam turns
    # round-off into full-size steps there.
    w1, w2 = weights(tmp_path / "one"), weights(tmp_path / "two")
    kernels = [name for name in w1 if w1[name].ndim == 4]
    assert len(kernels) > 10
    for name in kernels:
        torch.testing.assert_close(w2[name], w1[name], rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")
    assert json.loads((tmp_path / "two" / "train_summary.json").read_text())["processes"] == 2
    # The losses moved: a run that did nothing would also "match".
    assert rows_one[0]["loss_g"] != rows_one[-1]["loss_g"]


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_nodes_joined_by_c10d_rendezvous_train_as_one(prepared, tmp_path):
    """Multi-node: two ``torchrun --nnodes 2`` launchers (here both on this machine, one process each) meet at a
    c10d rendezvous endpoint and train as one job, with the one-process curve at twice the batch. Each node has
    LOCAL_RANK 0, so only the global rank may decide who writes."""
    train(prepared, tmp_path / "one", "pix2pix", 4, 4, PIX2PIX_DETERMINISTIC)
    run, port = tmp_path / "nodes", free_port()
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "2",
        "--nproc_per_node",
        "1",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{port}",
        "--rdzv-id",
        "synthmed-test",
        *train_arguments(prepared, run, "pix2pix", 4, 2, PIX2PIX_DETERMINISTIC),
    ]
    nodes = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV) for _ in range(2)
    ]
    outputs = [node.communicate(timeout=600) for node in nodes]
    for node, (out, err) in zip(nodes, outputs):
        assert node.returncode == 0, out + err
    assert sum(out.count("trained 4 steps") for out, _ in outputs) == 1  # one global rank 0 reports
    assert json.loads((run / "train_summary.json").read_text())["processes"] == 2
    for a, b in zip(loss_rows(tmp_path / "one"), loss_rows(run), strict=True):
        for key in ("loss_g", "loss_d", "l1"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), (a["step"], key)


def test_gan_with_several_optimisers_and_backward_passes_trains_on_two_processes(prepared, tmp_path):
    """SynDiff: eight networks, two optimisers, per-direction backward passes and a lazy R1 penalty."""
    run = tmp_path / "syndiff"
    result = train(prepared, run, "syndiff", 4, 2, SYNDIFF_TINY, processes=2)
    assert "Traceback" not in result.stderr and "abort" not in result.stderr.lower()
    rows = loss_rows(run)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows[0]["r1"] > 0  # step 0 carries the R1 penalty
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    record = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    assert record["world_size"] == 2 and len(record["rng_ranks"]) == 2
    # Resuming with another number of processes is refused, not silently mixed.
    refused = train(prepared, run, "syndiff", 6, 2, SYNDIFF_TINY, processes=1, resume=True, check=False)
    assert refused.returncode != 0 and "2 process(es), not 1" in refused.stderr


def test_fp16_on_two_processes_skips_the_same_steps_on_every_rank(prepared, tmp_path):
    """Under --amp fp16 an overflow on one rank must make every rank skip that step (the gradients are averaged
    before the scaler looks at them), or the weights part; the trainer compares the ranks' weights at the end."""
    run = tmp_path / "fp16"
    train(prepared, run, "pix2pix", 12, 2, [*PIX2PIX_DETERMINISTIC, "--amp", "fp16"], processes=2)
    record = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    assert record["world_size"] == 2 and record["grad_scaler"]["scale"] < 2.0**16  # some steps overflowed
    assert json.loads((run / "train_summary.json").read_text())["autocast"] == "torch.float16"


def test_resume_on_two_processes_continues_exactly(prepared, tmp_path):
    """Every rank's noise stream is checkpointed: 3 steps + resume to 6 equals 6 steps straight (ddpm draws
    time steps and noise on every rank; its learning rate does not depend on the run length)."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(prepared, straight, "ddpm", 6, 2, DDPM_TINY, processes=2)
    train(prepared, resumed, "ddpm", 3, 2, DDPM_TINY, processes=2)
    train(prepared, resumed, "ddpm", 6, 2, DDPM_TINY, processes=2, resume=True)
    a, b = weights(straight), weights(resumed)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-6)


def test_every_model_steps_its_optimisers_through_step_optimizer():
    """A direct ``optimizer.step()`` would skip the gradient averaging and let the ranks drift apart (the
    trainer would then stop with an error after the first step), and a direct ``loss.backward()`` would skip the
    fp16 loss scaling; catch both here, in one process."""
    import re

    import synthmed.models

    folder = Path(synthmed.models.__file__).parent
    sources = {
        path.name: path.read_text(encoding="utf-8") for path in sorted(folder.glob("*.py")) if path.name != "base.py"
    }
    offenders = [
        f"{name}: {match}"
        for name, text in sources.items()
        for match in re.findall(r"\b\w*opt\w*\.step\(\)|[\w)\]]\.backward\(\)", text)
    ]
    assert not offenders, offenders
    assert sum(text.count("self.backward(") for text in sources.values()) >= 9  # the check looks at real code
