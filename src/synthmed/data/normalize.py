"""Invertible per-volume intensity normalisation.

Every volume is mapped to [-1, 1] by a linear transform whose two parameters are
recorded in the plan, so a model output can be brought back to the target's units.

- MR (arbitrary scanner units): ``lo`` is the 0.5th percentile of the whole volume
  (the background level) and ``hi`` the 99.5th percentile of the foreground, so a
  few very bright voxels (vessels, enhancing rims) do not squash the tissue contrast.
  Values outside [lo, hi] are clipped to [-1, 1].
- CT (Hounsfield units): a fixed window, by default [-1000, 2000] HU, the same for
  every scan, so the mapping back to HU is exact and scanner independent.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import numpy as np

from synthmed.errors import SynthmedError

MR_LOW_PERCENTILE = 0.5
MR_HIGH_PERCENTILE = 99.5
CT_WINDOW = (-1000.0, 2000.0)
CT_MODALITY_NAMES = {"ct", "cbct", "sct", "cect", "ncct"}


def modality_kind(modality: str) -> str:
    """'ct' for CT-like modality names (fixed HU window), also derived ones such as ``CT_noise`` (written by
    ``synthmed degrade``); 'mr' for everything else."""
    name = modality.lower()
    return "ct" if name in CT_MODALITY_NAMES or re.split(r"[_\-]", name)[0] in CT_MODALITY_NAMES else "mr"


@dataclass(frozen=True)
class Normalization:
    """Linear map ``x -> 2 (x - lo) / (hi - lo) - 1``, clipped to [-1, 1]."""

    kind: str
    lo: float
    hi: float

    # Both maps work in place on one float32 copy (``in_place``: on the given float32 array itself), so a whole
    # volume costs one extra volume of memory, not the three of a chain of temporaries.
    def apply(self, volume: np.ndarray) -> np.ndarray:
        scaled = np.array(volume, dtype=np.float32, copy=True)
        scaled -= np.float32(self.lo)
        scaled *= np.float32(2.0 / (self.hi - self.lo))
        scaled -= np.float32(1.0)
        return np.clip(scaled, -1.0, 1.0, out=scaled)

    def invert(self, normalized: np.ndarray, in_place: bool = False) -> np.ndarray:
        if in_place and normalized.dtype == np.float32:
            out = normalized
        else:
            out = np.array(normalized, dtype=np.float32, copy=True)
        out += np.float32(1.0)
        out *= np.float32(0.5 * (self.hi - self.lo))
        out += np.float32(self.lo)
        return out

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, record: dict) -> "Normalization":
        return cls(kind=str(record["kind"]), lo=float(record["lo"]), hi=float(record["hi"]))


def mr_low(volume: np.ndarray) -> float:
    """``lo`` of the MR normalisation: the 0.5th percentile of the whole volume (a copy of it, partitioned)."""
    return float(np.percentile(volume, MR_LOW_PERCENTILE))


def fit_normalization(
    volume: np.ndarray, foreground: np.ndarray, kind: str, name: str = "volume", low: float | None = None
) -> Normalization:
    """Fit the recorded transform of one volume (see the module docstring).

    ``low``: ``mr_low(volume)`` when the caller has it already (``translate`` takes it before the foreground
    mask exists, so that the mask and the percentile's copy of the volume are never in memory together).
    """
    if kind == "ct":
        return Normalization("ct", *CT_WINDOW)
    if kind != "mr":
        raise SynthmedError(f"unknown normalisation kind {kind!r} for {name}; use 'mr' or 'ct'")
    # One copy of the volume at a time: the foreground values are a copy already, so their percentile may
    # partition them in place (same values), and they are gone before the whole volume's percentile copies it.
    if foreground.any():
        hi = float(np.percentile(volume[foreground], MR_HIGH_PERCENTILE, overwrite_input=True))
    else:
        hi = float(np.percentile(volume, MR_HIGH_PERCENTILE))
    lo = mr_low(volume) if low is None else float(low)
    if not hi > lo:
        raise SynthmedError(
            f"{name}: intensities are constant inside the foreground ({lo:g}); "
            "this is not an image the model can learn from (check the file)"
        )
    return Normalization("mr", lo, hi)


def median_normalization(records: list[Normalization]) -> Normalization:
    """The typical transform over training volumes (used when no reference scale exists)."""
    if not records:
        raise SynthmedError("no normalisation records to summarise")
    kinds = {r.kind for r in records}
    if len(kinds) != 1:
        raise SynthmedError(f"mixed normalisation kinds {sorted(kinds)} for one modality")
    return Normalization(
        records[0].kind,
        float(np.median([r.lo for r in records])),
        float(np.median([r.hi for r in records])),
    )


# ----------------------------------------------------------------------------- target scale without a reference

# An MR output needs the target's intensity scale, which a user translating a T1 cannot give (no T2 exists).
# Two predictions of the target's (lo, hi) from the training pairs:
# - "median": the training targets' median (lo, hi), whatever the input;
# - "affine": the input's own (lo, hi) shifted and stretched by the training pairs' median offset and range
#   ratio: lo_t = lo_s + offset * range_s, hi_t = lo_t + ratio * range_s. A pipeline that maps a subject's
#   scans by one gain and offset (raw units at one site, z-scores inside the brain at another) moves the
#   prediction with it; the median cannot follow that.
# Which predicts held-out training subjects better depends on the data (on the dev BraTS/MS T1 -> T2 pairs
# the median did; across raw and z-scored FLAIR -> T1c sets only the affine one did), so prepare picks the
# one with the smaller leave-one-out error over the training subjects and records both errors.
SCALE_MODELS = ("median", "affine")


@dataclass(frozen=True)
class TargetScale:
    """How ``translate`` sets an MR target's scale without ``--reference`` (see the comment above)."""

    model: str
    lo: float  # median model: the target's (lo, hi)
    hi: float
    offset_per_range: float  # affine model: (lo_t - lo_s) / range_s
    range_ratio: float  # affine model: range_t / range_s
    loo_error: dict  # model -> mean leave-one-out error (|log range ratio| + |lo offset| / range), None if n < 2
    subjects: int

    def predict(self, source: Normalization, kind: str = "mr") -> Normalization:
        if self.model == "median":
            return Normalization(kind, self.lo, self.hi)
        span = source.hi - source.lo
        lo = source.lo + self.offset_per_range * span
        return Normalization(kind, lo, lo + self.range_ratio * span)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, record: dict) -> "TargetScale":
        return cls(
            model=str(record["model"]),
            lo=float(record["lo"]),
            hi=float(record["hi"]),
            offset_per_range=float(record["offset_per_range"]),
            range_ratio=float(record["range_ratio"]),
            loo_error=dict(record["loo_error"]),
            subjects=int(record["subjects"]),
        )


