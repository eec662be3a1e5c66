"""``synthmed evaluate``: PSNR, SSIM, MAE and NMSE of predictions against references.

Metrics are computed on the volumes as written (the target's units) inside a mask: the
given one, or the reference's foreground. PSNR uses the reference's intensity range
inside the mask. With ``match_intensity`` each prediction is first mapped linearly onto
its reference's scale by the same robust percentiles the normaliser uses (background
level and 99.5th foreground percentile): this is how a source image is scored as the
identity baseline, since its units are not the target's.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from synthmed.data.discovery import canonical_modality, file_modality
from synthmed.data.io import read_volume, volume_suffix
from synthmed.data.normalize import fit_normalization
from synthmed.errors import SynthmedError
from synthmed.metrics import foreground_mask, image_metrics, summarize

METRIC_KEYS = ("psnr", "ssim", "ssim3d", "mae", "nmse")


def match_intensity(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Linear map of ``pred`` onto ``ref``'s robust range (both fitted like the MR normaliser)."""
    p = fit_normalization(pred, foreground_mask(pred), "mr", "prediction")
    r = fit_normalization(ref, foreground_mask(ref), "mr", "reference")
    return r.invert(p.apply(pred), in_place=True)


def _subject_name(path: Path, root: Path) -> str:
    relative = path.relative_to(root) if root in path.parents else Path(path.name)
    name = str(relative)
    suffix = volume_suffix(path)
    return name[: -len(suffix)] if suffix else name


def _find_modality(folder: Path, modality: str) -> Path | None:
    wanted = canonical_modality(modality)
    return next((c for c in sorted(folder.iterdir()) if file_modality(c, folder.name) == wanted), None)


def match_pairs(pred: Path, ref: Path, pred_name: str | None = None, ref_name: str | None = None) -> list[tuple[str, Path, Path]]:
    """(subject, prediction, reference) triples: two files, or two folders matched by
    relative path, or by subject folder and modality name (``pred_name``/``ref_name``)."""
    for path in (pred, ref):
        if not path.exists():
            raise SynthmedError(f"{path}: no such file or folder")
    if pred.is_file() or ref.is_file():
        if not (pred.is_file() and ref.is_file()):
            raise SynthmedError(f"compare a file with a file or a folder with a folder ({pred} vs {ref})")
        return [(_subject_name(pred, pred.parent), pred, ref)]
    pairs = []
    if pred_name or ref_name:
        for folder in sorted(p for p in pred.iterdir() if p.is_dir()):
            p_file = _find_modality(folder, pred_name or ref_name)
            r_folder = ref / folder.name
            r_file = _find_modality(r_folder, ref_name or pred_name) if r_folder.is_dir() else None
            if p_file and r_file:
                pairs.append((folder.name, p_file, r_file))
    else:
        for p_file in sorted(p for p in pred.rglob("*") if p.is_file() and volume_suffix(p)):
            r_file = ref / p_file.relative_to(pred)
            if not r_file.exists():
                alternatives = [r for r in r_file.parent.glob(r_file.name[: -len(volume_suffix(r_file))] + ".*")
                                if volume_suffix(r)] if r_file.parent.is_dir() else []
                if not alternatives:
                    raise SynthmedError(f"no reference for {p_file}: expected {r_file}")
                r_file = alternatives[0]
            pairs.append((_subject_name(p_file, pred), p_file, r_file))
        # One volume per subject folder: name the subject by its folder (sub-003, not sub-003/T2).
        folders = [str(Path(name).parent) for name, _, _ in pairs]
        if "." not in folders and len(set(folders)) == len(folders):
            pairs = [(folder, p, r) for folder, (_, p, r) in zip(folders, pairs)]
    if not pairs:
        raise SynthmedError(f"no prediction/reference pairs found between {pred} and {ref}")
    return pairs


def evaluate(
    pred: str | Path,
    ref: str | Path,
    *,
    mask: str | Path | None = None,
    out: str | Path | None = None,
    pred_name: str | None = None,
    ref_name: str | None = None,
    match: bool = False,
) -> dict[str, Any]:
    """Evaluate and (with ``out``) write ``metrics.json`` and a CSV beside it."""
    pairs = match_pairs(Path(pred), Path(ref), pred_name, ref_name)
    return evaluate_pairs(pairs, mask=mask, out=out, match=match)


