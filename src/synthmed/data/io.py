"""Reading and writing volumes in the formats medical images come in.

Everything is read into a :class:`Volume`: a float32 array that is always 3D ``(X, Y, Z)``
in the file's own voxel order, plus a 4x4 voxel->world affine (RAS+ millimetres, the
nibabel convention) and whatever is needed to write an output with the same geometry.

Formats (chosen from the suffix; :func:`volume_suffix`):

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
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from synthmed.errors import SynthmedError
from synthmed.files import default_file_mode

log = logging.getLogger(__name__)

__all__ = [
    "IMAGE_SUFFIXES",
    "SLICE_SUFFIXES",
    "VOLUME_SUFFIXES",
    "Volume",
    "is_volume_path",
    "natural_sort_key",
    "read_volume",
    "volume_suffix",
    "write_volume",
]

# Longest first so that '.nii.gz' wins over '.nii'-like endings.
VOLUME_SUFFIXES: tuple[str, ...] = (
    ".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".npy", ".mat", ".png", ".tiff", ".tif",
)
ITK_SUFFIXES = (".nrrd", ".mha", ".mhd")
SLICE_SUFFIXES = (".png", ".tif", ".tiff")
IMAGE_SUFFIXES = SLICE_SUFFIXES  # 2D image files
_GLOB_CHARS = "*?["
_LPS = np.diag([-1.0, -1.0, 1.0])  # LPS <-> RAS (its own inverse)
_NO_GEOMETRY_FORMATS = ("image", "npy", "mat")
_GEOMETRY_FORMATS = ("nifti", "itk", "dicom")
# Deflate (gzip, zlib) expands data at most about 1032:1, so a compressed file declaring more is lying.
_DEFLATE_MAX_RATIO = 1100
# A MetaImage or NRRD header is a few hundred bytes; we never parse more than this of one.
_MAX_HEADER_BYTES = 64 * 1024
# The ITK reader for each suffix, named so that ITK cannot pick another reader (one with other rules for the
# files a header may name) from the file's content.
_ITK_IMAGE_IO = {".mha": "MetaImageIO", ".mhd": "MetaImageIO", ".nrrd": "NrrdImageIO"}
_MAT5_ITEMSIZE = {"double": 8, "single": 4, "int8": 1, "uint8": 1, "int16": 2, "uint16": 2, "int32": 4, "uint32": 4,
                  "int64": 8, "uint64": 8, "logical": 1, "sparse": 8}
_METAIMAGE_SEPARATOR = re.compile(r"[=:]")
_PRINTF_FIELD = re.compile(r"%[-+ #0]*\d*(?:\.\d+)?[hlLqjzt]*[diouxXeEfFgGcs]")


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


# --------------------------------------------------------------------------- names


def natural_sort_key(text: str | os.PathLike) -> tuple:
    """Sort key that orders embedded numbers by value: ``slice_2`` before ``slice_10``."""
    parts = re.split(r"(\d+)", str(text))
    # Even positions are text, odd positions numbers, so keys always compare like with like.
    return tuple(int(part) if i % 2 else part.lower() for i, part in enumerate(parts))


def _is_glob(path: str | os.PathLike) -> bool:
    text = str(path)
    return any(c in text for c in _GLOB_CHARS) and not os.path.exists(text)


def _suffix_of_name(name: str) -> str:
    lowered = name.lower()
    for suffix in VOLUME_SUFFIXES:
        if lowered.endswith(suffix) and len(lowered) > len(suffix):
            return suffix
    return ""


def volume_suffix(path: str | os.PathLike) -> str:
    """The (lower-case) volume suffix of a file name, e.g. ``'.nii.gz'``; ``''`` for folders and other files."""
    path = Path(path)
    if path.is_dir():
        return ""
    return _suffix_of_name(path.name)


def has_dicom_magic(path: str) -> bool:
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _dicom_files(folder: Path, limit: int | None = None) -> list[str]:
    """DICOM files directly in ``folder``: ``*.dcm``/``*.dicom`` or extension-less files with 'DICM' magic."""
    found = []
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return []
    for entry in entries:
        if entry.name.startswith(".") or not entry.is_file():
            continue
        lowered = entry.name.lower()
        if lowered.endswith((".dcm", ".dicom")) or (not _suffix_of_name(entry.name) and has_dicom_magic(entry.path)):
            found.append(entry.path)
            if limit is not None and len(found) >= limit:
                break
    return found


def _slice_files(folder: Path) -> list[str]:
    try:
        names = [e.path for e in os.scandir(folder) if e.is_file() and not e.name.startswith(".")]
    except OSError:
        return []
    return sorted((p for p in names if _suffix_of_name(os.path.basename(p)) in SLICE_SUFFIXES), key=natural_sort_key)


def _glob_slices(pattern: str) -> list[str]:
    files = [p for p in globlib.glob(pattern) if os.path.isfile(p) and _suffix_of_name(os.path.basename(p))]
    return sorted(files, key=natural_sort_key)


def is_volume_path(path: str | os.PathLike) -> bool:
    """True for a file with a supported suffix, a DICOM series folder, or a folder/glob of 2D slices.

    Names are judged by their suffix alone (the file need not exist yet); folders and
    glob patterns by what they hold.
    """
    if _is_glob(path):
        return any(_suffix_of_name(os.path.basename(p)) in SLICE_SUFFIXES for p in _glob_slices(str(path)))
    path = Path(path)
    if path.is_dir():
        return bool(_dicom_files(path, limit=1)) or bool(_slice_files(path))
    return bool(_suffix_of_name(path.name))


# --------------------------------------------------------------------------- hostile or broken files


def _size_text(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _memory_budget() -> int | None:
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


def _check_declared_size(
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
    described = f"{_shape_text(shape)} {dtype_name}"
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
                f"{where}: its header declares {described} ({_size_text(declared)}) but {holder} holds {holds}: "
                f"truncated, or a damaged header"
            )
    budget = _memory_budget()
    # The source array and the float32 copy made of it exist side by side for a moment.
    needed = (voxels if read_voxels is None else read_voxels) * (voxel_bytes + 4)
    if budget is not None and needed > budget:
        from_setting = bool(os.environ.get("SYNTHMED_MAX_VOLUME_GB", "").strip())
        limit = "SYNTHMED_MAX_VOLUME_GB allows" if from_setting else "this machine can give"
        raise SynthmedError(
            f"{where}: its header declares {described} ({_size_text(needed)} to read as float32), more than the "
            f"{_size_text(budget)} {limit}; refusing to allocate it (set SYNTHMED_MAX_VOLUME_GB to raise the limit)"
        )


def _magnitude(array: np.ndarray, where: str) -> np.ndarray:
    """Complex voxels (e.g. an MR reconstruction before its magnitude was taken) as their magnitude: casting them to
    float would silently keep the real part only."""
    if array.dtype.kind != "c":
        return array
    log.warning("%s holds complex values; using their magnitude", where)
    return np.abs(array)


@dataclass
class _DataLayout:
    """Where an ITK header keeps its voxels, as far as the size check needs to know."""

    file: Path | None = None  # the one file holding them (the header itself for inline data); None: unknown or several
    offset: int = 0  # bytes before the voxels in that file
    compressed: bool = False  # deflate-compressed


def _external_data_allowed() -> bool:
    return os.environ.get("SYNTHMED_ALLOW_EXTERNAL_DATA", "").strip().lower() in ("1", "true", "yes")


def _data_path(folder: Path, name: str) -> Path:
    # MetaIO and teem read a name starting with '/' as it stands and anything else relative to the header's
    # folder; MetaIO also takes '~' as a full path (without expanding it: relative to the working directory).
    return Path(name) if name.startswith(("/", "~")) or os.path.isabs(name) else folder / name


def _pattern_matches(folder: Path, pattern: str) -> list[str]:
    """The existing files a printf-style slice pattern (``slice%03d.raw``) can name, found with a glob, so that a
    symlink among them is caught whatever numbers the header gives."""
    pieces = _PRINTF_FIELD.split(pattern)
    matches = globlib.glob(str(_data_path(folder.absolute(), "*".join(globlib.escape(piece) for piece in pieces))))
    return [os.path.abspath(match) for match in matches]


def _header_head(path: Path) -> tuple[str, bool]:
    """The first 64 KB of a header file (as text) and whether that is the whole file."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(_MAX_HEADER_BYTES + 1)
    except OSError as error:
        raise SynthmedError(f"{path}: cannot read the file ({error.strerror or error})") from None
    # latin-1 maps every byte to one character, so offsets in the text are offsets in the file.
    return head[:_MAX_HEADER_BYTES].decode("latin-1"), len(head) <= _MAX_HEADER_BYTES


