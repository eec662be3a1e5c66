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
    "foreground_mask",
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

# foreground_mask parameters
_CONSTANT_BACKGROUND_FRACTION = 0.01  # share of voxels at one exact value that marks padding / stripping
_FALLBACK_FRACTION = 0.05  # threshold = lo + this * (robust max - lo) when Otsu fails
_OTSU_BINS = 256
_RIM_VOXELS = 5  # skull-stripped test: every non-padding voxel lies within this of the Otsu mask
_RIM_TOLERANCE = 0.01
_CT_PADDING_HU = -1000.0  # a constant background at or below this is CT padding outside the field of view
_COUNT_CHUNK = 1 << 22  # voxels per np.bincount call in _component_sizes
_CLOSING_ITERATIONS = 2
_MIN_COMPONENT_FRACTION = 0.01  # components smaller than this share of the largest are dropped


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
    """``{'psnr', 'ssim' (slice-wise along axis), 'ssim3d', 'mae', 'nmse'}`` inside the mask.

    The same as calling each function, with the inputs checked and converted once.
    """
    p, r, m = _prepare(pred, ref, mask)
    peak = _range(r, m, data_range)
    ref_values = _f64(r[m])
    error = _f64(p[m]) - ref_values
    squared = float(np.sum(error**2))
    radius = _ssim_radius(1.5, None)
    return {
        "psnr": _psnr_from_mse(squared / error.size, peak),
        "ssim": _ssim_map_mean(p, r, m, peak, _ssim_sigmas(p.ndim, "2d", 1.5, axis), radius),
        "ssim3d": _ssim_map_mean(p, r, m, peak, _ssim_sigmas(p.ndim, "3d", 1.5, axis), radius),
        "mae": float(np.mean(np.abs(error))),
        "nmse": _nmse(squared, ref_values),
    }


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
        log.warning("PSNR capped at %g dB for %s (identical images give an infinite PSNR)", PSNR_CAP_DB,
                    ", ".join(f"{int(n)} value(s) of {k}" for k, n in capped.items()))
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


# --------------------------------------------------------------------------- foreground


def _otsu(values: np.ndarray, lo: float, hi: float) -> float | None:
    """Otsu threshold of ``values`` on a histogram over [lo, hi]; None when undefined."""
    if not hi > lo:
        return None
    counts, edges = np.histogram(np.clip(values, lo, hi), bins=_OTSU_BINS, range=(lo, hi))
    counts = counts.astype(np.float64)
    centres = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(counts)[:-1]
    w1 = counts.sum() - w0
    s0 = np.cumsum(counts * centres)[:-1]
    s1 = (counts * centres).sum() - s0
    valid = (w0 > 0) & (w1 > 0)
    if not valid.any():
        return None
    between = np.zeros_like(w0)
    between[valid] = w0[valid] * w1[valid] * (s0[valid] / w0[valid] - s1[valid] / w1[valid]) ** 2
    best = int(np.argmax(between))
    if between[best] <= 0:
        return None
    return float(edges[best + 1])


def _component_sizes(labels: np.ndarray, count: int) -> np.ndarray:
    """Voxels per label 0..count, with the background's (label 0) set to 0. Counted in chunks: ``np.bincount`` of
    the whole int32 label volume would first copy it to int64 (two volumes of float32 memory for nothing)."""
    sizes = np.zeros(count + 1, dtype=np.int64)
    flat = labels.reshape(-1)
    for start in range(0, flat.size, _COUNT_CHUNK):
        sizes += np.bincount(flat[start : start + _COUNT_CHUNK], minlength=count + 1)
    sizes[0] = 0
    return sizes


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask
    return labels == int(np.argmax(_component_sizes(labels, count)))


