"""Evaluation protocols (toolkit, max-normalised, SynthRAD2023/2025) and the paired comparison of two predictions.

The SynthRAD scores are checked against values computed by hand on a few voxels, against scikit-image's
``structural_similarity`` with the settings the challenge code uses, and against an independent, plain
implementation of the SynthRAD2025 masked MS-SSIM written here from the challenge's description.
"""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest
from scipy import stats

from synthmed.cli import main
from synthmed.errors import SynthmedError
from synthmed.metrics import protocols
from synthmed.metrics.paired import paired_tests, rank_biserial, wilcoxon_test
from synthmed.metrics.protocols import (
    SYNTHRAD2025_MS_SSIM_WEIGHTS,
    score,
    synthrad2023_scores,
    synthrad2025_ms_ssim,
    synthrad2025_scores,
)

# ----------------------------------------------------------------------------- helpers


def ct_pair(shape=(12, 11, 10), seed=0, noise=80.0):
    """A reference 'CT' in HU (air, soft tissue, a bone block) and a noisy prediction, with a body mask."""
    rng = np.random.default_rng(seed)
    ref = np.full(shape, -1000.0)
    body = np.zeros(shape, dtype=bool)
    body[2:-2, 2:-2, 1:-1] = True
    ref[body] = rng.normal(40, 30, int(body.sum()))
    ref[4:7, 4:7, 3:6] = 1200.0
    pred = ref + rng.normal(0, noise, shape)
    return pred, ref, body


def official_ssim_2023(pred, ref, mask):
    """SynthRAD2023's SSIM as its evaluation code computes it, with scikit-image (float64 here)."""
    metrics = pytest.importorskip("skimage.metrics")
    crop = pytest.importorskip("skimage.util").crop
    lo, hi = -1024.0, 3000.0
    gt = np.where(mask, np.clip(ref, lo, hi), lo) - lo
    pr = np.where(mask, np.clip(pred, lo, hi), lo) - lo
    _, full = metrics.structural_similarity(gt, pr, data_range=hi - lo, full=True)
    return float(crop(full, 3)[crop(mask, 3).astype(bool)].mean())


def box7(a):
    """Mean over a 7x7x7 window with mirrored borders (scipy's 'reflect' = numpy's 'symmetric'), by a summed-volume
    table: another route to the same window as ``scipy.ndimage.uniform_filter(size=7)``."""
    r = 3
    padded = np.pad(a, r, mode="symmetric")
    table = np.zeros(tuple(s + 1 for s in padded.shape))
    table[1:, 1:, 1:] = padded.cumsum(0).cumsum(1).cumsum(2)
    n0, n1, n2 = a.shape
    w = 2 * r + 1

    def corner(i, j, k):
        return table[i : i + n0, j : j + n1, k : k + n2]

    total = (
        corner(w, w, w)
        - corner(0, w, w)
        - corner(w, 0, w)
        - corner(w, w, 0)
        + corner(0, 0, w)
        + corner(0, w, 0)
        + corner(w, 0, 0)
        - corner(0, 0, 0)
    )
    return total / w**3


