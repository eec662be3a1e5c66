"""2D images (``.png``, ``.tif``, ``.tiff``) through Pillow: single images, multi-page TIFFs and stacks of slice
files; written as 8/16-bit when the data are whole numbers in range, else float TIFF."""

from __future__ import annotations

import glob as globlib
import os
import re
from pathlib import Path

import numpy as np

from synthmed.data.formats.common import Volume, check_channel, first_line, shape_text
from synthmed.errors import SynthmedError


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
    bits = {"L": 8, "LA": 8, "RGB": 8, "RGBA": 8, "CMYK": 8, "YCbCr": 8, "F": 32, "I": 32}.get(
        mode, 16 if mode.startswith("I;16") else array.dtype.itemsize * 8
    )
    if array.ndim == 2:
        # A grayscale pixel has the same value in every channel, so any channel is this image.
        return array, bits
    n = array.shape[2]
    if channel is not None:
        check_channel(channel, n, where, f"a {mode} image with {n} channels")
        return array[:, :, channel], bits
    colour = 1 if mode == "LA" else min(n, 3)  # ignore alpha
    if all(np.array_equal(array[:, :, 0], array[:, :, c]) for c in range(1, colour)):
        return array[:, :, 0], bits
    names = {"RGB": "0=R, 1=G, 2=B", "RGBA": "0=R, 1=G, 2=B, 3=A"}.get(mode, f"0-{n - 1}")
    raise SynthmedError(
        f"{where}: {mode} image with different channels: choose a channel ({names}) (translate --channel N, or a 'channel' column in a prepare --manifest)"
    )


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
                    raise SynthmedError(
                        f"{where}: page {index} is {shape_text(array.shape)}, page 0 is {shape_text(frames[0].shape)}; pages must match"
                    )
                frames.append(np.array(array))
    except SynthmedError:
        raise
    except FileNotFoundError:
        raise SynthmedError(f"{where}: no such file") from None
    except MemoryError:
        raise
    except Exception as error:  # noqa: BLE001 - PIL's UnidentifiedImageError, truncated data, ...
        raise SynthmedError(f"{where}: not a readable image ({first_line(error)}); is it a valid PNG/TIFF?") from None
    data = np.stack(frames, axis=-1)
    return data, {"mode": mode, "bit_depth": bits, "pages": len(frames)}


def read(path: Path, channel: int | None) -> Volume:
    data, info = _read_image_file(str(path), channel)
    meta = {**info, "channel": channel}
    return Volume(data=data, affine=np.eye(4), path=path, format="image", header=dict(info), meta=meta)


def _slice_template(path: str) -> str:
    return re.sub(r"\d+", "#", os.path.basename(path)).lower()


def read_slices(files: list[str], source: str, channel: int | None, glob_hint: str) -> Volume:
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
                f"{file}: slice is {shape_text(data.shape[:2])}, {os.path.basename(files[0])} is "
                f"{shape_text(slices[0].shape[:2])}; all slices must have the same size"
            )
        slices.append(data)
    stacked = np.concatenate(slices, axis=-1)
    meta = {"files": list(files), "mode": info.get("mode"), "bit_depth": info.get("bit_depth"), "channel": channel}
    return Volume(
        data=stacked, affine=np.eye(4), path=Path(source), format="image", header={"files": list(files)}, meta=meta
    )


def glob_hint(files: list[str], folder: str) -> str:
    """A glob that picks the most common kind of slice file (numbered names ending in a digit, if any)."""
    names = [os.path.basename(f) for f in files]
    numbered = [n for n in names if re.search(r"\d\.[^.]+$", n)]
    sample = (numbered or names)[0]
    suffix = sample[sample.rfind(".") :]
    stem = sample[: sample.rfind(".")]
    prefix = re.split(r"\d", stem, maxsplit=1)[0]
    return os.path.join(
        folder, f"{globlib.escape(prefix)}*[0-9]{suffix}" if numbered else f"{globlib.escape(prefix)}*{suffix}"
    )


def image_pages(data: np.ndarray, out: Path, suffix: str) -> list[np.ndarray]:
    if data.ndim == 3 and data.shape[2] != 1 and data.shape[0] != 1 and data.shape[1] != 1:
        if suffix == ".png":
            raise SynthmedError(
                f"{out}: PNG holds one 2D slice, data is {shape_text(data.shape)}; write .tif (multi-page) or .nii.gz"
            )
        pages = [data[:, :, k] for k in range(data.shape[2])]
    else:
        pages = [np.squeeze(data)] if data.ndim > 2 else [data]
        if pages[0].ndim != 2:
            raise SynthmedError(
                f"{out}: cannot write data of shape {shape_text(data.shape)} as a 2D image; use .nii.gz"
            )
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


def write_pages(tmp: str, pages: list[np.ndarray], suffix: str) -> None:
    from PIL import Image

    images = [Image.fromarray(page) for page in pages]
    fmt = "PNG" if suffix == ".png" else "TIFF"
    if len(images) > 1:
        images[0].save(tmp, format=fmt, save_all=True, append_images=images[1:])
    else:
        images[0].save(tmp, format=fmt)


def write(tmp: str, data: np.ndarray, suffix: str) -> None:
    """``data`` as a PNG (one slice) or a TIFF (one page per slice); :func:`image_pages` says what cannot be."""
    write_pages(tmp, image_pages(data, Path(tmp), suffix), suffix)
