"""Image-quality metrics and the foreground mask (synthmed.metrics)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from synthmed.data.foreground import foreground_mask
from synthmed.errors import SynthmedError
from synthmed.metrics import (
    PSNR_CAP_DB,
    image_metrics,
    mae,
    max_normalised,
    nmse,
    psnr,
    ssim,
    summarize,
)

# --------------------------------------------------------------------------- phantoms


def _ellipsoid(shape, centre, radii) -> np.ndarray:
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii)) <= 1.0


def _smooth_image(shape, seed=0) -> np.ndarray:
    """A structured image in [0, 1]: blobs and edges, so SSIM has something to measure."""
    rng = np.random.default_rng(seed)
    image = np.zeros(shape)
    for _ in range(12):
        centre = [rng.uniform(0.2, 0.8) * n for n in shape]
        radii = [rng.uniform(0.08, 0.3) * n for n in shape]
        image[_ellipsoid(shape, centre, radii)] += rng.uniform(0.2, 1.0)
    image += 0.05 * rng.standard_normal(shape)
    image -= image.min()
    return image / image.max()


def _head(shape=(64, 64, 40), seed=0, noise=8.0):
    """Non-stripped MR-like head: tissue ~100, dark ventricles, Rician noise background."""
    rng = np.random.default_rng(seed)
    centre = [n / 2 for n in shape]
    body = _ellipsoid(shape, centre, [0.38 * shape[0], 0.3 * shape[1], 0.4 * shape[2]])
    ventricles = _ellipsoid(shape, centre, [0.1 * shape[0], 0.06 * shape[1], 0.12 * shape[2]])
    volume = np.where(body, 100.0 + 10.0 * rng.standard_normal(shape), 0.0)
    volume[ventricles] = 12.0
    background = np.abs(noise * rng.standard_normal(shape) + 1j * noise * rng.standard_normal(shape))
    return np.where(body, volume, background), body, ventricles


def _ct(shape=(72, 72, 32), seed=0, padding=-1024.0):
    """CT-like volume in HU: padding outside a circular field of view, air, a body with a
    bone rim and an air-filled (lung-like) pocket, and a table well below the body."""
    rng = np.random.default_rng(seed)
    centre = [n / 2 for n in shape]
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    disc = (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= (0.49 * shape[0]) ** 2
    fov = np.broadcast_to(disc[..., None], shape)
    body = _ellipsoid(shape, centre, [0.25 * shape[0], 0.36 * shape[1], 0.7 * shape[2]])
    soft = _ellipsoid(shape, centre, [0.21 * shape[0], 0.32 * shape[1], 0.7 * shape[2]])
    lung = _ellipsoid(shape, [centre[0], centre[1] - 0.15 * shape[1], centre[2]], [0.08, 0.08, 0.4] * np.array(shape))
    volume = np.full(shape, padding)
    volume[fov] = -1000.0 + 10.0 * rng.standard_normal(np.count_nonzero(fov))
    volume[body] = 900.0 + 50.0 * rng.standard_normal(np.count_nonzero(body))
    volume[soft] = 40.0 + 20.0 * rng.standard_normal(np.count_nonzero(soft))
    volume[lung] = -850.0 + 30.0 * rng.standard_normal(np.count_nonzero(lung))
    table = np.zeros(shape, dtype=bool)
    table[int(0.88 * shape[0]) : int(0.88 * shape[0]) + 2, 12:-12] = True
    volume[table & fov] = 300.0
    return volume, body, lung


def _stripped(shape=(64, 64, 40), seed=0):
    """Skull-stripped brain: background exactly 0, a dark CSF rim at the surface that
    Otsu alone would cut away, and a few negative voxels (bias correction) inside."""
    rng = np.random.default_rng(seed)
    centre = [n / 2 for n in shape]
    radii = np.array([0.35, 0.28, 0.38]) * shape
    brain = _ellipsoid(shape, centre, radii)
    white = _ellipsoid(shape, centre, 0.75 * radii)
    rim = brain & ~_ellipsoid(shape, centre, radii - 2)
    volume = np.zeros(shape)
    volume[brain] = 60.0 + 5.0 * rng.standard_normal(np.count_nonzero(brain))
    volume[white] = 100.0 + 5.0 * rng.standard_normal(np.count_nonzero(white))
    volume[rim] = 15.0 + 5.0 * rng.random(np.count_nonzero(rim))
    inside = np.flatnonzero(white)
    volume.flat[rng.choice(inside, 20, replace=False)] = -5.0
    return volume, brain


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


# --------------------------------------------------------------------------- PSNR, MAE, NMSE


def test_psnr_closed_form_on_known_noise():
    rng = np.random.default_rng(1)
    ref = rng.random((40, 50, 6))
    ref.flat[0], ref.flat[1] = 0.0, 2.0  # data range exactly 2
    # Noise of fixed magnitude s: the MSE is exactly s^2.
    s = 0.05
    pred = ref + s * rng.choice([-1.0, 1.0], size=ref.shape)
    assert psnr(pred, ref) == pytest.approx(20 * math.log10(2.0 / s), abs=1e-9)
    assert psnr(pred, ref, data_range=1.0) == pytest.approx(20 * math.log10(1.0 / s), abs=1e-9)
    assert mae(pred, ref) == pytest.approx(s)
    assert nmse(pred, ref) == pytest.approx(s**2 * ref.size / np.sum(ref**2))
    # Gaussian noise: PSNR ~ 20 log10(L / sigma).
    noise = 0.1 * rng.standard_normal(ref.shape)
    assert psnr(ref + noise, ref) == pytest.approx(10 * math.log10(4.0 / np.mean(noise**2)), abs=1e-9)
    assert psnr(ref + noise, ref) == pytest.approx(20 * math.log10(2.0 / 0.1), abs=0.25)


def test_identical_images_are_perfect():
    ref = _smooth_image((48, 40, 8))
    assert psnr(ref, ref) == math.inf
    assert mae(ref, ref) == 0.0
    assert nmse(ref, ref) == 0.0
    assert ssim(ref, ref) == pytest.approx(1.0, abs=1e-12)
    assert ssim(ref, ref, mode="3d") == pytest.approx(1.0, abs=1e-12)
    metrics = image_metrics(ref.copy(), ref)
    expected = {
        "psnr": math.inf,
        "ssim": pytest.approx(1.0),
        "ssim3d": pytest.approx(1.0),
        "mae": 0.0,
        "nmse": 0.0,
        "psnr_dz": math.inf,
        "ssim_fit": pytest.approx(1.0),
    }
    assert metrics.pop("psnr_fit") > 120  # the least-squares line is the identity up to float rounding
    assert metrics == expected


def test_data_range_convention_and_symmetry():
    rng = np.random.default_rng(2)
    a = _smooth_image((40, 40, 6), seed=2)
    b = 0.8 * a + 0.05 * rng.standard_normal(a.shape)
    # Default data range comes from ref (inside the mask), so swapping the images changes PSNR ...
    assert psnr(a, b) != pytest.approx(psnr(b, a))
    assert psnr(a, b) == pytest.approx(psnr(a, b, data_range=b.max() - b.min()))
    mask = np.zeros(a.shape, dtype=bool)
    mask[10:30, 10:30] = True
    assert psnr(a, b, mask) == pytest.approx(psnr(a, b, mask, data_range=np.ptp(b[mask])))
    # ... while with an explicit data range PSNR, SSIM and MAE are symmetric.
    assert psnr(a, b, data_range=1.0) == pytest.approx(psnr(b, a, data_range=1.0))
    assert ssim(a, b, data_range=1.0) == pytest.approx(ssim(b, a, data_range=1.0))
    assert mae(a, b) == pytest.approx(mae(b, a))
    # Scaling both images scales the default data range with them: PSNR/SSIM/NMSE unchanged.
    assert psnr(1000 * a, 1000 * b) == pytest.approx(psnr(a, b))
    assert ssim(1000 * a, 1000 * b) == pytest.approx(ssim(a, b))
    assert nmse(1000 * a, 1000 * b) == pytest.approx(nmse(a, b))


# --------------------------------------------------------------------------- SSIM


@pytest.mark.parametrize("mode", ["2d", "3d"])
def test_ssim_decreases_monotonically_with_noise(mode):
    rng = np.random.default_rng(3)
    ref = _smooth_image((48, 48, 12), seed=3)
    noise = rng.standard_normal(ref.shape)
    values = [ssim(ref + level * noise, ref, data_range=1.0, mode=mode) for level in (0.0, 0.01, 0.03, 0.1, 0.3, 1.0)]
    assert values[0] == pytest.approx(1.0)
    assert all(later < earlier for earlier, later in zip(values, values[1:])), values
    assert values[-1] < 0.2


def test_ssim_matches_skimage():
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(4)
    ref = _smooth_image((64, 80), seed=4)
    pred = ref + 0.1 * rng.standard_normal(ref.shape)
    options = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    for data_range in (1.0, 2.0, float(ref.max() - ref.min())):
        mean, full = metrics.structural_similarity(pred, ref, data_range=data_range, full=True, **options)
        # Our unmasked SSIM averages the whole map; skimage's score leaves out a 5-pixel border.
        assert ssim(pred, ref, data_range=data_range) == pytest.approx(full.mean(), abs=1e-3)
        interior = np.zeros(ref.shape, dtype=bool)
        interior[5:-5, 5:-5] = True
        assert ssim(pred, ref, interior, data_range=data_range) == pytest.approx(mean, abs=1e-3)
        # In fact the maps are the same filter, so they agree far more closely than 1e-3.
        assert ssim(pred, ref, data_range=data_range) == pytest.approx(full.mean(), abs=1e-9)

    # mode "3d" is skimage's 3D Gaussian SSIM; mode "2d" averages skimage's per-slice maps.
    ref3 = _smooth_image((32, 36, 14), seed=5)
    pred3 = ref3 + 0.1 * rng.standard_normal(ref3.shape)
    _, full3 = metrics.structural_similarity(pred3, ref3, data_range=1.0, full=True, **options)
    assert ssim(pred3, ref3, data_range=1.0, mode="3d") == pytest.approx(full3.mean(), abs=1e-6)
    per_slice = [
        metrics.structural_similarity(pred3[..., k], ref3[..., k], data_range=1.0, full=True, **options)[1]
        for k in range(ref3.shape[-1])
    ]
    assert ssim(pred3, ref3, data_range=1.0, mode="2d") == pytest.approx(np.mean(per_slice), abs=1e-6)


def test_ssim_slice_axis_and_window():
    rng = np.random.default_rng(6)
    ref = _smooth_image((30, 34, 10), seed=6)
    pred = ref + 0.1 * rng.standard_normal(ref.shape)
    moved = (np.moveaxis(pred, -1, 0), np.moveaxis(ref, -1, 0))
    assert ssim(*moved, data_range=1.0, axis=0) == pytest.approx(ssim(pred, ref, data_range=1.0))
    assert image_metrics(*moved, axis=0)["ssim"] == pytest.approx(image_metrics(pred, ref)["ssim"])
    # A 2D image: both modes are the same 2D SSIM.
    assert ssim(pred[..., 0], ref[..., 0], mode="3d") == pytest.approx(ssim(pred[..., 0], ref[..., 0]))
    # A truncated window is a different (but valid) SSIM; the window size must be odd.
    small = ssim(pred, ref, data_range=1.0, win_size=7)
    assert 0 < small < 1 and small != pytest.approx(ssim(pred, ref, data_range=1.0), abs=1e-6)
    with pytest.raises(SynthmedError, match="win_size"):
        ssim(pred, ref, win_size=8)
    with pytest.raises(SynthmedError, match="mode"):
        ssim(pred, ref, mode="4d")
    with pytest.raises(SynthmedError, match="axis"):
        ssim(pred, ref, axis=3)


# --------------------------------------------------------------------------- masks


def test_mask_restricts_every_metric():
    rng = np.random.default_rng(7)
    ref = _smooth_image((48, 48, 16), seed=7)
    mask = np.zeros(ref.shape, dtype=bool)
    mask[14:34, 14:34, 4:12] = True
    # Error only outside the mask, beyond the SSIM window (5 voxels) from it.
    far = np.ones(ref.shape, dtype=bool)
    far[8:40, 8:40, :] = False
    pred = ref + np.where(far, rng.standard_normal(ref.shape), 0.0)
    metrics = image_metrics(pred, ref, mask)
    assert metrics["psnr"] == math.inf and metrics["mae"] == 0.0 and metrics["nmse"] == 0.0
    assert metrics["ssim"] == pytest.approx(1.0, abs=1e-12)
    assert metrics["ssim3d"] == pytest.approx(1.0, abs=1e-12)
    assert image_metrics(pred, ref)["psnr"] < 20  # the same images without the mask
    # Error just outside the mask: pointwise metrics ignore it, SSIM's window sees it.
    near = ref.copy()
    near[13, 14:34, 4:12] += 0.5
    assert psnr(near, ref, mask) == math.inf
    assert ssim(near, ref, mask) < 1.0
    # An error inside the mask counts.
    inside = ref.copy()
    inside[20, 20, 6] += 0.3
    assert mae(inside, ref, mask) == pytest.approx(0.3 / mask.sum())
    # The mask sets the default data range: the reference's range inside it.
    assert psnr(inside, ref, mask) == pytest.approx(10 * math.log10(np.ptp(ref[mask]) ** 2 / (0.09 / mask.sum())))


def test_invalid_inputs_raise_synthmed_error():
    a = np.zeros((8, 8, 4))
    b = np.ones((8, 8, 4))
    with pytest.raises(SynthmedError, match="shape"):
        psnr(a, np.zeros((8, 8, 5)))
    with pytest.raises(SynthmedError, match="shape"):
        image_metrics(a, b, np.ones((8, 8), dtype=bool))
    with pytest.raises(SynthmedError, match="empty mask"):
        mae(a, b, np.zeros(a.shape, dtype=bool))
    with pytest.raises(SynthmedError, match="empty mask"):
        ssim(a, b, np.zeros(a.shape, dtype=bool))
    with pytest.raises(SynthmedError, match="data range"):
        psnr(a, b)  # ref constant: no default data range
    assert psnr(a, b, data_range=1.0) == pytest.approx(0.0)
    with pytest.raises(SynthmedError, match="NMSE"):
        nmse(b, a)
    bad = b.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(SynthmedError, match="non-finite"):
        mae(bad, b)
    with pytest.raises(SynthmedError, match="data_range"):
        psnr(a, b, data_range=0)
    with pytest.raises(SynthmedError, match="shape"):
        max_normalised(a, np.zeros((4, 8, 8)))


# --------------------------------------------------------------------------- summaries


def test_summarize_mean_sd_and_inf_psnr():
    per_subject = {
        "a": {"psnr": 30.0, "ssim": 0.90, "mae": 1.0},
        "b": {"psnr": 32.0, "ssim": 0.92, "mae": 3.0},
        "c": {"psnr": 34.0, "ssim": 0.94},
    }
    summary = summarize(per_subject)
    assert set(summary) == {"mean", "sd"}
    assert summary["mean"]["psnr"] == pytest.approx(32.0)
    assert summary["sd"]["psnr"] == pytest.approx(np.std([30, 32, 34], ddof=1))
    assert summary["mean"]["ssim"] == pytest.approx(0.92)
    assert summary["mean"]["mae"] == pytest.approx(2.0)  # over the subjects that have it
    assert summary["sd"]["mae"] == pytest.approx(math.sqrt(2.0))

    capped = summarize({"a": {"psnr": math.inf, "mae": 0.0}, "b": {"psnr": 40.0, "mae": 1.0}})
    assert capped["mean"]["psnr"] == pytest.approx((PSNR_CAP_DB + 40.0) / 2)
    assert math.isfinite(capped["sd"]["psnr"])
    assert capped["capped"] == {"psnr": 1}

    assert summarize({"only": {"psnr": 25.0}}) == {"mean": {"psnr": 25.0}, "sd": {"psnr": 0.0}}
    with pytest.raises(SynthmedError):
        summarize({})
    with pytest.raises(SynthmedError, match="non-finite"):
        summarize({"a": {"ssim": math.nan}})


def test_max_normalised_divides_each_slice_by_its_own_max():
    rng = np.random.default_rng(8)
    ref = rng.random((16, 12, 5)) * np.arange(1, 6)
    pred = rng.random((16, 12, 5)) * 3
    pred[..., 2] = 0.0  # an empty slice stays empty
    p, r = max_normalised(pred, ref)
    assert p.shape == r.shape == ref.shape
    np.testing.assert_allclose(r.max(axis=(0, 1)), 1.0)
    np.testing.assert_allclose(p.max(axis=(0, 1)), [1, 1, 0, 1, 1])
    np.testing.assert_allclose(r[..., 3], ref[..., 3] / ref[..., 3].max())
    p0, r0 = max_normalised(np.moveaxis(pred, -1, 0), np.moveaxis(ref, -1, 0), axis=0)
    np.testing.assert_allclose(np.moveaxis(r0, 0, -1), r)
    p2, r2 = max_normalised(pred[..., 0], ref[..., 0])
    assert p2.max() == pytest.approx(1.0) and r2.max() == pytest.approx(1.0)


# --------------------------------------------------------------------------- foreground


@pytest.mark.parametrize("dtype", [np.float32, np.int16])
def test_foreground_mask_head_with_noise_background(dtype):
    volume, body, ventricles = _head()
    mask = foreground_mask(volume.round().astype(dtype) if dtype is np.int16 else volume.astype(dtype))
    assert mask.dtype == bool and mask.shape == volume.shape
    assert _dice(mask, body) > 0.98
    assert mask[ventricles].all()  # dark interior filled
    assert not mask[:3].any() and not mask[:, :3].any()  # no noise specks in the background
    # A 2D slice works the same way.
    k = volume.shape[-1] // 2
    assert _dice(foreground_mask(volume[..., k]), body[..., k]) > 0.98


def test_foreground_mask_keeps_scalp_beyond_a_dark_skull():
    shape = (96, 96)
    centre = (48, 48)
    head = _ellipsoid(shape, centre, (40, 34))
    skull = head & ~_ellipsoid(shape, centre, (36, 30))
    brain = _ellipsoid(shape, centre, (33, 27))
    rng = np.random.default_rng(9)
    image = np.where(head, 90.0, 0.0) + 5 * rng.standard_normal(shape) ** 2
    image[skull & ~brain] = 90.0
    image[_ellipsoid(shape, centre, (36, 30)) & ~brain] = 5.0  # dark skull, 3 pixels thick
    mask = foreground_mask(image)
    assert _dice(mask, head) > 0.97


@pytest.mark.parametrize("padding", [-1024.0, -2048.0, -3024.0])
def test_foreground_mask_ct_in_hu(padding):
    volume, body, lung = _ct(padding=padding)
    mask = foreground_mask(volume)
    assert _dice(mask, body) > 0.98
    assert mask[lung].all()  # air inside the body is filled
    table_rows = slice(int(0.88 * volume.shape[0]), int(0.88 * volume.shape[0]) + 2)
    assert not mask[table_rows].any()  # the table is not part of the patient
    assert not mask[volume == padding].any()


def test_foreground_mask_skull_stripped_is_everything_above_background():
    volume, brain = _stripped()
    mask = foreground_mask(volume)
    np.testing.assert_array_equal(mask, brain)  # including the dark CSF rim and negative voxels
    k = volume.shape[-1] // 2
    np.testing.assert_array_equal(foreground_mask(volume[..., k]), brain[..., k])
    # Intensity-normalised copy ([-1, 1], background -1) behaves the same.
    normalised = np.where(brain, volume / 50.0 - 1.0, -1.0)
    np.testing.assert_array_equal(foreground_mask(normalised), brain)


def test_foreground_mask_threshold_and_edge_cases():
    volume, body, _ = _head()
    assert _dice(foreground_mask(volume, threshold=50.0), body) > 0.98
    assert not foreground_mask(volume, threshold=1e9).any()
    assert not foreground_mask(np.full((10, 10, 10), 7.0)).any()  # constant: nothing to find
    with_nan = volume.copy()
    with_nan[:2] = np.nan
    assert _dice(foreground_mask(with_nan), body) > 0.98
    with pytest.raises(SynthmedError, match="2D image or a 3D volume"):
        foreground_mask(np.zeros((4, 4, 4, 4)))


@pytest.mark.parametrize("mode", ["2d", "3d"])
def test_ssim_in_slabs_equals_ssim_at_once(monkeypatch, mode):
    import synthmed.metrics.image as image

    rng = np.random.default_rng(10)
    ref = _smooth_image((40, 36, 30), seed=10)
    pred = ref + 0.1 * rng.standard_normal(ref.shape)
    mask = _ellipsoid(ref.shape, (20, 18, 15), (15, 12, 13))
    whole = ssim(pred, ref, mask, mode=mode), ssim(pred, ref, mode=mode)
    monkeypatch.setattr(image, "_SSIM_CHUNK_VOXELS", 3000)  # slabs of 2-3 slices
    assert ssim(pred, ref, mask, mode=mode) == pytest.approx(whole[0], abs=1e-12)
    assert ssim(pred, ref, mode=mode) == pytest.approx(whole[1], abs=1e-12)