def _box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """Bounding box of a non-empty mask, grown by ``margin`` voxels and clipped to the array."""
    box = []
    for axis in range(mask.ndim):
        extent = np.flatnonzero(np.any(mask, axis=tuple(i for i in range(mask.ndim) if i != axis)))
        box.append(slice(max(int(extent[0]) - margin, 0), min(int(extent[-1]) + margin + 1, mask.shape[axis])))
    return tuple(box)


def _fill_planes(mask: np.ndarray, axis: int) -> np.ndarray:
    """Fill the holes of every 2D plane normal to ``axis`` of a 3D mask.

    A hole is a background region of a plane that does not reach the plane's border;
    labelling the background with in-plane connectivity finds them for all planes at once.
    """
    structure = np.zeros((3,) * mask.ndim, dtype=bool)
    centre = [slice(None)] * mask.ndim
    centre[axis] = 1
    structure[tuple(centre)] = ndimage.generate_binary_structure(mask.ndim - 1, 1)
    labels, count = ndimage.label(~mask, structure=structure)
    if count == 0:
        return mask.copy()
    outside = np.zeros(count + 1, dtype=bool)
    for other in range(mask.ndim):
        if other != axis:
            outside[np.take(labels, [0, -1], axis=other).ravel()] = True
    outside[0] = True  # label 0 is the foreground itself
    return mask | ~outside[labels]


def _fill_slicewise(mask: np.ndarray) -> np.ndarray:
    """Fill the holes of every 2D plane along every axis (of a 2D mask: its holes)."""
    if mask.ndim == 2:
        return ndimage.binary_fill_holes(mask)
    for axis in range(mask.ndim):
        mask = _fill_planes(mask, axis)
    return mask


def _close(mask: np.ndarray) -> np.ndarray:
    """Binary closing that never removes a voxel (the array border does not erode it)."""
    pad = _CLOSING_ITERATIONS
    padded = np.pad(mask, pad)
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    closed = ndimage.binary_closing(padded, structure=structure, iterations=_CLOSING_ITERATIONS)
    return mask | closed[tuple(slice(pad, -pad) for _ in range(mask.ndim))]


