"""What every format module shares: the :class:`Volume` it returns, suffixes, channels, and the checks that keep
a hostile or broken file from making us allocate what its header claims."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from synthmed.errors import SynthmedError

log = logging.getLogger(__name__)

# Longest first so that '.nii.gz' wins over '.nii'-like endings.
VOLUME_SUFFIXES: tuple[str, ...] = (
    ".nii.gz",
    ".nii",
    ".nrrd",
    ".mha",
    ".mhd",
    ".npy",
    ".mat",
    ".png",
    ".tiff",
    ".tif",
)
_NO_GEOMETRY_FORMATS = ("image", "npy", "mat")


@dataclass
class Volume:
    """A 3D array with its geometry and what is needed to write the same geometry back."""

    data: np.ndarray  # float32, always 3D (X, Y, Z) in the file's voxel order; 2D images become (H, W, 1)
    affine: np.ndarray  # 4x4 float64 voxel->world (RAS+ mm, nibabel convention)
    path: Path  # where it was read from
    format: str  # 'nifti' | 'itk' | 'dicom' | 'npy' | 'mat' | 'image'
    header: Any = None  # nibabel header for NIfTI; dict of metadata otherwise
    meta: dict = field(default_factory=dict)  # itk geometry, mat key, image bit depth, slice files, ...

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel sizes (mm) along the three voxel axes, from the affine's column norms."""
        norms = np.linalg.norm(np.asarray(self.affine, dtype=np.float64)[:3, :3], axis=0)
        return (float(norms[0]), float(norms[1]), float(norms[2]))

    @property
    def is_2d(self) -> bool:
        """True for single images (Z == 1) and for slice stacks without geometry (images, .mat, .npy)."""
        if "is_2d" in self.meta:
            return bool(self.meta["is_2d"])
        return self.format in _NO_GEOMETRY_FORMATS or (self.data.ndim == 3 and self.data.shape[2] == 1)


def suffix_of_name(name: str) -> str:
    lowered = name.lower()
    for suffix in VOLUME_SUFFIXES:
        if lowered.endswith(suffix) and len(lowered) > len(suffix):
            return suffix
    return ""


# Deflate (gzip, zlib) expands data at most about 1032:1, so a compressed file declaring more is lying.
_DEFLATE_MAX_RATIO = 1100