def reference_ms_ssim_2025(pred, ref, mask):
    """SynthRAD2025's masked MS-SSIM written out plainly from the challenge's description: clip to [-1024, 3071],
    -1024 outside the mask, shift to >= 0, pad to 97 with edge values, five scales of the uniform-window SSIM split
    into clipped L, C, S raised to the scale weight, masked mean after a 3-voxel crop, FFT box downsampling."""
    from scipy.signal import fftconvolve

    lo, hi = -1024.0, 3071.0
    peak = hi - lo
    gt = np.where(mask, np.clip(ref, lo, hi), lo) - lo
    pr = np.where(mask, np.clip(pred, lo, hi), lo) - lo
    m = mask.astype(float)
    widths = [(max((97 - s) // 2, 0), max(97 - s - (97 - s) // 2, 0)) for s in gt.shape]
    gt, pr, m = (np.pad(a, widths, mode="edge") for a in (gt, pr, m))
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    c3 = c2 / 2
    values = []
    for w in SYNTHRAD2025_MS_SSIM_WEIGHTS:
        norm = 343 / 342
        ux, uy = box7(gt), box7(pr)
        vx = norm * (box7(gt * gt) - ux**2)
        vy = norm * (box7(pr * pr) - uy**2)
        vxy = norm * (box7(gt * pr) - ux * uy)
        sx, sy = np.sqrt(np.maximum(vx, 0)), np.sqrt(np.maximum(vy, 0))
        lum = np.maximum((2 * ux * uy + c1) / (ux**2 + uy**2 + c1), 0)
        con = np.maximum((2 * sx * sy + c2) / (vx + vy + c2), 0)
        stru = np.maximum((vxy + c3) / (sx * sy + c3), 0)
        level = lum**w * con**w * stru**w
        inner = (slice(3, -3),) * 3
        values.append(level[inner][m[inner] > 0].mean())
        kernel = np.ones((2, 2, 2)) / 8
        gt = fftconvolve(gt, kernel, mode="same")[::2, ::2, ::2]
        pr = fftconvolve(pr, kernel, mode="same")[::2, ::2, ::2]
        m = m[::2, ::2, ::2]
    return float(np.prod(np.clip(values, 0, 1)))


# ----------------------------------------------------------------------------- MAE and PSNR by hand


def four_voxel_case():
    """A 8x8x8 volume with a 4-voxel mask: errors 10, -20, 0 HU, and a bone voxel predicted at 4000 HU against 3000
    (outside both windows for the prediction); huge errors outside the mask that must not count.

    Voxel (4, 4, 4) lands, after the padding to 97 (44 voxels before), on index 48 = 16 * 3: the one voxel the
    SynthRAD2025 MS-SSIM keeps at its coarsest scale, so that score is defined too."""
    ref = np.zeros((8, 8, 8))
    pred = np.full((8, 8, 8), 2000.0)  # wrong everywhere outside the mask
    mask = np.zeros((8, 8, 8), dtype=bool)
    voxels = [(4, 4, 3), (4, 3, 4), (3, 4, 4), (4, 4, 4)]
    for v in voxels:
        mask[v] = True
    ref[voxels[3]] = 3000.0
    for v, p in zip(voxels, (10.0, -20.0, 0.0, 4000.0)):
        pred[v] = p
    return pred, ref, mask


def test_synthrad_mae_and_psnr_by_hand():
    pred, ref, mask = four_voxel_case()
    s23 = synthrad2023_scores(pred, ref, mask)
    # MAE is not clipped: (10 + 20 + 0 + 1000) / 4.
    assert s23["mae"] == pytest.approx(257.5)
    # PSNR clips both to [-1024, 3000]: the bone voxel's error vanishes; MSE = (100 + 400 + 0 + 0) / 4.
    assert s23["psnr"] == pytest.approx(10 * math.log10(4024**2 / 125.0))
    s25 = synthrad2025_scores(pred, ref, mask)
    assert s25["mae"] == pytest.approx(257.5)
    # [-1024, 3071]: 4000 -> 3071, so that voxel's error is 71 HU; MSE = (100 + 400 + 0 + 71^2) / 4.
    assert s25["psnr"] == pytest.approx(10 * math.log10(4095**2 / ((100 + 400 + 71**2) / 4)))


def test_synthrad_psnr_of_identical_volumes_is_infinite_and_mae_zero():
    _, ref, mask = ct_pair()
    scores = synthrad2023_scores(ref, ref, mask)
    assert scores["mae"] == 0.0 and scores["psnr"] == math.inf and scores["ssim"] == pytest.approx(1.0)


def test_synthrad_protocols_need_a_mask_of_the_same_shape():
    pred, ref, mask = ct_pair()
    for function in (synthrad2023_scores, synthrad2025_scores):
        with pytest.raises(SynthmedError, match="--mask"):
            function(pred, ref, None)
        with pytest.raises(SynthmedError, match="empty"):
            function(pred, ref, np.zeros_like(mask))
        with pytest.raises(SynthmedError, match="one shape"):
            function(pred, ref, mask[:-1])


# ----------------------------------------------------------------------------- SSIM (2023)


@pytest.mark.parametrize("seed", [0, 1])
def test_synthrad2023_ssim_matches_scikit_image_with_the_challenge_settings(seed):
    pred, ref, mask = ct_pair(seed=seed, noise=150.0)
    pred[5, 5, 5] = 5000.0  # above the window: clipped before the SSIM
    ours = synthrad2023_scores(pred, ref, mask)["ssim"]
    assert ours == pytest.approx(official_ssim_2023(pred, ref, mask), abs=1e-10)
    # The challenge's SSIM is not the toolkit's (Gaussian window, population covariance, reference range).
    toolkit = score("toolkit", pred, ref, mask)["ssim3d"]
    assert abs(ours - toolkit) > 1e-3


def test_synthrad2023_ssim_counts_mask_voxels_away_from_the_faces_only(monkeypatch):
    pred, ref, mask = ct_pair(shape=(14, 12, 11), seed=3, noise=200.0)
    mask[:, :, 0] = True  # on a face: left out of the mean, as scikit-image crops the border
    expected = official_ssim_2023(pred, ref, mask)
    assert synthrad2023_scores(pred, ref, mask)["ssim"] == pytest.approx(expected, abs=1e-10)
    # Filtering in slabs (as for large volumes) gives the values of the whole-volume filter.
    monkeypatch.setattr(protocols, "_SLAB_VOXELS", 1)
    assert synthrad2023_scores(pred, ref, mask)["ssim"] == pytest.approx(expected, abs=1e-10)


def test_synthrad2023_ssim_needs_room_for_its_window():
    pred, ref, mask = ct_pair(shape=(12, 11, 6))
    with pytest.raises(SynthmedError, match="7"):
        synthrad2023_scores(pred, ref, mask)


# ----------------------------------------------------------------------------- MS-SSIM (2025)


def test_box_downsampling_is_the_challenges_fft_convolution():
    from scipy.signal import fftconvolve

    a = np.random.default_rng(0).normal(size=(9, 8, 7))
    expected = fftconvolve(a, np.ones((2, 2, 2)) / 8, mode="same")[::2, ::2, ::2]
    np.testing.assert_allclose(protocols._halve(a), expected, atol=1e-12)


@pytest.mark.parametrize("seed, on_a_face", [(0, False), (1, True)])
def test_synthrad2025_ms_ssim_matches_an_independent_implementation(seed, on_a_face):
    pred, ref, mask = ct_pair(shape=(16, 14, 12), seed=seed, noise=120.0)
    pred[6, 6, 6] = 4000.0
    if on_a_face:
        # A body cut by the field of view: the edge padding carries it to the padded faces, where the crop matters.
        mask[:, 3:9, 0] = True
        ref[:, 3:9, 0] = 30.0
    ours = synthrad2025_scores(pred, ref, mask)["ms_ssim"]
    assert ours == pytest.approx(reference_ms_ssim_2025(pred, ref, mask), abs=1e-9)
    assert 0.0 < ours < 1.0


def test_synthrad2025_ms_ssim_is_one_for_identical_volumes_and_falls_with_noise():
    pred, ref, mask = ct_pair(noise=0.0)
    assert synthrad2025_scores(ref, ref, mask)["ms_ssim"] == pytest.approx(1.0)
    rng = np.random.default_rng(7)
    unit = rng.normal(size=ref.shape)
    values = [synthrad2025_scores(ref + sd * unit, ref, mask)["ms_ssim"] for sd in (10, 50, 200, 800)]
    assert all(a > b for a, b in zip(values, values[1:])), values
    assert values[0] < 1.0


def test_synthrad2025_ms_ssim_ignores_voxels_outside_the_mask():
    pred, ref, mask = ct_pair(seed=2)
    changed = pred.copy()
    changed[~mask] = 2500.0  # nonsense outside the body: set to -1024 before scoring, as the challenge does
    assert synthrad2025_scores(changed, ref, mask) == synthrad2025_scores(pred, ref, mask)


def test_synthrad2025_single_scale_with_unit_weight_is_the_plain_ssim_where_nothing_is_clipped():
    # With one scale and weight 1, L * C * S is the SSIM map (C3 = C2 / 2) wherever no term is clipped at 0, which
    # holds for a prediction close to its reference: a check of the split against scikit-image.
    pred, ref, mask = ct_pair(shape=(14, 13, 12), seed=5, noise=20.0)
    lo = -1024.0
    x = np.where(mask, np.clip(pred, lo, 3071.0), lo) - lo
    y = np.where(mask, np.clip(ref, lo, 3071.0), lo) - lo
    metrics = pytest.importorskip("skimage.metrics")
    crop = pytest.importorskip("skimage.util").crop
    # Pad to 97 as the MS-SSIM does; scikit-image's plain SSIM of the padded volumes is the reference.
    widths = [(max((97 - s) // 2, 0), max(97 - s - (97 - s) // 2, 0)) for s in x.shape]
    xp, yp, mp = (np.pad(a, widths, mode="edge") for a in (x, y, mask))
    _, full = metrics.structural_similarity(yp, xp, data_range=4095.0, full=True)
    expected = float(crop(full, 3)[crop(mp, 3)].mean())
    assert synthrad2025_ms_ssim(x, y, mask, 4095.0, weights=(1.0,)) == pytest.approx(expected, abs=1e-9)


# ----------------------------------------------------------------------------- max-normalised and dispatch


def test_max_normalised_protocol_is_the_benchmarks_definition():
    from synthmed.benchmarking import scoring

    assert scoring.max_normalised_scores is protocols.max_normalised_scores
    pred, ref, mask = ct_pair()
    scaled = score("max-normalised", 3 * np.clip(ref, 0, None), np.clip(ref, 0, None), mask)
    assert scaled["psnr"] == pytest.approx(100.0) and scaled["ssim"] == pytest.approx(1.0)
    assert scaled["slices"] == int(mask.any(axis=(0, 1)).sum())
    with pytest.raises(SynthmedError, match="unknown protocol"):
        score("synthrad2099", pred, ref, mask)


# ----------------------------------------------------------------------------- paired statistics


def test_rank_biserial_by_hand():
    # Zeros dropped; |d| ranks 1, 2, 3 for d = 1, -2, 3: R+ = 4, R- = 2 -> (4 - 2) / 6.
    assert rank_biserial(np.array([1.0, -2.0, 3.0, 0.0])) == pytest.approx(1 / 3)
    assert rank_biserial(np.array([2.0, 5.0, 1.0])) == 1.0
    assert rank_biserial(np.array([-2.0, -5.0])) == -1.0
    assert rank_biserial(np.zeros(4)) == 0.0


def test_wilcoxon_test_reports_scipys_two_sided_test_and_the_median_difference():
    a = np.array([3.1, 2.0, 5.5, 4.0, 6.2, 1.0, 7.7, 3.3])
    b = np.array([2.0, 2.5, 4.0, 1.0, 5.0, 0.2, 4.1, 3.0])
    result = wilcoxon_test(a, b)
    expected = stats.wilcoxon(a, b, zero_method="wilcox", alternative="two-sided")
    assert result["p_value"] == pytest.approx(expected.pvalue)
    assert result["statistic"] == pytest.approx(expected.statistic)
    assert result["median_difference"] == pytest.approx(float(np.median(a - b)))
    assert result["n"] == 8 and result["nonzero"] == 8
    tied = wilcoxon_test(a, a)
    assert tied["p_value"] == 1.0 and tied["rank_biserial"] == 0.0 and tied["statistic"] is None


def test_paired_tests_name_subjects_only_one_side_has_and_warn_without_power():
    a = {f"s{i}": {"mae": 10.0 + i} for i in range(4)}
    b = {f"s{i}": {"mae": 20.0 + i} for i in range(1, 5)}
    result = paired_tests(a, b, ["mae"], names=("good", "bad"), lower_is_better={"mae"})
    assert result["subjects"] == ["s1", "s2", "s3"]
    assert result["only_in"] == {"good": ["s0"], "bad": ["s4"]}
    text = " ".join(result["warnings"])
    assert "only in good" in text and "s0" in text and "only in bad" in text and "s4" in text
    assert "no power" in text
    test = result["tests"]["mae"]
    assert test["p_value"] == pytest.approx(0.25)  # 3 pairs, all one way: 2 / 2^3
    assert test["rank_biserial"] == -1.0 and test["favours"] == "good"
    with pytest.raises(SynthmedError, match="no subject in common"):
        paired_tests({"x": {"mae": 1.0}}, {"y": {"mae": 1.0}}, ["mae"])


# ----------------------------------------------------------------------------- CLI


def write_nifti(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.float32), np.eye(4)), str(path))


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip()


def test_cli_evaluate_synthrad2023_on_nifti_files(tmp_path, capsys, caplog):
    pred, ref, mask = four_voxel_case()
    write_nifti(tmp_path / "pred.nii.gz", pred)
    write_nifti(tmp_path / "ref.nii.gz", ref)
    write_nifti(tmp_path / "mask.nii.gz", mask)
    out = tmp_path / "m.json"
    code, printed, err = run_cli(
        [
            "evaluate",
            tmp_path / "pred.nii.gz",
            tmp_path / "ref.nii.gz",
            "--protocol",
            "synthrad2023",
            "--mask",
            tmp_path / "mask.nii.gz",
            "--out",
            out,
        ],
        capsys,
    )
    assert code == 0, err
    result = json.loads(out.read_text())
    assert result["protocol"] == "synthrad2023" and "4024" in result["convention"]
    (scores,) = result["per_subject"].values()
    assert scores["mae"] == pytest.approx(257.5)
    assert scores["psnr"] == pytest.approx(10 * math.log10(4024**2 / 125.0))
    assert scores["ssim"] == pytest.approx(official_ssim_2023(pred, ref, mask), abs=1e-9)
    header = (tmp_path / "m.csv").read_text().splitlines()[0]
    assert header == "subject,mae,psnr,ssim"
    assert "MAE (mean +/- sd)" in printed and "257.5" in printed
    # The reference has no air (it is not a CT in HU as the challenge's are): said, not silently scored.
    assert "expect CT in HU" in caplog.text


def test_cli_evaluate_synthrad_without_a_mask_says_what_is_missing(tmp_path, capsys):
    pred, ref, _ = ct_pair()
    write_nifti(tmp_path / "pred.nii.gz", pred)
    write_nifti(tmp_path / "ref.nii.gz", ref)
    for protocol in ("synthrad2023", "synthrad2025"):
        code, _, err = run_cli(
            ["evaluate", tmp_path / "pred.nii.gz", tmp_path / "ref.nii.gz", "--protocol", protocol], capsys
        )
        assert code == 2, err
        assert err.startswith("synthmed: error:") and "--mask" in err and "body mask" in err and protocol in err


def write_folders(root, subjects, noise, seed):
    """Reference CTs and masks for ``subjects`` and a prediction folder per ``noise`` level (same noise pattern
    scaled, so the lower-noise prediction is better on every subject)."""
    rng = np.random.default_rng(seed)
    folders = {name: root / name for name in noise}
    for i, subject in enumerate(subjects):
        pred, ref, mask = ct_pair(seed=seed + i, noise=0.0)
        write_nifti(root / "ref" / f"{subject}.nii.gz", ref)
        write_nifti(root / "masks" / f"{subject}.nii.gz", mask)
        unit = rng.normal(size=ref.shape)
        for name, sd in noise.items():
            write_nifti(folders[name] / f"{subject}.nii.gz", ref + sd * unit * (1 + 0.1 * i))
    return folders


def test_cli_compare_finds_the_better_prediction_folder(tmp_path, capsys):
    subjects = [f"sub-{i:02d}" for i in range(8)]
    folders = write_folders(tmp_path, subjects, {"good": 20.0, "bad": 120.0}, seed=10)
    out = tmp_path / "cmp.json"
    args = ["evaluate", folders["good"], tmp_path / "ref", "--compare", folders["bad"], "--protocol", "synthrad2023"]
    code, printed, err = run_cli([*args, "--mask", tmp_path / "masks", "--out", out], capsys)
    assert code == 0, err
    comparison = json.loads(out.read_text())["compare"]
    assert comparison["names"] == ["good", "bad"] and comparison["subjects"] == subjects
    assert comparison["warnings"] == []
    for metric, sign in (("mae", -1.0), ("psnr", 1.0), ("ssim", 1.0)):
        test = comparison["tests"][metric]
        assert test["n"] == 8
        assert test["p_value"] == pytest.approx(2 / 2**8)  # exact test, all 8 pairs one way
        assert test["rank_biserial"] == sign and test["favours"] == "good"
        assert np.sign(test["median_difference"]) == sign
    assert comparison["other_result"]["n"] == 8 and comparison["other_result"]["mean"]["mae"] > 0
    assert "paired: good vs bad" in printed and "rank-biserial" in printed
    # Swapping the folders flips every sign and still favours the better one.
    code, _, err = run_cli(
        ["evaluate", folders["bad"], tmp_path / "ref", "--compare", folders["good"], "--protocol", "synthrad2023"]
        + ["--mask", tmp_path / "masks", "--out", tmp_path / "swapped.json"],
        capsys,
    )
    assert code == 0, err
    swapped = json.loads((tmp_path / "swapped.json").read_text())["compare"]["tests"]["mae"]
    assert swapped["rank_biserial"] == 1.0 and swapped["favours"] == "good"


def test_cli_compare_with_too_few_and_unmatched_subjects_still_reports(tmp_path, capsys, caplog):
    folders = write_folders(tmp_path, ["a", "b", "c", "d"], {"one": 20.0, "two": 60.0}, seed=20)
    (folders["two"] / "d.nii.gz").unlink()  # the second folder lacks subject d
    out = tmp_path / "few.json"
    code, printed, err = run_cli(
        ["evaluate", folders["one"], tmp_path / "ref", "--compare", folders["two"], "--protocol", "synthrad2023"]
        + ["--mask", tmp_path / "masks", "--out", out],
        capsys,
    )
    assert code == 0, err
    comparison = json.loads(out.read_text())["compare"]
    assert comparison["subjects"] == ["a", "b", "c"] and comparison["only_in"] == {"one": ["d"], "two": []}
    notes = " ".join(comparison["warnings"])
    assert "only in one" in notes and ": d" in notes and "no power" in notes
    test = comparison["tests"]["psnr"]
    assert test["n"] == 3 and test["p_value"] == pytest.approx(0.25) and test["favours"] == "one"
    assert "no power" in printed and "no power" in caplog.text


def test_cli_compare_of_two_files_pairs_them_whatever_their_names(tmp_path, capsys):
    folders = write_folders(tmp_path, ["a"], {"one": 20.0, "two": 60.0}, seed=30)
    other = tmp_path / "renamed.nii.gz"
    (folders["two"] / "a.nii.gz").rename(other)
    out = tmp_path / "files.json"
    code, _, err = run_cli(
        ["evaluate", folders["one"] / "a.nii.gz", tmp_path / "ref" / "a.nii.gz", "--compare", other]
        + ["--protocol", "synthrad2023", "--mask", tmp_path / "masks" / "a.nii.gz", "--out", out],
        capsys,
    )
    assert code == 0, err
    comparison = json.loads(out.read_text())["compare"]
    assert comparison["subjects"] == ["a"] and comparison["tests"]["mae"]["n"] == 1
    assert comparison["names"] == ["a.nii.gz", "renamed.nii.gz"]
    assert comparison["tests"]["mae"]["favours"] == "a.nii.gz"
    assert "no power" in " ".join(comparison["warnings"])
