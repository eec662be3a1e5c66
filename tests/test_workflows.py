"""The demo path end to end on tiny phantoms: prepare -> train -> translate -> evaluate."""

import json

import nibabel as nib
import numpy as np
import pytest

from synthmed.cli import main
from synthmed.data.datasets import PreparedData, SliceDataset
from synthmed.data.prepare import prepare


def test_plan_records_choices_and_split_by_subject(prepared, phantoms):
    plan = json.loads((prepared / "plan.json").read_text())
    assert plan["source"] == "t1" and plan["target"] == "t2" and plan["size"] == 32
    split = plan["split"]
    assert set(split) == {"train", "val", "test"}
    everyone = split["train"] + split["val"] + split["test"]
    assert sorted(everyone) == sorted(p.name for p in phantoms.iterdir() if p.is_dir())
    assert len(set(everyone)) == len(everyone)
    assert split["val"] and split["test"]
    fingerprint = plan["fingerprint"]["t1"]
    assert fingerprint["shapes"] == ["32x32x32"] and "p99.5" in fingerprint["foreground_percentiles_median"]
    data = PreparedData(prepared)
    assert data.arrays["source"].shape[1:] == (32, 32)
    assert data.arrays["source"].shape == data.arrays["target"].shape == data.arrays["mask"].shape
    assert -1.0 <= float(np.min(data.arrays["source"])) and float(np.max(data.arrays["source"])) <= 1.0
    train_subjects = {plan["volumes"][s]["number"] for s in split["train"]}
    rows = data.rows("train")
    assert set(data.arrays["index"][rows, 0]) == train_subjects
    sample = SliceDataset(data, "train")[0]
    assert sample["source"].shape == (1, 32, 32)


def test_prepare_twice_is_a_no_op(prepared, phantoms):
    before = (prepared / "slices" / "source.npy").stat().st_mtime_ns
    prepare(phantoms, source="T1", target="T2", out=prepared, size=32, split="0.5,0.25,0.25", seed=0, progress=False)
    assert (prepared / "slices" / "source.npy").stat().st_mtime_ns == before


