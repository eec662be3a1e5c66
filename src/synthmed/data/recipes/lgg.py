"""The Kaggle LGG layout: ``root/<patient>/<patient>_<n>.tif`` RGB slices (t1, flair, t1c as channels 0-2) with
``<patient>_<n>_mask.tif`` beside each."""

from __future__ import annotations

import glob as globlib
import os
from pathlib import Path

from synthmed.errors import SynthmedError


def _subfolders(root: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(root) as entries:
            return sorted((e for e in entries if not e.name.startswith(".") and e.is_dir()), key=lambda e: e.name)
    except OSError as error:
        raise SynthmedError(f"{root}: cannot list this folder ({error.strerror}); check its permissions") from None


def is_lgg_layout(root: Path) -> bool:
    """The Kaggle LGG layout: every sub-folder with ``.tif`` files holds ``<folder>_<n>.tif`` slices, each mask
    ``<folder>_<n>_mask.tif`` beside its slice, and there is at least one such folder."""
    found = False
    for entry in _subfolders(root):
        if not entry.is_dir():
            continue
        names = {n for n in os.listdir(entry.path) if n.endswith(".tif")}
        if not names:
            continue
        masks = [n for n in names if n.startswith(entry.name + "_") and n.endswith("_mask.tif")]
        if not masks or any(n[: -len("_mask.tif")] + ".tif" not in names for n in masks):
            return False
        found = True
    return found


def lgg_manifest(root: str | Path, *, absolute: bool = False) -> list[dict]:
    """Manifest rows for the Kaggle LGG layout (``root/<patient>/<patient>_<n>.tif`` + ``_<n>_mask.tif``).

    Per patient: ``t1`` (channel 0), ``flair`` (1), ``t1c`` (2) from the glob
    ``<patient>/<patient>_*[0-9].tif`` (the last character before ``.tif`` is a digit, so masks are
    excluded) and ``lesion`` from ``<patient>/<patient>_*_mask.tif``. Paths are relative to
    ``root`` (pass ``root`` as DATA with the manifest) unless ``absolute``.
    """
    root = Path(root)
    if not root.is_dir():
        raise SynthmedError(f"{root}: LGG folder not found; pass the folder holding the TCGA_* patient folders")
    rows: list[dict] = []
    for entry in _subfolders(root):
        if not entry.is_dir():
            continue
        patient = entry.name
        names = os.listdir(entry.path)
        if not any(n.endswith("_mask.tif") for n in names):
            continue
        prefix = globlib.escape(patient)
        image = f"{prefix}/{prefix}_*[0-9].tif"
        mask = f"{prefix}/{prefix}_*_mask.tif"
        if absolute:
            image = f"{globlib.escape(str(root.absolute()))}/{image}"
            mask = f"{globlib.escape(str(root.absolute()))}/{mask}"
        for modality, channel in (("t1", 0), ("flair", 1), ("t1c", 2)):
            rows.append({"subject": patient, "modality": modality, "path": image, "channel": channel})
        rows.append({"subject": patient, "modality": "lesion", "path": mask})
    if not rows:
        raise SynthmedError(
            f"{root}: no patient folders with *_mask.tif slices; expected root/<patient>/<patient>_<n>.tif"
        )
    return rows
