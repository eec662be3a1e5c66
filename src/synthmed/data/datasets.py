"""Torch datasets over prepared slice arrays (memory-mapped, cheap in DataLoader workers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from synthmed.data.prepare import load_plan
from synthmed.errors import SynthmedError


class PreparedData:
    """A prepared folder: its plan and its slice arrays, opened read-only as memory maps."""

    def __init__(self, prep: str | Path):
        self.root = Path(prep)
        self.plan = load_plan(prep)
        self.arrays: dict[str, np.ndarray] = {}
        for path in sorted((self.root / "slices").glob("*.npy")):
            self.arrays[path.stem] = np.load(path, mmap_mode="r")
        if "index" not in self.arrays or "source" not in self.arrays:
            raise SynthmedError(f"{prep}: prepared slices are missing; re-run prepare with --overwrite")

    def rows(self, split: str) -> np.ndarray:
        """Row numbers of the slices of one split ('train', 'val', 'test')."""
        if split not in self.plan["split"]:
            raise SynthmedError(f"unknown split {split!r}; use train, val or test")
        numbers = [self.plan["volumes"][s]["number"] for s in self.plan["split"][split]]
        return np.flatnonzero(np.isin(self.arrays["index"][:, 0], numbers))


class SliceDataset(Dataset):
    """Slices of one split as ``{'source', 'target', 'mask', ['label']}`` tensors of shape (1, H, W).

    ``unpaired=True`` draws each target from a different, randomly chosen slice of the
    split (for methods trained on unpaired data); the pairing is reshuffled with
    :meth:`set_epoch`.
    """

    def __init__(self, data: PreparedData, split: str, unpaired: bool = False, seed: int = 0):
        self.data = data
        self.rows = data.rows(split)
        self.split = split
        self.unpaired = unpaired
        self.seed = seed
        self.partner = self.rows
        if len(self.rows) == 0:
            raise SynthmedError(f"{data.root}: the {split} split has no slices (too few subjects for --split?)")
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        if self.unpaired:
            generator = np.random.default_rng([self.seed, epoch])
            self.partner = self.rows[generator.permutation(len(self.rows))]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        row = self.rows[item]
        arrays = self.data.arrays
        sample = {"source": torch.from_numpy(np.array(arrays["source"][row], dtype=np.float32))[None]}
        if "target" in arrays:
            target_row = self.partner[item]
            sample["target"] = torch.from_numpy(np.array(arrays["target"][target_row], dtype=np.float32))[None]
        sample["mask"] = torch.from_numpy(np.array(arrays["mask"][row], dtype=np.float32))[None]
        if "label" in arrays:
            sample["label"] = torch.from_numpy(np.array(arrays["label"][row], dtype=np.float32))[None]
        return sample