def _metaimage_data(path: Path, text: str, whole: bool) -> tuple[list[str], _DataLayout] | None:
    """The data files a MetaImage header names and where its voxels lie; None if its ``ElementDataFile`` line
    (the header's last) is not within ``text``."""
    fields: dict[str, str] = {}
    lines = text.split("\n")
    position = 0
    for number, line in enumerate(lines):
        # MetaIO ends a key at the first '=' or ':' (``ElementDataFile: name`` is read too).
        key, raw = (_METAIMAGE_SEPARATOR.split(line, maxsplit=1) + [""])[:2]
        key, value = key.strip().lower(), raw.strip()
        position += len(line) + 1
        if key != "elementdatafile":
            fields[key] = value
            continue
        if number == len(lines) - 1 and not whole:
            return None  # the name may go on past what was read
        break
    else:
        # No ElementDataFile line at all: ITK refuses the file. Not found within the first 64 KB: too long to check.
        return ([], _DataLayout()) if whole else None
    compressed = fields.get("compresseddata", "")[:1].lower() in ("t", "1")
    words = value.split()
    if value.upper() == "LOCAL":
        return [], _DataLayout(file=path, offset=position, compressed=compressed)
    if value.upper().startswith("LIST"):
        if not whole:
            return None  # the list runs to the end of the file
        return [name for name in lines[number + 1:] if name.strip()], _DataLayout()
    if "%" in value:
        # 'pattern min max step' (the pattern itself may hold spaces when all four are given)
        pattern = " ".join(words[:-3]) if len(words) >= 5 else words[0]
        return [pattern, *_pattern_matches(path.parent, pattern)], _DataLayout()
    try:
        skip = max(int(fields.get("headersize", "0")), 0)
    except ValueError:
        skip = 0
    # MetaIO reads NAME, or NAME.gz / NAME.Z (compressed) when NAME is missing.
    data = _data_path(path.parent, value)
    layout = _DataLayout(file=data, offset=skip, compressed=compressed) if data.is_file() else _DataLayout()
    return [raw, value + ".gz", value + ".Z"], layout


def _nrrd_data(path: Path, text: str, whole: bool) -> tuple[list[str], _DataLayout] | None:
    """The data files a NRRD header names and where its voxels lie; None if its end is not within ``text``."""
    lines = text.split("\n")
    fields: dict[str, str] = {}
    raw = ""
    position = 0
    for number, line in enumerate(lines):
        position += len(line) + 1
        if not line.strip():
            break  # a blank line ends the header; attached data follow it
        if number == len(lines) - 1 and not whole:
            return None
        key, _, rest = line.partition(":")
        key, value = key.strip().lower(), rest.strip()
        if key in ("data file", "datafile"):
            if value.upper().startswith("LIST"):
                if not whole:
                    return None  # the list runs to the end of the file
                return [name for name in lines[number + 1:] if name.strip()], _DataLayout()
            fields["data file"], raw = value, rest
        elif not line.startswith("#"):
            fields.setdefault(key, value)
    else:
        if not whole:
            return None
    encoding = fields.get("encoding", "raw").lower()
    sized = encoding in ("raw", "gz", "gzip")  # text, hex and bzip2 data have no simple bound on their size
    compressed = encoding != "raw"
    name = fields.get("data file")
    if name is None:
        return [], _DataLayout(file=path if sized else None, offset=position, compressed=compressed)
    words = name.split()
    if len(words) >= 4:  # maybe 'pattern min max step [subdim]' (teem takes a pattern without '%' as a plain name)
        return [raw, words[0], *_pattern_matches(path.parent, words[0])], _DataLayout()
    data = _data_path(path.parent, name)
    return [raw], _DataLayout(file=data if sized and data.is_file() else None, compressed=compressed)


