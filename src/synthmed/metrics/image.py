"""Image-quality metrics of a synthesised volume against its reference, inside a mask.

All functions take numpy arrays (2D images or 3D volumes, any real dtype; computed in
float64) in the same units, normally the reference's (intensity-restored volumes).

Conventions
-----------
- ``mask``: voxels to average over; ``None`` means every voxel. A mask of another shape
  or with no voxel raises :class:`SynthmedError`, and so do non-finite values inside it.
- ``data_range`` (PSNR and SSIM): by default the reference's range inside the mask,
  ``ref[mask].max() - ref[mask].min()``. Because it comes from ``ref``, swapping ``pred``
  and ``ref`` changes PSNR/SSIM unless ``data_range`` is given explicitly; with an
  explicit ``data_range`` both are symmetric in their two images.
- SSIM (Wang et al. 2004): Gaussian window, sigma 1.5, truncated at 3.5 sigma (11 taps,
  the same filter as ``skimage.metrics.structural_similarity(gaussian_weights=True,
  use_sample_covariance=False)``), K1 = 0.01, K2 = 0.03, image borders handled by
  reflection. The SSIM map is averaged over the mask voxels; the local statistics near
  the mask edge use the neighbouring voxels outside it (as the whole-image metric would).
  ``mode="2d"`` filters each 2D slice along ``axis`` (default: the last axis) separately,
  ``mode="3d"`` uses a 3D window; on a 2D image both are the same.
- :func:`summarize` caps PSNR at :data:`PSNR_CAP_DB` (an identical prediction gives an
  infinite PSNR that would make the mean infinite); it reports how many values were
  capped under a ``'capped'`` key.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from scipy import ndimage

from synthmed.errors import SynthmedError

log = logging.getLogger(__name__)

__all__ = [
    "PSNR_CAP_DB",
    "image_metrics",
    "mae",
    "max_normalised",
    "nmse",
    "psnr",
    "ssim",
    "summarize",
]

SSIM_K1 = 0.01
SSIM_K2 = 0.03
SSIM_TRUNCATE = 3.5
PSNR_CAP_DB = 100.0

# --------------------------------------------------------------------------- checks


def _as_array(array, name: str) -> np.ndarray:
    """``array`` as a real numeric ndarray, without copying (metrics convert to float64 later)."""
    out = np.asarray(array)
    if out.dtype == bool:
        return out.astype(np.uint8)
    if out.dtype.kind not in "iuf":
        raise SynthmedError(f"{name} is not a real numeric array (dtype {out.dtype})")
    return out


def _f64(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float64, copy=False)


def _prepare(pred, ref, mask) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``pred``/``ref`` as arrays and a boolean mask, all checked."""
    p = _as_array(pred, "pred")
    r = _as_array(ref, "ref")
    if p.shape != r.shape:
        raise SynthmedError(
            f"pred has shape {_shape(p.shape)} but ref has shape {_shape(r.shape)}: "
            "metrics need the two images on the same grid"
        )
    if mask is None:
        m = np.ones(r.shape, dtype=bool)
    else:
        m = np.asarray(mask)
        if m.shape != r.shape:
            raise SynthmedError(f"mask has shape {_shape(m.shape)} but the images have shape {_shape(r.shape)}")
        m = m.astype(bool, copy=False)
    if r.size == 0 or not m.any():
        raise SynthmedError("empty mask: no voxel to compute the metric on")
    for name, a in (("pred", p), ("ref", r)):
        bad = int(np.count_nonzero(~np.isfinite(a[m])))
        if bad:
            raise SynthmedError(f"{name} has {bad} non-finite values (NaN/inf) inside the mask")
    return p, r, m


def _shape(shape) -> str:
    return "x".join(map(str, shape)) if shape else "scalar"


def _range(r: np.ndarray, m: np.ndarray, data_range) -> float:
    if data_range is not None:
        value = float(data_range)
        if not value > 0 or not math.isfinite(value):
            raise SynthmedError(f"data_range must be a positive number, got {data_range!r}")
        return value
    values = r[m]
    value = float(values.max()) - float(values.min())
    if not value > 0:
        raise SynthmedError(
            f"ref is constant ({float(values[0]):g}) inside the mask, so its data range is 0; "
            "pass data_range explicitly"
        )
    return value


# --------------------------------------------------------------------------- pointwise metrics


def _psnr_from_mse(mse: float, peak: float) -> float:
    return math.inf if mse == 0.0 else float(10.0 * math.log10(peak * peak / mse))


def _nmse(error_energy: float, ref_values: np.ndarray) -> float:
    energy = float(np.sum(ref_values**2))
    if energy == 0.0:
        raise SynthmedError("ref is zero everywhere inside the mask: NMSE is undefined")
    return error_energy / energy


