import json

import numpy as np
import pytest

from synthmed.data.geometry import crop_slices, fit_geometry, slice_axis, uncrop_slices
from synthmed.data.normalize import Normalization, fit_normalization, median_normalization, modality_kind
from synthmed.data.splits import parse_ratios, split_subjects
from synthmed.errors import SynthmedError


def test_slice_axis_follows_orientation():
    ras = np.diag([1.0, 1.0, 1.0, 1.0])
    assert slice_axis(ras, "axial") == 2
    assert slice_axis(ras, "sagittal") == 0
    assert slice_axis(ras, "coronal") == 1
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    assert slice_axis(lps, "axial") == 2
    # voxel axis 0 runs superior-inferior: axial slices are along axis 0
    swapped = np.array([[0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)
    assert slice_axis(swapped, "axial") == 0
    assert slice_axis(ras, 1) == 1
    assert slice_axis(swapped, "axial", is_2d=True) == 2
    with pytest.raises(SynthmedError):
        slice_axis(ras, "oblique")


def test_crop_uncrop_round_trip_is_exact_without_resizing():
    rng = np.random.default_rng(0)
    volume = np.zeros((40, 50, 12), np.float32)
    volume[5:30, 10:45, :] = rng.random((25, 35, 12))
    foreground = volume > 0
    geometry = fit_geometry(foreground, axis=2, size=1)
    geometry = type(geometry)(**{**geometry.to_dict(), "size": geometry.side})  # no resize
    slices = crop_slices(volume, geometry, fill=0.0)
    assert slices.shape == (12, geometry.side, geometry.side)
    restored = uncrop_slices(slices, geometry, fill=0.0)
    assert restored.shape == volume.shape
    np.testing.assert_allclose(restored, volume, atol=1e-6)


def test_crop_with_resize_keeps_geometry_and_values_close():
    x, y = np.meshgrid(np.linspace(-1, 1, 60), np.linspace(-1, 1, 60), indexing="ij")
    blob = np.exp(-(x**2 + y**2) * 3).astype(np.float32)
    volume = np.repeat(blob[:, :, None], 5, axis=2) * (np.hypot(x, y) < 0.9)[:, :, None]
    geometry = fit_geometry(volume > 0, axis=2, size=32)
    assert geometry.size == 32
    restored = uncrop_slices(crop_slices(volume, geometry, fill=0.0), geometry, fill=0.0)
    assert restored.shape == volume.shape
    inside = volume > 0.2
    assert np.abs(restored - volume)[inside].mean() < 0.02
    assert geometry.to_dict() == type(geometry).from_dict(geometry.to_dict()).to_dict()


def test_upsampling_round_trip_keeps_edges_and_range():
    """A box smaller than the model's square is enlarged and shrunk back; bicubic (anti-aliased when shrinking)
    must keep much more of a sharp-edged image than bilinear did, and never leave the input's range."""
    x, y = np.meshgrid(np.linspace(-1, 1, 46), np.linspace(-1, 1, 46), indexing="ij")
    radius = np.hypot(x, y)
    ring = ((radius > 0.7) & (radius < 0.8)) * 1.0 + (radius < 0.6) * (0.4 + 0.2 * np.sin(12 * x))
    volume = np.repeat(ring.astype(np.float32)[:, :, None], 3, axis=2)
    geometry = fit_geometry(volume > 0, axis=2, size=64)
    assert geometry.side < 64

    def round_trip_psnr(interpolation):
        slices = crop_slices(volume, geometry, fill=0.0, interpolation=interpolation)
        assert slices.min() >= 0 and slices.max() <= 1  # no cubic overshoot past the input's range
        restored = uncrop_slices(slices, geometry, fill=0.0, interpolation=interpolation)
        return 10 * np.log10(1.0 / np.mean((restored - volume) ** 2))

    bicubic, bilinear = round_trip_psnr("bicubic"), round_trip_psnr("bilinear")
    assert bicubic > bilinear + 2, (bicubic, bilinear)  # 23.6 vs 20.5 dB on these hard binary edges
    with pytest.raises(ValueError, match="interpolation"):
        crop_slices(volume, geometry, fill=0.0, interpolation="lanczos")


def test_box_leaving_the_image_is_padded():
    volume = np.zeros((20, 20, 3), np.float32)
    volume[0:20, 15:20, :] = 1.0  # foreground touching the border, tall and thin
    geometry = fit_geometry(volume > 0, axis=2, size=16)
    slices = crop_slices(volume, geometry, fill=-1.0)
    assert slices.shape == (3, 16, 16)
    assert slices.min() == pytest.approx(-1.0, abs=1e-5)  # padding was filled
    assert uncrop_slices(slices, geometry, fill=0).shape == volume.shape


def test_normalization_is_invertible_and_recorded():
    rng = np.random.default_rng(1)
    volume = np.zeros((30, 30, 30), np.float32)
    volume[5:25, 5:25, 5:25] = rng.uniform(100, 900, (20, 20, 20))
    foreground = volume > 0
    norm = fit_normalization(volume, foreground, "mr")
    scaled = norm.apply(volume)
    assert scaled.min() >= -1 and scaled.max() <= 1
    inside = (volume >= norm.lo) & (volume <= norm.hi)
    np.testing.assert_allclose(norm.invert(scaled)[inside], volume[inside], rtol=1e-5, atol=1e-3)
    assert Normalization.from_dict(norm.to_dict()) == norm
    ct = fit_normalization(volume - 1000, foreground, "ct")
    assert (ct.lo, ct.hi) == (-1000.0, 2000.0)
    assert modality_kind("CT") == "ct" and modality_kind("t2") == "mr"
    with pytest.raises(SynthmedError, match="constant"):
        fit_normalization(np.full((5, 5, 5), 7.0, np.float32), np.ones((5, 5, 5), bool), "mr")
    median = median_normalization([Normalization("mr", 0, 10), Normalization("mr", 2, 30), Normalization("mr", 1, 20)])
    assert (median.lo, median.hi) == (1.0, 20.0)


def test_split_is_by_patient_reproducible_and_respects_fixed():
    ids = [f"sub-{i:02d}" for i in range(10)] + ["TCGA-DU-7294", "TCGA_DU_7294_19890104"]
    group = lambda s: "TCGA-DU-7294" if s.startswith("TCGA") else s  # noqa: E731
    a = split_subjects(ids, (0.7, 0.1, 0.2), seed=3, group_of=group)
    b = split_subjects(ids, (0.7, 0.1, 0.2), seed=3, group_of=group)
    assert a == b
    assert sorted(sum(a.values(), [])) == sorted(ids)
    where = {s: name for name, members in a.items() for s in members}
    assert where["TCGA-DU-7294"] == where["TCGA_DU_7294_19890104"]
    assert len(a["val"]) >= 1 and len(a["test"]) >= 1
    fixed = split_subjects(ids, (0.7, 0.1, 0.2), seed=3, group_of=group, fixed={"sub-00": "test"})
    assert "sub-00" in fixed["test"]
    assert parse_ratios("7,1,2") == pytest.approx((0.7, 0.1, 0.2))
    with pytest.raises(SynthmedError):
        parse_ratios("0.5,0.5")


def _pair(source_range: float, target_lo: float, target_hi: float) -> tuple:
    from synthmed.data.normalize import Normalization

    return Normalization("mr", 0.0, source_range), Normalization("mr", target_lo, target_hi)


def test_scale_follows_the_inputs_gain_when_the_training_pairs_do():
    """Each subject's scans carry one gain and offset (raw units at one site, rescaled at another): the affine
    model predicts a held-out subject's target scale, the median cannot."""
    from synthmed.data.normalize import Normalization, fit_target_scale

    # one gain and offset per subject, applied to both of its scans (raw units, rescaled, z-scored-like)
    subjects = [(0.01, 0.0), (1.0, 0.0), (3.0, 5.0), (50.0, -900.0), (0.005, -4.0)]
    pairs = [
        (Normalization("mr", 20 * g + b, 720 * g + b), Normalization("mr", -5 * g + b, 2095 * g + b))
        for g, b in subjects
    ]
    scale = fit_target_scale(pairs)
    assert scale.model == "affine" and scale.loo_error["affine"] < 1e-6 < scale.loo_error["median"]
    predicted = scale.predict(Normalization("mr", 20 * 7.0 - 3.0, 720 * 7.0 - 3.0))
    assert predicted.lo == pytest.approx(-5 * 7.0 - 3.0) and predicted.hi == pytest.approx(2095 * 7.0 - 3.0)


def test_scale_stays_the_training_median_when_the_input_range_says_nothing():
    from synthmed.data.normalize import Normalization, fit_target_scale

    rng = np.random.default_rng(0)
    pairs = [_pair(float(r), 0.0, 2000.0 + float(n)) for r, n in zip(rng.uniform(300, 1500, 8), rng.normal(0, 50, 8))]
    scale = fit_target_scale(pairs)
    assert scale.model == "median" and scale.loo_error["median"] < scale.loo_error["affine"]
    assert scale.predict(Normalization("mr", 0.0, 9999.0)).hi == pytest.approx(np.median([t.hi for _, t in pairs]))
    few = fit_target_scale([_pair(100.0 * g, 0.0, 300.0 * g) for g in (1.0, 5.0)])
    assert few.model == "median" and few.subjects == 2  # two pairs cannot tell the models apart


def test_translate_without_a_reference_takes_the_inputs_scale(phantoms, tmp_path):
    """Phantom subjects whose T1 and T2 share a per-subject gain: without --reference the output of a held-out
    subject, scanned at another gain, lands on that subject's scale (the training median would not)."""
    import shutil

    import nibabel as nib

    from synthmed.data.prepare import prepare
    from synthmed.workflows.train import train
    from synthmed.workflows.translate import translate

    data = tmp_path / "data"
    subjects = sorted(p for p in phantoms.iterdir() if p.is_dir())
    for subject, gain in zip(subjects, (1.0, 3.0, 10.0, 0.5, 30.0, 2.0)):
        (data / subject.name).mkdir(parents=True)
        for name in ("T1.nii.gz", "T2.nii.gz"):
            image = nib.load(subject / name)
            nib.save(
                nib.Nifti1Image((image.get_fdata() * gain).astype(np.float32), image.affine), data / subject.name / name
            )
    prep = prepare(data, source="T1", target="T2", out=tmp_path / "prep", size=32, split="0.67,0,0.33", progress=False)
    plan = json.loads((prep / "plan.json").read_text())
    assert plan["target_scale"]["model"] == "affine", plan["target_scale"]
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
    held_out = plan["split"]["test"][0]
    shutil.copytree(data / held_out, tmp_path / "new")
    for name in ("T1.nii.gz", "T2.nii.gz"):  # the same subject from a scanner with 100 times the gain
        image = nib.load(tmp_path / "new" / name)
        nib.save(nib.Nifti1Image((image.get_fdata() * 100).astype(np.float32), image.affine), tmp_path / "new" / name)
    out = translate(run, tmp_path / "new" / "T1.nii.gz", tmp_path / "pred.nii.gz", progress=False)[0]
    true_hi = np.percentile(nib.load(tmp_path / "new" / "T2.nii.gz").get_fdata(), 99.5)
    predicted_hi = np.percentile(nib.load(out).get_fdata(), 99.5)
    assert 0.5 < predicted_hi / true_hi < 2.0, (predicted_hi, true_hi)
    assert plan["reference_normalization"]["t2"]["hi"] / true_hi < 0.2  # the median scale: far off