def size_text(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def memory_budget() -> int | None:
    """Bytes one volume may take: ``SYNTHMED_MAX_VOLUME_GB`` (GiB) if set, else the memory available now (None:
    unknown)."""
    text = os.environ.get("SYNTHMED_MAX_VOLUME_GB", "").strip()
    if text:
        try:
            gib = float(text)
        except ValueError:
            gib = math.nan
        if not (math.isfinite(gib) and gib > 0):
            raise SynthmedError(f"SYNTHMED_MAX_VOLUME_GB={text!r} is not a size; set it to a number of GiB, e.g. 16")
        return int(gib * 2**30)
    # MemAvailable counts the page cache the kernel can drop; sysconf's SC_AVPHYS_PAGES counts free pages only,
    # which on a machine that has been reading files for a while is a small part of what it can really give.
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if not hasattr(os, "sysconf"):
        return None  # e.g. Windows: only the checks against the file size apply
    for name in ("SC_AVPHYS_PAGES", "SC_PHYS_PAGES"):
        try:
            pages, page_size = os.sysconf(name), os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            continue
        if pages > 0 and page_size > 0:
            return pages * page_size
    return None


def check_declared_size(
    where: str,
    shape: tuple[int, ...],
    dtype_name: str,
    voxel_bytes: int,
    *,
    file_size: int | None = None,
    offset: int = 0,
    compressed: bool = False,
    data_file: str | None = None,
    read_voxels: int | None = None,
) -> None:
    """Refuse, before any voxel is read, an image whose header declares more than its file can hold or more than
    memory can take: a few bytes of damaged or crafted header must not make us allocate gigabytes.

    ``file_size``: the size of the file holding the voxels (None: unknown, nothing to compare), ``offset`` the
    bytes before them; ``compressed``: they are deflate data; ``data_file``: that file's name when it is not the
    one read; ``read_voxels``: the voxels actually read (a 4D NIfTI reads one volume), by default all.
    """
    voxels = math.prod(int(s) for s in shape)
    declared = voxels * voxel_bytes
    described = f"{shape_text(shape)} {dtype_name}"
    if file_size is not None:
        room = file_size * _DEFLATE_MAX_RATIO if compressed else file_size
        if offset + declared > room:
            holder = f"its data file {data_file}" if data_file else "the file"
            if compressed:
                holds = f"{file_size} bytes of compressed data"
            elif offset:
                holds = f"{max(file_size - offset, 0)} bytes after its {offset}-byte header"
            else:
                holds = f"{file_size} bytes"
            raise SynthmedError(
                f"{where}: its header declares {described} ({size_text(declared)}) but {holder} holds {holds}: "
                f"truncated, or a damaged header"
            )
    budget = memory_budget()
    # The source array and the float32 copy made of it exist side by side for a moment.
    needed = (voxels if read_voxels is None else read_voxels) * (voxel_bytes + 4)
    if budget is not None and needed > budget:
        from_setting = bool(os.environ.get("SYNTHMED_MAX_VOLUME_GB", "").strip())
        limit = "SYNTHMED_MAX_VOLUME_GB allows" if from_setting else "this machine can give"
        raise SynthmedError(
            f"{where}: its header declares {described} ({size_text(needed)} to read as float32), more than the "
            f"{size_text(budget)} {limit}; refusing to allocate it (set SYNTHMED_MAX_VOLUME_GB to raise the limit)"
        )


def magnitude(array: np.ndarray, where: str) -> np.ndarray:
    """Complex voxels (e.g. an MR reconstruction before its magnitude was taken) as their magnitude: casting them to
    float would silently keep the real part only."""
    if array.dtype.kind != "c":
        return array
    log.warning("%s holds complex values; using their magnitude", where)
    return np.abs(array)


def shape_text(shape) -> str:
    return "x".join(str(int(s)) for s in shape)


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:160]


def pick_channel(array: np.ndarray, channel: int | None, where: str, what: str = "") -> np.ndarray:
    """Bring an array to 3D: 2D -> (H, W, 1), 4D -> its ``channel``-th index along the 4th axis."""
    if array.ndim > 4:
        # Drop singleton axes beyond the third (e.g. NIfTI's (X, Y, Z, 1, C) vector layout).
        squeezed = array.reshape(array.shape[:3] + tuple(s for s in array.shape[3:] if s != 1))
        array = squeezed
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim == 4:
        n = array.shape[3]
        if channel is None:
            raise SynthmedError(
                f"{where} is 4D ({shape_text(array.shape)}){what}: choose a channel 0-{n - 1} (translate --channel N, or a 'channel' column in a prepare --manifest)"
            )
        check_channel(channel, n, where, f"4D ({shape_text(array.shape)})")
        return array[..., channel]
    if array.ndim > 4:
        raise SynthmedError(
            f"{where} has {array.ndim} dimensions ({shape_text(array.shape)}); only 2D, 3D or 4D images are supported"
        )
    if channel not in (None, 0):
        raise SynthmedError(
            f"{where} is {array.ndim}D ({shape_text(array.shape)}) with no channels: drop channel={channel}"
        )
    if array.ndim == 2:
        return array[:, :, None]
    if array.ndim == 3:
        return array
    raise SynthmedError(f"{where} has shape {shape_text(array.shape) or '()'}; expected a 2D or 3D image")


def check_channel(channel: int, n: int, where: str, what: str) -> None:
    if not isinstance(channel, (int, np.integer)) or isinstance(channel, bool) or not 0 <= channel < n:
        raise SynthmedError(f"{where}: channel={channel!r} is out of range for {what}; use 0-{n - 1}")
