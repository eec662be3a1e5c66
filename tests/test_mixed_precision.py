"""Mixed precision (``--amp bf16``, ``--amp fp16`` with a gradient scaler) through every method's training step,
validation and sample grids.

The autocast code path is the one GPUs take by default; here it runs on the CPU (``--amp bf16`` and ``fp16`` are
honoured there when asked for), so a method whose losses, penalties or mixture statistics break in reduced precision,
or that bypasses the loss scaling, fails here rather than on somebody's GPU."""

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from synthmed.data.io import read_volume
from synthmed.workflows.generate import generate
from synthmed.workflows.train import train
from synthmed.workflows.translate import translate

TRANSLATORS = {
    "pix2pix": {"generator_channels": 8, "discriminator_channels": 8},
    "medgan": {"n_ublocks": 2, "generator_channels": 8, "discriminator_channels": 8},
    "cyclegan": {"generator_channels": 8, "discriminator_channels": 8, "resnet_blocks": 1},
    "unit": {"base_channels": 8, "n_res": 1, "discriminator_channels": 8},
    "gmm-unit": {"base_channels": 8, "n_res": 1, "discriminator_channels": 8, "patch_size": 16, "components": 3},
    "ddpm": {
        "channels": [16, 16],
        "attention_levels": [False, True],
        "num_head_channels": 16,
        "norm_num_groups": 8,
        "validation_steps": 2,
    },
    "syndiff": {
        "generator_channels": 8,
        "channel_mult": [1, 2, 2],
        "num_res_blocks": 1,
        "nz": 8,
        "z_embedding": 16,
        "n_mlp": 1,
        "discriminator_channels": 8,
        "t_embedding": 16,
        "cycle_generator_channels": 8,
        "resnet_blocks": 1,
        "cycle_discriminator_channels": 8,
    },
}
GENERATORS = {
    name: {
        "channels": [8, 16],
        "attention_levels": [False, True],
        "norm_num_groups": 8,
        "num_head_channels": 8,
        "timesteps": 64,
        "sampling_steps": 2,
        "preview_steps": 2,
    }
    for name in ("ddpm-gen", "pig")
}


@pytest.fixture(scope="module")
def lesion_prep(phantoms, tmp_path_factory):
    from synthmed.data.prepare import prepare

    return prepare(
        phantoms,
        source="FLAIR",
        label="lesion",
        out=tmp_path_factory.mktemp("amp") / "prep",
        size=32,
        split="0.5,0.25,0.25",
        seed=0,
        progress=False,
    )


