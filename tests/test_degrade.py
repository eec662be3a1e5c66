"""`synthmed degrade`: k-space motion, Rician noise and low-dose Poisson noise for restoration pairs."""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest
import scipy.fft
from scipy import special

from synthmed.cli import main
from synthmed.data.degrade import (
    SegmentMotion,
    add_lowdose_noise,
    add_rician_noise,
    degrade,
    degrade_array,
    motion_kspace,
    plan_motion,
)
from synthmed.data.foreground import foreground_mask
from synthmed.data.geometry import crop_slices
from synthmed.data.io import read_volume
from synthmed.data.phantom import write_phantoms
from synthmed.data.plan import load_plan
from synthmed.data.prepare import prepare
from synthmed.errors import SynthmedError
from synthmed.metrics import psnr

SEVERITIES = (0.5, 1.0, 2.0, 3.0)


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    root = tmp_path_factory.mktemp("degrade_phantoms")
    write_phantoms(root, subjects=4, size=32, seed=1)
    return root


@pytest.fixture(scope="module")
def t1(heads):
    return read_volume(heads / "sub-001" / "T1.nii.gz").data


# --------------------------------------------------------------------------- files and geometry


@pytest.mark.parametrize("kind", ["motion", "noise", "lowdose"])
def test_output_keeps_the_geometry_and_is_float32(heads, tmp_path, kind):
    source = heads / "sub-001" / "T1.nii.gz"
    out = tmp_path / f"T1_{kind}.nii.gz"
    assert main(["degrade", str(source), str(out), "--kind", kind, "--quiet"]) == 0
    clean, degraded = nib.load(source), nib.load(out)
    assert degraded.shape == clean.shape
    assert degraded.get_data_dtype() == np.float32
    np.testing.assert_array_equal(degraded.affine, clean.affine)
    np.testing.assert_array_equal(degraded.header.get_sform(), clean.header.get_sform())
    np.testing.assert_array_equal(degraded.header.get_qform(), clean.header.get_qform())
    np.testing.assert_array_equal(degraded.header.get_zooms(), clean.header.get_zooms())
    assert not np.array_equal(degraded.get_fdata(), clean.get_fdata())


@pytest.mark.parametrize("kind", ["motion", "noise", "lowdose"])
def test_same_seed_same_output_other_seed_other_output(t1, kind):
    a, info_a = degrade_array(t1, kind, 1.0, np.random.default_rng(5))
    b, info_b = degrade_array(t1, kind, 1.0, np.random.default_rng(5))
    c, _ = degrade_array(t1, kind, 1.0, np.random.default_rng(6))
    np.testing.assert_array_equal(a, b)
    assert info_a == info_b
    assert not np.array_equal(a, c)
    assert a.dtype == np.float32 and a.shape == t1.shape


def test_the_workflow_is_deterministic_given_the_seed(heads, tmp_path):
    source = heads / "sub-002" / "T1.nii.gz"
    first = degrade(source, tmp_path / "a.nii.gz", kind="motion", seed=3, progress=False)[0]
    second = degrade(source, tmp_path / "b.nii.gz", kind="motion", seed=3, progress=False)[0]
    other = degrade(source, tmp_path / "c.nii.gz", kind="motion", seed=4, progress=False)[0]
    np.testing.assert_array_equal(nib.load(first).get_fdata(), nib.load(second).get_fdata())
    assert not np.array_equal(nib.load(first).get_fdata(), nib.load(other).get_fdata())


@pytest.mark.parametrize("kind", ["motion", "noise", "lowdose"])
def test_psnr_falls_as_severity_rises(t1, kind):
    mask = foreground_mask(t1)
    for seed in (0, 1):
        scores = [psnr(degrade_array(t1, kind, s, np.random.default_rng(seed))[0], t1, mask) for s in SEVERITIES]
        assert all(math.isfinite(x) for x in scores), scores
        assert all(a > b for a, b in zip(scores, scores[1:])), (kind, seed, scores)


# --------------------------------------------------------------------------- motion is k-space segment motion