def _main_group(mask: np.ndarray) -> np.ndarray:
    """The voxels of ``mask`` in its largest group of components (holes filled along the
    last axis, gaps of up to about 5 voxels bridged), found on a half-resolution grid.

    Scalp and brain, separated by a dark skull, are one group, so a head is not reduced
    to its brain; a CT table a few centimetres away and noise specks are not part of it.
    """
    ndim = mask.ndim
    even = np.pad(mask, [(0, n % 2) for n in mask.shape])
    half = even.reshape([x for n in even.shape for x in (n // 2, 2)]).any(axis=tuple(range(1, 2 * ndim, 2)))
    half = _fill_slicewise(half) if ndim == 2 else _fill_planes(half, ndim - 1)
    half = ndimage.maximum_filter(half, size=3)
    labels, count = ndimage.label(half)
    if count > 1:
        half = labels == int(np.argmax(_component_sizes(labels, count)))
    return mask & half[np.ix_(*[np.arange(n) // 2 for n in mask.shape])]


def _drop_small(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = _component_sizes(labels, count)
    return (sizes >= _MIN_COMPONENT_FRACTION * sizes.max())[labels]


def _clean(mask: np.ndarray, close: bool = True) -> np.ndarray:
    """Main group of components (see :func:`_main_group`) without specks, closed
    (optionally), holes filled in every plane."""
    if not mask.any():
        return mask
    mask = _main_group(mask)
    # Everything below happens inside the group's box plus a margin (so that the
    # background around it stays connected); nothing outside it can change.
    box = _box(mask, _CLOSING_ITERATIONS + 1)
    part = _drop_small(mask[box])
    if close:
        part = _close(part)
    out = np.zeros(mask.shape, dtype=bool)
    out[box] = _fill_slicewise(part)
    return out


def _sample(values: np.ndarray, limit: int = 2_000_000) -> np.ndarray:
    step = max(1, values.size // limit)
    return values[::step]


def _padding_value(sample: np.ndarray) -> float | None:
    """The value of an exactly constant background (padding, skull stripping), if any.

    The most frequent value, when it holds at least 1% of the voxels and lies at the low
    end of the others (at or below their 5th percentile; skull-stripped brains after bias
    correction have a few negative voxels inside the brain, below the zero background).
    """
    values, counts = np.unique(_sample(sample, 500_000), return_counts=True)
    total = counts.sum()
    top = int(np.argmax(counts))
    if counts[top] < _CONSTANT_BACKGROUND_FRACTION * total or counts[top] == total:
        return None
    b = values[top]
    if b > np.percentile(sample[sample != b], 5.0):
        return None
    return float(b)


def foreground_mask(volume: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Boolean mask of the body / brain in a 2D image or 3D volume.

    Voxels above a threshold; then the largest connected component, where components
    a few voxels apart count as one (a dark skull must not split scalp from brain: see
    :func:`_main_group`) and specks under 1% of the largest are dropped; a small closing
    (2 iterations of the face-connected element, never removing a voxel); and holes
    filled in every 2D plane along every axis.

    Default threshold: Otsu's on the intensity histogram (between the minimum and the
    99.9th percentile). A "padding value" is one exact value at the low end held by at
    least 1% of the voxels: 0 around skull-stripped or zero-filled MR, -1024/-2048/-3024
    outside a CT field of view. CT padding (at or below -1000) is first given the 1st
    percentile of the other voxels (air), so that Otsu separates air from tissue rather
    than padding from everything else. If every voxel that differs from the padding
    value lies within 5 voxels of the Otsu mask (a skull-stripped brain, whose dark CSF
    and grey matter Otsu may leave out), the mask is all voxels that differ from the
    padding value instead (same clean-up, no closing). If Otsu is undefined, the
    threshold is ``min + 0.05 * (99.9th percentile - min)``. A constant volume gives an
    empty mask; NaN voxels are background.
    """
    v = np.asarray(volume)
    if v.ndim not in (2, 3):
        raise SynthmedError(f"foreground_mask needs a 2D image or a 3D volume, got shape {_shape(v.shape)}")
    if v.dtype == bool:
        v = v.astype(np.uint8)
    if v.dtype.kind not in "iuf":
        raise SynthmedError(f"foreground_mask needs a real numeric volume, got dtype {v.dtype}")
    finite = np.isfinite(v)
    all_finite = bool(finite.all())
    if threshold is not None:
        return _clean(finite & (v > float(threshold)))

    values = v.ravel() if all_finite else v[finite]
    if values.size == 0:
        return np.zeros(v.shape, dtype=bool)
    sample = _sample(values).astype(np.float64)
    if sample.min() == sample.max():  # constant (at least on the sample)
        if values.min() == values.max():
            return np.zeros(v.shape, dtype=bool)
        sample = values.astype(np.float64)
    b = _padding_value(sample)
    if b is not None and b <= _CT_PADDING_HU:
        sample = np.where(sample == b, np.percentile(sample[sample != b], 1.0), sample)
    lo = float(sample.min())
    hi = float(np.percentile(sample, 99.9))
    if not hi > lo:
        hi = float(sample.max())
    t = _otsu(sample, lo, hi)
    if t is None:
        t = lo + _FALLBACK_FRACTION * (hi - lo)
    mask = _clean(finite & (v > t))
    if not mask.any():
        mask = _clean(finite & (v > lo + _FALLBACK_FRACTION * (hi - lo)))

    if b is not None and mask.any():
        other = _largest_component(finite & (v != b))
        box = _box(other | mask, 1)
        inside = other[box]
        grown = ndimage.binary_dilation(mask[box], iterations=_RIM_VOXELS, mask=inside)
        if np.count_nonzero(inside & ~grown) <= _RIM_TOLERANCE * np.count_nonzero(inside):
            mask = _clean(other | mask, close=False)
    return mask
