"""Foreground (body or brain) masks of scans: the Otsu threshold, connected components and hole filling.

Data preparation needs them (the crop box, the intensity statistics, the input fingerprint), translation (the clean
background outside the head) and evaluation (scores inside the reference's foreground). They run on whole volumes
of any size, so the component labelling works in slabs of planes and never holds a label array of the whole volume.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from synthmed.errors import SynthmedError

# foreground_mask parameters
_CONSTANT_BACKGROUND_FRACTION = 0.01  # share of voxels at one exact value that marks padding / stripping
_FALLBACK_FRACTION = 0.05  # threshold = lo + this * (robust max - lo) when Otsu fails
_OTSU_BINS = 256
_RIM_VOXELS = 5  # skull-stripped test: every non-padding voxel lies within this of the Otsu mask
_RIM_TOLERANCE = 0.01
_CT_PADDING_HU = -1000.0  # a constant background at or below this is CT padding outside the field of view
_COUNT_CHUNK = 1 << 22  # voxels per np.bincount call in _component_sizes
_SLAB_VOXELS = 1 << 20  # voxels per slab of planes labelled at once (_components, _select, _fill_planes)
_CLOSING_ITERATIONS = 2
_MIN_COMPONENT_FRACTION = 0.01  # components smaller than this share of the largest are dropped


def _shape(shape) -> str:
    return "x".join(map(str, shape)) if shape else "scalar"


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


def _slabs(length: int, plane_voxels: int) -> list[slice]:
    """Consecutive ranges of planes (of ``plane_voxels`` voxels each) with about :data:`_SLAB_VOXELS` voxels in
    each range, covering ``0..length``."""
    step = max(1, _SLAB_VOXELS // max(plane_voxels, 1))
    return [slice(start, min(start + step, length)) for start in range(0, length, step)]


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Face-connected components of ``mask`` (what ``ndimage.label(mask)`` finds), without a label array of the
    whole mask: ``ndimage.label`` runs on slabs of planes along the first axis, and labels that touch across a
    slab boundary are joined (``connected_components`` of the graph of touching labels).

    Slab labels are numbered globally (a slab's label + the labels of the slabs before it; 0 is the background).
    Returns ``component``, the component of every global label, and ``sizes``, the voxels of every component
    (``sizes[0] = 0``: the background). Components are numbered by their smallest global label, i.e. by their
    first voxel in C order, which is how ``ndimage.label`` numbers them: the argmax of ``sizes`` is the component
    ``ndimage.label`` would have given the lowest label among the largest ones. :func:`_select` maps the slabs back.
    """
    slab_sizes = [np.zeros(1, dtype=np.int64)]  # global label 0: the background
    pairs: list[np.ndarray] = []  # (label before, label after) touching across a slab boundary, once each
    total = 0  # global labels so far
    last_plane = None  # global labels of the previous slab's last plane
    for planes in _slabs(mask.shape[0], mask[0].size):
        labels, count = ndimage.label(mask[planes])
        slab_sizes.append(_component_sizes(labels, count)[1:])
        if last_plane is not None:
            touching = (last_plane > 0) & (labels[0] > 0)
            code = np.unique(last_plane[touching] * (count + 1) + labels[0][touching])  # a pair as one number
            pairs.append(np.stack([code // (count + 1), code % (count + 1) + total], axis=1))
        last_plane = np.where(labels[-1] > 0, labels[-1].astype(np.int64) + total, 0)
        total += count
    sizes = np.concatenate(slab_sizes)
    if not pairs:  # one slab: its labels are the components
        return np.arange(total + 1), sizes
    edges = np.concatenate(pairs)
    graph = coo_matrix((np.ones(len(edges), dtype=bool), (edges[:, 0], edges[:, 1])), shape=(total + 1, total + 1))
    # Undirected components are numbered in the order of their smallest node: node 0, the background, stays 0.
    _, component = connected_components(graph, directed=False)
    return component, np.bincount(component, weights=sizes).astype(np.int64)


def _select(mask: np.ndarray, component: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """The voxels of ``mask`` whose component (see :func:`_components`) has ``keep[component]`` True: each slab
    labelled again (``ndimage.label`` is deterministic) and looked up slab by slab."""
    out = np.empty(mask.shape, dtype=bool)
    total = 0
    for planes in _slabs(mask.shape[0], mask[0].size):
        labels, count = ndimage.label(mask[planes])
        table = np.zeros(count + 1, dtype=bool)  # label 0: background
        table[1:] = keep[component[total + 1 : total + count + 1]]
        out[planes] = table[labels]
        total += count
    return out


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest face-connected component of ``mask`` (the first in C order among equally large ones); ``mask``
    itself when it has at most one."""
    component, sizes = _components(mask)
    if sizes.size <= 2:
        return mask
    return _select(mask, component, np.arange(sizes.size) == int(np.argmax(sizes)))


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
    labelling the background with in-plane connectivity finds them for many planes at once
    (a slab of planes at a time: the planes are independent, and a label array of the
    whole mask is not needed).
    """
    structure = np.zeros((3,) * mask.ndim, dtype=bool)
    centre = [slice(None)] * mask.ndim
    centre[axis] = 1
    structure[tuple(centre)] = ndimage.generate_binary_structure(mask.ndim - 1, 1)
    out = np.empty(mask.shape, dtype=bool)
    for planes in _slabs(mask.shape[axis], mask.size // max(mask.shape[axis], 1)):
        index = tuple(planes if i == axis else slice(None) for i in range(mask.ndim))
        part = mask[index]
        labels, count = ndimage.label(~part, structure=structure)
        if count == 0:
            out[index] = part
            continue
        outside = np.zeros(count + 1, dtype=bool)
        for other in range(mask.ndim):
            if other != axis:
                outside[np.take(labels, [0, -1], axis=other).ravel()] = True
        outside[0] = True  # label 0 is the foreground itself
        out[index] = part | ~outside[labels]
    return out


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
    A half-resolution voxel is set when any of its (up to) 2^ndim voxels is: the OR of the
    2^ndim strided sub-grids, without a padded copy of ``mask``.
    """
    ndim = mask.ndim
    half = np.zeros([(n + 1) // 2 for n in mask.shape], dtype=bool)
    for offsets in itertools.product((0, 1), repeat=ndim):
        grid = mask[tuple(slice(o, None, 2) for o in offsets)]
        half[tuple(slice(0, n) for n in grid.shape)] |= grid
    half = _fill_slicewise(half) if ndim == 2 else _fill_planes(half, ndim - 1)
    half = ndimage.maximum_filter(half, size=3)
    half = _largest_component(half)
    out = np.empty(mask.shape, dtype=bool)
    others = [np.arange(n) // 2 for n in mask.shape[1:]]
    for planes in _slabs(mask.shape[0], mask[0].size):
        out[planes] = mask[planes] & half[np.ix_(np.arange(planes.start, planes.stop) // 2, *others)]
    return out


def _drop_small(mask: np.ndarray) -> np.ndarray:
    """``mask`` without the components under :data:`_MIN_COMPONENT_FRACTION` of the largest one."""
    component, sizes = _components(mask)
    if sizes.size <= 2:  # at most one component
        return mask
    return _select(mask, component, sizes >= _MIN_COMPONENT_FRACTION * sizes.max())


def _clean(mask: np.ndarray, close: bool = True) -> np.ndarray:
    """Main group of components (see :func:`_main_group`) without specks, closed
    (optionally), holes filled in every plane."""
    if not mask.any():
        return mask
    group = _main_group(mask)
    # Everything below happens inside the group's box plus a margin (so that the
    # background around it stays connected); nothing outside it can change.
    box = _box(group, _CLOSING_ITERATIONS + 1)
    part = _drop_small(group[box])
    del group  # each step below holds only what it needs: box-sized masks
    if close:
        part = _close(part)
    filled = _fill_slicewise(part)
    del part
    out = np.zeros(mask.shape, dtype=bool)
    out[box] = filled
    return out


def _sample(values: np.ndarray, limit: int = 2_000_000) -> np.ndarray:
    """Every k-th value of ``values`` in C order (``values.ravel()[::k]``), at most about ``limit``; a copy of
    the sample only (``ravel`` would copy a whole Fortran-ordered volume first)."""
    step = max(1, values.size // limit)
    return values.flat[::step]


def _above(v: np.ndarray, level: float, finite: np.ndarray | None) -> np.ndarray:
    """``finite & (v > level)``; ``finite`` None means every voxel is finite (no second mask needed)."""
    above = v > level
    if finite is not None:
        above &= finite
    return above


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


def _count_outside(inside: np.ndarray, grown: np.ndarray) -> int:
    """``np.count_nonzero(inside & ~grown)``, counted slab by slab (no two more masks of the whole box)."""
    return sum(int(np.count_nonzero(inside[planes] & ~grown[planes])) for planes in _slabs(len(inside), inside[0].size))


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
    if finite.all():
        finite = None  # the usual case: no mask of finite voxels is kept
    if threshold is not None:
        return _clean(_above(v, float(threshold), finite))

    values = v if finite is None else v[finite]  # all voxels (any shape) or the finite ones (1D)
    if values.size == 0:
        return np.zeros(v.shape, dtype=bool)
    sample = _sample(values).astype(np.float64)
    if sample.min() == sample.max():  # constant (at least on the sample)
        if values.min() == values.max():
            return np.zeros(v.shape, dtype=bool)
        sample = np.ravel(values).astype(np.float64)
    del values
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
    del sample
    mask = _clean(_above(v, t, finite))
    if not mask.any():
        mask = _clean(_above(v, lo + _FALLBACK_FRACTION * (hi - lo), finite))

    if b is not None and mask.any():
        differs = v != b
        if finite is not None:
            differs &= finite
        other = _largest_component(differs)
        del differs
        box = _box(other | mask, 1)
        inside = other[box]
        grown = ndimage.binary_dilation(mask[box], iterations=_RIM_VOXELS, mask=inside)
        if _count_outside(inside, grown) <= _RIM_TOLERANCE * np.count_nonzero(inside):
            del inside, grown
            other |= mask  # ``other`` is this function's own array: the union, in place
            del mask
            mask = _clean(other, close=False)
    return mask