def _spellings(name: str) -> list[str]:
    """A name as it stands in a header and as readers may take it: MetaIO trims the blanks after a name, teem keeps
    them, and a symlink can hide behind either spelling."""
    return list(dict.fromkeys(n for n in (name.strip(), name.lstrip(), name.rstrip(), name) if n.strip()))


def _inside(folder: Path, candidate: Path) -> bool:
    try:
        return candidate.resolve().is_relative_to(folder.resolve())
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte in the name: not a file we will read
        return False


def _check_itk_data_files(path: Path) -> _DataLayout:
    """Refuse an ITK header (MetaImage, NRRD) that names data files outside its own folder, and say where its voxels
    lie. A header can name any file (``ElementDataFile = ../../../../etc/passwd``, an absolute path, a symlink beside
    it); ITK would read that file as the image, so an image shared with us could read our files into its outputs.
    ``SYNTHMED_ALLOW_EXTERNAL_DATA=1`` lifts the rule for data kept apart on purpose."""
    where = str(path)
    allowed = _external_data_allowed()
    text, whole = _header_head(path)
    parse = _nrrd_data if _suffix_of_name(path.name) == ".nrrd" else _metaimage_data
    parsed = parse(path, text, whole)
    if parsed is None:
        if allowed:
            return _DataLayout()
        raise SynthmedError(
            f"{where}: its header does not end within the first {_MAX_HEADER_BYTES // 1024} KB, so the files it names "
            f"cannot be checked; refused (a crafted header can read any file). Set SYNTHMED_ALLOW_EXTERNAL_DATA=1 "
            f"to read it anyway"
        )
    names, layout = parsed
    if not allowed:
        for name in (spelling for name in names for spelling in _spellings(name)):
            if not _inside(path.parent, _data_path(path.parent, name)):
                raise SynthmedError(
                    f"{where}: its data file {name} lies outside the header's folder; refused (a crafted header can "
                    f"read any file). Move the data beside the header, or set SYNTHMED_ALLOW_EXTERNAL_DATA=1 to allow it"
                )
    return layout


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


def _shape_text(shape) -> str:
    return "x".join(str(int(s)) for s in shape)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:160]


def _pick_channel(array: np.ndarray, channel: int | None, where: str, what: str = "") -> np.ndarray:
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
                f"{where} is 4D ({_shape_text(array.shape)}){what}: choose a channel 0-{n - 1} (translate --channel N, or a 'channel' column in a prepare --manifest)"
            )
        _check_channel(channel, n, where, f"4D ({_shape_text(array.shape)})")
        return array[..., channel]
    if array.ndim > 4:
        raise SynthmedError(f"{where} has {array.ndim} dimensions ({_shape_text(array.shape)}); only 2D, 3D or 4D images are supported")
    if channel not in (None, 0):
        raise SynthmedError(f"{where} is {array.ndim}D ({_shape_text(array.shape)}) with no channels: drop channel={channel}")
    if array.ndim == 2:
        return array[:, :, None]
    if array.ndim == 3:
        return array
    raise SynthmedError(f"{where} has shape {_shape_text(array.shape) or '()'}; expected a 2D or 3D image")


def _check_channel(channel: int, n: int, where: str, what: str) -> None:
    if not isinstance(channel, (int, np.integer)) or isinstance(channel, bool) or not 0 <= channel < n:
        raise SynthmedError(f"{where}: channel={channel!r} is out of range for {what}; use 0-{n - 1}")


def _read_nifti(path: Path, channel: int | None, dtype) -> Volume:
    import nibabel as nib

    where = str(path)
    try:
        image = nib.load(str(path))
    except FileNotFoundError:
        raise SynthmedError(f"{where}: no such file") from None
    except Exception as error:  # noqa: BLE001 - anything nibabel raises here means a bad file
        raise SynthmedError(f"{where}: not a NIfTI file (header unreadable: {_first_line(error)}); is it truncated, or not really an image?") from None
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        raise SynthmedError(f"{where}: not a NIfTI file ({type(image).__name__}); convert it to .nii.gz")
    shape = tuple(int(s) for s in image.shape)
    if len(shape) < 2:
        raise SynthmedError(f"{where} has shape {_shape_text(shape)}; expected a 2D or 3D image")
    stored = image.get_data_dtype()
    _check_declared_size(
        where, shape, stored.name, stored.itemsize, file_size=path.stat().st_size,
        # nibabel zeroes the loaded header's vox_offset; the data proxy keeps the real one.
        offset=int(getattr(image.dataobj, "offset", 0)), compressed=_suffix_of_name(path.name) == ".nii.gz",
        read_voxels=math.prod(shape[:3]),
    )
    index: tuple = ()
    extra = [(axis, size) for axis, size in enumerate(shape[3:], start=3)]
    big = [axis for axis, size in extra if size != 1]
    if len(big) > 1:
        raise SynthmedError(f"{where} has {len(shape)} dimensions ({_shape_text(shape)}); only 2D, 3D or 4D images are supported")
    if big:
        n = shape[big[0]]
        if channel is None:
            raise SynthmedError(f"{where} is 4D ({_shape_text(shape)}): choose a channel 0-{n - 1} (translate --channel N, or a 'channel' column in a prepare --manifest)")
        _check_channel(channel, n, where, f"4D ({_shape_text(shape)})")
    elif channel not in (None, 0):
        raise SynthmedError(f"{where} is {min(len(shape), 3)}D ({_shape_text(shape)}) with no channels: drop channel={channel}")
    if extra:
        index = (slice(None),) * 3 + tuple(channel if axis in big else 0 for axis, _ in extra)
    try:
        if index:
            data = np.asarray(image.dataobj[index])
        elif np.dtype(dtype).kind == "f" and stored.kind != "c":
            data = image.get_fdata(dtype=np.dtype(dtype), caching="unchanged")
        else:
            data = np.asarray(image.dataobj)
    except MemoryError:
        raise
    except Exception as error:  # noqa: BLE001 - truncated/corrupt data
        raise SynthmedError(f"{where}: corrupt or truncated image data ({_first_line(error)}); re-export or re-download it") from None
    data = _magnitude(data, where)
    if data.ndim == 2:
        data = data[:, :, None]
    return Volume(
        data=data, affine=np.asarray(image.affine, dtype=np.float64), path=path, format="nifti",
        header=image.header, meta={"shape": shape, "channel": channel if big else None},
    )


