"""Evaluation protocols: one function per published convention, each scoring one subject.

A number is only comparable with a published table when it is computed the way the table's authors computed it:
which voxels, which intensity window, which data range, which SSIM window. Each function here reproduces one
convention and returns ``{metric: value}`` for one prediction/reference pair:

- :func:`toolkit_scores`: the toolkit's own (:func:`synthmed.metrics.image.image_metrics`): target units, inside
  the mask, PSNR/SSIM data range = the reference's range inside the mask.
- :func:`max_normalised_scores`: SynDiff's test code (per-slice max normalisation, whole slices).
- :func:`synthrad2023_scores`: the SynthRAD2023 challenge (sCT in HU; MAE, PSNR, SSIM in a body mask).
- :func:`synthrad2025_scores`: the SynthRAD2025 challenge (sCT in HU; MAE, PSNR, masked MS-SSIM).

SynthRAD: what the official code does, and what we follow
---------------------------------------------------------
Read from the challenge repositories' evaluation code (``SynthRAD2023/metrics``, ``functions/image_metrics.py``,
commit fe7e385 "non-negative and masked SSIM fix"; ``SynthRAD2025/evaluation``, ``image_metrics.py``, commit
17cac47 "Change range of clipping"); the code below is our own, written from that description:

- MAE: ``sum(|gt - pred| * mask) / sum(mask)`` on the images as given (not clipped), in HU.
- PSNR: both images clipped to the window (SynthRAD2023 [-1024, 3000] HU, SynthRAD2025 [-1024, 3071] HU), the mask
  voxels taken out, ``10 log10(R^2 / MSE)`` with R the window's width (4024, 4095), not the reference's range.
- SSIM (2023): both images clipped to the window, every voxel outside the mask set to -1024, shifted by +1024 (so
  non-negative), then scikit-image's ``structural_similarity`` with its defaults on the 3D volume: a *uniform* 7x7x7
  window (``scipy.ndimage.uniform_filter(size=7)``, reflected at the borders), *sample* covariances (the window
  statistics scaled by N / (N - 1), N = 343), K1 = 0.01, K2 = 0.03, data range 4024. The SSIM map is averaged over the
  mask voxels that lie at least 3 voxels from every face of the volume (scikit-image crops that border before it
  averages, and the challenge code crops the mask likewise). This is not the toolkit's SSIM (Gaussian window, sigma
  1.5, population covariances): the two differ by a few hundredths on real scans, so do not mix them in one table.
- MS-SSIM (2025): the same clipping (to [-1024, 3071]), masking and shift, data range 4095; every dimension shorter
  than 97 voxels is padded to 97 by repeating its edge voxels (images and mask alike), so that five scales fit. At
  each of the five scales the same uniform 7x7x7 SSIM with sample covariances is split into luminance
  ``L = (2 mx my + C1) / (mx^2 + my^2 + C1)``, contrast ``C = (2 sx sy + C2) / (vx + vy + C2)`` and structure
  ``S = (vxy + C3) / (sx sy + C3)``, C3 = C2 / 2, each clipped below at 0 (and the variances at 0 inside the square
  roots), and the map ``L^w C^w S^w`` is averaged over the mask voxels 3 or more voxels from the faces; w are the
  weights of Wang, Simoncelli & Bovik (2003), (0.0448, 0.2856, 0.3001, 0.2363, 0.1333). The official code applies the
  *same* weight to the luminance term at every scale: it sets luminance-only-at-the-coarsest-scale weights only when
  no weights are passed, but overwrites the "no weights" value first. We follow what it computes, not the 2003 paper
  (which uses luminance at the coarsest scale only). Between scales both images are convolved with a 2x2x2 box of
  1/8 (``fftconvolve(..., mode='same')``: voxel i averages i - 1 and i, the voxel before index 0 being zero) and
  every other voxel is kept, starting at index 0; the mask is only subsampled (every other voxel). MS-SSIM is the
  product over scales of the masked means, each clipped to [0, 1].

Where ours differs from the official code, on purpose:

- We compute in float64. The official code runs on the arrays as read (float32 for SynthRAD2023's loader, the file's
  type for SynthRAD2025's), so SSIM can differ in the fourth or fifth decimal on large volumes.
- The box filter for downsampling is computed exactly (sums of neighbours), not through an FFT: the same values up to
  rounding (about 1e-12 of the intensity).
- The official SSIM/MS-SSIM of a mask voxel within 3 voxels of a face is not counted (cropping); where no mask voxel
  remains at some scale the official mean is NaN, we raise an error naming the scale.
- The official code indexes volumes x, y, z after SimpleITK's transpose; ours uses the file's voxel order (nibabel's
  i, j, k, which is the same order). Only the half-voxel shift of the downsampling box depends on the order.
- The challenge's helper in ``SynthRAD2023/metrics`` passes its SimpleITK mask image, not the array, to the SSIM; we
  use the mask array, as its code evidently intends.

Inputs are CT in HU and a body mask on the reference's grid; the functions check shapes and the mask, not the units.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy import ndimage

from synthmed.errors import SynthmedError
from synthmed.metrics.image import PSNR_CAP_DB, image_metrics, max_normalised, psnr, ssim

__all__ = [
    "LOWER_IS_BETTER",
    "PROTOCOLS",
    "PROTOCOL_TEXT",
    "SYNTHRAD2023_WINDOW",
    "SYNTHRAD2025_MS_SSIM_WEIGHTS",
    "SYNTHRAD2025_WINDOW",
    "max_normalised_scores",
    "score",
    "synthrad2023_scores",
    "synthrad2025_scores",
    "synthrad_ssim_uniform",
    "toolkit_scores",
]

SYNTHRAD2023_WINDOW = (-1024.0, 3000.0)  # HU: the fixed intensity window of the SynthRAD2023 evaluation
SYNTHRAD2025_WINDOW = (-1024.0, 3071.0)  # HU: SynthRAD2025's, widened to the 12-bit CT range
SYNTHRAD2025_MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang, Simoncelli & Bovik 2003, Eq. 7
SYNTHRAD_SSIM_WINDOW = 7  # scikit-image's default uniform window, which the SynthRAD code keeps
SYNTHRAD_MS_SSIM_SIZE = 97  # smallest side the SynthRAD2025 code pads every dimension to before the five scales
_K1, _K2 = 0.01, 0.03

LOWER_IS_BETTER = frozenset({"mae", "nmse"})  # every other score of a protocol is better when higher

PROTOCOL_TEXT = {
    "toolkit": "target units, inside the mask (given or reference foreground); PSNR data range = reference range "
    "in the mask; SSIM: Gaussian window sigma 1.5",
    "max-normalised": "SynDiff's test code: each axial slice that holds the mask, negatives clipped to 0, divided by "
    "its own maximum (prediction and reference separately); PSNR with data range 1 and 2D SSIM over the whole slice; "
    "mean over slices",
    "synthrad2023": "SynthRAD2023: CT in HU inside the body mask; MAE unclipped; PSNR of both clipped to [-1024, 3000] "
    "HU, data range 4024; SSIM 3D, uniform 7x7x7 window, sample covariance, outside the mask set to -1024, data range "
    "4024, mean over the mask 3+ voxels from the faces",
    "synthrad2025": "SynthRAD2025: CT in HU inside the body mask; MAE unclipped; PSNR of both clipped to [-1024, 3071] "
    "HU, data range 4095; masked MS-SSIM, 5 scales, weights (0.0448, 0.2856, 0.3001, 0.2363, 0.1333), uniform 7x7x7 "
    "window, data range 4095",
}
PROTOCOLS = tuple(PROTOCOL_TEXT)


# --------------------------------------------------------------------------- toolkit and max-normalised


def toolkit_scores(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
    """The toolkit's convention: :func:`synthmed.metrics.image.image_metrics` inside ``mask``."""
    return image_metrics(pred, ref, mask)


