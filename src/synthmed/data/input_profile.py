"""What the training inputs looked like, and how a new input differs from them.

A model trained on skull-stripped brains and given a whole head returns a formless blob, with nothing to tell
the user why. ``prepare`` records a profile of the source scans of the training subjects; ``translate``
measures the same on its input and names what lies outside the training range:

- ``padding``: the fraction of voxels holding exactly 0 or exactly the volume's minimum (a skull-stripped or
  zero-filled scan has most of its volume there; a native scan has a noisy background with almost none);
- ``foreground_ml``: the volume of the foreground mask (a brain is about 1-1.6 L, a whole head 3-5 L);
- ``spacing``: in-plane voxel size, mm (the model sees slices at the training resolution);
- ``histogram``: the foreground's intensities after the volume's own normalisation, in 32 bins; compared by
  the 1-Wasserstein distance to the training subjects' mean histogram, against the largest distance of a
  training subject itself.

A measure differs when it leaves the training range widened by a margin (factors below): with a handful of
training subjects the range is narrow, and a warning must mean something.
"""

from __future__ import annotations

from typing import Any

import numpy as np

PROFILE_VERSION = 1
HISTOGRAM_BINS = 32
# An input differs when a measure is outside [min / FACTOR, max * FACTOR] of the training subjects.
FOREGROUND_FACTOR = 1.5
SPACING_FACTOR = 1.5
# Padding: skull-stripped training data (every subject padded over PADDED_FRACTION) versus an input with
# under UNPADDED_FRACTION, or the reverse.
PADDED_FRACTION = 0.3
UNPADDED_FRACTION = 0.05
# Histogram: the input's distance to the training mean may exceed the largest training subject's by this factor
# plus an absolute slack (in units of the normalised range [-1, 1], width 2). The slack comes from the dev real
# scans (model trained on 2 BraTS/MS T1s): a held-out T1 of another site lay 0.31 from their mean, a FLAIR 0.51
# and a T2 0.76, while the training T1s lay within 0.08 of it; same-contrast scans of other sites must not warn.
HISTOGRAM_FACTOR = 2.0
HISTOGRAM_SLACK = 0.3


def measure(data: np.ndarray, foreground: np.ndarray, spacing, normalized_foreground: np.ndarray) -> dict[str, Any]:
    """The profile of one source volume. ``normalized_foreground``: its foreground voxels after its own
    normalisation (values in [-1, 1])."""
    histogram, _ = np.histogram(normalized_foreground, bins=HISTOGRAM_BINS, range=(-1.0, 1.0))
    voxel_ml = float(np.prod([float(s) for s in spacing])) / 1000.0
    return {
        "padding": round(max(float(np.mean(data == 0)), float(np.mean(data == data.min()))), 4),
        "foreground_ml": round(float(foreground.sum()) * voxel_ml, 1),
        "spacing": [round(float(s), 4) for s in list(spacing)[:2]],
        "histogram": [round(float(h), 5) for h in histogram / max(int(histogram.sum()), 1)],
    }


def _distance(a, b) -> float:
    """1-Wasserstein distance of two histograms over [-1, 1]."""
    width = 2.0 / HISTOGRAM_BINS
    return float(np.abs(np.cumsum(np.asarray(a) - np.asarray(b))).sum() * width)


def training_profile(measures: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The ranges of the training subjects' measures (None without subjects)."""
    if not measures:
        return None
    mean_histogram = np.mean([m["histogram"] for m in measures], axis=0)
    spacings = np.array([m["spacing"] for m in measures], dtype=float)
    return {
        "version": PROFILE_VERSION,
        "subjects": len(measures),
        "padding": [min(m["padding"] for m in measures), max(m["padding"] for m in measures)],
        "foreground_ml": [min(m["foreground_ml"] for m in measures), max(m["foreground_ml"] for m in measures)],
        "spacing": [float(spacings.min()), float(spacings.max())],
        "histogram": [round(float(h), 5) for h in mean_histogram],
        "histogram_distance_max": round(max(_distance(m["histogram"], mean_histogram) for m in measures), 4),
    }


def differences(profile: dict[str, Any], found: dict[str, Any], resampled_to: float | None = None) -> list[str]:
    """What about an input (``found``, from :func:`measure`) lies outside the training ``profile``, each as a
    phrase naming the measure, the input's value and the training range. ``resampled_to``: the pixel size (mm)
    the input's slices are resampled to (native-resolution plans), where only a much coarser input is named."""
    said = []
    low, high = profile["padding"]
    if low > PADDED_FRACTION and found["padding"] < UNPADDED_FRACTION:
        said.append(
            f"the input is not skull-stripped or zero-filled (background {found['padding']:.0%} padding; "
            f"the training scans had {low:.0%}-{high:.0%}: skull-stripped?)"
        )
    elif high < UNPADDED_FRACTION and found["padding"] > PADDED_FRACTION:
        said.append(
            f"the input is skull-stripped or zero-filled ({found['padding']:.0%} of it padding; the training "
            f"scans had {high:.0%} at most: native scans)"
        )
    low, high = profile["foreground_ml"]
    if not low / FOREGROUND_FACTOR <= found["foreground_ml"] <= high * FOREGROUND_FACTOR:
        said.append(
            f"its foreground is {found['foreground_ml'] / 1000:.2f} L, the training scans' "
            f"{low / 1000:.2f}-{high / 1000:.2f} L (a whole head versus brains, or another field of view?)"
        )
    low, high = profile["spacing"]
    if resampled_to is None:
        outside = [s for s in found["spacing"] if not low / SPACING_FACTOR <= s <= high * SPACING_FACTOR]
        if outside:
            said.append(
                f"its in-plane spacing is {' x '.join(f'{s:g}' for s in found['spacing'])} mm, the training "
                f"scans' {low:g}-{high:g} mm"
            )
    elif any(s > high * SPACING_FACTOR for s in found["spacing"]):
        # Slices are resampled to the model's pixel size, so only a much coarser input matters: it is blurred.
        said.append(
            f"its in-plane spacing is {' x '.join(f'{s:g}' for s in found['spacing'])} mm, coarser than the "
            f"training scans' {low:g}-{high:g} mm (resampling it to {resampled_to:g} mm adds no detail)"
        )
    distance = _distance(found["histogram"], profile["histogram"])
    allowed = profile["histogram_distance_max"] * HISTOGRAM_FACTOR + HISTOGRAM_SLACK
    if distance > allowed:
        said.append(
            f"its intensity histogram is {distance:.2f} from the training scans' mean (theirs at most "
            f"{profile['histogram_distance_max']:.2f}): another contrast or modality?"
        )
    return said