def _itk_geometry_affine(origin, spacing, direction) -> np.ndarray:
    """RAS affine from ITK (LPS) origin/spacing/direction, for the first three (or two) axes."""
    dim = len(origin)
    direction = np.asarray(direction, dtype=np.float64).reshape(dim, dim)
    k = min(dim, 3)
    matrix = np.eye(3)
    matrix[:k, :k] = direction[:k, :k]
    sizes = np.ones(3)
    sizes[:k] = np.asarray(spacing, dtype=np.float64)[:k]
    position = np.zeros(3)
    position[:k] = np.asarray(origin, dtype=np.float64)[:k]
    affine = np.eye(4)
    affine[:3, :3] = _LPS @ matrix @ np.diag(sizes)
    affine[:3, 3] = _LPS @ position
    return affine


def _from_itk_image(image, path: Path, channel: int | None, fmt: str, where: str) -> Volume:
    import SimpleITK as sitk

    array = _magnitude(sitk.GetArrayFromImage(image), where)  # (z, y, x[, c]) or (t, z, y, x)
    dim = image.GetDimension()
    components = image.GetNumberOfComponentsPerPixel()
    if components > 1:
        spatial = np.transpose(array, tuple(range(dim - 1, -1, -1)) + (dim,))
        if channel is None:
            if components in (3, 4) and all(np.array_equal(spatial[..., 0], spatial[..., c]) for c in range(1, 3)):
                spatial = spatial[..., :1]
            else:
                raise SynthmedError(f"{where} has {components} components per voxel: choose a channel 0-{components - 1} (translate --channel N, or a 'channel' column in a prepare --manifest)")
        else:
            _check_channel(channel, components, where, f"{components} components")
            spatial = spatial[..., channel : channel + 1]
            channel = None
        spatial = spatial[..., 0]
    else:
        spatial = np.transpose(array, tuple(range(dim - 1, -1, -1)))
    data = _pick_channel(spatial, channel, where)
    origin, spacing, direction = image.GetOrigin(), image.GetSpacing(), image.GetDirection()
    header = {}
    for key in image.GetMetaDataKeys():
        try:
            header[key] = image.GetMetaData(key)
        except Exception:  # noqa: BLE001 - undecodable metadata is not worth failing for
            continue
    meta = {
        "itk_origin": tuple(origin), "itk_spacing": tuple(spacing), "itk_direction": tuple(direction),
        "itk_dimension": dim, "pixel_type": image.GetPixelIDTypeAsString(),
    }
    return Volume(data=data, affine=_itk_geometry_affine(origin, spacing, direction), path=path,
                  format=fmt, header=header, meta=meta)


