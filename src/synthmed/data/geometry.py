"""Slice geometry: which axis to slice along, and the invertible crop/resize of slices.

A volume becomes a stack of square ``size x size`` slices: the in-plane foreground
bounding box is made square (centred, with a margin, padded where it leaves the
image) and resized to ``size``. :class:`SliceGeometry` records all of it, so model
outputs are pasted back into the original grid voxel for voxel.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

from synthmed.errors import SynthmedError

AXIS_NAMES = {"sagittal": ("L", "R"), "coronal": ("A", "P"), "axial": ("S", "I")}
BOX_MARGIN = 0.04
AFFINE_TOLERANCE_MM = 1e-2  # two grids closer than this (in every affine entry) are the same grid


def grid_difference(shape_a, affine_a: np.ndarray, shape_b, affine_b: np.ndarray) -> str | None:
    """Why two volumes are not on one voxel grid (shape, or the voxel-to-world affine beyond
    :data:`AFFINE_TOLERANCE_MM`), or None when they are."""
    if tuple(shape_a) != tuple(shape_b):
        return f"shape {'x'.join(map(str, shape_a))} against {'x'.join(map(str, shape_b))}"
    difference = np.abs(np.asarray(affine_a, dtype=np.float64) - np.asarray(affine_b, dtype=np.float64))
    if not difference.max() <= AFFINE_TOLERANCE_MM:
        shift = float(difference[:3, 3].max())
        if difference[:3, :3].max() <= AFFINE_TOLERANCE_MM:
            return f"the same shape, but placed {shift:.3g} mm apart (their affines differ)"
        return "the same shape, but a different voxel size or orientation (their affines differ)"
    return None


def resample_onto(
    data: np.ndarray, affine: np.ndarray, grid_shape, grid_affine: np.ndarray, order: int, fill: float
) -> np.ndarray:
    """``data`` (with voxel-to-world ``affine``) resampled onto another grid: each output voxel takes the
    value at its world position (``order`` 0 nearest, 1 linear); ``fill`` outside ``data``'s field of view."""
    from scipy import ndimage

    mapping = np.linalg.inv(np.asarray(affine, dtype=np.float64)) @ np.asarray(grid_affine, dtype=np.float64)
    return ndimage.affine_transform(
        data,
        mapping[:3, :3],
        offset=mapping[:3, 3],
        output_shape=tuple(grid_shape),
        order=order,
        mode="constant",
        cval=float(fill),
    ).astype(np.float32)


def slice_axis(affine: np.ndarray, axis: str | int, is_2d: bool = False) -> int:
    """Index of the voxel axis to slice along.

    ``axis`` is a voxel index (0, 1, 2) or an anatomical name; for 2D stacks with no
    geometry (PNG/TIFF slices, .mat and .npy stacks) slices are along the last axis.
    """
    if isinstance(axis, int) or str(axis).isdigit():
        index = int(axis)
        if index not in (0, 1, 2):
            raise SynthmedError(f"--axis {axis}: use 0, 1, 2, axial, coronal or sagittal")
        return 2 if is_2d else index  # a stack of 2D images is only ever sliced along its stacking axis
    name = str(axis).lower()
    if name not in AXIS_NAMES:
        raise SynthmedError(f"--axis {axis}: use axial, coronal, sagittal or a voxel axis 0-2")
    if is_2d:
        return 2
    codes = nib.aff2axcodes(affine)
    for index, code in enumerate(codes):
        if code in AXIS_NAMES[name]:
            return index
    return 2


def to_slices(volume: np.ndarray, axis: int) -> np.ndarray:
    """(X, Y, Z) volume -> (n_slices, H, W) stack along ``axis``."""
    return np.moveaxis(volume, axis, 0)


def from_slices(stack: np.ndarray, axis: int) -> np.ndarray:
    """Inverse of :func:`to_slices`."""
    return np.moveaxis(stack, 0, axis)


@dataclass(frozen=True)
class SliceGeometry:
    """How one volume was turned into model-sized slices (JSON-serialisable)."""

    axis: int
    shape: tuple[int, int, int]
    row0: int
    col0: int
    side: int
    size: int

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, record: dict) -> "SliceGeometry":
        return cls(
            axis=int(record["axis"]),
            shape=tuple(int(s) for s in record["shape"]),
            row0=int(record["row0"]),
            col0=int(record["col0"]),
            side=int(record["side"]),
            size=int(record["size"]),
        )

    @property
    def plane_shape(self) -> tuple[int, int]:
        shape = list(self.shape)
        shape.pop(self.axis)
        return shape[0], shape[1]


