"""Learning test: conditional diffusion (ddpm, small) beats the identity baseline on held-out phantom
subjects with a few-step sampler (DDIM, 10 network evaluations)."""

import json

import pytest

from synthmed.workflows.evaluate import evaluate_pairs
from synthmed.workflows.train import train
from synthmed.workflows.translate import translate


@pytest.mark.slow
def test_ddpm_beats_identity_on_held_out_subjects(prepared, phantoms, tmp_path):
    run = tmp_path / "run"
    train(prepared, model="ddpm", preset="small", out=run, steps=STEPS, batch_size=8, progress=False,
          overrides={"channels": [16, 32, 32], "num_head_channels": 16, "norm_num_groups": 8}, val_every=STEPS)
    plan = json.loads((run / "plan.json").read_text())
    model_pairs, identity_pairs = [], []
    for subject in plan["split"]["test"]:
        src, ref = phantoms / subject / "T1.nii.gz", phantoms / subject / "T2.nii.gz"
        out = tmp_path / "pred" / subject / "T2.nii.gz"
        translate(run, src, out, reference=ref, sampler="ddim", steps=10, progress=False)
        model_pairs.append((subject, out, ref))
        identity_pairs.append((subject, src, ref))
    model = evaluate_pairs(model_pairs)["mean"]
    identity = evaluate_pairs(identity_pairs, match=True)["mean"]
    assert model["psnr"] > identity["psnr"] + 3.0, (model, identity)
    assert model["ssim"] > identity["ssim"], (model, identity)
    assert model["mae"] < identity["mae"], (model, identity)


STEPS = 600