def psnr(pred, ref, mask=None, data_range=None) -> float:
    """Peak signal-to-noise ratio in dB: ``10 log10(data_range^2 / MSE)``, MSE inside the mask.

    ``inf`` when ``pred`` equals ``ref`` inside the mask. ``data_range`` defaults to the
    reference's range inside the mask (see the module docstring on symmetry).
    """
    p, r, m = _prepare(pred, ref, mask)
    mse = float(np.mean((_f64(p[m]) - r[m]) ** 2))
    return math.inf if mse == 0.0 else _psnr_from_mse(mse, _range(r, m, data_range))


def mae(pred, ref, mask=None) -> float:
    """Mean absolute error inside the mask (in the images' units)."""
    p, r, m = _prepare(pred, ref, mask)
    return float(np.mean(np.abs(_f64(p[m]) - r[m])))


def nmse(pred, ref, mask=None) -> float:
    """Normalised mean squared error ``||pred - ref||^2 / ||ref||^2`` inside the mask."""
    p, r, m = _prepare(pred, ref, mask)
    ref_values = _f64(r[m])
    return _nmse(float(np.sum((_f64(p[m]) - ref_values) ** 2)), ref_values)


# --------------------------------------------------------------------------- SSIM


def _ssim_radius(sigma: float, win_size: int | None) -> int:
    radius = int(SSIM_TRUNCATE * sigma + 0.5)
    if win_size is not None:
        if int(win_size) != win_size or win_size < 3 or win_size % 2 == 0:
            raise SynthmedError(f"win_size must be an odd integer >= 3, got {win_size!r}")
        radius = min(radius, (int(win_size) - 1) // 2)
    return radius


_SSIM_CHUNK_VOXELS = 4_000_000  # volumes are processed in slabs of about this many voxels


def _ssim_map(x: np.ndarray, y: np.ndarray, peak: float, sigmas: tuple[float, ...], radius: int) -> np.ndarray:
    """The SSIM map of two float64 arrays (both are overwritten)."""
    c1 = (SSIM_K1 * peak) ** 2
    c2 = (SSIM_K2 * peak) ** 2
    truncate = radius / max(sigmas)  # the same number of taps along every filtered axis

    def blur(a: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(a, sigma=sigmas, truncate=truncate, mode="reflect", output=a)

    # In place: every temporary is a full-size float64 array.
    sxx = blur(np.square(x))
    syy = blur(np.square(y))
    sxy = blur(np.multiply(x, y))
    mu_x = blur(x)
    mu_y = blur(y)
    mu_xy = mu_x * mu_y
    mu_xx = np.square(mu_x, out=mu_x)
    mu_yy = np.square(mu_y, out=mu_y)
    sxx -= mu_xx
    syy -= mu_yy
    sxy -= mu_xy
    numerator = mu_xy
    numerator *= 2.0
    numerator += c1
    sxy *= 2.0
    sxy += c2
    numerator *= sxy
    denominator = mu_xx
    denominator += mu_yy
    denominator += c1
    sxx += syy
    sxx += c2
    denominator *= sxx
    numerator /= denominator
    return numerator


def _ssim_map_mean(p, r, m, peak: float, sigmas: tuple[float, ...], radius: int) -> float:
    """Mean of the SSIM map over ``m``.

    Only the mask's bounding box plus the window radius is filtered, in slabs (along the
    unfiltered slice axis in 2D mode, else along axis 0 with ``radius`` slices of
    overlap): the map at a mask voxel depends only on voxels within ``radius`` along the
    filtered axes, so the values are the same as filtering the whole volume at once,
    with a bounded amount of memory.
    """
    box = []
    for axis, s in enumerate(sigmas):
        extent = np.flatnonzero(np.any(m, axis=tuple(i for i in range(m.ndim) if i != axis)))
        margin = radius if s > 0 else 0
        box.append(slice(max(int(extent[0]) - margin, 0), min(int(extent[-1]) + margin + 1, m.shape[axis])))
    p, r, m = p[tuple(box)], r[tuple(box)], m[tuple(box)]

    flat = [i for i, s in enumerate(sigmas) if s == 0]
    axis = flat[0] if flat else 0
    overlap = 0 if flat else radius
    n = m.shape[axis]
    step = max(1, _SSIM_CHUNK_VOXELS // max(1, m.size // n))
    total, count = 0.0, 0

    def along(start: int, stop: int) -> tuple[slice, ...]:
        index = [slice(None)] * m.ndim
        index[axis] = slice(start, stop)
        return tuple(index)

    for start in range(0, n, step):
        stop = min(start + step, n)
        inside = m[along(start, stop)]
        if not inside.any():
            continue
        lo, hi = max(start - overlap, 0), min(stop + overlap, n)
        x = p[along(lo, hi)].astype(np.float64)
        y = r[along(lo, hi)].astype(np.float64)
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            raise SynthmedError("ssim: pred or ref has non-finite values (NaN/inf) within the window around the mask")
        values = _ssim_map(x, y, peak, sigmas, radius)[along(start - lo, stop - lo)]
        total += float(values[inside].sum())
        count += int(np.count_nonzero(inside))
    return total / count


def _ssim_sigmas(ndim: int, mode: str, sigma, axis: int) -> tuple[float, ...]:
    if ndim not in (2, 3):
        raise SynthmedError(f"ssim needs a 2D image or a 3D volume, got {ndim} dimensions")
    if mode not in ("2d", "3d"):
        raise SynthmedError(f"ssim mode must be '2d' or '3d', got {mode!r}")
    sigma = float(sigma)
    if not sigma > 0:
        raise SynthmedError(f"ssim sigma must be positive, got {sigma!r}")
    sigmas = [sigma] * ndim
    if mode == "2d" and ndim == 3:
        if not -3 <= axis < 3:
            raise SynthmedError(f"ssim axis {axis} is out of range for a 3D volume")
        sigmas[axis] = 0.0
    return tuple(sigmas)


def ssim(pred, ref, mask=None, data_range=None, mode="2d", win_size=None, sigma=1.5, *, axis: int = -1) -> float:
    """Structural similarity (Wang et al. 2004), the SSIM map averaged over the mask voxels.

    ``mode="2d"``: each 2D slice along ``axis`` (default the last axis) is filtered on
    its own; ``mode="3d"``: a 3D Gaussian window. ``win_size=None`` keeps the standard
    window (Gaussian truncated at 3.5 sigma: 11 taps for sigma 1.5); an odd ``win_size``
    truncates the Gaussian to at most that many taps. ``data_range`` as for :func:`psnr`.
    """
    p, r, m = _prepare(pred, ref, mask)
    sigmas = _ssim_sigmas(p.ndim, mode, sigma, axis)
    radius = _ssim_radius(max(sigmas), win_size)
    return _ssim_map_mean(p, r, m, _range(r, m, data_range), sigmas, radius)


# --------------------------------------------------------------------------- bundles


def image_metrics(pred, ref, mask=None, data_range=None, *, axis: int = -1) -> dict[str, float]:
    """``{'psnr', 'ssim' (slice-wise along axis), 'ssim3d', 'mae', 'nmse', 'psnr_fit', 'ssim_fit'[, 'psnr_dz']}``
    inside the mask.

    ``psnr_fit``/``ssim_fit`` score the prediction after the least-squares line ``a * pred + b`` onto the reference
    inside the mask (:func:`linear_fit`): scale-free scores, which rank methods apart from how well the output's
    intensity scale was guessed (a translation without a reference has to guess it). ``psnr_dz``
    (:func:`through_plane_psnr`) compares the differences between neighbouring slices along ``axis``: slice-by-slice
    translation that flickers from slice to slice (stripes in sagittal and coronal views) scores low on it even when
    every slice scores well on its own; it is left out for a single slice.
    The same as calling each function, with the inputs checked and converted once.
    """
    p, r, m = _prepare(pred, ref, mask)
    peak = _range(r, m, data_range)
    ref_values = _f64(r[m])
    error = _f64(p[m]) - ref_values
    squared = float(np.sum(error**2))
    radius = _ssim_radius(1.5, None)
    fitted = _linear_fit(p, r, m)
    fitted_error = _f64(fitted[m]) - ref_values
    result = {
        "psnr": _psnr_from_mse(squared / error.size, peak),
        "ssim": _ssim_map_mean(p, r, m, peak, _ssim_sigmas(p.ndim, "2d", 1.5, axis), radius),
        "ssim3d": _ssim_map_mean(p, r, m, peak, _ssim_sigmas(p.ndim, "3d", 1.5, axis), radius),
        "mae": float(np.mean(np.abs(error))),
        "nmse": _nmse(squared, ref_values),
        "psnr_fit": _psnr_from_mse(float(np.mean(fitted_error**2)), peak),
        "ssim_fit": _ssim_map_mean(fitted, r, m, peak, _ssim_sigmas(p.ndim, "2d", 1.5, axis), radius),
    }
    through = _through_plane_psnr(p, r, m, peak, axis)
    if through is not None:
        result["psnr_dz"] = through
    return result


def linear_fit(pred, ref, mask=None) -> np.ndarray:
    """``a * pred + b`` with the least-squares ``a``, ``b`` that bring ``pred`` closest to ``ref`` inside the mask
    (a constant prediction gets ``a = 0``, ``b`` = the reference's mean); float32, the whole image."""
    return _linear_fit(*_prepare(pred, ref, mask))


def _linear_fit(p: np.ndarray, r: np.ndarray, m: np.ndarray) -> np.ndarray:
    x, y = _f64(p[m]), _f64(r[m])
    x_mean, y_mean = float(x.mean()), float(y.mean())
    variance = float(np.mean((x - x_mean) ** 2))
    slope = float(np.mean((x - x_mean) * (y - y_mean))) / variance if variance > 0 else 0.0
    return (slope * (_f64(p) - x_mean) + y_mean).astype(np.float32)


def through_plane_psnr(pred, ref, mask=None, data_range=None, *, axis: int = -1) -> float | None:
    """PSNR of the slice-to-slice differences along ``axis`` (where both neighbours lie in the mask), with the
    reference's range as peak, as :func:`psnr`; None for fewer than two slices."""
    p, r, m = _prepare(pred, ref, mask)
    return _through_plane_psnr(p, r, m, _range(r, m, data_range), axis)


def _through_plane_psnr(p: np.ndarray, r: np.ndarray, m: np.ndarray, peak: float, axis: int) -> float | None:
    if p.ndim < 3 or p.shape[axis] < 2:
        return None
    both = np.logical_and(np.delete(m, -1, axis=axis), np.delete(m, 0, axis=axis))
    if not both.any():
        return None
    difference = np.diff(_f64(p), axis=axis)[both] - np.diff(_f64(r), axis=axis)[both]
    return _psnr_from_mse(float(np.mean(difference**2)), peak)


def summarize(per_subject: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean and sample SD (ddof 1; 0.0 for a single subject) of each metric over subjects.

    ``{'mean': {metric: value}, 'sd': {metric: value}}``; a metric missing for some
    subjects is summarised over those that have it. PSNR values (keys containing
    ``'psnr'``) above :data:`PSNR_CAP_DB`, including ``inf`` for identical images, are
    capped at it, and the result then also has ``'capped': {metric: count}``. Any other
    non-finite value raises :class:`SynthmedError`.
    """
    if not per_subject:
        raise SynthmedError("no subjects to summarise")
    columns: dict[str, list[float]] = {}
    capped: dict[str, float] = {}
    for subject, metrics in per_subject.items():
        for key, value in metrics.items():
            value = float(value)
            if "psnr" in key.lower() and value > PSNR_CAP_DB:
                capped[key] = capped.get(key, 0.0) + 1.0
                value = PSNR_CAP_DB
            if not math.isfinite(value):
                raise SynthmedError(f"subject {subject}: {key} = {value}; cannot summarise a non-finite metric")
            columns.setdefault(key, []).append(value)
    result: dict[str, dict[str, float]] = {"mean": {}, "sd": {}}
    for key, values in columns.items():
        a = np.asarray(values, dtype=np.float64)
        result["mean"][key] = float(a.mean())
        result["sd"][key] = float(a.std(ddof=1)) if a.size > 1 else 0.0
    if capped:
        log.warning(
            "PSNR capped at %g dB for %s (identical images give an infinite PSNR)",
            PSNR_CAP_DB,
            ", ".join(f"{int(n)} value(s) of {k}" for k, n in capped.items()),
        )
        result["capped"] = capped
    return result


def max_normalised(pred, ref, *, axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """Each 2D slice (along ``axis``, default last) of each image divided by its own maximum.

    The SynDiff test-code convention (images in [0, 1], every slice scaled so its maximum
    is 1, separately for prediction and reference), to compare with published tables.
    It presumes non-negative intensities; a slice whose maximum is <= 0 is left as is.
    A 2D input is one slice. Returns float64 copies.
    """
    p = _f64(_as_array(pred, "pred"))
    r = _f64(_as_array(ref, "ref"))
    if p.shape != r.shape:
        raise SynthmedError(f"pred has shape {_shape(p.shape)} but ref has shape {_shape(r.shape)}")
    if p.ndim not in (2, 3):
        raise SynthmedError(f"max_normalised needs a 2D image or a 3D volume, got shape {_shape(p.shape)}")

    if p.ndim == 3 and not -3 <= axis < 3:
        raise SynthmedError(f"max_normalised axis {axis} is out of range for a 3D volume")
    others = tuple(i for i in range(p.ndim) if p.ndim == 2 or i != axis % 3)

    def scale(a: np.ndarray) -> np.ndarray:
        peak = np.max(a, axis=others, keepdims=True)
        return a / np.where(peak > 0, peak, 1.0)

    return scale(p), scale(r)