def test_motion_changes_only_the_moved_segments_lines_of_k_space(t1):
    stack = np.moveaxis(t1, 2, 0)  # (slices, phase, readout)
    segments, motions = plan_motion(stack.shape[1], 1.0, np.random.default_rng(0))
    assert motions and len(segments) == 12
    moved = {m.segment for m in motions}
    dc_segment = next(j for j, s in enumerate(segments) if 0 in s)
    assert dc_segment not in moved  # the centre of k-space fixes the position: pairs stay aligned
    assert len(moved) == 4  # severity 1: a third of the 11 movable segments
    assert all(math.hypot(*m.shift) <= 3.0 and abs(m.angle) <= 3.0 for m in motions)
    clean = scipy.fft.fft2(stack.astype(np.float32), axes=(1, 2))
    corrupted = motion_kspace(stack, segments, motions)
    for j, lines in enumerate(segments):
        if j in moved:
            assert not np.allclose(corrupted[:, lines], clean[:, lines])
        else:
            np.testing.assert_array_equal(corrupted[:, lines], clean[:, lines])


def test_higher_severity_moves_a_superset_of_segments_further():
    small = plan_motion(64, 1.0, np.random.default_rng(2))[1]
    large = plan_motion(64, 2.0, np.random.default_rng(2))[1]
    assert {m.segment for m in small} < {m.segment for m in large}
    by_segment = {m.segment: m for m in large}
    for m in small:
        np.testing.assert_allclose(np.multiply(m.shift, 2.0), by_segment[m.segment].shift)
        assert by_segment[m.segment].angle == pytest.approx(2.0 * m.angle)


def test_translation_ghosts_run_along_the_phase_encode_axis_only():
    # A small bright square; shots moved by translations only (whole pixels along the readout, so
    # that no sinc ringing blurs the test; any sub-pixel shift along phase-encode). The error must
    # stay in the readout columns the square and its shifted copies occupy, spread along phase-encode.
    image = np.zeros((1, 64, 64), np.float32)
    image[0, 28:36, 28:36] = 100.0
    segments = [np.asarray(s) for s in np.array_split(np.arange(64), 8)]
    segments = [(c - 32) % 64 for c in segments]
    motions = [
        SegmentMotion(segment=1, shift=(2.5, 1.0), angle=0.0),
        SegmentMotion(segment=6, shift=(-3.5, -2.0), angle=0.0),
    ]
    corrupted = np.abs(scipy.fft.ifft2(motion_kspace(image, segments, motions), axes=(1, 2)))[0]
    error = np.abs(corrupted - image[0])
    columns = error.sum(axis=0)  # per readout position
    rows = error.sum(axis=1)  # per phase-encode position
    near = np.zeros(64, bool)
    near[26:37] = True  # the square's readout columns, 28-35, +- the readout shifts
    assert columns[~near].sum() < 1e-4 * columns.sum()
    # along phase-encode the error spreads far beyond the square (ghosts)
    far_rows = np.ones(64, bool)
    far_rows[24:40] = False
    assert rows[far_rows].sum() > 0.2 * rows.sum()


def test_motion_on_a_signed_image_keeps_its_sign(heads):
    ct = read_volume(heads / "sub-001" / "CT.nii.gz").data
    out, info = degrade_array(ct, "motion", 1.0, np.random.default_rng(0))
    assert out.min() < -900  # air stays air (real part, not a magnitude that would fold it to +1000)
    assert psnr(out, ct) > 15
    assert info["moved"]


# --------------------------------------------------------------------------- noise statistics


def _rician_mean(nu: float, sigma: float) -> float:
    """sigma sqrt(pi/2) L_1/2(-nu^2 / 2 sigma^2), with exponentially scaled Bessel functions."""
    x = -(nu**2) / (2 * sigma**2)
    laguerre = (1 - x) * special.i0e(-x / 2) - x * special.i1e(-x / 2)
    return sigma * math.sqrt(math.pi / 2) * laguerre


@pytest.mark.parametrize("nu", [0.0, 5.0, 20.0, 100.0])
def test_rician_noise_has_the_rician_mean(nu):
    sigma = 10.0
    image = np.full((64, 64, 16), nu, np.float32)
    out = add_rician_noise(image, sigma, np.random.default_rng(0))
    assert float(out.mean()) == pytest.approx(_rician_mean(nu, sigma), rel=0.01)
    assert out.min() >= 0  # a magnitude


def test_noise_sigma_follows_the_documented_scale(t1):
    _, info = degrade_array(t1, "noise", 2.0, np.random.default_rng(0))
    reference = np.percentile(t1[foreground_mask(t1)], 99.0)
    assert info["sigma"] == pytest.approx(2.0 * 0.03 * reference, rel=1e-6)
    assert info["distribution"] == "rician"


def test_noise_on_ct_is_gaussian_and_keeps_negative_values(heads):
    ct = read_volume(heads / "sub-001" / "CT.nii.gz").data
    out, info = degrade_array(ct, "noise", 1.0, np.random.default_rng(0))
    assert info["distribution"] == "gaussian"
    assert out.min() < -900
    assert abs(float((out - ct).mean())) < 0.05 * info["sigma"]  # zero-mean, nothing folded


