"""``synthmed evaluate-anomaly MAPS DATA``: voxel-level scores of anomaly maps against lesion labels.

For every subject: AUROC, AUPRC (average precision) and the best achievable Dice (the threshold chosen on that
subject itself, as anomaly-detection papers report it) inside a brain mask, with the lesion = label > 0 (a
multi-class tumour label counts every class). With validation subjects, a threshold is also chosen on their pooled
voxels (the best Dice there) and applied unchanged to every other subject: the Dice a user gets on a scan whose
label is unknown. Both Dice figures are reported; the second is the honest one.

Thresholds only carry over between scans whose maps share a unit. ``synthmed anomaly`` writes maps in each input's
intensity units, which differ between scanners, so with the inputs at hand (``input_name``) every map is divided
by half its input's robust intensity range: the model's own [-1, 1] units, the same for every scan. The inputs also
give the trivial baselines, scored the same way: ``bright`` (the normalised intensity itself: a lesion brighter
than tissue, as on FLAIR) and ``dark`` (its negative).

The mask: ``mask`` (a file, or a folder with one per subject), else the input's foreground, else the voxels where
the map is non-zero (``synthmed anomaly`` writes 0 outside the head).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np

from synthmed.data.foreground import foreground_mask
from synthmed.data.io import read_volume
from synthmed.data.normalize import fit_normalization, mr_low
from synthmed.errors import SynthmedError
from synthmed.files import json_text, output_lock, record_written, write_text_atomic
from synthmed.metrics.anomaly import auprc, auroc, best_dice, dice_at
from synthmed.workflows.evaluate import (
    check_metrics_outputs,
    find_modality,
    mask_for,
    match_pairs,
    metrics_paths,
    on_reference_grid,
)

COMMAND = "evaluate-anomaly"
BASELINES = ("bright", "dark")
SCORE_KEYS = ("auroc", "auprc", "best_dice", "dice_at_validation_threshold")


def _scores(values: np.ndarray, lesion: np.ndarray) -> dict[str, Any]:
    dice, threshold = best_dice(values, lesion)
    return {
        "auroc": auroc(values, lesion),
        "auprc": auprc(values, lesion),
        "best_dice": dice,
        "best_threshold": threshold if np.isfinite(threshold) else None,
    }


def _subject_maps(
    subject: str, map_file: Path, label_file: Path, input_file: Path | None, mask: str | Path | None
) -> tuple[dict[str, np.ndarray], np.ndarray, str | None]:
    """({method: scores inside the mask}, lesion inside the mask, a note) of one subject."""
    label_volume = read_volume(label_file)
    anomaly = on_reference_grid(read_volume(map_file), label_volume, resample=False).astype(np.float64)
    lesion = label_volume.data > 0
    maps = {"map": anomaly}
    region = None
    if input_file is not None:
        image_volume = read_volume(input_file)
        image = on_reference_grid(image_volume, label_volume, resample=False).astype(np.float64)
        foreground = foreground_mask(image)
        normalization = fit_normalization(image, foreground, "mr", name=str(input_file), low=mr_low(image))
        half_range = 0.5 * (normalization.hi - normalization.lo)
        maps["map"] = anomaly / half_range
        # unclipped, so that lesions brighter than the 99.5th percentile keep their order
        maps["bright"] = (image - normalization.lo) / half_range - 1.0
        maps["dark"] = -maps["bright"]
        region = foreground
    if mask is not None:
        region = mask_for(mask, subject, label_volume)
    elif region is None:
        region = anomaly > 0
    if not region.any():
        raise SynthmedError(f"{subject}: empty mask (no voxel to score); pass --mask")
    outside = int(np.count_nonzero(lesion & ~region))
    # a lesion voxel outside the mask can be neither found nor missed: say how many are left out
    note = f"{outside} lesion voxels outside the mask are not scored" if outside else None
    return {name: values[region] for name, values in maps.items()}, lesion[region], note


def evaluate_anomaly(
    maps: str | Path,
    data: str | Path,
    *,
    label_name: str = "lesion",
    map_name: str = "anomaly",
    input_name: str | None = None,
    input_file: str | Path | None = None,
    mask: str | Path | None = None,
    validation: list[str] | tuple[str, ...] = (),
    out: str | Path | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Score the anomaly maps under ``maps`` against the labels under ``data`` (see the module docstring).

    ``maps`` and ``data``: two files (the map and the label; ``input_file`` the scan), or two folders of subject
    folders, the map named ``map_name`` and the label ``label_name`` (and the scan ``input_name``) in each.
    """
    maps, data = Path(maps), Path(data)
    pairs = match_pairs(maps, data, None if maps.is_file() else map_name, None if data.is_file() else label_name)
    subjects = [subject for subject, _, _ in pairs]
    unknown = sorted(set(validation) - set(subjects))
    if unknown:
        raise SynthmedError(f"--validation {unknown[0]}: no such subject (have {', '.join(subjects)})")
    if validation and not set(subjects) - set(validation):
        raise SynthmedError("--validation names every subject: leave at least one to apply its threshold to")
    if out is not None:
        json_path, csv_path = metrics_paths(Path(out))
        check_metrics_outputs(json_path, csv_path, [maps, data], overwrite, command=COMMAND)

    per_subject: dict[str, dict[str, Any]] = {}
    arrays: dict[str, tuple[dict[str, np.ndarray], np.ndarray]] = {}
    for subject, map_file, label_file in pairs:
        scan = None
        if data.is_dir() and input_name:
            scan = find_modality(data / subject, input_name) if (data / subject).is_dir() else None
            if scan is None:
                raise SynthmedError(f"{data / subject}: no {input_name} scan (--input-name)")
        elif input_file is not None:
            scan = Path(input_file)
        values, lesion, note = _subject_maps(subject, map_file, label_file, scan, mask)
        arrays[subject] = (values, lesion)
        per_subject[subject] = {
            "split": "validation" if subject in validation else "test",
            "voxels": int(lesion.size),
            "lesion_voxels": int(lesion.sum()),
            **({"note": note} if note else {}),
            "methods": {name: _scores(scores, lesion) for name, scores in values.items()},
        }

    test_subjects = [s for s in subjects if s not in validation]

    def pooled(group: list[str], name: str) -> tuple[np.ndarray, np.ndarray]:
        return (
            np.concatenate([arrays[s][0][name] for s in group]),
            np.concatenate([arrays[s][1] for s in group]),
        )

    summary: dict[str, Any] = {}
    for name in arrays[subjects[0]][0]:
        test_scores, test_lesion = pooled(test_subjects, name)
        entry: dict[str, Any] = {
            "pooled_test": _scores(test_scores, test_lesion),
            "mean_test": {
                key: _mean([per_subject[s]["methods"][name][key] for s in test_subjects])
                for key in ("auroc", "auprc", "best_dice")
            },
        }
        if validation:
            validation_scores = _scores(*pooled(list(validation), name))
            entry["validation"] = validation_scores
            threshold = validation_scores["best_threshold"]
            threshold = float("inf") if threshold is None else threshold
            for subject in test_subjects:
                values, lesion = arrays[subject][0][name], arrays[subject][1]
                per_subject[subject]["methods"][name]["dice_at_validation_threshold"] = dice_at(
                    values, lesion, threshold
                )
            entry["mean_test"]["dice_at_validation_threshold"] = _mean(
                [per_subject[s]["methods"][name]["dice_at_validation_threshold"] for s in test_subjects]
            )
            entry["pooled_test"]["dice_at_validation_threshold"] = dice_at(test_scores, test_lesion, threshold)
        summary[name] = entry

    result = {
        "convention": (
            "voxels inside the mask ("
            + ("given" if mask else "input foreground" if (input_name or input_file) else "map > 0")
            + "); lesion = label > 0; "
            + (
                "maps in the input's normalised units (divided by half its robust range)"
                if (input_name or input_file)
                else "maps as written"
            )
        ),
        "validation": list(validation),
        "test": [s for s in subjects if s not in validation],
        "per_subject": per_subject,
        "summary": summary,
    }
    if out is not None:
        with output_lock(json_path):
            write_text_atomic(json_path, json_text(result))
            write_text_atomic(csv_path, _csv(result))
            record_written([json_path, csv_path], COMMAND)
        result["written"] = [json_path, csv_path]
    return result


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def _csv(result: dict[str, Any]) -> str:
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["subject", "split", "method", *SCORE_KEYS])
    for subject, record in result["per_subject"].items():
        for method, scores in record["methods"].items():
            writer.writerow([subject, record["split"], method, *[scores.get(k) for k in SCORE_KEYS]])
    for method, entry in result["summary"].items():
        for row in ("mean_test", "pooled_test"):
            writer.writerow([row, "test", method, *[entry[row].get(k) for k in SCORE_KEYS]])
    return table.getvalue()


def format_anomaly_table(result: dict[str, Any]) -> str:
    """Plain-text summary: one line per method (mean over test subjects, and the pooled test voxels)."""
    header = f"{'method':<10}{'AUROC':>8}{'AUPRC':>8}{'best Dice':>11}{'Dice@val':>10}   (mean over test subjects)"
    lines = [header, "-" * len(header)]
    for method, entry in result["summary"].items():
        mean = entry["mean_test"]
        cells = [mean.get(k) for k in SCORE_KEYS]
        widths = (8, 8, 11, 10)
        lines.append(
            f"{method:<10}" + "".join(("-" if v is None else f"{v:.3f}").rjust(w) for v, w in zip(cells, widths))
        )
    return "\n".join(lines)