def fit_geometry(foreground: np.ndarray, axis: int, size: int) -> SliceGeometry:
    """Square in-plane box around the foreground of all slices, with a small margin."""
    plane = to_slices(foreground, axis).any(axis=0)
    if not plane.any():
        raise SynthmedError("empty foreground: no voxel above the background level")
    rows = np.flatnonzero(plane.any(axis=1))
    cols = np.flatnonzero(plane.any(axis=0))
    height = rows[-1] - rows[0] + 1
    width = cols[-1] - cols[0] + 1
    side = int(np.ceil(max(height, width) * (1 + BOX_MARGIN)))
    side = max(side, 2)
    row0 = int((rows[0] + rows[-1] + 1) // 2 - side // 2)
    col0 = int((cols[0] + cols[-1] + 1) // 2 - side // 2)
    return SliceGeometry(axis, tuple(int(s) for s in foreground.shape), row0, col0, side, int(size))


# Image resampling between the crop box and the model's square: bicubic, anti-aliased when shrinking, clipped to
# the input's range (cubic overshoot). A box -> size -> box round trip keeps far more detail than bilinear, and
# that round trip caps what any model can reach.
# Plans written before it (no "interpolation" key) were made with "bilinear" and keep it.
INTERPOLATION = "bicubic"
INTERPOLATIONS = ("bicubic", "bilinear")


def _resize(
    stack: np.ndarray,
    size: int,
    nearest: bool,
    interpolation: str = INTERPOLATION,
    value_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """Each slice of ``stack`` resized to size x size; a bicubic result is clipped to ``value_range``, by default
    the range of the whole stack (a caller that resizes a stack in parts passes the whole stack's range, so the
    parts come out exactly as the whole would)."""
    if stack.shape[-1] == size and stack.shape[-2] == size:
        return stack.astype(np.float32, copy=False)
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation {interpolation!r}: use one of {', '.join(INTERPOLATIONS)}")
    tensor = torch.from_numpy(np.ascontiguousarray(stack, dtype=np.float32))[:, None]
    if nearest:
        out = F.interpolate(tensor, size=(size, size), mode="nearest-exact")
    else:
        out = F.interpolate(
            tensor, size=(size, size), mode=interpolation, align_corners=False, antialias=stack.shape[-1] > size
        )
        if interpolation == "bicubic" and tensor.numel():
            low, high = value_range if value_range is not None else (float(tensor.min()), float(tensor.max()))
            out = out.clamp(low, high)
    return out[:, 0].numpy()


def box_overlap(geometry: SliceGeometry) -> tuple[slice, slice, slice, slice]:
    """Matching windows (image rows, image cols, box rows, box cols)."""
    height, width = geometry.plane_shape
    r0, c0, side = geometry.row0, geometry.col0, geometry.side
    ir = slice(max(r0, 0), min(r0 + side, height))
    ic = slice(max(c0, 0), min(c0 + side, width))
    br = slice(ir.start - r0, ir.stop - r0)
    bc = slice(ic.start - c0, ic.stop - c0)
    return ir, ic, br, bc


def crop_slices(
    volume: np.ndarray,
    geometry: SliceGeometry,
    fill: float,
    nearest: bool = False,
    interpolation: str = INTERPOLATION,
    value_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """Volume -> (n_slices, size, size) float32 stack in the geometry's box (``value_range``: see :func:`_resize`)."""
    stack = to_slices(volume, geometry.axis)
    boxed = np.full((stack.shape[0], geometry.side, geometry.side), fill, dtype=np.float32)
    ir, ic, br, bc = box_overlap(geometry)
    boxed[:, br, bc] = stack[:, ir, ic]
    return _resize(boxed, geometry.size, nearest, interpolation, value_range)


def uncrop_slices(
    stack: np.ndarray,
    geometry: SliceGeometry,
    fill: float,
    interpolation: str = INTERPOLATION,
    value_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """Inverse of :func:`crop_slices`: (n_slices, size, size) -> volume of ``geometry.shape``."""
    boxed = _resize(stack, geometry.side, nearest=False, interpolation=interpolation, value_range=value_range)
    height, width = geometry.plane_shape
    full = np.full((stack.shape[0], height, width), fill, dtype=np.float32)
    ir, ic, br, bc = box_overlap(geometry)
    full[:, ir, ic] = boxed[:, br, bc]
    return from_slices(full, geometry.axis)


# --- native resolution ---------------------------------------------------------------------------------------------
# Slices kept at (or resampled to) one physical pixel size instead of squeezing every crop box into the same number
# of pixels: a model then sees anatomy at one scale and at full detail, trains on random patches and translates whole
# slices of any size (its networks are fully convolutional). A canvas side is a multiple of this.
NATIVE_MULTIPLE = 16


def in_plane_spacing(spacing, axis: int) -> float:
    """One pixel size (mm) for the slices along ``axis``: the geometric mean of the two in-plane voxel sizes (square
    boxes cannot hold anisotropic pixels; for the usual isotropic in-plane MR and CT grids it is exact)."""
    sizes = [float(s) for i, s in enumerate(spacing) if i != axis]
    if len(sizes) != 2 or not all(np.isfinite(s) and s > 0 for s in sizes):
        raise SynthmedError(f"voxel spacing {tuple(spacing)} has no usable in-plane pixel size")
    return float(np.sqrt(sizes[0] * sizes[1]))


def foreground_side_mm(foreground: np.ndarray, axis: int, spacing_mm: float) -> float:
    """Side (mm) of the square box around the foreground of all slices (with :data:`BOX_MARGIN`)."""
    return fit_geometry(foreground, axis, 1).side * spacing_mm


def native_size(side_mm: float, target_spacing_mm: float) -> int:
    """Pixels (a multiple of :data:`NATIVE_MULTIPLE`) a square of ``side_mm`` needs at the target spacing."""
    return max(NATIVE_MULTIPLE, int(np.ceil(side_mm / target_spacing_mm / NATIVE_MULTIPLE - 1e-9)) * NATIVE_MULTIPLE)


def fit_native_geometry(
    foreground: np.ndarray, axis: int, size: int, spacing_mm: float, target_spacing_mm: float
) -> SliceGeometry:
    """A ``size`` x ``size`` slice at ``target_spacing_mm`` per pixel, centred on the foreground: the box side in voxels
    is ``size * target / spacing`` (equal to ``size`` when the spacing is the target, so slices are the voxels
    themselves, not resampled)."""
    box = fit_geometry(foreground, axis, size)
    side = max(2, int(round(size * target_spacing_mm / spacing_mm)))
    row_centre, col_centre = box.row0 + box.side // 2, box.col0 + box.side // 2
    return SliceGeometry(axis, box.shape, row_centre - side // 2, col_centre - side // 2, side, int(size))