def test_lowdose_keeps_the_mean_and_variance_grows_as_the_dose_falls(t1):
    image = np.full((64, 64, 32), 50.0, np.float32)
    variances = []
    for dose_counts in (400.0, 100.0, 25.0):  # counts per unit: dose falling by 4 each time
        out = add_lowdose_noise(image, dose_counts / 50.0, np.random.default_rng(1))
        assert float(out.mean()) == pytest.approx(50.0, rel=0.01)
        variances.append(float(out.var()))
    assert variances[0] < variances[1] < variances[2]
    np.testing.assert_allclose(np.divide(variances[1:], variances[:-1]), 4.0, rtol=0.1)
    # through degrade_array on a phantom: mean kept, error grows with severity
    mask = foreground_mask(t1)
    errors = []
    for severity in (0.5, 1.5, 2.5):
        out, info = degrade_array(t1, "lowdose", severity, np.random.default_rng(0))
        assert info["dose_fraction"] == pytest.approx(4.0**-severity)
        assert float(out[mask].mean()) == pytest.approx(float(t1[mask].mean()), rel=0.01)
        errors.append(float(np.var(out[mask] - t1[mask])))
    assert errors[0] < errors[1] < errors[2]


def test_lowdose_refuses_negative_images(heads, tmp_path):
    ct = read_volume(heads / "sub-001" / "CT.nii.gz").data
    with pytest.raises(SynthmedError, match="non-negative"):
        degrade_array(ct, "lowdose", 1.0, np.random.default_rng(0))


# --------------------------------------------------------------------------- folders and prepare


def test_a_folder_pairs_with_prepare_and_a_volume_round_trips(heads, tmp_path, capsys):
    out = tmp_path / "motion"
    assert main(["degrade", str(heads), str(out), "--kind", "motion", "--name", "T1", "--seed", "7", "--quiet"]) == 0
    subjects = sorted(p.name for p in heads.iterdir() if p.is_dir())
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == subjects
    for subject in subjects:
        assert (out / subject / "T1_motion.nii.gz").is_file()
        assert (out / subject / "T1.nii.gz").resolve() == (heads / subject / "T1.nii.gz").resolve()
    record = json.loads((out / "degrade-T1_motion.json").read_text())
    assert record["kind"] == "motion" and set(record["subjects"]) == set(subjects)

    # the written volume is exactly what the function gives for that subject's generator
    clean = read_volume(heads / "sub-001" / "T1.nii.gz")
    written = read_volume(out / "sub-001" / "T1_motion.nii.gz")
    from synthmed.data.degrade import _subject_rng

    expected, _ = degrade_array(clean.data, "motion", 1.0, _subject_rng(7, "sub-001"))
    np.testing.assert_array_equal(written.data, expected)
    np.testing.assert_array_equal(written.affine, clean.affine)

    prep = prepare(
        out, source="T1_motion", target="T1", out=tmp_path / "prep", size=32, split="0.5,0.25,0.25", progress=False
    )
    plan = load_plan(prep)
    assert plan.source == "t1_motion" and plan.target == "t1"
    assert sorted(plan.subjects) == subjects and not plan.skipped
    record = plan.volumes["sub-001"]
    assert record.files["t1_motion"].endswith("T1_motion.nii.gz")
    # the prepared source slices of sub-001 are the degraded volume, normalised and cropped
    index = np.load(prep / "slices" / "index.npy")
    rows = index[:, 0] == record.number
    source = np.load(prep / "slices" / "source.npy")[rows]
    target = np.load(prep / "slices" / "target.npy")[rows]
    geometry = record.geometry
    norm = record.normalization["t1_motion"]
    np.testing.assert_allclose(
        source, crop_slices(norm.apply(written.data), geometry, fill=-1.0)[index[rows, 1]], atol=1e-5
    )
    assert not np.allclose(source, target)


def test_folder_outputs_refuse_to_overwrite_and_can_be_replaced(heads, tmp_path):
    out = tmp_path / "noise"
    first = degrade(heads, out, kind="noise", name="T1", progress=False)
    assert len(first) == 4
    with pytest.raises(SynthmedError, match="--overwrite"):
        degrade(heads, out, kind="noise", name="T1", progress=False)
    again = degrade(heads, out, kind="noise", name="T1", severity=2.0, overwrite=True, progress=False)
    assert again == first
    assert not list(out.rglob(".*partial*"))


