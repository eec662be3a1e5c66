"""One module per file format, behind a suffix table (the way nnU-Net keeps its reader-writers).

:func:`synthmed.data.io.read_volume` and :func:`~synthmed.data.io.write_volume` look a file's suffix up in
:data:`BY_SUFFIX` and call that format's reader or writer; folders (DICOM series, slice stacks) and globs are
resolved in :mod:`synthmed.data.io`. A new format is a module with ``read`` and ``write`` and one row here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from synthmed.data.formats import images, itk, matlab, nifti, numpy_array
from synthmed.data.formats.common import VOLUME_SUFFIXES, Volume


@dataclass(frozen=True)
class FileFormat:
    name: str  # Volume.format of what it reads
    suffixes: tuple[str, ...]
    # read(path, channel, key, dtype) -> Volume; ``key`` is the variable of a .mat file, ignored by the others
    read: Callable[..., Volume]
    # write(temporary path, data, like, suffix): the data in ``like``'s geometry (None: none), into that path
    write: Callable[..., None]
    geometry: bool  # the file carries a voxel -> world affine


# The lambdas look the module functions up at call time, so a test may replace one.
FORMATS: tuple[FileFormat, ...] = (
    FileFormat(
        "nifti",
        (".nii.gz", ".nii"),
        lambda path, channel, key, dtype: nifti.read(path, channel, dtype),
        lambda tmp, data, like, suffix: nifti.write(tmp, data, like),
        geometry=True,
    ),
    FileFormat(
        "itk",
        (".nrrd", ".mha", ".mhd"),
        lambda path, channel, key, dtype: itk.read(path, channel),
        lambda tmp, data, like, suffix: itk.write(tmp, data, like),
        geometry=True,
    ),
    FileFormat(
        "npy",
        (".npy",),
        lambda path, channel, key, dtype: numpy_array.read(path, channel),
        lambda tmp, data, like, suffix: numpy_array.write(tmp, data, like),
        geometry=False,
    ),
    FileFormat(
        "mat",
        (".mat",),
        lambda path, channel, key, dtype: matlab.read(path, key, channel),
        lambda tmp, data, like, suffix: matlab.write(tmp, data, like),
        geometry=False,
    ),
    FileFormat(
        "image",
        (".png", ".tif", ".tiff"),
        lambda path, channel, key, dtype: images.read(path, channel),
        lambda tmp, data, like, suffix: images.write(tmp, data, suffix),
        geometry=False,
    ),
)
BY_SUFFIX: dict[str, FileFormat] = {suffix: f for f in FORMATS for suffix in f.suffixes}
SLICE_SUFFIXES: tuple[str, ...] = BY_SUFFIX[".png"].suffixes  # 2D image files, stacked from folders and globs
assert set(BY_SUFFIX) == set(VOLUME_SUFFIXES), "every suffix has a format"

__all__ = ["BY_SUFFIX", "FORMATS", "FileFormat", "SLICE_SUFFIXES", "VOLUME_SUFFIXES"]