def _read_itk(path: Path, channel: int | None) -> Volume:
    import SimpleITK as sitk

    where = str(path)
    layout = _check_itk_data_files(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.SetImageIO(_ITK_IMAGE_IO[_suffix_of_name(path.name)])
    try:
        reader.ReadImageInformation()  # the header only
        _check_itk_size(where, reader, layout)
        image = reader.Execute()
    except SynthmedError:
        raise
    except Exception as error:  # noqa: BLE001 - SimpleITK raises RuntimeError with long text
        raise SynthmedError(f"{where}: unreadable {volume_suffix(path)} file ({_itk_reason(error)}); is it really an image?") from None
    return _from_itk_image(image, path, channel, "itk", where)


def _check_itk_size(where: str, reader, layout: _DataLayout) -> None:
    """:func:`_check_declared_size` for the image an ITK reader has read the header of."""
    import SimpleITK as sitk

    size = tuple(int(s) for s in reader.GetSize())
    components = int(reader.GetNumberOfComponents())  # 2 for a complex pixel
    pixel = sitk.GetPixelIDValueAsString(reader.GetPixelID())  # e.g. 'vector of 16-bit signed integer'
    match = re.search(r"(\d+)-bit (unsigned integer|signed integer|float)", pixel)
    bits = int(match.group(1)) if match else 64
    kind = {"unsigned integer": "uint", "signed integer": "int"}.get(match.group(2), "float") if match else "float"
    file_size = None
    if layout.file is not None:
        try:
            file_size = layout.file.stat().st_size
        except OSError:
            file_size = None  # ITK will say it is missing
    _check_declared_size(
        where, size + ((components,) if components > 1 else ()), f"{kind}{bits}", bits // 8,
        file_size=file_size, offset=layout.offset, compressed=layout.compressed,
        data_file=layout.file.name if layout.file is not None and layout.file != Path(where) else None,
    )


def _itk_reason(error: BaseException) -> str:
    text = " ".join(str(error).split())
    for marker in ("Description:", "description:"):
        if marker in text:
            text = text.split(marker, 1)[1]
    return text.strip()[:160] or type(error).__name__


def _read_dicom(folder: Path, channel: int | None) -> Volume:
    import SimpleITK as sitk

    where = str(folder)
    try:
        series_ids = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    except Exception as error:  # noqa: BLE001
        raise SynthmedError(f"{where}: cannot scan the DICOM folder ({_itk_reason(error)})") from None
    if not series_ids:
        raise SynthmedError(f"{where}: DICOM files found but no readable series; are they image DICOM files?")
    files_by_series = {sid: list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid)) for sid in series_ids}
    chosen = max(series_ids, key=lambda sid: len(files_by_series[sid]))
    if len(series_ids) > 1:
        log.warning("%s holds %d DICOM series; reading the largest (%s, %d files)",
                    where, len(series_ids), chosen, len(files_by_series[chosen]))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files_by_series[chosen])
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        image = reader.Execute()
    except Exception as error:  # noqa: BLE001
        raise SynthmedError(f"{where}: cannot read DICOM series {chosen} ({_itk_reason(error)})") from None
    volume = _from_itk_image(image, folder, channel, "dicom", where)
    header = {}
    try:
        for key in reader.GetMetaDataKeys(0):
            header[key] = reader.GetMetaData(0, key)
    except Exception:  # noqa: BLE001 - metadata is informative only
        pass
    volume.header = header
    volume.meta.update({
        "series_id": chosen,
        "series_ids": series_ids,
        "n_files": len(files_by_series[chosen]),
        "files": files_by_series[chosen],
    })
    return volume


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, where the data start) from a .npy header, reading nothing else."""
    from numpy.lib import format as npy_format

    with open(path, "rb") as handle:
        version = npy_format.read_magic(handle)
        if version == (1, 0):
            shape, _, dtype = npy_format.read_array_header_1_0(handle)
        elif version == (2, 0):
            shape, _, dtype = npy_format.read_array_header_2_0(handle)
        else:  # 3.0 exists only for structured arrays with non-Latin-1 field names: never an image
            raise ValueError(f"format version {version[0]}.{version[1]} holds no plain numeric array")
        return tuple(int(s) for s in shape), np.dtype(dtype), handle.tell()


def _read_npy(path: Path, channel: int | None) -> Volume:
    where = str(path)
    try:
        shape, dtype, offset = _npy_header(path)
    except Exception as error:  # noqa: BLE001 - not .npy (an .npz, a pickle), a damaged header
        raise SynthmedError(f"{where}: not a readable .npy array ({_first_line(error)}); save it with numpy.save") from None
    if dtype.kind not in "biufc":
        raise SynthmedError(f"{where}: holds {dtype} values, not a numeric image")
    _check_declared_size(where, shape, dtype.name, dtype.itemsize, file_size=path.stat().st_size, offset=offset)
    try:
        array = np.load(str(path), allow_pickle=False)
    except Exception as error:  # noqa: BLE001 - truncated data
        raise SynthmedError(f"{where}: not a readable .npy array ({_first_line(error)}); save it with numpy.save") from None
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "biufc":
        raise SynthmedError(f"{where}: holds {getattr(array, 'dtype', type(array))} values, not a numeric image")
    data = _pick_channel(_magnitude(array, where), channel, where)
    return Volume(data=data, affine=np.eye(4), path=path, format="npy", header={}, meta={"shape": array.shape})


def _is_hdf5(path: Path) -> bool:
    import h5py

    try:
        return bool(h5py.is_hdf5(str(path)))
    except Exception:  # noqa: BLE001
        return False


def _read_mat(path: Path, key: str | None, channel: int | None) -> Volume:
    where = str(path)
    if _is_hdf5(path):
        array, key, variables = _read_mat73(path, key)
        version = "7.3"
    else:
        array, key, variables = _read_mat5(path, key)
        version = "5"
    if array.dtype.kind == "b":
        array = array.astype(np.uint8)
    data = _pick_channel(array, channel, f"{where} (variable {key!r})")
    meta = {"key": key, "mat_version": version, "variables": variables, "shape": tuple(array.shape)}
    return Volume(data=data, affine=np.eye(4), path=path, format="mat", header={"key": key, "version": version}, meta=meta)


def _choose_mat_key(path: Path, key: str | None, variables: dict[str, tuple]) -> str:
    where = str(path)
    listing = ", ".join(f"{name} ({_shape_text(shape)})" for name, shape in variables.items()) or "none"
    if key is not None:
        if key not in variables:
            raise SynthmedError(f"{where}: no array variable {key!r}; available: {listing}; pass key=NAME")
        return key
    if len(variables) == 1:
        return next(iter(variables))
    if "data_fs" in variables:
        return "data_fs"
    if not variables:
        raise SynthmedError(f"{where}: no numeric array variables in this .mat file")
    raise SynthmedError(f"{where} holds {len(variables)} arrays: {listing}; pass key=NAME to pick one")


def _read_mat5(path: Path, key: str | None) -> tuple[np.ndarray, str, list[str]]:
    import scipy.io
    import scipy.sparse

    where = str(path)
    try:
        listing = scipy.io.whosmat(str(path))
    except Exception as error:  # noqa: BLE001 - MatReadError, ValueError, struct errors
        raise SynthmedError(f"{where}: not a MATLAB .mat file ({_first_line(error)}); save it with MATLAB or scipy.io.savemat") from None
    numeric = {"double", "single", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
               "logical", "sparse"}
    variables = {name: tuple(shape) for name, shape, cls in listing if cls in numeric}
    key = _choose_mat_key(path, key, variables)
    matlab_class = next(cls for name, _, cls in listing if name == key)
    _check_declared_size(where, variables[key], matlab_class, _MAT5_ITEMSIZE.get(matlab_class, 8))
    try:
        loaded = scipy.io.loadmat(str(path), variable_names=[key], squeeze_me=False, mat_dtype=False)
    except Exception as error:  # noqa: BLE001
        raise SynthmedError(f"{where}: cannot read variable {key!r} ({_first_line(error)}); is the file truncated?") from None
    array = loaded.get(key)
    if scipy.sparse.issparse(array):
        array = array.toarray()
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "biufc":
        raise SynthmedError(f"{where}: variable {key!r} is not a numeric array")
    return _magnitude(array, where), key, list(variables)


def _read_mat73(path: Path, key: str | None) -> tuple[np.ndarray, str, list[str]]:
    import h5py

    where = str(path)
    try:
        with h5py.File(str(path), "r") as handle:
            variables = {}
            for name, item in handle.items():
                if name.startswith("#") or not isinstance(item, h5py.Dataset):
                    continue
                matlab_class = item.attrs.get("MATLAB_class", b"")
                if isinstance(matlab_class, bytes):
                    matlab_class = matlab_class.decode(errors="replace")
                if item.dtype.kind not in "biuf" or matlab_class in ("char", "cell", "struct") or item.attrs.get("MATLAB_empty", 0):
                    continue
                variables[name] = tuple(reversed(item.shape))  # as MATLAB sees it
            key = _choose_mat_key(path, key, variables)
            dataset = handle[key]
            _check_declared_size(where, variables[key], dataset.dtype.name, dataset.dtype.itemsize)
            # h5py sees MATLAB's column-major array with the axes reversed: transpose back.
            array = np.asarray(handle[key][()]).T
    except SynthmedError:
        raise
    except MemoryError:
        raise
    except Exception as error:  # noqa: BLE001 - h5py raises OSError/KeyError/ValueError for bad files
        raise SynthmedError(f"{where}: unreadable MATLAB v7.3 (HDF5) file ({_first_line(error)}); is it truncated?") from None
    return array, key, list(variables)


def _image_to_2d(image, channel: int | None, where: str) -> tuple[np.ndarray, int]:
    """One PIL frame -> (H, W) array and its bit depth."""
    mode = image.mode
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    elif mode == "1":
        image = image.convert("L")
        mode = "L"
    array = np.asarray(image)
    bits = {"L": 8, "LA": 8, "RGB": 8, "RGBA": 8, "CMYK": 8, "YCbCr": 8, "F": 32, "I": 32}.get(mode, 16 if mode.startswith("I;16") else array.dtype.itemsize * 8)
    if array.ndim == 2:
        # A grayscale pixel has the same value in every channel, so any channel is this image.
        return array, bits
    n = array.shape[2]
    if channel is not None:
        _check_channel(channel, n, where, f"a {mode} image with {n} channels")
        return array[:, :, channel], bits
    colour = 1 if mode == "LA" else min(n, 3)  # ignore alpha
    if all(np.array_equal(array[:, :, 0], array[:, :, c]) for c in range(1, colour)):
        return array[:, :, 0], bits
    names = {"RGB": "0=R, 1=G, 2=B", "RGBA": "0=R, 1=G, 2=B, 3=A"}.get(mode, f"0-{n - 1}")
    raise SynthmedError(f"{where}: {mode} image with different channels: choose a channel ({names}) (translate --channel N, or a 'channel' column in a prepare --manifest)")


def _read_image_file(path: str, channel: int | None) -> tuple[np.ndarray, dict]:
    """A PNG/TIFF file -> (H, W, pages) array (1 page for PNG)."""
    from PIL import Image

    where = str(path)
    try:
        with Image.open(path) as image:
            frames = []
            n_frames = getattr(image, "n_frames", 1)
            mode = image.mode
            bits = 8
            for index in range(n_frames):
                image.seek(index)
                image.load()
                array, bits = _image_to_2d(image, channel, where)
                if frames and array.shape != frames[0].shape:
                    raise SynthmedError(f"{where}: page {index} is {_shape_text(array.shape)}, page 0 is {_shape_text(frames[0].shape)}; pages must match")
                frames.append(np.array(array))
    except SynthmedError:
        raise
    except FileNotFoundError:
        raise SynthmedError(f"{where}: no such file") from None
    except MemoryError:
        raise
    except Exception as error:  # noqa: BLE001 - PIL's UnidentifiedImageError, truncated data, ...
        raise SynthmedError(f"{where}: not a readable image ({_first_line(error)}); is it a valid PNG/TIFF?") from None
    data = np.stack(frames, axis=-1)
    return data, {"mode": mode, "bit_depth": bits, "pages": len(frames)}


def _read_image(path: Path, channel: int | None) -> Volume:
    data, info = _read_image_file(str(path), channel)
    meta = {**info, "channel": channel}
    return Volume(data=data, affine=np.eye(4), path=path, format="image", header=dict(info), meta=meta)


def _slice_template(path: str) -> str:
    return re.sub(r"\d+", "#", os.path.basename(path)).lower()


def _read_slices(files: list[str], source: str, channel: int | None, glob_hint: str) -> Volume:
    templates: dict[str, list[str]] = {}
    for file in files:
        templates.setdefault(_slice_template(file), []).append(file)
    # Two or more numbered series side by side (LGG's P_3.tif and P_3_mask.tif) cannot be one
    # stack; single odd names (slice_a.png, slice_b.png) are fine.
    if sum(len(names) >= 2 for names in templates.values()) >= 2:
        kinds = sorted(templates.items(), key=lambda kv: -len(kv[1]))
        shown = ", ".join(f"{len(names)} like {os.path.basename(names[0])}" for _, names in kinds[:3])
        raise SynthmedError(
            f"{source}: slices of {len(templates)} different kinds ({shown}); "
            f"pass a glob that picks one kind, e.g. '{glob_hint}'"
        )
    slices = []
    info: dict = {}
    for file in files:
        data, info = _read_image_file(file, channel)
        if slices and data.shape[:2] != slices[0].shape[:2]:
            raise SynthmedError(
                f"{file}: slice is {_shape_text(data.shape[:2])}, {os.path.basename(files[0])} is "
                f"{_shape_text(slices[0].shape[:2])}; all slices must have the same size"
            )
        slices.append(data)
    stacked = np.concatenate(slices, axis=-1)
    meta = {"files": list(files), "mode": info.get("mode"), "bit_depth": info.get("bit_depth"), "channel": channel}
    return Volume(data=stacked, affine=np.eye(4), path=Path(source), format="image", header={"files": list(files)}, meta=meta)


def _glob_hint(files: list[str], folder: str) -> str:
    """A glob that picks the most common kind of slice file (numbered names ending in a digit, if any)."""
    names = [os.path.basename(f) for f in files]
    numbered = [n for n in names if re.search(r"\d\.[^.]+$", n)]
    sample = (numbered or names)[0]
    suffix = sample[sample.rfind("."):]
    stem = sample[: sample.rfind(".")]
    prefix = re.split(r"\d", stem, maxsplit=1)[0]
    return os.path.join(folder, f"{globlib.escape(prefix)}*[0-9]{suffix}" if numbered else f"{globlib.escape(prefix)}*{suffix}")


def _read_folder(folder: Path, channel: int | None) -> Volume:
    where = str(folder)
    if _dicom_files(folder, limit=1):
        return _read_dicom(folder, channel)
    files = _slice_files(folder)
    if files:
        return _read_slices(files, where, channel, _glob_hint(files, where))
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
    wrong = [f for f in files if _suffix_of_name(os.path.basename(f)) not in SLICE_SUFFIXES]
    if len(files) == 1 and wrong and _suffix_of_name(os.path.basename(files[0])):
        return read_volume(files[0], key=key, channel=channel)  # a pattern naming one volume file
    if wrong:
        raise SynthmedError(
            f"{pattern}: matches {os.path.basename(wrong[0])}, which is not a 2D slice (.png/.tif); "
            f"a glob must match only 2D slice images"
        )
    return _read_slices(files, pattern, channel, _glob_hint(files, os.path.dirname(pattern) or "."))


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
            suffix = _suffix_of_name(path.name)
            if suffix in (".nii", ".nii.gz"):
                volume = _read_nifti(path, channel, dtype)
            elif suffix in ITK_SUFFIXES:
                volume = _read_itk(path, channel)
            elif suffix == ".npy":
                volume = _read_npy(path, channel)
            elif suffix == ".mat":
                volume = _read_mat(path, key, channel)
            elif suffix in SLICE_SUFFIXES:
                volume = _read_image(path, channel)
            else:
                lowered = path.name.lower()
                hint = ("; point at the folder holding the DICOM series" if lowered.endswith((".dcm", ".dicom"))
                        or has_dicom_magic(str(path)) else "")
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


def _itk_geometry_from_affine(affine: np.ndarray) -> tuple[tuple, tuple, tuple]:
    """(origin, spacing, direction) in ITK's LPS convention from a RAS affine."""
    affine = np.asarray(affine, dtype=np.float64)
    matrix = _LPS @ affine[:3, :3]
    spacing = np.linalg.norm(matrix, axis=0)
    spacing[spacing == 0] = 1.0
    direction = matrix / spacing
    origin = _LPS @ affine[:3, 3]
    return tuple(float(v) for v in origin), tuple(float(v) for v in spacing), tuple(float(v) for v in direction.ravel())