# --------------------------------------------------------------------------- errors


def test_cli_errors(heads, tmp_path, capsys):
    source = heads / "sub-001" / "T1.nii.gz"
    with pytest.raises(SystemExit) as stop:
        main(["degrade", str(source), str(tmp_path / "x.nii.gz"), "--kind", "blur"])
    assert stop.value.code == 2
    assert "invalid choice: 'blur'" in capsys.readouterr().err
    for severity in ("0", "-1", "3.5", "nan"):
        assert (
            main(["degrade", str(source), str(tmp_path / "x.nii.gz"), "--kind", "noise", "--severity", severity]) == 2
        )
        assert "--severity" in capsys.readouterr().err
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not an image at all")
    assert main(["degrade", str(broken), str(tmp_path / "y.nii.gz"), "--kind", "noise"]) == 2
    assert "broken.nii.gz" in capsys.readouterr().err
    assert main(["degrade", str(tmp_path / "missing.nii.gz"), str(tmp_path / "y.nii.gz"), "--kind", "noise"]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["degrade", str(heads), str(tmp_path / "z"), "--kind", "noise"]) == 2
    assert "--name" in capsys.readouterr().err
    assert main(["degrade", str(heads), str(tmp_path / "z"), "--kind", "noise", "--name", "DWI"]) == 2
    assert "no subject folder holds a DWI scan" in capsys.readouterr().err
    assert (
        main(["degrade", str(heads / "sub-001" / "CT.nii.gz"), str(tmp_path / "ct.nii.gz"), "--kind", "lowdose"]) == 2
    )
    assert "non-negative" in capsys.readouterr().err
    out = tmp_path / "once.nii.gz"
    assert main(["degrade", str(source), str(out), "--kind", "noise", "--quiet"]) == 0
    assert main(["degrade", str(source), str(out), "--kind", "noise", "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["degrade", str(source), str(out), "--kind", "noise", "--quiet", "--overwrite"]) == 0
    assert not (tmp_path / "y.nii.gz").exists() and not (tmp_path / "z").exists()


# --------------------------------------------------------------------------- real scans


def test_motion_on_a_real_scan(real_data, tmp_path):
    source = real_data / "brats" / "BraTS-GLI-00001-000" / "BraTS-GLI-00001-000-t1n.nii.gz"
    clean = read_volume(source)
    mask = foreground_mask(clean.data)
    scores = []
    for severity in (0.5, 2.0):
        out = tmp_path / f"t1n_motion_{severity}.nii.gz"
        degrade(source, out, kind="motion", severity=severity, seed=0, progress=False)
        degraded = read_volume(out)
        assert degraded.data.shape == clean.data.shape
        np.testing.assert_array_equal(degraded.affine, clean.affine)
        scores.append(psnr(degraded.data, clean.data, mask))
    assert all(math.isfinite(s) for s in scores) and scores[0] > scores[1], scores


def test_aliases_find_prefixed_files_and_prepare_discovers_the_pair(heads, tmp_path):
    from synthmed.data.discovery import discover

    data = tmp_path / "data"
    for subject in ("sub-001", "sub-002"):
        (data / subject).mkdir(parents=True)
        (data / subject / f"{subject}_t1_bet.nii.gz").symlink_to(heads / subject / "T1.nii.gz")
    written = degrade(data, tmp_path / "out", kind="lowdose", name="t1", aliases="t1_bet=t1", progress=False)
    assert [p.name for p in written] == ["t1_lowdose.nii.gz", "t1_lowdose.nii.gz"]
    subjects = discover(tmp_path / "out", aliases="t1_bet=t1")
    assert [sorted(s.files) for s in subjects] == [["t1", "t1_lowdose"], ["t1", "t1_lowdose"]]


def test_written_files_get_the_usual_permissions_and_ct_names_stay_ct(tmp_path):
    """Outputs are written through a private temporary file; the result must still get 0666 less the umask,
    and a degraded CT's derived name (``CT_noise``) is normalised as CT."""
    import os

    import numpy as np

    from synthmed.data.io import write_volume
    from synthmed.data.normalize import modality_kind

    umask = os.umask(0o022)
    try:
        path = write_volume(tmp_path / "x.nii.gz", np.zeros((4, 4, 4), np.float32))
    finally:
        os.umask(umask)
    assert (path.stat().st_mode & 0o777) == 0o644
    assert modality_kind("CT_noise") == modality_kind("ct") == modality_kind("sCT-lowdose") == "ct"
    assert modality_kind("T1_motion") == "mr"
