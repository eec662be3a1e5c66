"""Reading and writing volumes in the formats medical images come in.

Everything is read into a :class:`Volume`: a float32 array that is always 3D ``(X, Y, Z)``
in the file's own voxel order, plus a 4x4 voxel->world affine (RAS+ millimetres, the
nibabel convention) and whatever is needed to write an output with the same geometry.

Formats (chosen from the suffix, :func:`volume_suffix`; each one a module of :mod:`synthmed.data.formats`,
looked up in its suffix table):

``.nii`` / ``.nii.gz``
    nibabel; scaling (``scl_slope``/``scl_inter``) applied; header kept so that
    :func:`write_volume` can reproduce shape, affine, sform and qform exactly.
``.nrrd`` / ``.mha`` / ``.mhd``
    SimpleITK. ITK arrays are ``(z, y, x)`` and are transposed to ``(x, y, z)``; ITK
    world coordinates are LPS, so the first two rows of the affine are negated to get
    RAS. ``meta`` keeps ``itk_origin``/``itk_spacing``/``itk_direction`` for exact write-back.
a DICOM series folder
    SimpleITK's GDCM series reader; with several series in one folder the one with the
    most files is read and ``meta['series_id']``/``meta['series_ids']`` say which.
``.npy``
    2D arrays become ``(H, W, 1)``; 3D arrays are taken as they are; identity affine.
``.mat``
    MATLAB v5 (scipy) or v7.3 (HDF5, h5py). **Orientation convention: the array is
    returned exactly as MATLAB indexes it**, so ``A(i, j, k)`` in MATLAB is
    ``data[i-1, j-1, k-1]`` here, for v5 and v7.3 alike. h5py sees MATLAB's column-major
    arrays with the axes reversed, so v7.3 arrays are transposed back (all axes
    reversed). A MATLAB stack of N slices of HxW (``size(A) = [H W N]``) thus comes back
    as ``(H, W, N)``, slices along the last axis. SynDiff's IXI files (h5py shape
    ``(25, 152, 256)``) come back as ``(256, 152, 25)``: 25 slices of 256 rows x 152
    columns, the same slice orientation SynDiff itself uses. 2D arrays become
    ``(H, W, 1)``; a 4D array ``(H, W, N, C)`` needs ``channel``.
``.png`` / ``.tif`` / ``.tiff``
    Pillow; 8/16-bit or float, grayscale or RGB(A) (``channel`` picks one; RGB whose
    channels are all equal is read without it). One image is ``(H, W, 1)``; a multi-page
    TIFF is ``(H, W, pages)``.
a folder or a glob pattern of 2D PNG/TIFF slices
    Stacked along the last axis in natural order of the names (``slice_2`` before
    ``slice_10``). A folder whose names follow two different patterns (LGG's ``P_3.tif``
    and ``P_3_mask.tif``) is refused with a glob that picks one kind (``P_*[0-9].tif``).

Every problem the user can fix raises :class:`~synthmed.errors.SynthmedError` with a
one-line message naming the file.

Files from elsewhere are not trusted: complex voxels are read as their magnitude (with a
warning); a MetaImage/NRRD header naming a data file outside its own folder is refused
unless ``SYNTHMED_ALLOW_EXTERNAL_DATA=1``; a header declaring more voxels than its file can
hold, or more than memory can take (``SYNTHMED_MAX_VOLUME_GB``, else the memory available),
is refused before anything is allocated; a NaN/Inf or singular affine is refused.
"""

from __future__ import annotations

import glob as globlib
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from synthmed.data.formats import BY_SUFFIX, FORMATS, SLICE_SUFFIXES, VOLUME_SUFFIXES, itk
from synthmed.data.formats.common import Volume, first_line, shape_text, suffix_of_name
from synthmed.data.formats.dicom import dicom_files, has_dicom_magic, read_series
from synthmed.data.formats.images import glob_hint, image_pages, read_slices
from synthmed.errors import SynthmedError
from synthmed.files import default_file_mode

log = logging.getLogger(__name__)

__all__ = [
    "IMAGE_SUFFIXES",
    "SLICE_SUFFIXES",
    "VOLUME_SUFFIXES",
    "Volume",
    "has_dicom_magic",
    "is_volume_path",
    "natural_sort_key",
    "output_suffix",
    "read_volume",
    "volume_suffix",
    "write_volume",
]