def _output_array(data: np.ndarray) -> np.ndarray:
    """float -> float32, bool -> uint8, integers kept."""
    if data.dtype.kind == "f":
        return data.astype(np.float32, copy=False)
    if data.dtype.kind == "b":
        return data.astype(np.uint8)
    return data


def _write_nifti(tmp: str, data: np.ndarray, like: Volume | None) -> None:
    import nibabel as nib

    array = np.asarray(data, dtype=np.float32)
    if like is not None and like.format == "nifti" and isinstance(like.header, (nib.Nifti1Header, nib.Nifti2Header)):
        original = tuple(like.meta.get("shape", ()))
        if len(original) == 2 and array.shape == original + (1,):
            array = array[:, :, 0]
        header = like.header.copy()
        header.set_data_dtype(np.float32)
        header.set_slope_inter(np.nan, np.nan)
        cls = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
        # The affine equals the header's best affine, so nibabel leaves sform/qform (and codes) untouched.
        image = cls(array, np.asarray(like.affine, dtype=np.float64), header=header)
        image.header.set_slope_inter(np.nan, np.nan)
    else:
        affine = np.asarray(like.affine, dtype=np.float64) if like is not None else np.eye(4)
        image = nib.Nifti1Image(array, affine)
        image.header.set_data_dtype(np.float32)
        image.header.set_sform(affine, code=1)
        image.header.set_qform(affine, code=1)
        image.header.set_xyzt_units("mm", "sec")
    nib.save(image, tmp)


