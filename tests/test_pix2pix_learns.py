"""Learning test: pix2pix (small) beats the identity baseline on held-out phantom subjects."""

import pytest

from synthmed.workflows.train import train


@pytest.mark.slow
def test_pix2pix_beats_identity_on_held_out_subjects(prepared, held_out_scores, tmp_path):
    run = tmp_path / "run"
    train(
        prepared,
        model="pix2pix",
        preset="small",
        out=run,
        steps=250,
        batch_size=8,
        progress=False,
        overrides={"generator_channels": 16, "discriminator_channels": 16},
        val_every=50,
    )
    model, identity = held_out_scores(run)
    assert model["psnr"] > identity["psnr"] + 3.0, (model, identity)
    assert model["ssim"] > identity["ssim"], (model, identity)
    assert model["mae"] < identity["mae"], (model, identity)