IMAGE_SUFFIXES = SLICE_SUFFIXES  # 2D image files
_GLOB_CHARS = "*?["
_GEOMETRY_FORMATS = tuple(f.name for f in FORMATS if f.geometry) + ("dicom",)


# --------------------------------------------------------------------------- names


def natural_sort_key(text: str | os.PathLike) -> tuple:
    """Sort key that orders embedded numbers by value: ``slice_2`` before ``slice_10``."""
    parts = re.split(r"(\d+)", str(text))
    # Even positions are text, odd positions numbers, so keys always compare like with like.
    return tuple(int(part) if i % 2 else part.lower() for i, part in enumerate(parts))


def _is_glob(path: str | os.PathLike) -> bool:
    text = str(path)
    return any(c in text for c in _GLOB_CHARS) and not os.path.exists(text)


def volume_suffix(path: str | os.PathLike) -> str:
    """The (lower-case) volume suffix of a file name, e.g. ``'.nii.gz'``; ``''`` for folders and other files."""
    path = Path(path)
    if path.is_dir():
        return ""
    return suffix_of_name(path.name)


def _slice_files(folder: Path) -> list[str]:
    try:
        names = [e.path for e in os.scandir(folder) if e.is_file() and not e.name.startswith(".")]
    except OSError:
        return []
    return sorted((p for p in names if suffix_of_name(os.path.basename(p)) in SLICE_SUFFIXES), key=natural_sort_key)


def _glob_slices(pattern: str) -> list[str]:
    files = [p for p in globlib.glob(pattern) if os.path.isfile(p) and suffix_of_name(os.path.basename(p))]
    return sorted(files, key=natural_sort_key)


def output_suffix(path: str | os.PathLike) -> str:
    """The suffix an output written from ``path`` gets: the same format, except that 2D images become TIFF (which
    holds float values) and a DICOM series or slice folder NIfTI."""
    suffix = volume_suffix(path)
    return ".tif" if suffix in SLICE_SUFFIXES else suffix or ".nii.gz"


def is_volume_path(path: str | os.PathLike) -> bool:
    """True for a file with a supported suffix, a DICOM series folder, or a folder/glob of 2D slices.

    Names are judged by their suffix alone (the file need not exist yet); folders and
    glob patterns by what they hold.
    """
    if _is_glob(path):
        return any(suffix_of_name(os.path.basename(p)) in SLICE_SUFFIXES for p in _glob_slices(str(path)))
    path = Path(path)
    if path.is_dir():
        return bool(dicom_files(path, limit=1)) or bool(_slice_files(path))
    return bool(suffix_of_name(path.name))


# --------------------------------------------------------------------------- hostile or broken files


def _check_affine(volume: Volume) -> None:
    """Refuse a voxel->world matrix that is no such thing: NaN/Inf, a zero voxel size or collapsed axes would surface
    later as NaN coordinates or a misleading 'not co-registered' error."""
    if volume.format not in _GEOMETRY_FORMATS:
        return
    if volume.format == "nifti":
        fix = "fix the header's sform/qform (e.g. with fslorient or nibabel) and save it again"
    else:
        fix = "fix the header's origin, spacing and direction and save it again"
    what = f"{volume.path}: its affine (voxel-to-world matrix in the header)"
    affine = np.asarray(volume.affine, dtype=np.float64)
    if not np.isfinite(affine).all():
        raise SynthmedError(f"{what} holds NaN/Inf; {fix}")
    matrix = affine[:3, :3]
    lengths = np.linalg.norm(matrix, axis=0)
    zero = [str(axis) for axis in range(3) if lengths[axis] == 0]
    if zero:
        raise SynthmedError(f"{what} gives voxel axis {' and '.join(zero)} a zero size; {fix}")
    # |det| over the product of the column lengths is 1 for perpendicular voxel axes and 0 for collapsed ones.
    if abs(np.linalg.det(matrix)) <= 1e-6 * float(np.prod(lengths)):
        raise SynthmedError(f"{what} is singular: its voxel axes collapse onto a plane or a line; {fix}")


# --------------------------------------------------------------------------- reading