def _itk_image(data: np.ndarray, like: Volume | None):
    import SimpleITK as sitk

    array = _output_array(data)
    meta = like.meta if like is not None else {}
    dim = meta.get("itk_dimension")
    if dim == 2 and array.shape[2] == 1 and len(meta.get("itk_origin", ())) == 2:
        image = sitk.GetImageFromArray(np.ascontiguousarray(array[:, :, 0].T))
        image.SetOrigin(meta["itk_origin"])
        image.SetSpacing(meta["itk_spacing"])
        image.SetDirection(meta["itk_direction"])
        return image
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array, (2, 1, 0))))
    if dim == 3 and len(meta.get("itk_origin", ())) == 3:
        origin, spacing, direction = meta["itk_origin"], meta["itk_spacing"], meta["itk_direction"]
    else:
        origin, spacing, direction = _itk_geometry_from_affine(like.affine if like is not None else np.eye(4))
    image.SetOrigin(tuple(origin))
    image.SetSpacing(tuple(spacing))
    image.SetDirection(tuple(direction))
    return image


def _write_itk(tmp: str, data: np.ndarray, like: Volume | None) -> None:
    import SimpleITK as sitk

    image = _itk_image(data, like)
    try:
        sitk.WriteImage(image, tmp, useCompression=not tmp.lower().endswith(".mhd"))
    except RuntimeError as error:
        raise OSError(_itk_reason(error)) from None


def _write_npy(tmp: str, data: np.ndarray, like: Volume | None) -> None:
    with open(tmp, "wb") as handle:
        np.save(handle, data, allow_pickle=False)


def _write_mat(tmp: str, data: np.ndarray, like: Volume | None) -> None:
    import scipy.io

    key = (like.meta.get("key") if like is not None else None) or "data"
    with open(tmp, "wb") as handle:
        scipy.io.savemat(handle, {key: data}, do_compression=True, format="5")


