"""The folder ``synthmed generate`` writes, and reading it back (for segmentation benchmarks, FID, statistics).

Layout of ``DIR``:

- ``000001_image.png`` / ``.nii.gz``: one generated slice. PNG is 8-bit grey, value = round(255 (x + 1) / 2) for the
  model's output x in [-1, 1]; NIfTI is float32 ``(H, W, 1)`` holding (x + 1) / 2 in [0, 1], identity affine (a
  generated slice has no scanner geometry).
- ``000001_mask.png`` / ``.nii.gz``: its lesion mask, binary (PNG 0/255, NIfTI uint8 0/1), written by generators
  that make masks (``pig``); image-only generators (``ddpm-gen``) write no mask files.
- ``generation.json``: the run, model, checkpoint, count, sampler settings, seed, format, the mask threshold and
  the file list.
- ``contact_sheet.png``: a grid of the first pairs (image above its mask outline).

:func:`read_generated` returns images in [-1, 1] (the prepared slices' range) and masks as uint8 {0, 1}.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

from synthmed.errors import SynthmedError

FORMATS = ("png", "nii")
GENERATED_NAME = re.compile(r"^(\d{6,})_(image|mask)\.(png|nii\.gz)$")


def to_unit(x: np.ndarray) -> np.ndarray:
    """[-1, 1] -> [0, 1], clipped."""
    return np.clip((np.asarray(x, dtype=np.float32) + 1) / 2, 0, 1)


def write_pair(folder: Path, number: int, image: np.ndarray, mask: np.ndarray | None, fmt: str) -> list[str]:
    """Write one generated slice (``image`` in [-1, 1], ``mask`` binary or None); returns the file names."""
    if fmt not in FORMATS:
        raise SynthmedError(f"--format {fmt!r}: use png or nii")
    stem = f"{number:06d}"
    names: list[str] = []
    unit = to_unit(image)
    if fmt == "png":
        names.append(f"{stem}_image.png")
        _save_png(folder / names[-1], np.round(unit * 255).astype(np.uint8))
        if mask is not None:
            names.append(f"{stem}_mask.png")
            _save_png(folder / names[-1], (np.asarray(mask) > 0).astype(np.uint8) * 255)
    else:
        names.append(f"{stem}_image.nii.gz")
        nib.save(nib.Nifti1Image(unit[..., None], np.eye(4)), folder / names[-1])
        if mask is not None:
            names.append(f"{stem}_mask.nii.gz")
            nib.save(nib.Nifti1Image((np.asarray(mask) > 0).astype(np.uint8)[..., None], np.eye(4)), folder / names[-1])
    mode = _file_mode()
    for name in names:
        os.chmod(folder / name, mode)
    return names


def _save_png(path: Path, pixels: np.ndarray) -> None:
    Image.fromarray(pixels, mode="L").save(path)


def _file_mode() -> int:
    from synthmed.files import default_file_mode

    return default_file_mode()


def read_generated(folder: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """``(images, masks, info)``: images float32 (n, H, W) in [-1, 1], masks uint8 (n, H, W) in {0, 1} or None
    when the generator made none, and ``generation.json`` (empty dict if absent)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SynthmedError(f"{folder}: no such folder of generated pairs")
    found: dict[str, dict[str, Path]] = {}
    for path in folder.iterdir():
        match = GENERATED_NAME.match(path.name)
        if match:
            found.setdefault(match.group(1), {})[match.group(2)] = path
    numbers = sorted(n for n, kinds in found.items() if "image" in kinds)
    if not numbers:
        raise SynthmedError(f"{folder}: no NNNNNN_image.png / .nii.gz files (written by `synthmed generate`)")
    with_mask = [n for n in numbers if "mask" in found[n]]
    if with_mask and len(with_mask) != len(numbers):
        missing = sorted(set(numbers) - set(with_mask))
        raise SynthmedError(f"{folder}: {len(missing)} image(s) without a mask, e.g. {missing[0]}_image")
    images = np.stack([_read_unit(found[n]["image"]) * 2 - 1 for n in numbers]).astype(np.float32)
    masks = np.stack([(_read_unit(found[n]["mask"]) > 0.5).astype(np.uint8) for n in numbers]) if with_mask else None
    info_path = folder / "generation.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    return images, masks, info


def _read_unit(path: Path) -> np.ndarray:
    """A written slice back in [0, 1] (masks: {0, 1})."""
    if path.name.endswith(".png"):
        pixels = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
        return pixels / 255.0
    data = np.asarray(nib.load(path).dataobj, dtype=np.float32)
    return data.reshape(data.shape[0], data.shape[1])