def evaluate_pairs(
    pairs: list[tuple[str, Path, Path]],
    *,
    mask: str | Path | None = None,
    out: str | Path | None = None,
    match: bool = False,
) -> dict[str, Any]:
    """Metrics of explicit (subject, prediction, reference) triples; see :func:`evaluate`."""
    per_subject: dict[str, dict[str, float]] = {}
    for subject, p_file, r_file in pairs:
        p_vol, r_vol = read_volume(p_file), read_volume(r_file)
        if p_vol.data.shape != r_vol.data.shape:
            raise SynthmedError(
                f"{p_file} has shape {'x'.join(map(str, p_vol.data.shape))}, its reference {r_file} has "
                f"{'x'.join(map(str, r_vol.data.shape))}: they must be on the same grid"
            )
        region = _mask_for(mask, subject, r_vol.data)
        prediction = match_intensity(p_vol.data, r_vol.data) if match else p_vol.data
        per_subject[subject] = image_metrics(prediction, r_vol.data, region)
    summary = summarize(per_subject)
    result = {
        "convention": "target units, inside the mask (given or reference foreground); PSNR data range = reference range in the mask"
        + ("; predictions intensity-matched to the reference" if match else ""),
        "n": len(per_subject),
        "per_subject": per_subject,
        **summary,
    }
    if out is not None:
        result["written"] = list(write_metrics(result, Path(out)))
    return result


def _mask_for(mask: str | Path | None, subject: str, reference: np.ndarray) -> np.ndarray:
    if mask is None:
        region = foreground_mask(reference)
    else:
        mask = Path(mask)
        path = mask
        if mask.is_dir():
            candidates = [c for c in (mask / subject).parent.glob(Path(subject).name + "*") if volume_suffix(c)]
            candidates += [c for c in (mask / subject).glob("*") if volume_suffix(c)] if (mask / subject).is_dir() else []
            if not candidates:
                raise SynthmedError(f"mask folder {mask} has no mask for {subject}")
            path = candidates[0]
        data = read_volume(path).data
        if data.shape != reference.shape:
            raise SynthmedError(f"mask {path} has shape {'x'.join(map(str, data.shape))}, reference has {'x'.join(map(str, reference.shape))}")
        region = data > 0.5
    if not region.any():
        raise SynthmedError(f"empty mask for {subject}: no voxel to evaluate")
    return region


def write_metrics(result: dict[str, Any], out: Path) -> tuple[Path, Path]:
    out.parent.mkdir(parents=True, exist_ok=True)
    json_path = out if out.suffix == ".json" else out.with_suffix(".json")
    csv_path = json_path.with_suffix(".csv")
    json_path.write_text(json.dumps(_finite({k: v for k, v in result.items() if k != "written"}), indent=2, default=_json_number))
    with csv_path.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["subject", *METRIC_KEYS])
        for subject, metrics in result["per_subject"].items():
            writer.writerow([subject, *[metrics.get(k) for k in METRIC_KEYS]])
        for row in ("mean", "sd"):
            writer.writerow([row, *[result[row].get(k) for k in METRIC_KEYS]])
    return json_path, csv_path


def _finite(value):
    """Strict JSON has no Infinity: an infinite PSNR (identical images) is written as the string "inf"."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    return value


def _json_number(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(type(value).__name__)


def format_table(rows: dict[str, dict[str, Any]]) -> str:
    """Plain-text table of ``{name: result}`` (mean +/- sd for each metric)."""
    digits = {"psnr": 2, "ssim": 4, "mae": 3, "nmse": 4}
    width = 22
    header = f"{'method':<20}" + "".join(f"{k.upper() + ' (mean +/- sd)':>{width}}" for k in digits)
    lines = [header, "-" * len(header)]
    for name, result in rows.items():
        cells = ""
        for key, d in digits.items():
            mean, sd = result["mean"][key], result["sd"][key]
            cells += f"{mean:.{d}f} +/- {sd:.{d}f}".rjust(width)
        lines.append(f"{name:<20}{cells}")
    return "\n".join(lines)
