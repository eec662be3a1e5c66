"""NumPy ``.npy`` arrays (no geometry: identity affine); the header is read first, so a crafted size is refused
before anything is allocated."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from synthmed.data.formats.common import Volume, check_declared_size, first_line, magnitude, pick_channel
from synthmed.errors import SynthmedError


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


def read(path: Path, channel: int | None) -> Volume:
    where = str(path)
    try:
        shape, dtype, offset = _npy_header(path)
    except Exception as error:  # noqa: BLE001 - not .npy (an .npz, a pickle), a damaged header
        raise SynthmedError(
            f"{where}: not a readable .npy array ({first_line(error)}); save it with numpy.save"
        ) from None
    if dtype.kind not in "biufc":
        raise SynthmedError(f"{where}: holds {dtype} values, not a numeric image")
    check_declared_size(where, shape, dtype.name, dtype.itemsize, file_size=path.stat().st_size, offset=offset)
    try:
        array = np.load(str(path), allow_pickle=False)
    except Exception as error:  # noqa: BLE001 - truncated data
        raise SynthmedError(
            f"{where}: not a readable .npy array ({first_line(error)}); save it with numpy.save"
        ) from None
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "biufc":
        raise SynthmedError(f"{where}: holds {getattr(array, 'dtype', type(array))} values, not a numeric image")
    data = pick_channel(magnitude(array, where), channel, where)
    return Volume(data=data, affine=np.eye(4), path=path, format="npy", header={}, meta={"shape": array.shape})


def write(tmp: str, data: np.ndarray, like: Volume | None) -> None:
    with open(tmp, "wb") as handle:
        np.save(handle, data, allow_pickle=False)