def max_normalised_scores(prediction: np.ndarray, reference: np.ndarray, head: np.ndarray) -> dict[str, float]:
    """PSNR and SSIM in the convention of SynDiff's test code, for comparison with published tables: every axial
    slice (last axis) that holds part of ``head``, negatives clipped to 0, divided by its own maximum (prediction
    and reference separately), scored over the whole slice (no mask) with data range 1; mean over those slices.

    ``head`` only chooses the slices: the published numbers count the background of each slice too."""
    keep = np.flatnonzero(np.asarray(head).any(axis=(0, 1)))
    if keep.size == 0:
        raise SynthmedError("max-normalised scores: the reference has no foreground slice")
    values: dict[str, list[float]] = {"psnr": [], "ssim": []}
    for z in keep:
        p, r = max_normalised(np.clip(prediction[..., z], 0, None), np.clip(reference[..., z], 0, None))
        values["psnr"].append(min(psnr(p, r, data_range=1.0), PSNR_CAP_DB))
        values["ssim"].append(ssim(p, r, data_range=1.0))
    return {k: float(np.mean(v)) for k, v in values.items()} | {"slices": int(keep.size)}


# --------------------------------------------------------------------------- SynthRAD building blocks


def _synthrad_inputs(pred, ref, mask, protocol: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float64 images and a boolean mask (``mask > 0``, as the challenge binarises it), checked."""
    if mask is None:
        raise SynthmedError(
            f"{protocol} scores inside the body mask the challenge provides with each CT: give it with --mask"
        )
    p = np.asarray(pred, dtype=np.float64)
    r = np.asarray(ref, dtype=np.float64)
    m = np.asarray(mask)
    if p.shape != r.shape or m.shape != r.shape:
        raise SynthmedError(
            f"{protocol}: prediction {p.shape}, reference {r.shape} and mask {m.shape} must have one shape"
        )
    if r.ndim != 3:
        raise SynthmedError(f"{protocol} scores 3D CT volumes; got {r.ndim} dimensions")
    m = m > 0
    if not m.any():
        raise SynthmedError(f"{protocol}: the mask is empty, no voxel to score")
    for name, a in (("prediction", p), ("reference", r)):
        if not np.isfinite(a).all():
            raise SynthmedError(f"{protocol}: the {name} has non-finite values (NaN/inf)")
    return p, r, m


def _masked_mae(p: np.ndarray, r: np.ndarray, m: np.ndarray) -> float:
    return float(np.mean(np.abs(p[m] - r[m])))


def _windowed_psnr(p: np.ndarray, r: np.ndarray, m: np.ndarray, window: tuple[float, float]) -> float:
    lo, hi = window
    mse = float(np.mean((np.clip(p[m], lo, hi) - np.clip(r[m], lo, hi)) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10((hi - lo) ** 2 / mse)


def _masked_shifted(a: np.ndarray, m: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Clipped to the window, the window's bottom outside the mask, shifted so the bottom is 0 (the challenge's
    SSIM input: the body alone, on a non-negative scale)."""
    lo, hi = window
    out = np.clip(a, lo, hi)
    out[~m] = lo
    out -= lo
    return out


SsimMap = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _uniform_ssim_map(peak: float, weight: float | None) -> SsimMap:
    """The map function of scikit-image's default SSIM (uniform window of 7, sample covariances) at data range
    ``peak``: the plain SSIM when ``weight`` is None, else SynthRAD2025's ``L^w C^w S^w`` with each term clipped at 0.
    """
    c1 = (_K1 * peak) ** 2
    c2 = (_K2 * peak) ** 2
    size = SYNTHRAD_SSIM_WINDOW

    def compute(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        def box(a: np.ndarray) -> np.ndarray:
            return ndimage.uniform_filter(a, size=size, mode="reflect")

        # Sample covariance: scikit-image's default, N / (N - 1) with N the voxels of the window.
        n = size**x.ndim
        norm = n / (n - 1.0)
        mx, my = box(x), box(y)
        vx = norm * (box(x * x) - mx * mx)
        vy = norm * (box(y * y) - my * my)
        vxy = norm * (box(x * y) - mx * my)
        if weight is None:
            return ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
        sx = np.sqrt(np.clip(vx, 0, None))
        sy = np.sqrt(np.clip(vy, 0, None))
        c3 = c2 / 2
        luminance = np.clip((2 * mx * my + c1) / (mx * mx + my * my + c1), 0, None)
        contrast = np.clip((2 * sx * sy + c2) / (vx + vy + c2), 0, None)
        structure = np.clip((vxy + c3) / (sx * sy + c3), 0, None)
        return (luminance * contrast * structure) ** weight

    return compute


_SLAB_VOXELS = 4_000_000  # volumes are filtered in slabs of about this many voxels to bound memory


def _map_mean(x: np.ndarray, y: np.ndarray, counted: np.ndarray, ssim_map: SsimMap) -> float:
    """Mean of ``ssim_map(x, y)`` over the ``counted`` voxels, without filtering the whole volume at once.

    The 7-voxel window reaches 3 voxels along each axis, so only the box around the counted voxels plus 3 voxels is
    needed, and it can be filtered in slabs along axis 0 with 3 slices of overlap: a kept voxel depends only on
    voxels inside its slab, and a slab's face is either interior (3+ voxels away from every kept voxel) or the
    volume's own face, where the reflection is the same as for the whole volume. The values are those of filtering
    the whole volume.
    """
    radius = SYNTHRAD_SSIM_WINDOW // 2
    box = []
    for axis in range(counted.ndim):
        extent = np.flatnonzero(np.any(counted, axis=tuple(i for i in range(counted.ndim) if i != axis)))
        box.append(slice(max(int(extent[0]) - radius, 0), min(int(extent[-1]) + radius + 1, counted.shape[axis])))
    x, y, counted = x[tuple(box)], y[tuple(box)], counted[tuple(box)]
    n = counted.shape[0]
    step = max(1, _SLAB_VOXELS // max(1, counted[0].size))
    total, count = 0.0, 0
    for start in range(0, n, step):
        stop = min(start + step, n)
        inside = counted[start:stop]
        if not inside.any():
            continue
        lo, hi = max(start - radius, 0), min(stop + radius, n)
        values = ssim_map(x[lo:hi], y[lo:hi])[start - lo : stop - lo]
        total += float(values[inside].sum())
        count += int(np.count_nonzero(inside))
    return total / count


def _away_from_faces(m: np.ndarray, pad: int) -> np.ndarray:
    """``m`` without the voxels within ``pad`` of a face: the border scikit-image crops before averaging."""
    counted = np.zeros_like(m)
    inner = tuple(slice(pad, s - pad) for s in m.shape)
    counted[inner] = m[inner]
    return counted


def synthrad_ssim_uniform(
    x: np.ndarray, y: np.ndarray, mask: np.ndarray, data_range: float, weight: float | None = None
) -> float:
    """Mean over ``mask`` (minus the 3-voxel border) of the uniform-window SSIM map of ``x`` and ``y`` as given (no
    clipping or shifting here): scikit-image's default SSIM, or with ``weight`` SynthRAD2025's weighted scale term.
    """
    m = np.asarray(mask, dtype=bool)
    if any(s < SYNTHRAD_SSIM_WINDOW for s in m.shape):
        raise SynthmedError(
            f"SSIM with a {SYNTHRAD_SSIM_WINDOW}-voxel window needs every side >= {SYNTHRAD_SSIM_WINDOW}; "
            f"the volume is {'x'.join(map(str, m.shape))}"
        )
    counted = _away_from_faces(m, SYNTHRAD_SSIM_WINDOW // 2)
    if not counted.any():
        raise SynthmedError(
            f"no mask voxel lies {SYNTHRAD_SSIM_WINDOW // 2}+ voxels from the volume's faces, where the SSIM is averaged"
        )
    return _map_mean(
        np.asarray(x, np.float64), np.asarray(y, np.float64), counted, _uniform_ssim_map(data_range, weight)
    )


# --------------------------------------------------------------------------- SynthRAD2023


def synthrad2023_scores(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None) -> dict[str, float]:
    """SynthRAD2023's image metrics of one synthetic CT against its CT, both in HU, inside the body mask:
    ``{'mae', 'psnr', 'ssim'}`` (see the module docstring for the exact definition we follow and where it differs).
    """
    p, r, m = _synthrad_inputs(pred, ref, mask, "synthrad2023")
    window = SYNTHRAD2023_WINDOW
    peak = window[1] - window[0]
    return {
        "mae": _masked_mae(p, r, m),
        "psnr": _windowed_psnr(p, r, m, window),
        "ssim": synthrad_ssim_uniform(_masked_shifted(p, m, window), _masked_shifted(r, m, window), m, peak),
    }


# --------------------------------------------------------------------------- SynthRAD2025


def _pad_to(a: np.ndarray, size: int) -> np.ndarray:
    """Every side shorter than ``size`` padded to it with edge values, split as the challenge code splits it (the
    smaller half before)."""
    widths = [(max((size - s) // 2, 0), max(size - s - (size - s) // 2, 0)) for s in a.shape]
    return np.pad(a, widths, mode="edge")


def _halve(a: np.ndarray) -> np.ndarray:
    """The challenge's downsampling: a 2x2x2 box average in which voxel i pairs with voxel i - 1 (zero before the
    first voxel; what ``fftconvolve(a, ones((2, 2, 2)) / 8, mode='same')`` computes), then every other voxel."""
    out = a
    for axis in range(a.ndim):
        shifted = np.zeros_like(out)
        index = [slice(None)] * a.ndim
        before = list(index)
        index[axis], before[axis] = slice(1, None), slice(None, -1)
        shifted[tuple(index)] = out[tuple(before)]
        out = (out + shifted) / 2
    return out[tuple(slice(None, None, 2) for _ in range(a.ndim))]


def synthrad2025_ms_ssim(
    x: np.ndarray,
    y: np.ndarray,
    mask: np.ndarray,
    data_range: float,
    weights: tuple[float, ...] = SYNTHRAD2025_MS_SSIM_WEIGHTS,
) -> float:
    """Masked MS-SSIM of two non-negative volumes as the SynthRAD2025 code computes it (see the module docstring):
    padding to 97 voxels a side, one weighted uniform-window SSIM per scale averaged over the mask, box
    downsampling between scales, the product of the scales' means clipped to [0, 1]."""
    m = np.asarray(mask, dtype=bool)
    x, y = (
        _pad_to(np.asarray(x, np.float64), SYNTHRAD_MS_SSIM_SIZE),
        _pad_to(np.asarray(y, np.float64), SYNTHRAD_MS_SSIM_SIZE),
    )
    m = _pad_to(m, SYNTHRAD_MS_SSIM_SIZE)
    product = 1.0
    for scale, weight in enumerate(weights):
        counted = _away_from_faces(m, SYNTHRAD_SSIM_WINDOW // 2)
        if not counted.any() or any(s < SYNTHRAD_SSIM_WINDOW for s in m.shape):
            raise SynthmedError(
                f"MS-SSIM: at scale {scale + 1} of {len(weights)} ({'x'.join(map(str, m.shape))} voxels) no mask voxel "
                f"lies {SYNTHRAD_SSIM_WINDOW // 2}+ voxels from the faces; the body mask is too small for 5 scales"
            )
        value = _map_mean(x, y, counted, _uniform_ssim_map(data_range, weight))
        product *= min(max(value, 0.0), 1.0)
        if scale + 1 < len(weights):
            x, y, m = _halve(x), _halve(y), m[::2, ::2, ::2]
    return float(product)


def synthrad2025_scores(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None) -> dict[str, float]:
    """SynthRAD2025's image metrics of one synthetic CT against its CT, both in HU, inside the body mask:
    ``{'mae', 'psnr', 'ms_ssim'}`` (see the module docstring for the exact definition we follow)."""
    p, r, m = _synthrad_inputs(pred, ref, mask, "synthrad2025")
    window = SYNTHRAD2025_WINDOW
    peak = window[1] - window[0]
    return {
        "mae": _masked_mae(p, r, m),
        "psnr": _windowed_psnr(p, r, m, window),
        "ms_ssim": synthrad2025_ms_ssim(_masked_shifted(p, m, window), _masked_shifted(r, m, window), m, peak),
    }


# --------------------------------------------------------------------------- dispatch


def score(protocol: str, pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None) -> dict[str, float]:
    """The scores of one subject under ``protocol`` (one of :data:`PROTOCOLS`)."""
    if protocol == "toolkit":
        return toolkit_scores(pred, ref, mask)
    if protocol == "max-normalised":
        head = np.ones(np.shape(ref), dtype=bool) if mask is None else mask
        return max_normalised_scores(np.asarray(pred), np.asarray(ref), head)
    if protocol == "synthrad2023":
        return synthrad2023_scores(pred, ref, mask)
    if protocol == "synthrad2025":
        return synthrad2025_scores(pred, ref, mask)
    raise SynthmedError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
