"""NIfTI-1/2 (``.nii``, ``.nii.gz``) through nibabel: scaling applied on reading, the header kept so that a written
output reproduces shape, affine, sform and qform exactly."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from synthmed.data.formats.common import (
    Volume,
    check_channel,
    check_declared_size,
    first_line,
    magnitude,
    shape_text,
    suffix_of_name,
)
from synthmed.errors import SynthmedError


def read(path: Path, channel: int | None, dtype) -> Volume:
    import nibabel as nib

    where = str(path)
    try:
        image = nib.load(str(path))
    except FileNotFoundError:
        raise SynthmedError(f"{where}: no such file") from None
    except Exception as error:  # noqa: BLE001 - anything nibabel raises here means a bad file
        raise SynthmedError(
            f"{where}: not a NIfTI file (header unreadable: {first_line(error)}); is it truncated, or not really an image?"
        ) from None
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        raise SynthmedError(f"{where}: not a NIfTI file ({type(image).__name__}); convert it to .nii.gz")
    shape = tuple(int(s) for s in image.shape)
    if len(shape) < 2:
        raise SynthmedError(f"{where} has shape {shape_text(shape)}; expected a 2D or 3D image")
    stored = image.get_data_dtype()
    check_declared_size(
        where,
        shape,
        stored.name,
        stored.itemsize,
        file_size=path.stat().st_size,
        # nibabel zeroes the loaded header's vox_offset; the data proxy keeps the real one.
        offset=int(getattr(image.dataobj, "offset", 0)),
        compressed=suffix_of_name(path.name) == ".nii.gz",
        read_voxels=math.prod(shape[:3]),
    )
    index: tuple = ()
    extra = [(axis, size) for axis, size in enumerate(shape[3:], start=3)]
    big = [axis for axis, size in extra if size != 1]
    if len(big) > 1:
        raise SynthmedError(
            f"{where} has {len(shape)} dimensions ({shape_text(shape)}); only 2D, 3D or 4D images are supported"
        )
    if big:
        n = shape[big[0]]
        if channel is None:
            raise SynthmedError(
                f"{where} is 4D ({shape_text(shape)}): choose a channel 0-{n - 1} (translate --channel N, or a 'channel' column in a prepare --manifest)"
            )
        check_channel(channel, n, where, f"4D ({shape_text(shape)})")
    elif channel not in (None, 0):
        raise SynthmedError(
            f"{where} is {min(len(shape), 3)}D ({shape_text(shape)}) with no channels: drop channel={channel}"
        )
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
        raise SynthmedError(
            f"{where}: corrupt or truncated image data ({first_line(error)}); re-export or re-download it"
        ) from None
    data = magnitude(data, where)
    if data.ndim == 2:
        data = data[:, :, None]
    return Volume(
        data=data,
        affine=np.asarray(image.affine, dtype=np.float64),
        path=path,
        format="nifti",
        header=image.header,
        meta={"shape": shape, "channel": channel if big else None},
    )


def write(tmp: str, data: np.ndarray, like: Volume | None) -> None:
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
