"""Read and write BART's ``.cfl``/``.hdr`` array files, the exchange format of the Berkeley Advanced
Reconstruction Toolbox (Uecker et al.), in which many public k-space examples and reference reconstructions
are shared.

A BART array ``name`` is two files:

- ``name.hdr``: text; the line ``# Dimensions`` is followed by one line of space-separated sizes (BART writes
  16, one per dimension of its fixed layout: 0 readout, 1 and 2 phase encoding, 3 coils, 4 sets of maps,
  5 echoes, ..., 10 time, ...). Other ``# ...`` sections (command, files, creator) are informational.
- ``name.cfl``: the raw data, little-endian complex64 (interleaved float32 real and imaginary parts) in
  Fortran (column-major) order: the *first* index varies fastest. Element ``[i, j]`` of a 2D array sits at
  position ``i + j * size0`` in the file.

Dimensions: :func:`read_cfl` drops *trailing* singleton dimensions by default (``squeeze="trailing"``), which
keeps every remaining axis at its BART position, so axis 3 is still the coil axis: BART's 2D brain k-space
``1 180 230 8 1 ... 1`` reads as ``(1, 180, 230, 8)``. ``squeeze="all"`` drops every singleton (``(180, 230,
8)``: convenient, but the axes no longer have BART's meaning), ``squeeze="none"`` keeps all 16.
:func:`write_cfl` pads the shape with ones to 16 dimensions, as BART does, so a squeezed array written back
has the same header sizes. A 0-dimensional array is written as size 1 and reads back as shape ``(1,)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np

from synthmed.errors import SynthmedError
from synthmed.files import write_atomic

BART_DIMS = 16
_DTYPE = np.dtype("<c8")


def _base(path: str | os.PathLike) -> Path:
    # BART names the array without a suffix; accept either file's name too.
    path = Path(path)
    return path.with_suffix("") if path.suffix.lower() in (".cfl", ".hdr") else path


def _files(base: Path) -> tuple[Path, Path]:
    return base.with_name(base.name + ".hdr"), base.with_name(base.name + ".cfl")


def read_cfl_shape(path: str | os.PathLike) -> tuple[int, ...]:
    """The dimensions listed in the ``.hdr`` file of a BART array (all of them, as written)."""
    hdr, _ = _files(_base(path))
    if not hdr.is_file():
        raise SynthmedError(f"{hdr}: BART header not found (a BART array is a .hdr and a .cfl file side by side)")
    try:
        lines = hdr.read_text(encoding="ascii", errors="replace").splitlines()
    except OSError as error:
        raise SynthmedError(f"{hdr}: cannot read ({error.strerror or error})") from None
    for index, line in enumerate(lines):
        if line.strip() == "# Dimensions":
            sizes = lines[index + 1].split() if index + 1 < len(lines) else []
            try:
                dims = tuple(int(size) for size in sizes)
            except ValueError:
                dims = ()
            if not dims or any(size < 0 for size in dims):
                raise SynthmedError(f"{hdr}: the line after '# Dimensions' is not a list of sizes: {sizes!r}")
            return dims
    raise SynthmedError(f"{hdr}: no '# Dimensions' line; not a BART header")


def read_cfl(path: str | os.PathLike, squeeze: Literal["trailing", "all", "none"] = "trailing") -> np.ndarray:
    """A BART array as complex64 NumPy array in BART's axis order (see the module docstring on ``squeeze``).
    ``path`` is the array's name with or without ``.cfl``/``.hdr``."""
    if squeeze not in ("trailing", "all", "none"):
        raise SynthmedError(f"squeeze={squeeze!r}: choose 'trailing', 'all' or 'none'")
    base = _base(path)
    dims = read_cfl_shape(base)
    _, cfl = _files(base)
    if not cfl.is_file():
        raise SynthmedError(f"{cfl}: BART data file not found beside its header")
    expected = int(np.prod(dims, dtype=np.int64)) * _DTYPE.itemsize
    actual = cfl.stat().st_size
    if actual != expected:
        raise SynthmedError(
            f"{cfl}: {actual} bytes, but its header's dimensions {' x '.join(map(str, dims))} need {expected} "
            "(complex64); the files are truncated or do not belong together"
        )
    data = np.fromfile(cfl, dtype=_DTYPE).reshape(dims, order="F")
    if squeeze == "all":
        return np.ascontiguousarray(data.squeeze()) if data.size else data
    if squeeze == "trailing":
        keep = len(dims)
        while keep > 1 and dims[keep - 1] == 1:
            keep -= 1
        data = data.reshape(dims[:keep], order="F")
    return data


def write_cfl(path: str | os.PathLike, array, overwrite: bool = False) -> Path:
    """Write ``array`` (anything NumPy converts to complex) as the BART array ``path`` (``.hdr`` + ``.cfl``,
    suffix optional) and return the ``.cfl`` path. Each file is written atomically; existing files are
    refused unless ``overwrite``."""
    base = _base(path)
    hdr, cfl = _files(base)
    try:
        data = np.asarray(array).astype(_DTYPE, copy=False)
    except (TypeError, ValueError) as error:
        raise SynthmedError(f"{cfl}: cannot store this array as complex64 ({error})") from None
    if not overwrite:
        existing = [str(p) for p in (hdr, cfl) if p.exists()]
        if existing:
            raise SynthmedError(f"{', '.join(existing)} already exists; pass overwrite=True to replace it")
    dims = tuple(data.shape) + (1,) * max(0, BART_DIMS - data.ndim)
    header = "# Dimensions\n" + " ".join(str(size) for size in dims) + " \n"
    # The data first: while it is replaced, a reader pairs the old header with the new data, which a change of
    # size makes it refuse; the header follows at once.
    write_atomic(cfl, lambda stream: stream.write(data.tobytes(order="F")), binary=True)
    write_atomic(hdr, lambda stream: stream.write(header))
    return cfl
