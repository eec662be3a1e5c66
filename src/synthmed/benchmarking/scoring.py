"""One scoring path for every benchmark: per-subject image metrics in the target's units, inside the lesion, in
the reference repositories' max-normalised convention, FID, and their summaries over repeats and the ranking.

Every translated volume (and the identity baseline) is scored here, in the benchmark's own process; no benchmark
scores through another implementation of the protocol.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from synthmed.errors import SynthmedError
from synthmed.metrics.protocols import max_normalised_scores  # the one definition, shared with `evaluate --protocol`

METRICS = ("psnr", "ssim", "ssim3d", "mae", "nmse", "psnr_fit", "ssim_fit", "psnr_dz")
MAX_NORMALISED_METRICS = ("psnr", "ssim")
RESOURCE_FIGURES = (
    "train_seconds",
    "steps",
    "train_slices_per_second",
    "train_peak_rss_mb",
    "translate_seconds_per_volume",
    "translate_peak_rss_mb",
    "parameters",
)


class FidScorer:
    """FID of each method's translated slices against the reference slices (:mod:`synthmed.metrics.fid`). The
    network and the reference features are computed once per benchmark; without weights every FID is ``None`` and
    :attr:`status` says why."""

    def __init__(self, weights: str | None, variant: str):
        from synthmed.metrics.fid import NO_WEIGHTS_MESSAGE

        self.network = None
        self.status: dict[str, Any] = {"available": False, "unavailable": NO_WEIGHTS_MESSAGE}
        self._reference_features: np.ndarray | None = None
        if weights:
            from synthmed.nn.inception import load_inception

            self.network = load_inception(weights, variant=variant)
            self.status = {
                "available": True,
                "weights": weights,
                "variant": self.network.variant,
                "images": "axial slices that hold the head; each subject mapped to [-1, 1] by the "
                "reference's 0.5/99.5 percentiles inside its head",
            }

    @staticmethod
    def slices(volume: np.ndarray, reference: np.ndarray, head: np.ndarray) -> np.ndarray:
        """(n, H, W) float32 slices of ``volume`` in [-1, 1], scaled by the reference's robust range in the head."""
        low, high = np.percentile(reference[head], [0.5, 99.5])
        keep = np.flatnonzero(head.any(axis=(0, 1)))
        scaled = (volume[..., keep] - low) / max(float(high - low), 1e-12) * 2 - 1
        return np.clip(np.moveaxis(scaled, -1, 0), -1, 1).astype(np.float32)

    @property
    def needs_references(self) -> bool:
        """True until the reference features are computed (the first call)."""
        return self._reference_features is None

    def __call__(self, predicted: list[np.ndarray], references: list[np.ndarray]) -> float | None:
        if self.network is None:
            return None
        from synthmed.metrics.fid import frechet_distance_of_features, inception_features

        if self._reference_features is None:
            self._reference_features = inception_features(np.concatenate(references), self.network)
        return frechet_distance_of_features(
            self._reference_features, inception_features(np.concatenate(predicted), self.network)
        )