def _read_folder(folder: Path, channel: int | None) -> Volume:
    where = str(folder)
    if dicom_files(folder, limit=1):
        return read_series(folder, channel)
    files = _slice_files(folder)
    if files:
        return read_slices(files, where, channel, glob_hint(files, where))
    try:
        entries = [e for e in os.listdir(folder) if not e.startswith(".")]
    except OSError as error:
        raise SynthmedError(f"{where}: cannot list the folder ({error.strerror})") from None
    if not entries:
        raise SynthmedError(f"{where}: empty folder; expected a DICOM series or 2D slices (.png/.tif)")
    raise SynthmedError(
        f"{where}: no DICOM files or 2D slices (.png/.tif) here ({len(entries)} other entries); "
        f"point at an image file or a series folder"
    )


def _read_glob(pattern: str, channel: int | None, key: str | None = None) -> Volume:
    matches = sorted(globlib.glob(pattern), key=natural_sort_key)
    files = [m for m in matches if os.path.isfile(m)]
    if not files:
        raise SynthmedError(f"{pattern}: no files match this pattern; check the folder and the pattern")
    wrong = [f for f in files if suffix_of_name(os.path.basename(f)) not in SLICE_SUFFIXES]
    if len(files) == 1 and wrong and suffix_of_name(os.path.basename(files[0])):
        return read_volume(files[0], key=key, channel=channel)  # a pattern naming one volume file
    if wrong:
        raise SynthmedError(
            f"{pattern}: matches {os.path.basename(wrong[0])}, which is not a 2D slice (.png/.tif); "
            f"a glob must match only 2D slice images"
        )
    return read_slices(files, pattern, channel, glob_hint(files, os.path.dirname(pattern) or "."))


def _check_finite(volume: Volume) -> None:
    data = volume.data
    if data.dtype.kind != "f":
        return
    finite = np.isfinite(data)
    if finite.all():
        return
    n_nan = int(np.isnan(data).sum())
    n_inf = int(data.size - finite.sum()) - n_nan
    parts = [f"{n_nan} NaN" if n_nan else "", f"{n_inf} Inf" if n_inf else ""]
    raise SynthmedError(
        f"{volume.path}: {' and '.join(p for p in parts if p)} voxel(s) of {data.size}; "
        f"replace them (e.g. with 0) and save the file again"
    )


def read_volume(
    path: str | os.PathLike,
    *,
    key: str | None = None,
    channel: int | None = None,
    dtype=np.float32,
) -> Volume:
    """Read a volume from a file, a DICOM series folder, a folder of 2D slices or a glob of slices.

    ``key`` picks the variable of a .mat file (ignored for other formats); ``channel`` the
    channel of an RGB(A) image or vector image, or the index along the 4th axis of a 4D
    volume. The data come back as ``dtype`` (float32), always 3D. NaN/Inf voxels are an
    error; a constant image is not (the caller decides).
    """
    if channel is not None and (isinstance(channel, bool) or not isinstance(channel, (int, np.integer)) or channel < 0):
        raise SynthmedError(f"{path}: channel={channel!r} must be a whole number >= 0")
    text = os.fspath(path)
    if _is_glob(text):
        volume = _read_glob(str(text), channel, key)
    else:
        path = Path(text)
        if not path.exists():
            raise SynthmedError(f"{path}: no such file or folder")
        if path.is_dir():
            volume = _read_folder(path, channel)
        else:
            suffix = suffix_of_name(path.name)
            if suffix in BY_SUFFIX:
                volume = BY_SUFFIX[suffix].read(path, channel, key, dtype)
            else:
                lowered = path.name.lower()
                hint = (
                    "; point at the folder holding the DICOM series"
                    if lowered.endswith((".dcm", ".dicom")) or has_dicom_magic(str(path))
                    else ""
                )
                raise SynthmedError(
                    f"{path}: unsupported file type{' ' + repr(Path(lowered).suffix) if Path(lowered).suffix else ''}"
                    f"{hint or '; use ' + ', '.join(VOLUME_SUFFIXES) + ' or a DICOM series folder'}"
                )
    volume.data = np.asarray(volume.data).astype(dtype, copy=False)
    volume.affine = np.asarray(volume.affine, dtype=np.float64)
    _check_affine(volume)
    _check_finite(volume)
    return volume


# --------------------------------------------------------------------------- writing