def test_translate_keeps_geometry_and_evaluate_writes_metrics(trained_run, phantoms, tmp_path, capsys):
    plan = json.loads((trained_run / "plan.json").read_text())
    subject = plan["split"]["test"][0]
    source = phantoms / subject / "T1.nii.gz"
    out = tmp_path / "pred" / subject / "T2.nii.gz"
    assert (
        main(
            [
                "translate",
                str(trained_run),
                str(source),
                str(out),
                "--quiet",
                "--reference",
                str(phantoms / subject / "T2.nii.gz"),
            ]
        )
        == 0
    )
    src, pred = nib.load(source), nib.load(out)
    assert pred.shape == src.shape
    np.testing.assert_array_equal(pred.affine, src.affine)
    np.testing.assert_array_equal(pred.header.get_sform(), src.header.get_sform())
    assert np.isfinite(pred.get_fdata()).all()
    # refuses to overwrite, then does with --overwrite
    assert main(["translate", str(trained_run), str(source), str(out), "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["translate", str(trained_run), str(source), str(out), "--quiet", "--overwrite"]) == 0

    # folder in -> folder out, subject folders mirrored
    folder_out = tmp_path / "folder_out"
    assert main(["translate", str(trained_run), str(phantoms), str(folder_out), "--quiet"]) == 0
    assert sorted(p.name for p in folder_out.iterdir() if p.is_dir()) == sorted(
        p.name for p in phantoms.iterdir() if p.is_dir()
    )
    assert (folder_out / subject / "T2.nii.gz").is_file()

    metrics = tmp_path / "metrics.json"
    assert main(["evaluate", str(tmp_path / "pred"), str(phantoms), "--out", str(metrics)]) == 0
    result = json.loads(metrics.read_text())
    assert set(result["mean"]) >= {"psnr", "ssim", "mae", "nmse"}
    assert subject in result["per_subject"]
    assert metrics.with_suffix(".csv").read_text().startswith("subject,psnr")


def _outside(t1: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    from synthmed.data.foreground import foreground_mask
    from synthmed.workflows.translate import BACKGROUND_MARGIN

    grown = ndimage.binary_dilation(
        foreground_mask(t1), structure=np.ones((3, 3, 3), bool), iterations=BACKGROUND_MARGIN
    )
    assert 0.05 < (~grown).mean() < 0.95  # the test has both a head and air to look at
    return ~grown


def test_outside_the_head_is_exactly_the_targets_background(trained_run, phantoms, tmp_path, capsys):
    """No voxel outside the source's foreground (dilated by the margin) differs from one value, the target's
    background level (the noise floor of these phantoms), with and without a reference; --no-mask keeps the network's raw
    output there (a barely trained model paints the air)."""
    plan = json.loads((trained_run / "plan.json").read_text())
    subject = plan["split"]["test"][0]
    source, reference = phantoms / subject / "T1.nii.gz", phantoms / subject / "T2.nii.gz"
    outside = _outside(nib.load(source).get_fdata())
    t2 = nib.load(reference).get_fdata()
    for extra in ([], ["--reference", reference]):
        out = tmp_path / f"masked{len(extra)}.nii.gz"
        assert main(["translate", str(trained_run), str(source), str(out), "--quiet", *map(str, extra)]) == 0
        pred = nib.load(out).get_fdata(dtype=np.float32)
        assert np.all(pred[outside] == pred[outside][0])
        assert abs(pred[outside][0] - np.median(t2[outside])) <= 0.05 * np.ptp(t2)  # the real T2's level there
        assert np.ptp(pred[~outside]) > 0
    raw = tmp_path / "raw.nii.gz"
    assert main(["translate", str(trained_run), str(source), str(raw), "--quiet", "--no-mask"]) == 0
    assert np.ptp(nib.load(raw).get_fdata()[outside]) > 0


def test_models_lists_pix2pix(capsys):
    assert main(["models"]) == 0
    text = capsys.readouterr().out
    assert "pix2pix" in text and "paired" in text and "lambda_l1=100.0" in text


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path, capsys):
    assert (
        main(["demo", "--out", str(tmp_path / "demo"), "--subjects", "5", "--size", "32", "--steps", "20", "--quiet"])
        == 0
    )
    report = json.loads((tmp_path / "demo" / "demo_results.json").read_text())
    assert set(report["results"]) == {"identity (source)", "pix2pix"}
    assert (tmp_path / "demo" / "demo.png").stat().st_size > 1000
    assert "identity" in capsys.readouterr().out


def test_identity_baseline_by_evaluating_the_sources(phantoms, tmp_path):
    out = tmp_path / "identity.json"
    assert (
        main(
            [
                "evaluate",
                str(phantoms),
                str(phantoms),
                "--pred-name",
                "T1",
                "--ref-name",
                "T2",
                "--match-intensity",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert result["n"] == len([p for p in phantoms.iterdir() if p.is_dir()])
    # T1 is not T2: the identity baseline is far from perfect, but finite
    assert 5 < result["mean"]["psnr"] < 25 and result["mean"]["ssim"] < 0.6


def test_translate_picks_a_channel_of_a_4d_input(trained_run, phantoms, tmp_path, capsys):
    t1 = nib.load(next(phantoms.glob("*/T1.nii.gz")))
    four_d = tmp_path / "t1_4d.nii.gz"
    nib.save(nib.Nifti1Image(np.stack([t1.get_fdata()] * 2, axis=-1).astype(np.float32), t1.affine), four_d)
    assert main(["translate", str(trained_run), str(four_d), str(tmp_path / "a.nii.gz"), "--quiet"]) == 2
    assert "--channel" in capsys.readouterr().err
    assert (
        main(["translate", str(trained_run), str(four_d), str(tmp_path / "b.nii.gz"), "--quiet", "--channel", "1"]) == 0
    )
    assert nib.load(tmp_path / "b.nii.gz").shape == t1.shape


def test_mr_to_ct_comes_back_in_hounsfield_units(phantoms, tmp_path):
    from synthmed.workflows.train import train
    from synthmed.workflows.translate import translate

    prep = prepare(
        phantoms, source="T1", target="CT", out=tmp_path / "prep", size=32, split="0.5,0.25,0.25", progress=False
    )
    plan = json.loads((prep / "plan.json").read_text())
    assert plan["normalization_kind"]["ct"] == "ct"
    assert plan["reference_normalization"]["ct"] == {"kind": "ct", "lo": -1000.0, "hi": 2000.0}
    run = tmp_path / "run"
    train(
        prep,
        model="pix2pix",
        out=run,
        steps=4,
        batch_size=4,
        progress=False,
        overrides={"generator_channels": 8, "discriminator_channels": 8},
    )
    subject = plan["split"]["test"][0]
    out = translate(run, phantoms / subject / "T1.nii.gz", tmp_path / "ct.nii.gz", progress=False)[0]
    hu = nib.load(out).get_fdata()
    assert -1000.0 - 1e-3 <= hu.min() and hu.max() <= 2000.0 + 1e-3
    # outside the head the output is air (-1000 HU) whatever the (barely trained) model says inside
    assert hu[0, 0, 0] == pytest.approx(-1000.0, abs=1e-3)


def test_aliases_are_kept_for_translation(phantoms, tmp_path):
    from synthmed.workflows.train import train
    from synthmed.workflows.translate import translate

    data = tmp_path / "data"
    for subject in sorted(p for p in phantoms.iterdir() if p.is_dir()):
        (data / subject.name).mkdir(parents=True)
        (data / subject.name / "MPRAGE.nii.gz").write_bytes((subject / "T1.nii.gz").read_bytes())
        (data / subject.name / "T2SPACE.nii.gz").write_bytes((subject / "T2.nii.gz").read_bytes())
    prep = prepare(
        data,
        source="t1",
        target="t2",
        aliases="mprage=t1,t2space=t2",
        out=tmp_path / "prep",
        size=32,
        split="0.5,0.25,0.25",
        progress=False,
    )
    run = tmp_path / "run"
    train(
        prep,
        model="pix2pix",
        out=run,
        steps=2,
        batch_size=4,
        progress=False,
        overrides={"generator_channels": 8, "discriminator_channels": 8},
    )
    written = translate(run, data, tmp_path / "out", progress=False)
    assert len(written) == len(list(data.iterdir()))
    assert all(path.name == "T2SPACE.nii.gz" for path in written)