def _image_pages(data: np.ndarray, out: Path, suffix: str) -> list[np.ndarray]:
    if data.ndim == 3 and data.shape[2] != 1 and data.shape[0] != 1 and data.shape[1] != 1:
        if suffix == ".png":
            raise SynthmedError(
                f"{out}: PNG holds one 2D slice, data is {_shape_text(data.shape)}; write .tif (multi-page) or .nii.gz"
            )
        pages = [data[:, :, k] for k in range(data.shape[2])]
    else:
        pages = [np.squeeze(data)] if data.ndim > 2 else [data]
        if pages[0].ndim != 2:
            raise SynthmedError(f"{out}: cannot write data of shape {_shape_text(data.shape)} as a 2D image; use .nii.gz")
    if data.size == 0:
        raise SynthmedError(f"{out}: no voxels to write")
    finite = np.isfinite(data) if data.dtype.kind == "f" else np.ones(1, bool)
    integral = bool(finite.all()) and (data.dtype.kind in "biu" or bool(np.all(np.equal(np.mod(data, 1), 0))))
    low, high = (float(np.min(data)), float(np.max(data))) if finite.all() else (0.0, -1.0)
    if integral and low >= 0 and high <= 255:
        dtype = np.uint8
    elif integral and low >= 0 and high <= 65535:
        dtype = np.uint16
    elif suffix == ".png":
        raise SynthmedError(
            f"{out}: PNG holds only whole numbers 0-65535, data range is {low:g}..{high:g}; write .tif or .nii.gz instead"
        )
    else:
        dtype = np.float32
    return [np.ascontiguousarray(page.astype(dtype)) for page in pages]


def _write_image(tmp: str, pages: list[np.ndarray], suffix: str) -> None:
    from PIL import Image

    images = [Image.fromarray(page) for page in pages]
    fmt = "PNG" if suffix == ".png" else "TIFF"
    if len(images) > 1:
        images[0].save(tmp, format=fmt, save_all=True, append_images=images[1:])
    else:
        images[0].save(tmp, format=fmt)


def ensure_writable_folder(folder: str | os.PathLike) -> Path:
    """Create ``folder`` (and parents) if needed; a :class:`SynthmedError` if that fails or it is read-only."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SynthmedError(f"cannot create folder {folder} ({error.strerror or error}); choose another output") from None
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
    suffix = _suffix_of_name(out.name)
    if not suffix:
        raise SynthmedError(f"{out}: unknown output type; end the name with one of {', '.join(VOLUME_SUFFIXES)}")
    data = np.asarray(data)
    if data.dtype.kind not in "biuf":
        raise SynthmedError(f"{out}: cannot write {data.dtype} data; give a numeric array")
    if like is not None and tuple(data.shape) != tuple(like.data.shape):
        raise SynthmedError(
            f"{out}: data shape {_shape_text(data.shape)} does not match {like.path} ({_shape_text(like.data.shape)}); "
            f"outputs must have the source's shape"
        )
    if data.ndim == 2 and like is None and suffix not in (".npy", ".mat"):
        data = data[:, :, None]
    if data.ndim != 3 and suffix not in (".npy", ".mat"):
        raise SynthmedError(f"{out}: data is {data.ndim}D ({_shape_text(data.shape)}); only 3D (X, Y, Z) volumes can be written")
    if out.is_dir():
        raise SynthmedError(f"{out} is a folder; give an output file name like out{suffix}")
    if out.exists() and not overwrite:
        raise SynthmedError(f"{out} exists; pass --overwrite to replace it")
    pages = _image_pages(data, out, suffix) if suffix in SLICE_SUFFIXES else None
    parent = ensure_writable_folder(out.parent if str(out.parent) else Path("."))

    if suffix == ".mhd":
        return _write_mhd(out, data, like)
    try:
        handle, tmp = tempfile.mkstemp(dir=parent, prefix=f".{out.name}.tmp-{os.getpid()}-", suffix=suffix)
        os.close(handle)
    except OSError as error:
        raise SynthmedError(f"{out}: cannot write in {parent} ({error.strerror or error}); choose another output") from None
    try:
        if suffix in (".nii", ".nii.gz"):
            _write_nifti(tmp, data, like)
        elif suffix in ITK_SUFFIXES:
            _write_itk(tmp, data, like)
        elif suffix == ".npy":
            _write_npy(tmp, data, like)
        elif suffix == ".mat":
            _write_mat(tmp, data, like)
        else:
            _write_image(tmp, pages, suffix)
        os.chmod(tmp, default_file_mode())  # mkstemp makes 0600; outputs get the user's usual permissions
        os.replace(tmp, out)
    except OSError as error:
        _remove(tmp)
        raise SynthmedError(f"{out}: writing failed ({error.strerror or _first_line(error)}); check free space and permissions") from None
    except BaseException:
        _remove(tmp)
        raise
    return out


def _write_mhd(out: Path, data: np.ndarray, like: Volume | None) -> Path:
    """MetaImage header + .raw: written under their final names in a temporary folder, then moved."""
    parent = out.parent if str(out.parent) else Path(".")
    raw_name = out.name[: -len(".mhd")] + ".raw"
    if (parent / raw_name).exists() and not (out.exists()):
        raise SynthmedError(f"{parent / raw_name} exists and would be replaced by {out.name}'s data; move it or choose another name")
    try:
        folder = tempfile.mkdtemp(dir=parent, prefix=f".{out.name}.tmp-{os.getpid()}-")
    except OSError as error:
        raise SynthmedError(f"{out}: cannot write in {parent} ({error.strerror or error}); choose another output") from None
    try:
        _write_itk(os.path.join(folder, out.name), data, like)
        os.replace(os.path.join(folder, raw_name), parent / raw_name)
        os.replace(os.path.join(folder, out.name), out)
    except OSError as error:
        raise SynthmedError(f"{out}: writing failed ({error.strerror or _first_line(error)}); check free space and permissions") from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return out


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