def score_pairs(
    pairs: list[tuple[str, Path, Path]], lesions: dict[str, Path], fid: FidScorer, match: bool = False
) -> dict[str, Any]:
    """Per subject and summarised: ``overall`` (inside the reference's foreground, its range there as the PSNR data
    range), ``lesion`` (for subjects with a lesion: inside it, with the *same* data range, so lesion PSNR is on the
    overall scale rather than on the lesion's own narrow range), ``max_normalised`` (:func:`max_normalised_scores`)
    and ``fid`` (None without Inception weights). Each volume is read once."""
    from synthmed.data.foreground import foreground_mask
    from synthmed.data.io import read_volume
    from synthmed.metrics import image_metrics, summarize
    from synthmed.workflows.evaluate import match_intensity

    overall, lesion, normalised = {}, {}, {}
    fid_predicted, fid_references = [], []
    for subject, prediction_path, reference_path in pairs:
        reference = read_volume(reference_path).data
        prediction = read_volume(prediction_path).data
        if prediction.shape != reference.shape:
            raise SynthmedError(f"{prediction_path} has shape {prediction.shape}, its reference {reference.shape}")
        if match:
            prediction = match_intensity(prediction, reference)
        head = foreground_mask(reference)
        overall[subject] = image_metrics(prediction, reference, head)
        normalised[subject] = max_normalised_scores(prediction, reference, head)
        if subject in lesions:
            values = reference[head]
            region = read_volume(lesions[subject]).data > 0
            lesion[subject] = image_metrics(
                prediction, reference, region, data_range=float(values.max() - values.min())
            )
        if fid.network is not None:
            fid_predicted.append(fid.slices(prediction, reference, head))
            if fid.needs_references:
                fid_references.append(fid.slices(reference, reference, head))
    result: dict[str, Any] = {"overall": {"n": len(overall), "per_subject": overall, **summarize(overall)}}
    if lesion:
        result["lesion"] = {
            "n": len(lesion),
            "per_subject": lesion,
            **summarize(lesion),
            "data_range": "the reference's range inside the head",
        }
    result["max_normalised"] = {"n": len(normalised), "per_subject": normalised, **summarize(normalised)}
    result["fid"] = fid(fid_predicted, fid_references)
    return result


def summarize_repeats(entries: list[dict]) -> dict[str, Any]:
    def stats(values: list[float | None]) -> dict[str, Any]:
        values = [v for v in values if v is not None]
        if not values:
            return {"mean": None, "sd": None, "n": 0}
        return {
            "mean": float(np.mean(values)),
            "sd": float(np.std(values, ddof=1)) if len(values) > 1 else None,
            "n": len(values),
        }

    summary = {
        f"{region}_{metric}": stats([e["scores"].get(region, {}).get("mean", {}).get(metric) for e in entries])
        for region in ("overall", "lesion")
        for metric in METRICS
    }
    summary.update(
        {
            f"max_normalised_{metric}": stats([e["scores"]["max_normalised"]["mean"][metric] for e in entries])
            for metric in MAX_NORMALISED_METRICS
        }
    )
    summary["fid"] = stats([e["scores"].get("fid") for e in entries])
    for key in RESOURCE_FIGURES:
        summary[key] = stats([e.get(key) for e in entries])
    return summary


def rank_methods(
    identity: dict[str, Any], methods: dict[str, dict[str, Any]], claim: tuple[str, ...] | None = None
) -> dict[str, Any]:
    """Methods ordered best first by mean PSNR and by mean SSIM in the head (over repeats), each one's gain over
    the identity baseline, and, when the suite states a published ordering and every method of it was run,
    whether that ordering held here."""

    def mean(label: str, metric: str) -> float:
        value = methods[label]["summary"][f"overall_{metric}"]["mean"]
        return -np.inf if value is None else value

    by_psnr = sorted(methods, key=lambda label: -mean(label, "psnr"))
    by_ssim = sorted(methods, key=lambda label: -mean(label, "ssim"))
    baseline = identity["overall"]["mean"]
    result: dict[str, Any] = {
        "psnr": by_psnr,
        "ssim": by_ssim,
        "gain_over_identity_psnr_db": {
            label: round(mean(label, "psnr") - baseline["psnr"], 2)
            for label in by_psnr
            if np.isfinite(mean(label, "psnr"))
        },
        "gain_over_identity_ssim": {
            label: round(mean(label, "ssim") - baseline["ssim"], 4)
            for label in by_ssim
            if np.isfinite(mean(label, "ssim"))
        },
    }
    if claim:
        complete = all(label in methods for label in claim)
        result["claim"] = {
            "order": list(claim),
            "holds_psnr": [m for m in by_psnr if m in claim] == list(claim) if complete else None,
            "holds_ssim": [m for m in by_ssim if m in claim] == list(claim) if complete else None,
        }
    return result