def losses(run):
    with (run / "log.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    return {k: float(v) for k, v in rows[-1].items() if k not in ("step", "epoch", "elapsed_s") and v not in ("", None)}


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
@pytest.mark.parametrize("name", [*TRANSLATORS, *GENERATORS])
def test_every_method_trains_under_mixed_precision(name, amp, prepared, lesion_prep, tmp_path):
    data, overrides = (prepared, TRANSLATORS[name]) if name in TRANSLATORS else (lesion_prep, GENERATORS[name])
    run = tmp_path / name
    # fp16: the scaler starts at 2^16 and halves at each overflow (that step is skipped), so it takes a few steps
    # to find its level (up to 8 here, for unit); 12 steps end with real optimiser steps.
    steps = 12 if amp == "fp16" else 2
    summary = train(
        data,
        model=name,
        out=run,
        steps=steps,
        batch_size=2,
        device="cpu",
        progress=False,
        overrides=overrides,
        amp=amp,
        log_every=1,
        val_every=steps,
        checkpoint_every=steps,
        sample_every=steps,
    )
    dtype = {"bf16": "torch.bfloat16", "fp16": "torch.float16"}[amp]
    assert summary["autocast"] == dtype
    assert json.loads((run / "train_summary.json").read_text())["autocast"] == dtype
    values = losses(run)
    assert values and all(math.isfinite(v) for v in values.values()), values
    record = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    weights = record["state"]
    if amp == "fp16":  # the scaler's state travels with the checkpoint; the last steps did not overflow
        assert record["grad_scaler"]["scale"] <= 2.0**16 and record["grad_scaler"]["_growth_tracker"] >= 1
    else:
        assert record["grad_scaler"] is None
    # The weights stay fp32 (autocast computes in bf16, it does not convert parameters); a GAN's image pool keeps
    # its translations in the dtype they were made in.
    half = [
        k for k, t in weights.items() if t.dtype in (torch.bfloat16, torch.float16) and not k.endswith("_extra_state")
    ]
    assert not half, half
    assert list((run / "samples").glob("step_*.png"))
    # Inference in the same precision: a whole volume, or generated pairs (fp16 for one method only: the CPU's
    # fp16 kernels are slow, and the code path is the same).
    if amp == "fp16" and name not in ("pix2pix", "pig"):
        return
    if name in TRANSLATORS:
        plan = json.loads((data / "plan.json").read_text())
        subject = Path(plan["data"]) / plan["split"]["test"][0] / "T1.nii.gz"  # the phantoms' folder
        options = {"steps": 2} if name == "ddpm" else {}
        (full,) = translate(run, subject, tmp_path / "full.nii.gz", device="cpu", progress=False, **options)
        (low,) = translate(run, subject, tmp_path / "low.nii.gz", device="cpu", amp=amp, progress=False, **options)
        a, b = read_volume(full).data, read_volume(low).data
        assert a.shape == b.shape and np.isfinite(b).all()
        assert not np.array_equal(a, b)  # the networks really ran in reduced precision
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.98
    else:
        info = generate(run, 2, tmp_path / "generated", steps=2, device="cpu", amp=amp, progress=False)
        assert info["autocast"] == dtype and len(list((tmp_path / "generated").glob("*_image.png"))) == 2


def test_bf16_follows_the_full_precision_losses(prepared, tmp_path):
    """Same seed, same batches: after a few steps bf16 autocast stays within a few per cent of full precision,
    and ``--amp auto`` on the CPU is full precision."""
    common = dict(
        model="pix2pix",
        steps=4,
        batch_size=2,
        device="cpu",
        progress=False,
        log_every=1,
        val_every=4,
        checkpoint_every=4,
        sample_every=4,
        overrides={**TRANSLATORS["pix2pix"], "dropout": 0.0, "norm": "instance"},
    )
    full = train(prepared, out=tmp_path / "fp32", amp="auto", **common)
    half = train(prepared, out=tmp_path / "bf16", amp="bf16", **common)
    assert full["autocast"] == "off" and half["autocast"] == "torch.bfloat16"
    a, b = losses(tmp_path / "fp32"), losses(tmp_path / "bf16")
    assert a != b  # autocast really changed the arithmetic
    for key in ("l1", "loss_g"):
        assert b[key] == pytest.approx(a[key], rel=0.05), (key, a[key], b[key])


def test_fp16_scales_the_loss_skips_an_overflowing_step_and_resumes_the_scale(prepared, tmp_path):
    from synthmed.models.registry import build_model

    model = build_model("pix2pix", "small", {**TRANSLATORS["pix2pix"], "image_size": 32})
    model.amp_dtype = torch.float16
    model.grad_scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    weight = next(model.generator.parameters())
    optimizer = torch.optim.SGD([weight], lr=0.1)
    # The gradient arrives multiplied by the scale and is divided out before the step.
    optimizer.zero_grad()
    model.backward((weight * 3).sum())
    assert torch.allclose(weight.grad, torch.full_like(weight, 3 * 1024.0))
    before = weight.detach().clone()
    model.step_optimizer(optimizer)
    model.grad_scaler.update()
    torch.testing.assert_close(weight.detach(), before - 0.1 * 3)
    # An overflow: the step is skipped and the scale halves.
    optimizer.zero_grad()
    model.backward((weight * float("inf")).sum())
    before = weight.detach().clone()
    model.step_optimizer(optimizer)
    model.grad_scaler.update()
    assert torch.equal(weight.detach(), before) and model.grad_scaler.get_scale() == 512.0
    # A penalty's input gradient is taken on the unscaled output: the true gradient.
    x = torch.ones(3, requires_grad=True)
    torch.testing.assert_close(model.input_gradient((5 * x).sum(), x), torch.full((3,), 5.0))
    # A .grad left by backward() is unscaled for reuse in a loss (SynDiff hands its guides' gradients on).
    torch.testing.assert_close(model.unscaled(torch.full((2,), 512.0 * 7)), torch.full((2,), 7.0))

    # Through the engine: the scale after 12 steps equals a 6-step run resumed for 6 more.
    common = dict(
        model="pix2pix",
        batch_size=2,
        device="cpu",
        progress=False,
        amp="fp16",
        log_every=1,
        val_every=6,
        checkpoint_every=6,
        sample_every=6,
        overrides=TRANSLATORS["pix2pix"],
    )
    train(prepared, out=tmp_path / "straight", steps=12, **common)
    train(prepared, out=tmp_path / "resumed", steps=6, **common)
    train(prepared, out=tmp_path / "resumed", steps=12, resume=True, **common)

    def scaler(run):
        return torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)["grad_scaler"]

    straight = scaler(tmp_path / "straight")
    assert scaler(tmp_path / "resumed") == straight
    assert straight["scale"] < 2.0**16 and straight["_growth_tracker"] >= 1  # it backed off, then stepped