def _scale_models(pairs: list[tuple[Normalization, Normalization]]) -> dict[str, TargetScale]:
    lo = float(np.median([t.lo for _, t in pairs]))
    hi = float(np.median([t.hi for _, t in pairs]))
    offset = float(np.median([(t.lo - s.lo) / (s.hi - s.lo) for s, t in pairs]))
    ratio = float(np.median([(t.hi - t.lo) / (s.hi - s.lo) for s, t in pairs]))
    return {model: TargetScale(model, lo, hi, offset, ratio, {}, len(pairs)) for model in SCALE_MODELS}


def scale_error(predicted: Normalization, true: Normalization) -> float:
    """How far a predicted (lo, hi) is from the true one: |log| of the range ratio plus the offset of lo in
    units of the true range (0 when both match)."""
    predicted_span, true_span = predicted.hi - predicted.lo, true.hi - true.lo
    if predicted_span <= 0:
        return float("inf")
    return abs(float(np.log(predicted_span / true_span))) + abs(predicted.lo - true.lo) / true_span


def fit_target_scale(pairs: list[tuple[Normalization, Normalization]]) -> TargetScale:
    """The scale model (source normalisation, target normalisation per training subject) with the smaller
    leave-one-out error; the median model when there are too few pairs to tell (fewer than 3)."""
    if not pairs:
        raise SynthmedError("no training pairs to fit the target scale on")
    errors: dict[str, float | None] = {model: None for model in SCALE_MODELS}
    if len(pairs) >= 2:
        for model in SCALE_MODELS:
            held_out = [
                scale_error(_scale_models(pairs[:i] + pairs[i + 1 :])[model].predict(s), t)
                for i, (s, t) in enumerate(pairs)
            ]
            errors[model] = float(np.mean(held_out))
    best = "median"
    if len(pairs) >= 3 and errors["affine"] < errors["median"]:
        best = "affine"
    chosen = _scale_models(pairs)[best]
    return TargetScale(
        chosen.model,
        chosen.lo,
        chosen.hi,
        chosen.offset_per_range,
        chosen.range_ratio,
        {k: (None if v is None or not np.isfinite(v) else round(v, 4)) for k, v in errors.items()},
        len(pairs),
    )
