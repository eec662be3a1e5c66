"""MATLAB ``.mat`` files, v5 (scipy) and v7.3 (HDF5, h5py), returned as MATLAB indexes them (see
:mod:`synthmed.data.io`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from synthmed.data.formats.common import Volume, check_declared_size, first_line, magnitude, pick_channel, shape_text
from synthmed.errors import SynthmedError

_MAT5_ITEMSIZE = {
    "double": 8,
    "single": 4,
    "int8": 1,
    "uint8": 1,
    "int16": 2,
    "uint16": 2,
    "int32": 4,
    "uint32": 4,
    "int64": 8,
    "uint64": 8,
    "logical": 1,
    "sparse": 8,
}


def _is_hdf5(path: Path) -> bool:
    import h5py

    try:
        return bool(h5py.is_hdf5(str(path)))
    except Exception:  # noqa: BLE001
        return False


def read(path: Path, key: str | None, channel: int | None) -> Volume:
    where = str(path)
    if _is_hdf5(path):
        array, key, variables = _read_mat73(path, key)
        version = "7.3"
    else:
        array, key, variables = _read_mat5(path, key)
        version = "5"
    if array.dtype.kind == "b":
        array = array.astype(np.uint8)
    data = pick_channel(array, channel, f"{where} (variable {key!r})")
    meta = {"key": key, "mat_version": version, "variables": variables, "shape": tuple(array.shape)}
    return Volume(
        data=data, affine=np.eye(4), path=path, format="mat", header={"key": key, "version": version}, meta=meta
    )


def _choose_mat_key(path: Path, key: str | None, variables: dict[str, tuple]) -> str:
    where = str(path)
    listing = ", ".join(f"{name} ({shape_text(shape)})" for name, shape in variables.items()) or "none"
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
        raise SynthmedError(
            f"{where}: not a MATLAB .mat file ({first_line(error)}); save it with MATLAB or scipy.io.savemat"
        ) from None
    numeric = {
        "double",
        "single",
        "int8",
        "uint8",
        "int16",
        "uint16",
        "int32",
        "uint32",
        "int64",
        "uint64",
        "logical",
        "sparse",
    }
    variables = {name: tuple(shape) for name, shape, cls in listing if cls in numeric}
    key = _choose_mat_key(path, key, variables)
    matlab_class = next(cls for name, _, cls in listing if name == key)
    check_declared_size(where, variables[key], matlab_class, _MAT5_ITEMSIZE.get(matlab_class, 8))
    try:
        loaded = scipy.io.loadmat(str(path), variable_names=[key], squeeze_me=False, mat_dtype=False)
    except Exception as error:  # noqa: BLE001
        raise SynthmedError(
            f"{where}: cannot read variable {key!r} ({first_line(error)}); is the file truncated?"
        ) from None
    array = loaded.get(key)
    if scipy.sparse.issparse(array):
        array = array.toarray()
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "biufc":
        raise SynthmedError(f"{where}: variable {key!r} is not a numeric array")
    return magnitude(array, where), key, list(variables)


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
                if (
                    item.dtype.kind not in "biuf"
                    or matlab_class in ("char", "cell", "struct")
                    or item.attrs.get("MATLAB_empty", 0)
                ):
                    continue
                variables[name] = tuple(reversed(item.shape))  # as MATLAB sees it
            key = _choose_mat_key(path, key, variables)
            dataset = handle[key]
            check_declared_size(where, variables[key], dataset.dtype.name, dataset.dtype.itemsize)
            # h5py sees MATLAB's column-major array with the axes reversed: transpose back.
            array = np.asarray(handle[key][()]).T
    except SynthmedError:
        raise
    except MemoryError:
        raise
    except Exception as error:  # noqa: BLE001 - h5py raises OSError/KeyError/ValueError for bad files
        raise SynthmedError(
            f"{where}: unreadable MATLAB v7.3 (HDF5) file ({first_line(error)}); is it truncated?"
        ) from None
    return array, key, list(variables)


def write(tmp: str, data: np.ndarray, like: Volume | None) -> None:
    import scipy.io

    key = (like.meta.get("key") if like is not None else None) or "data"
    with open(tmp, "wb") as handle:
        scipy.io.savemat(handle, {key: data}, do_compression=True, format="5")
