"""bf16 autocast (``--amp bf16``) through every method's training step, validation and sample grids.

The autocast code path is the one GPUs take by default; here it runs on the CPU (``--amp bf16`` is honoured there
when asked for), so a method whose losses, penalties or mixture statistics break in reduced precision fails here
rather than on somebody's GPU."""

import csv
import json
import math

import pytest
import torch

from synthmed.workflows.train import train

TRANSLATORS = {
    "pix2pix": {"generator_channels": 8, "discriminator_channels": 8},
    "medgan": {"n_ublocks": 2, "generator_channels": 8, "discriminator_channels": 8},
    "cyclegan": {"generator_channels": 8, "discriminator_channels": 8, "resnet_blocks": 1},
    "unit": {"base_channels": 8, "n_res": 1, "discriminator_channels": 8},
    "gmm-unit": {"base_channels": 8, "n_res": 1, "discriminator_channels": 8, "patch_size": 16, "components": 3},
    "ddpm": {"channels": [16, 16], "attention_levels": [False, True], "num_head_channels": 16, "norm_num_groups": 8,
             "validation_steps": 2},
    "syndiff": {"generator_channels": 8, "channel_mult": [1, 2, 2], "num_res_blocks": 1, "nz": 8, "z_embedding": 16,
                "n_mlp": 1, "discriminator_channels": 8, "t_embedding": 16, "cycle_generator_channels": 8,
                "resnet_blocks": 1, "cycle_discriminator_channels": 8},
}
GENERATORS = {
    name: {"channels": [8, 16], "attention_levels": [False, True], "norm_num_groups": 8, "num_head_channels": 8,
           "timesteps": 64, "sampling_steps": 2, "preview_steps": 2}
    for name in ("ddpm-gen", "pig")
}


@pytest.fixture(scope="module")
def lesion_prep(phantoms, tmp_path_factory):
    from synthmed.data.prepare import prepare

    return prepare(phantoms, source="FLAIR", label="lesion", out=tmp_path_factory.mktemp("amp") / "prep", size=32,
                   split="0.5,0.25,0.25", seed=0, progress=False)


def losses(run):
    with (run / "log.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    return {k: float(v) for k, v in rows[-1].items() if k not in ("step", "epoch", "elapsed_s") and v not in ("", None)}


@pytest.mark.parametrize("name", [*TRANSLATORS, *GENERATORS])
def test_every_method_trains_under_bf16_autocast(name, prepared, lesion_prep, tmp_path):
    data, overrides = (prepared, TRANSLATORS[name]) if name in TRANSLATORS else (lesion_prep, GENERATORS[name])
    run = tmp_path / name
    summary = train(data, model=name, out=run, steps=2, batch_size=2, device="cpu", progress=False, overrides=overrides,
                    amp="bf16", log_every=1, val_every=2, checkpoint_every=2, sample_every=2)
    assert summary["autocast"] == "torch.bfloat16"
    assert json.loads((run / "train_summary.json").read_text())["autocast"] == "torch.bfloat16"
    values = losses(run)
    assert values and all(math.isfinite(v) for v in values.values()), values
    weights = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)["state"]
    # The weights stay fp32 (autocast computes in bf16, it does not convert parameters); a GAN's image pool keeps
    # its translations in the dtype they were made in.
    half = [k for k, t in weights.items() if t.dtype == torch.bfloat16 and not k.endswith("_extra_state")]
    assert not half, half
    assert list((run / "samples").glob("step_*.png"))


def test_bf16_follows_the_full_precision_losses(prepared, tmp_path):
    """Same seed, same batches: after a few steps bf16 autocast stays within a few per cent of full precision,
    and ``--amp auto`` on the CPU is full precision."""
    common = dict(model="pix2pix", steps=4, batch_size=2, device="cpu", progress=False, log_every=1, val_every=4,
                  checkpoint_every=4, sample_every=4, overrides={**TRANSLATORS["pix2pix"], "dropout": 0.0,
                                                                 "norm": "instance"})
    full = train(prepared, out=tmp_path / "fp32", amp="auto", **common)
    half = train(prepared, out=tmp_path / "bf16", amp="bf16", **common)
    assert full["autocast"] == "off" and half["autocast"] == "torch.bfloat16"
    a, b = losses(tmp_path / "fp32"), losses(tmp_path / "bf16")
    assert a != b  # autocast really changed the arithmetic
    for key in ("l1", "loss_g"):
        assert b[key] == pytest.approx(a[key], rel=0.05), (key, a[key], b[key])
