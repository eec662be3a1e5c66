"""Bounded-memory foreground mask and slab-wise translate: the same results as the whole-volume computations.

``foreground_mask`` labels connected components slab by slab (``_components``, ``_select``, ``_fill_planes``);
these tests compare it with a straightforward reference that labels the whole volume at once
(``ndimage.label``, written here), with slabs made small so that components cross many slab boundaries.
``translate_volume`` crops and uncrops slabs of slices (``crop_in_slabs``, ``uncrop_in_slabs``); they must
give exactly what ``crop_slices`` / ``uncrop_slices`` give on the whole stack.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from scipy import ndimage

import synthmed.data.foreground as foreground
import synthmed.workflows.translate as translate
from synthmed.data.geometry import SliceGeometry, crop_slices, uncrop_slices
from synthmed.data.normalize import Normalization
from synthmed.data.phantom import make_phantom

# --------------------------------------------------------------------------- reference (whole-volume labels)


def reference_components(mask: np.ndarray) -> tuple[np.ndarray, int, np.ndarray]:
    """Whole-volume labels, their count and each label's size (0 for the background)."""
    labels, count = ndimage.label(mask)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    sizes[0] = 0
    return labels, count, sizes


def reference_largest(mask: np.ndarray) -> np.ndarray:
    labels, count, sizes = reference_components(mask)
    return mask if count <= 1 else labels == int(np.argmax(sizes))


def reference_drop_small(mask: np.ndarray) -> np.ndarray:
    labels, count, sizes = reference_components(mask)
    return mask if count <= 1 else (sizes >= foreground._MIN_COMPONENT_FRACTION * sizes.max())[labels]


def reference_fill_planes(mask: np.ndarray, axis: int) -> np.ndarray:
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
    outside[0] = True
    return mask | ~outside[labels]


def reference_foreground(volume: np.ndarray, monkeypatch, **kwargs) -> np.ndarray:
    """``foreground_mask`` with every slab-wise labelling replaced by the whole-volume reference."""
    with monkeypatch.context() as patch:
        patch.setattr(foreground, "_largest_component", reference_largest)
        patch.setattr(foreground, "_drop_small", reference_drop_small)
        patch.setattr(foreground, "_fill_planes", reference_fill_planes)
        return foreground.foreground_mask(volume, **kwargs)


@pytest.fixture
def small_slabs(monkeypatch):
    """Slabs of a few hundred voxels: a plane or a few per slab, so components cross many boundaries."""
    monkeypatch.setattr(foreground, "_SLAB_VOXELS", 300)


def blobs(shape, seed: int, sigma: float = 2.0, level: float = 0.05) -> np.ndarray:
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.normal(size=shape), sigma)
    return field > level


# --------------------------------------------------------------------------- labelling


@pytest.mark.parametrize("seed", range(4))
def test_components_match_whole_volume_labels(small_slabs, seed):
    mask = blobs((37, 23, 19), seed)
    labels, count = ndimage.label(mask)
    component, sizes = foreground._components(mask)
    assert sizes.size == count + 1  # same number of components (+ the background)
    # same sizes, in the same order (ndimage numbers components by their first voxel in C order)
    assert np.array_equal(sizes, foreground._component_sizes(labels, count))
    assert np.array_equal(foreground._largest_component(mask), reference_largest(mask))
    assert np.array_equal(foreground._drop_small(mask), reference_drop_small(mask))


def test_component_joined_in_a_later_slab(small_slabs):
    """A U: two arms, separate in the first slabs, joined by a bar at the end; plus a smaller separate block."""
    mask = np.zeros((30, 12, 12), dtype=bool)
    mask[:, 2:4, 2:10] = True  # arm 1 along the slab axis
    mask[:, 8:10, 2:10] = True  # arm 2
    mask[27:30, 2:10, 2:10] = True  # the bar joining them in the last planes
    mask[0:3, 5:7, 11:12] = True  # a small block on its own
    assert ndimage.label(mask)[1] == 2
    assert np.array_equal(foreground._largest_component(mask), reference_largest(mask))
    assert np.array_equal(foreground._drop_small(mask), reference_drop_small(mask))


def test_equal_components_keep_the_first(small_slabs):
    """Ties: the largest component is the one ndimage.label numbers first (first voxel in C order)."""
    mask = np.zeros((40, 20, 20), dtype=bool)
    mask[25:35, 2:8, 2:8] = True  # same size, later along the slab axis
    mask[5:15, 12:18, 12:18] = True
    mask[5:15, 2:8, 12:18] = True  # same size, first in C order
    largest = foreground._largest_component(mask)
    assert np.array_equal(largest, reference_largest(mask))
    assert largest[5, 2, 12] and not largest[5, 12, 12] and not largest[25, 2, 2]


@pytest.mark.parametrize("axis", range(3))
def test_fill_planes_in_slabs(small_slabs, axis):
    mask = blobs((21, 17, 15), 7, sigma=1.5, level=-0.05)
    assert np.array_equal(foreground._fill_planes(mask, axis), reference_fill_planes(mask, axis))


# --------------------------------------------------------------------------- foreground_mask


