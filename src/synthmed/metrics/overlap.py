"""Overlap of binary masks (lesion segmentations): Dice and IoU."""

from __future__ import annotations

import numpy as np

from synthmed.errors import SynthmedError


def dice_iou(pred: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """Dice and IoU of two binary masks over all their voxels pooled (any shape; nonzero = inside).

    Empty prediction and empty reference: (1.0, 1.0) by convention (nothing to find, nothing found).
    """
    pred, ref = np.asarray(pred) > 0, np.asarray(ref) > 0
    if pred.shape != ref.shape:
        raise SynthmedError(f"prediction {pred.shape} and reference {ref.shape} differ in shape")
    p, r = int(pred.sum()), int(ref.sum())
    if p + r == 0:
        return 1.0, 1.0
    both = int(np.logical_and(pred, ref).sum())
    return 2.0 * both / (p + r), both / (p + r - both)
