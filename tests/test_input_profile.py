"""An input unlike the training scans gets a warning naming what differs (an error with --strict)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from synthmed.cli import main
from synthmed.data.input_profile import differences, measure, training_profile

BRAIN_LABELS = 3  # phantom labels 3.. are CSF, grey and white matter, lesion: the skull-stripped brain


def _strip(source: Path, labels: Path, out: Path) -> None:
    image = nib.load(source)
    brain = nib.load(labels).get_fdata() >= BRAIN_LABELS
    nib.save(nib.Nifti1Image((image.get_fdata() * brain).astype(np.float32), image.affine), out)


@pytest.fixture(scope="module")
def brain_run(phantoms, tmp_path_factory) -> tuple[Path, Path, dict]:
    """A tiny pix2pix trained on skull-stripped phantom brains (T1 -> T2)."""
    from synthmed.data.prepare import prepare
    from synthmed.workflows.train import train

    root = tmp_path_factory.mktemp("brains")
    data = root / "data"
    for subject in sorted(p for p in phantoms.iterdir() if p.is_dir()):
        (data / subject.name).mkdir(parents=True)
        for name in ("T1", "T2"):
            _strip(subject / f"{name}.nii.gz", subject / "labels.nii.gz", data / subject.name / f"{name}.nii.gz")
    prep = prepare(data, source="T1", target="T2", out=root / "prep", size=32, split="0.5,0.17,0.33", progress=False)
    run = root / "run"
    train(
        prep,
        model="pix2pix",
        out=run,
        steps=2,
        batch_size=4,
        progress=False,
        overrides={"generator_channels": 8, "discriminator_channels": 8},
    )
    return run, data, json.loads((prep / "plan.json").read_text())


def test_the_plan_records_the_training_inputs(brain_run):
    _, _, plan = brain_run
    profile = plan["input_profile"]
    assert profile["subjects"] == len(plan["split"]["train"])
    assert profile["padding"][0] > 0.3  # skull-stripped: most of the volume is exactly 0
    assert len(profile["histogram"]) == 32 and sum(profile["histogram"]) == pytest.approx(1.0, abs=1e-3)


def test_a_whole_head_given_to_a_brain_model_is_named_and_strict_refuses_it(
    brain_run, phantoms, tmp_path, caplog, capsys
):
    run, data, plan = brain_run
    subject = plan["split"]["test"][0]
    brain, head = data / subject / "T1.nii.gz", phantoms / subject / "T1.nii.gz"
    with caplog.at_level(logging.WARNING, logger="synthmed"):
        assert main(["translate", str(run), str(brain), str(tmp_path / "brain.nii.gz"), "--quiet"]) == 0
    assert not [r for r in caplog.records if "unlike the scans" in r.getMessage()]  # a held-out brain: no warning
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="synthmed"):
        assert main(["translate", str(run), str(head), str(tmp_path / "head.nii.gz"), "--quiet"]) == 0
    said = " ".join(r.getMessage() for r in caplog.records if "unlike the scans" in r.getMessage())
    assert "not skull-stripped" in said and "--strict" in said, said
    capsys.readouterr()
    code = main(["translate", str(run), str(head), str(tmp_path / "strict.nii.gz"), "--quiet", "--strict"])
    err = capsys.readouterr().err.strip()
    assert (
        code == 2 and err.startswith("synthmed: error: ") and "not skull-stripped" in err and len(err.splitlines()) == 1
    )
    assert not (tmp_path / "strict.nii.gz").exists()


def test_each_measure_is_named_when_it_leaves_the_training_range():
    rng = np.random.default_rng(0)
    head = np.zeros((40, 40, 40))
    head[8:32, 8:32, 8:32] = rng.uniform(0.2, 1.0, (24, 24, 24))  # a brain on exact zeros
    foreground = head > 0
    normalized = head[foreground] * 2 - 1
    profile = training_profile([measure(head, foreground, (1.0, 1.0, 1.0), normalized)] * 3)
    assert differences(profile, measure(head, foreground, (1.0, 1.0, 1.0), normalized)) == []
    noisy = head + rng.uniform(0.0, 0.01, head.shape)  # a native scan: noise in the background
    assert any(
        "not skull-stripped" in d for d in differences(profile, measure(noisy, foreground, (1, 1, 1), normalized))
    )
    assert any("spacing" in d for d in differences(profile, measure(head, foreground, (2.5, 2.5, 1.0), normalized)))
    # Native-resolution plans resample every input to their pixel size: only a much coarser input is named.
    fine = measure(head, foreground, (0.4, 0.4, 1.0), normalized)
    assert any("spacing" in d for d in differences(profile, fine))
    assert not any("spacing" in d for d in differences(profile, fine, resampled_to=1.0))
    coarse = differences(profile, measure(head, foreground, (2.5, 2.5, 1.0), normalized), resampled_to=1.0)
    assert any("coarser" in d and "adds no detail" in d for d in coarse)
    big = np.ones_like(foreground)
    assert any("foreground" in d for d in differences(profile, measure(head, big, (1, 1, 1), normalized)))
    inverted = -normalized  # another contrast: the histogram reversed
    assert any("histogram" in d for d in differences(profile, measure(head, foreground, (1, 1, 1), inverted)))