def head_with_noise(shape=(40, 36, 30), seed: int = 0) -> np.ndarray:
    """Two lobes joined across the slab axis, a separate speck, noise clipped at 0 (a padding value)."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    head = ((x / 0.8) ** 2 + (y / 0.7) ** 2 + (z / 0.7) ** 2 < 1).astype(np.float32) * 300
    head += 200 * (((x - 0.2) / 0.3) ** 2 + (y / 0.3) ** 2 + (z / 0.3) ** 2 < 1)
    head[2:4, 2:4, 2:4] = 500  # a speck
    return np.clip(head + rng.normal(0, 20, size=shape), 0, None).astype(np.float32)


def cases():
    rng = np.random.default_rng(3)
    phantom = make_phantom(size=32, seed=2)
    yield "phantom T1", phantom["T1"]
    yield "phantom CT", phantom["CT"]
    yield "head", head_with_noise()
    yield "head, Fortran order", np.asfortranarray(head_with_noise(seed=1))
    yield "noise", rng.normal(size=(30, 25, 20)).astype(np.float32)
    sparse = np.where(rng.random((30, 25, 20)) < 0.3, 100.0, 0.0).astype(np.float32)
    yield "sparse noise", sparse
    noise = rng.normal(0, 5, (45, 30, 25)).astype(np.float32)
    yield "blobs", np.where(blobs((45, 30, 25), 5), 400.0, 0.0).astype(np.float32) + noise
    yield "image 2D", ndimage.gaussian_filter(rng.normal(size=(60, 50)), 3).astype(np.float32)


@pytest.mark.parametrize("name, volume", list(cases()), ids=[name for name, _ in cases()])
def test_foreground_mask_matches_whole_volume_reference(small_slabs, monkeypatch, name, volume):
    expected = reference_foreground(volume, monkeypatch)
    assert expected.any()
    assert np.array_equal(foreground.foreground_mask(volume), expected)
    assert np.array_equal(
        foreground.foreground_mask(volume, threshold=float(np.median(volume))),
        reference_foreground(volume, monkeypatch, threshold=float(np.median(volume))),
    )


def traced_peak(function, *args) -> int:
    tracemalloc.start()
    try:
        function(*args)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_labelling_memory_is_bounded(monkeypatch):
    """Peak traced bytes per voxel of a mask: the whole-volume labelling needs 4 for its int32 label volume
    alone (and 12 with the int64 index copy of a lookup); the slab-wise one needs its bool output and a little."""
    monkeypatch.setattr(foreground, "_SLAB_VOXELS", 1 << 14)
    volume = head_with_noise((96, 96, 64))
    padded, head = volume != 0, volume > 150  # many components (noise) / a few
    assert traced_peak(reference_largest, padded) > 4 * volume.size
    assert traced_peak(foreground._largest_component, padded) < 2.5 * volume.size
    assert traced_peak(foreground._drop_small, head) < 2 * volume.size
    assert traced_peak(foreground._clean, head) < 4 * volume.size


# --------------------------------------------------------------------------- translate in slabs


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize("axis", [0, 2])
@pytest.mark.parametrize("leaves_image", [False, True])
def test_crop_and_uncrop_in_slabs_are_exact(monkeypatch, interpolation, axis, leaves_image):
    monkeypatch.setattr(translate, "SLAB_SLICES", 3)
    rng = np.random.default_rng(axis)
    data = (rng.random((23, 26, 11)) * 1000).astype(np.float32)
    data[4:9, 5:12, 3:6] = 3000  # bright voxels: the bicubic clamp range differs between slabs
    shape = data.shape
    plane = [n for i, n in enumerate(shape) if i != axis]
    # a box inside the image, or one that leaves it at the top left (filled with -1)
    row0, col0, side = (-4, -3, plane[1] + 2) if leaves_image else (1, 2, min(plane) - 3)
    geometry = SliceGeometry(axis, shape, row0, col0, side, size=16)
    normalization = Normalization("mr", 50.0, 1500.0)

    expected = crop_slices(normalization.apply(data), geometry, fill=-1.0, interpolation=interpolation)
    slices = translate.crop_in_slabs(data, normalization, geometry, interpolation)
    assert slices.dtype == expected.dtype and np.array_equal(slices, expected)

    outputs = np.tanh(slices * 3 + rng.normal(0, 0.5, slices.shape)).astype(np.float32)
    target = Normalization("mr", 10.0, 900.0)
    expected = target.invert(uncrop_slices(outputs, geometry, fill=-1.0, interpolation=interpolation))
    image_out = translate.uncrop_in_slabs(
        outputs,
        geometry,
        fill=-1.0,
        interpolation=interpolation,
        finish=lambda part: target.invert(part, in_place=True),
    )
    assert image_out.shape == shape and image_out.dtype == np.float32
    assert np.array_equal(image_out, expected)


def test_uncrop_std_in_slabs_is_exact(monkeypatch):
    """The uncertainty map's path: fill 0, scaled to the target's units."""
    monkeypatch.setattr(translate, "SLAB_SLICES", 4)
    rng = np.random.default_rng(5)
    geometry = SliceGeometry(2, (30, 28, 13), -2, 1, 31, size=16)
    std = np.abs(rng.normal(0, 0.2, (13, 16, 16))).astype(np.float32)
    std[3, 5:9, 5:9] = 1.5  # one slab with a much wider range than the others
    scale = 0.5 * (900.0 - 10.0)
    expected = (uncrop_slices(std, geometry, fill=0.0) * scale).astype(np.float32)
    result = translate.uncrop_in_slabs(
        std, geometry, fill=0.0, interpolation="bicubic", finish=lambda part: (part * scale).astype(np.float32)
    )
    assert np.array_equal(result, expected)
