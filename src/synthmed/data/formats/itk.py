"""MetaImage (``.mha``, ``.mhd``) and NRRD (``.nrrd``) through SimpleITK, and the ITK geometry both these and DICOM
use. ITK arrays are ``(z, y, x)`` and its world coordinates LPS; volumes here are ``(x, y, z)`` with a RAS affine,
and ``meta`` keeps ITK's own origin, spacing and direction for an exact write-back. A header may name data files
anywhere: those outside its own folder are refused unless ``SYNTHMED_ALLOW_EXTERNAL_DATA=1``."""

from __future__ import annotations

import glob as globlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synthmed.data.formats.common import (
    Volume,
    check_channel,
    check_declared_size,
    magnitude,
    pick_channel,
    suffix_of_name,
)
from synthmed.errors import SynthmedError

_LPS = np.diag([-1.0, -1.0, 1.0])  # LPS <-> RAS (its own inverse)
# A MetaImage or NRRD header is a few hundred bytes; we never parse more than this of one.
_MAX_HEADER_BYTES = 64 * 1024
# The ITK reader for each suffix, named so that ITK cannot pick another reader (one with other rules for the
# files a header may name) from the file's content.
_ITK_IMAGE_IO = {".mha": "MetaImageIO", ".mhd": "MetaImageIO", ".nrrd": "NrrdImageIO"}
_METAIMAGE_SEPARATOR = re.compile(r"[=:]")
_PRINTF_FIELD = re.compile(r"%[-+ #0]*\d*(?:\.\d+)?[hlLqjzt]*[diouxXeEfFgGcs]")


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
        return [name for name in lines[number + 1 :] if name.strip()], _DataLayout()
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
                return [name for name in lines[number + 1 :] if name.strip()], _DataLayout()
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
    parse = _nrrd_data if suffix_of_name(path.name) == ".nrrd" else _metaimage_data
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


def from_itk_image(image, path: Path, channel: int | None, fmt: str, where: str) -> Volume:
    import SimpleITK as sitk

    array = magnitude(sitk.GetArrayFromImage(image), where)  # (z, y, x[, c]) or (t, z, y, x)
    dim = image.GetDimension()
    components = image.GetNumberOfComponentsPerPixel()
    if components > 1:
        spatial = np.transpose(array, tuple(range(dim - 1, -1, -1)) + (dim,))
        if channel is None:
            if components in (3, 4) and all(np.array_equal(spatial[..., 0], spatial[..., c]) for c in range(1, 3)):
                spatial = spatial[..., :1]
            else:
                raise SynthmedError(
                    f"{where} has {components} components per voxel: choose a channel 0-{components - 1} (translate --channel N, or a 'channel' column in a prepare --manifest)"
                )
        else:
            check_channel(channel, components, where, f"{components} components")
            spatial = spatial[..., channel : channel + 1]
            channel = None
        spatial = spatial[..., 0]
    else:
        spatial = np.transpose(array, tuple(range(dim - 1, -1, -1)))
    data = pick_channel(spatial, channel, where)
    origin, spacing, direction = image.GetOrigin(), image.GetSpacing(), image.GetDirection()
    header = {}
    for key in image.GetMetaDataKeys():
        try:
            header[key] = image.GetMetaData(key)
        except Exception:  # noqa: BLE001 - undecodable metadata is not worth failing for
            continue
    meta = {
        "itk_origin": tuple(origin),
        "itk_spacing": tuple(spacing),
        "itk_direction": tuple(direction),
        "itk_dimension": dim,
        "pixel_type": image.GetPixelIDTypeAsString(),
    }
    return Volume(
        data=data,
        affine=_itk_geometry_affine(origin, spacing, direction),
        path=path,
        format=fmt,
        header=header,
        meta=meta,
    )


def read(path: Path, channel: int | None) -> Volume:
    import SimpleITK as sitk

    where = str(path)
    layout = _check_itk_data_files(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.SetImageIO(_ITK_IMAGE_IO[suffix_of_name(path.name)])
    try:
        reader.ReadImageInformation()  # the header only
        _check_itk_size(where, reader, layout)
        image = reader.Execute()
    except SynthmedError:
        raise
    except Exception as error:  # noqa: BLE001 - SimpleITK raises RuntimeError with long text
        raise SynthmedError(
            f"{where}: unreadable {suffix_of_name(path.name)} file ({itk_reason(error)}); is it really an image?"
        ) from None
    return from_itk_image(image, path, channel, "itk", where)


def _check_itk_size(where: str, reader, layout: _DataLayout) -> None:
    """:func:`check_declared_size` for the image an ITK reader has read the header of."""
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
    check_declared_size(
        where,
        size + ((components,) if components > 1 else ()),
        f"{kind}{bits}",
        bits // 8,
        file_size=file_size,
        offset=layout.offset,
        compressed=layout.compressed,
        data_file=layout.file.name if layout.file is not None and layout.file != Path(where) else None,
    )


def itk_reason(error: BaseException) -> str:
    text = " ".join(str(error).split())
    for marker in ("Description:", "description:"):
        if marker in text:
            text = text.split(marker, 1)[1]
    return text.strip()[:160] or type(error).__name__


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


def write(tmp: str, data: np.ndarray, like: Volume | None) -> None:
    import SimpleITK as sitk

    image = _itk_image(data, like)
    try:
        sitk.WriteImage(image, tmp, useCompression=not tmp.lower().endswith(".mhd"))
    except RuntimeError as error:
        raise OSError(itk_reason(error)) from None
