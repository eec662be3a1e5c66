"""Torch datasets over prepared slice arrays (memory-mapped, cheap in DataLoader workers)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from synthmed.data.plan import load_plan
from synthmed.errors import SynthmedError

log = logging.getLogger(__name__)


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
        numbers = [self.plan.volumes[s].number for s in self.plan.subjects_in(split)]
        return np.flatnonzero(np.isin(self.arrays["index"][:, 0], numbers))


SLICE_SELECTIONS = ("all", "lesion", "healthy")


class SliceDataset(Dataset):
    """Slices of one split as ``{'source', 'target', 'mask', ['label']}`` tensors of shape (1, H, W).

    ``slices``: ``all``; ``lesion`` keeps the slices whose label map holds a lesion (generators trained, as PIG, on
    lesion slices); ``healthy`` those without any lesion voxel (anomaly detectors learn healthy anatomy only; data
    prepared without a label counts as healthy throughout).

    ``unpaired=True`` (for methods trained on unpaired data) gives each source slice the
    target of a slice of *another subject*, so no pairing leaks in (neither the slice's
    own target nor a neighbouring slice of the same head). When no subject holds more than
    half of the split's slices the partners are a permutation (every target is used once
    per epoch), otherwise each is drawn uniformly from the other subjects' slices. With a
    single subject the partner is another slice of it (a warning says that this is weak).
    The pairing is drawn from ``(seed, epoch)`` and reshuffled by :meth:`set_epoch`.

    ``patch`` gives ``patch`` x ``patch`` windows instead of whole slices (training at native resolution): each
    centred on a random foreground pixel of the source slice (so windows hold anatomy, also on the small top and
    bottom slices) and moved inside the slice; the target, mask and label are cut at the same place (an unpaired
    target at a place of its own slice). A patch larger than the slices pads them with the background.

    ``context`` (odd, 2.5D) makes the source ``context`` channels: the slice and its ``context // 2`` neighbours on
    each side in the same volume, in slice order (the slice itself in the middle channel). A neighbour that was not
    kept (``prepare`` drops slices with almost no foreground) or lies beyond the volume is background (-1), as
    translation sees beyond the volume's ends. Unpaired, the target is such a stack too (centred on its partner
    slice); paired, it is the slice itself.
    """

    def __init__(
        self,
        data: PreparedData,
        split: str,
        unpaired: bool = False,
        seed: int = 0,
        slices: str = "all",
        patch: int | None = None,
        context: int = 1,
    ):
        self.data = data
        self.patch = patch
        if context < 1 or context % 2 == 0:
            raise SynthmedError(f"--context {context}: give an odd number of slices (1, 3, 5, ...)")
        self.context = context
        index = np.asarray(data.arrays["index"])
        self._row_of = (
            {(int(subject), int(number)): row for row, (subject, number) in enumerate(index)} if context > 1 else {}
        )
        self.rows = data.rows(split)
        if slices not in SLICE_SELECTIONS:
            raise SynthmedError(f"training slices {slices!r}: use one of {', '.join(SLICE_SELECTIONS)}")
        if slices == "lesion" and "label" not in data.arrays:
            raise SynthmedError(f"{data.root}: lesion slices were asked for, but the data was prepared without --label")
        if slices != "all" and "label" in data.arrays:  # by whether the label map holds a lesion (label > 0)
            labels = data.arrays["label"]
            wanted = slices == "lesion"
            self.rows = np.asarray([row for row in self.rows if labels[row].any() == wanted], dtype=self.rows.dtype)
        self.split = split
        self.unpaired = unpaired
        self.seed = seed
        self.partner = self.rows
        if len(self.rows) == 0:
            what = {"all": "slices", "lesion": "slices with a lesion", "healthy": "slices without a lesion"}[slices]
            raise SynthmedError(f"{data.root}: the {split} split has no {what} (too few subjects for --split?)")
        if unpaired:
            self._subjects = np.asarray(data.arrays["index"][self.rows, 0])
            if len(np.unique(self._subjects)) < 2:
                log.warning(
                    "unpaired training on one subject (%s split of %s) is weak: the target partners are other "
                    "slices of the same head; give the split more subjects",
                    split,
                    data.root,
                )
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        if self.unpaired:
            generator = np.random.default_rng([self.seed, epoch])
            self.partner = self.rows[_cross_group_partners(self._subjects, generator)]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        row = self.rows[item]
        arrays = self.data.arrays
        window = self._window(row)
        sample = {"source": self._stack("source", row, window)}
        if "target" in arrays:
            target_row = self.partner[item]
            if self.unpaired:
                # Unpaired translators with 2.5D input need the target's neighbours too: their reverse networks,
                # applied slice by slice, make the estimated source stack the forward network takes.
                target_window = window if target_row == row else self._window(target_row)
                sample["target"] = self._stack("target", target_row, target_window)
            else:
                sample["target"] = _cut(arrays["target"][target_row], window, -1.0)
        sample["mask"] = _cut(arrays["mask"][row], window, 0.0)
        if "label" in arrays:
            sample["label"] = _cut(arrays["label"][row], window, 0.0)
        return sample

    def _stack(self, key: str, row: int, window: tuple[int, int, int] | None) -> torch.Tensor:
        """(context, side, side): slice ``row`` of ``key`` with its neighbours (background where there is none)."""
        centre = _cut(self.data.arrays[key][row], window, -1.0)
        if self.context == 1:
            return centre
        return torch.cat(
            [
                _cut(self.data.arrays[key][r], window, -1.0) if r is not None else torch.full_like(centre, -1.0)
                for r in self._neighbours(row)
            ]
        )

    def _neighbours(self, row: int) -> list[int | None]:
        """Rows of the ``context`` slices centred on ``row`` (None where a slice was not kept)."""
        subject, number = (int(v) for v in self.data.arrays["index"][row])
        half = self.context // 2
        return [self._row_of.get((subject, number + offset)) for offset in range(-half, half + 1)]

    def _window(self, row: int) -> tuple[int, int, int] | None:
        """(top, left, side) of the patch cut from slice ``row``; None for the whole slice."""
        if self.patch is None:
            return None
        side = self.data.arrays["source"].shape[-1]
        if self.patch >= side:
            offset = (side - self.patch) // 2  # negative: the slice sits centred in a padded patch
            return offset, offset, self.patch
        foreground = np.flatnonzero(np.asarray(self.data.arrays["mask"][row]))
        if len(foreground):
            centre = int(foreground[int(torch.randint(len(foreground), ()))])
            row_centre, col_centre = divmod(centre, side)
        else:
            row_centre, col_centre = (int(v) for v in torch.randint(side, (2,)))
        top = min(max(row_centre - self.patch // 2, 0), side - self.patch)
        left = min(max(col_centre - self.patch // 2, 0), side - self.patch)
        return top, left, self.patch


def _cut(image: np.ndarray, window: tuple[int, int, int] | None, fill: float) -> torch.Tensor:
    """(1, side, side) float32 tensor of ``image`` inside ``window`` (``fill`` where it leaves the image)."""
    if window is None:
        return torch.from_numpy(np.array(image, dtype=np.float32))[None]
    top, left, side = window
    height, width = image.shape
    out = np.full((side, side), fill, dtype=np.float32)
    rows = slice(max(top, 0), min(top + side, height))
    cols = slice(max(left, 0), min(left + side, width))
    out[rows.start - top : rows.stop - top, cols.start - left : cols.stop - left] = image[rows, cols]
    return torch.from_numpy(out)[None]


def _cross_group_partners(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each position ``i`` a partner position in another group (``groups[p[i]] != groups[i]``).

    If no group holds more than half of the positions, ``p`` is a permutation: a random one
    whose same-group pairs are then repaired one by one, each swapped with a random position
    ``j`` outside the group whose partner is outside it too (one always exists under that
    condition, and the swap leaves ``j`` valid, so every repair removes at least one conflict).
    Otherwise no such permutation exists, and each partner is drawn uniformly from the
    positions of the other groups. With a single group, every position counts as a group of
    its own (partners are other positions); a single position is its own partner.
    """
    n = len(groups)
    if n < 2:
        return np.zeros(n, dtype=np.int64)
    _, label, counts = np.unique(groups, return_inverse=True, return_counts=True)
    label = label.reshape(-1)
    if len(counts) == 1:
        label, counts = np.arange(n), np.ones(n, dtype=np.int64)
    if 2 * int(counts.max()) <= n:
        partner = rng.permutation(n)
        for i in rng.permutation(np.flatnonzero(label[partner] == label)):
            group = label[i]
            if label[partner[i]] != group:
                continue  # already repaired as another conflict's swap partner
            candidates = np.flatnonzero((label != group) & (label[partner] != group))
            j = candidates[rng.integers(len(candidates))]
            partner[i], partner[j] = partner[j], partner[i]
        return partner
    # Unbalanced groups: uniform over the other groups' positions (with replacement).
    order = np.argsort(label, kind="stable")  # positions grouped by label
    start = np.cumsum(counts) - counts  # where each group's block begins in `order`
    own = counts[label]
    draw = np.floor(rng.random(n) * (n - own)).astype(np.int64)
    return order[np.where(draw < start[label], draw, draw + own)]