def ensure_writable_folder(folder: str | os.PathLike) -> Path:
    """Create ``folder`` (and parents) if needed; a :class:`SynthmedError` if that fails or it is read-only."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SynthmedError(
            f"cannot create folder {folder} ({error.strerror or error}); choose another output"
        ) from None
    if not os.access(folder, os.W_OK):
        raise SynthmedError(f"folder {folder} is not writable; choose another output")
    return folder


def write_volume(
    path: str | os.PathLike,
    data: np.ndarray,
    *,
    like: Volume | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``data`` (3D, (X, Y, Z)) to ``path`` with ``like``'s geometry; returns the written path.

    The format comes from the suffix (.nii.gz, .nii, .nrrd, .mha, .mhd, .npy, .mat, .png,
    .tif, .tiff). The file is written to a temporary file in the same folder and moved into
    place, so a failure never leaves a half-written output. An existing file is refused
    unless ``overwrite``.
    """
    out = Path(path)
    suffix = suffix_of_name(out.name)
    if not suffix:
        raise SynthmedError(f"{out}: unknown output type; end the name with one of {', '.join(VOLUME_SUFFIXES)}")
    data = np.asarray(data)
    if data.dtype.kind not in "biuf":
        raise SynthmedError(f"{out}: cannot write {data.dtype} data; give a numeric array")
    if like is not None and tuple(data.shape) != tuple(like.data.shape):
        raise SynthmedError(
            f"{out}: data shape {shape_text(data.shape)} does not match {like.path} ({shape_text(like.data.shape)}); "
            f"outputs must have the source's shape"
        )
    if data.ndim == 2 and like is None and suffix not in (".npy", ".mat"):
        data = data[:, :, None]
    if data.ndim != 3 and suffix not in (".npy", ".mat"):
        raise SynthmedError(
            f"{out}: data is {data.ndim}D ({shape_text(data.shape)}); only 3D (X, Y, Z) volumes can be written"
        )
    if out.is_dir():
        raise SynthmedError(f"{out} is a folder; give an output file name like out{suffix}")
    if out.exists() and not overwrite:
        raise SynthmedError(f"{out} exists; pass --overwrite to replace it")
    if suffix in SLICE_SUFFIXES:
        image_pages(data, out, suffix)  # refuse what a PNG/TIFF cannot hold before any file is made
    parent = ensure_writable_folder(out.parent if str(out.parent) else Path("."))

    if suffix == ".mhd":
        return _write_mhd(out, data, like)
    try:
        handle, tmp = tempfile.mkstemp(dir=parent, prefix=f".{out.name}.tmp-{os.getpid()}-", suffix=suffix)
        os.close(handle)
    except OSError as error:
        raise SynthmedError(
            f"{out}: cannot write in {parent} ({error.strerror or error}); choose another output"
        ) from None
    try:
        BY_SUFFIX[suffix].write(tmp, data, like, suffix)
        os.chmod(tmp, default_file_mode())  # mkstemp makes 0600; outputs get the user's usual permissions
        os.replace(tmp, out)
    except OSError as error:
        _remove(tmp)
        raise SynthmedError(
            f"{out}: writing failed ({error.strerror or first_line(error)}); check free space and permissions"
        ) from None
    except BaseException:
        _remove(tmp)
        raise
    return out


def _write_mhd(out: Path, data: np.ndarray, like: Volume | None) -> Path:
    """MetaImage header + .raw: written under their final names in a temporary folder, then moved."""
    parent = out.parent if str(out.parent) else Path(".")
    raw_name = out.name[: -len(".mhd")] + ".raw"
    if (parent / raw_name).exists() and not (out.exists()):
        raise SynthmedError(
            f"{parent / raw_name} exists and would be replaced by {out.name}'s data; move it or choose another name"
        )
    try:
        folder = tempfile.mkdtemp(dir=parent, prefix=f".{out.name}.tmp-{os.getpid()}-")
    except OSError as error:
        raise SynthmedError(
            f"{out}: cannot write in {parent} ({error.strerror or error}); choose another output"
        ) from None
    try:
        itk.write(os.path.join(folder, out.name), data, like)
        os.replace(os.path.join(folder, raw_name), parent / raw_name)
        os.replace(os.path.join(folder, out.name), out)
    except OSError as error:
        raise SynthmedError(
            f"{out}: writing failed ({error.strerror or first_line(error)}); check free space and permissions"
        ) from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return out


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
