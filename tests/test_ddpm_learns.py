"""Learning test: conditional diffusion (ddpm, small) beats the identity baseline on held-out phantom
subjects with a few-step sampler (DDIM, 10 network evaluations)."""

import pytest

from synthmed.workflows.train import train


@pytest.mark.slow
def test_ddpm_beats_identity_on_held_out_subjects(prepared, held_out_scores, tmp_path):
    run = tmp_path / "run"
    train(
        prepared,
        model="ddpm",
        preset="small",
        out=run,
        steps=STEPS,
        batch_size=8,
        progress=False,
        overrides={"channels": [16, 32, 32], "num_head_channels": 16, "norm_num_groups": 8},
        val_every=STEPS,
    )
    model, identity = held_out_scores(run, sampler="ddim", steps=10)
    assert model["psnr"] > identity["psnr"] + 3.0, (model, identity)
    assert model["ssim"] > identity["ssim"], (model, identity)
    assert model["mae"] < identity["mae"], (model, identity)


STEPS = 600
