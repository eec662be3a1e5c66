"""``synthmed evaluate``: PSNR, SSIM, MAE and NMSE of predictions against references.

Metrics are computed on the volumes as written (the target's units) inside a mask: the
given one, or the reference's foreground. A prediction must lie on its reference's voxel grid
(same shape and affine): one placed elsewhere is refused, or resampled onto the reference grid
with ``resample``, since voxel-by-voxel scores of misaligned volumes mean nothing. PSNR uses the reference's intensity range
inside the mask. With ``match_intensity`` each prediction is first mapped linearly onto
its reference's scale by the same robust percentiles the normaliser uses (background
level and 99.5th foreground percentile): this is how a source image is scored as the
identity baseline, since its units are not the target's.

``protocol`` picks the convention the scores follow (:mod:`synthmed.metrics.protocols`): the toolkit's (above),
SynDiff's max-normalised slices, or the SynthRAD2023/2025 challenges' (CT in HU inside the body mask, which must be
given: the reference's foreground is not the challenge's mask). ``compare`` scores a second prediction folder against
the same references and tests, per metric, the paired differences over the subjects both have
(:mod:`synthmed.metrics.paired`).
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np

from synthmed.data.discovery import canonical_modality, file_modality
from synthmed.data.foreground import foreground_mask
from synthmed.data.geometry import grid_difference, resample_onto
from synthmed.data.io import Volume, read_volume, volume_suffix
from synthmed.data.normalize import fit_normalization
from synthmed.errors import SynthmedError
from synthmed.files import (
    json_text,
    output_lock,
    record_written,
    refuse_replacing_foreign,
    same_file,
    write_text_atomic,
)
from synthmed.metrics import summarize
from synthmed.metrics.paired import paired_tests
from synthmed.metrics.protocols import LOWER_IS_BETTER, PROTOCOL_TEXT, PROTOCOLS, score

log = logging.getLogger(__name__)

METRIC_KEYS = ("psnr", "ssim", "ssim3d", "mae", "nmse", "psnr_fit", "ssim_fit", "psnr_dz")  # the toolkit's columns
SYNTHRAD = ("synthrad2023", "synthrad2025")
GEOMETRIC_FORMATS = ("nifti", "itk", "dicom")  # formats whose affine places the voxels in the world


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


def find_modality(folder: Path, modality: str) -> Path | None:
    wanted = canonical_modality(modality)
    return next((c for c in sorted(folder.iterdir()) if file_modality(c, folder.name) == wanted), None)


def match_pairs(
    pred: Path, ref: Path, pred_name: str | None = None, ref_name: str | None = None
) -> list[tuple[str, Path, Path]]:
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
            p_file = find_modality(folder, pred_name or ref_name)
            r_folder = ref / folder.name
            r_file = find_modality(r_folder, ref_name or pred_name) if r_folder.is_dir() else None
            if p_file and r_file:
                pairs.append((folder.name, p_file, r_file))
    else:
        for p_file in sorted(p for p in pred.rglob("*") if p.is_file() and volume_suffix(p)):
            r_file = ref / p_file.relative_to(pred)
            if not r_file.exists():
                alternatives = (
                    [
                        r
                        for r in r_file.parent.glob(r_file.name[: -len(volume_suffix(r_file))] + ".*")
                        if volume_suffix(r)
                    ]
                    if r_file.parent.is_dir()
                    else []
                )
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
    resample: bool = False,
    overwrite: bool = False,
    protocol: str = "toolkit",
    compare: str | Path | None = None,
) -> dict[str, Any]:
    """Evaluate and (with ``out``) write ``metrics.json`` and a CSV beside it (refused when they exist, unless
    ``overwrite``). With ``compare``, the second prediction folder is scored the same way and the result gains a
    ``'compare'`` entry: its scores and the paired tests (:func:`compare_results`)."""
    check_protocol(protocol, mask)
    pairs = match_pairs(Path(pred), Path(ref), pred_name, ref_name)
    other_pairs = match_pairs(Path(compare), Path(ref), pred_name, ref_name) if compare is not None else []
    if other_pairs and Path(pred).is_file():
        # Two files against one reference are one subject, whatever the two files are called.
        other_pairs = [(pairs[0][0], other_pairs[0][1], other_pairs[0][2])]
    options = {"mask": mask, "match": match, "resample": resample, "protocol": protocol}

    def run() -> dict[str, Any]:
        result = evaluate_pairs(pairs, **options)
        if compare is not None:
            other = evaluate_pairs(other_pairs, **options)
            result["compare"] = compare_results(result, other, comparison_names(Path(pred), Path(compare)), compare)
        return result

    if out is None:
        return run()
    json_path, csv_path = metrics_paths(Path(out))
    inputs = [p for _, a, b in pairs + other_pairs for p in (a, b)] + ([Path(mask)] if mask else [])
    with output_lock(json_path):
        check_metrics_outputs(json_path, csv_path, inputs, overwrite)
        result = run()
        result["written"] = list(write_metrics(result, json_path, overwrite=overwrite))
        return result


def check_protocol(protocol: str, mask: str | Path | None) -> None:
    """Refuse an unknown protocol, and a SynthRAD protocol without the body mask it is defined on."""
    if protocol not in PROTOCOLS:
        raise SynthmedError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    if protocol in SYNTHRAD and mask is None:
        raise SynthmedError(
            f"--protocol {protocol} scores inside the body mask that comes with each SynthRAD CT (mask/<subject>); "
            "pass it with --mask FILE_OR_FOLDER. The reference's foreground is not that mask, so the numbers "
            "would not be comparable with the challenge's"
        )


def comparison_names(pred: Path, other: Path) -> tuple[str, str]:
    """Short names for the two prediction folders in tables: their own names, or whole paths when those clash."""
    a, b = pred.name or str(pred), other.name or str(other)
    return (a, b) if a != b else (str(pred), str(other))


def compare_results(
    result: dict[str, Any], other: dict[str, Any], names: tuple[str, str], other_path: str | Path
) -> dict[str, Any]:
    """The ``'compare'`` entry of :func:`evaluate`: the other folder's scores and, per metric, the Wilcoxon
    signed-rank test, median difference (first - second) and rank-biserial correlation over the common subjects."""
    metrics = [k for k in result["mean"] if k != "slices"]
    paired = paired_tests(
        result["per_subject"], other["per_subject"], metrics, names=names, lower_is_better=LOWER_IS_BETTER
    )
    for note in paired["warnings"]:
        log.warning("compare: %s", note)
    return {
        "other": str(other_path),
        "names": list(names),
        "difference": f"{names[0]} - {names[1]}",
        "test": "Wilcoxon signed-rank, two-sided, zero differences dropped (zero_method='wilcox'); effect size: "
        "matched-pairs rank-biserial correlation (positive: the first is higher)",
        **paired,
        "other_result": {k: v for k, v in other.items() if k != "written"},
    }


def metrics_paths(out: Path) -> tuple[Path, Path]:
    """``metrics.json`` and the CSV beside it, for ``--out``."""
    json_path = out if out.suffix == ".json" else out.with_suffix(".json")
    return json_path, json_path.with_suffix(".csv")


def check_metrics_outputs(
    json_path: Path, csv_path: Path, inputs: list[Path], overwrite: bool, command: str = "evaluate"
) -> None:
    for path in (json_path, csv_path):
        for item in inputs:
            if same_file(path, item) or (item.is_dir() and path.resolve().is_relative_to(item.resolve())):
                raise SynthmedError(f"--out {path} is, or lies in, the input {item}; choose another --out")
        if path.is_dir():
            raise SynthmedError(f"--out: {path} is a folder; give a file name like metrics.json")
        if path.exists() and not overwrite:
            raise SynthmedError(
                f"{path} exists; pass --overwrite to replace it (and its "
                f"{'CSV' if path == json_path else 'JSON'} twin), or choose another --out"
            )
    refuse_replacing_foreign([path for path in (json_path, csv_path) if path.exists() or path.is_symlink()], command)


def evaluate_pairs(
    pairs: list[tuple[str, Path, Path]],
    *,
    mask: str | Path | None = None,
    out: str | Path | None = None,
    match: bool = False,
    resample: bool = False,
    overwrite: bool = False,
    protocol: str = "toolkit",
) -> dict[str, Any]:
    """Metrics of explicit (subject, prediction, reference) triples; see :func:`evaluate`."""
    check_protocol(protocol, mask)
    per_subject: dict[str, dict[str, float]] = {}
    for subject, p_file, r_file in pairs:
        p_vol, r_vol = read_volume(p_file), read_volume(r_file)
        prediction = on_reference_grid(p_vol, r_vol, resample)
        region = mask_for(mask, subject, r_vol)
        if match:
            prediction = match_intensity(prediction, r_vol.data)
        if protocol in SYNTHRAD:
            warn_unless_hounsfield(r_vol)
        per_subject[subject] = score(protocol, prediction, r_vol.data, region)
    summary = summarize(per_subject)
    convention = (
        "target units, inside the mask (given or reference foreground); PSNR data range = reference range in the mask"
        if protocol == "toolkit"
        else PROTOCOL_TEXT[protocol]
    )
    result = {
        "protocol": protocol,
        "convention": convention + ("; predictions intensity-matched to the reference" if match else ""),
        "n": len(per_subject),
        "per_subject": per_subject,
        **summary,
    }
    if out is not None:
        result["written"] = list(write_metrics(result, Path(out), overwrite=overwrite))
    return result


def warn_unless_hounsfield(reference: Volume) -> None:
    """A CT in HU has air near -1000 around the body; a reference without anything below -500 is probably not in
    HU (an MR, or a CT rescaled to [0, 1]), and the SynthRAD windows would then clip it to nonsense."""
    low = float(reference.data.min())
    if low > -500:
        log.warning(
            "%s: lowest value %.4g; the SynthRAD protocols expect CT in HU (air near -1000), so its scores may not "
            "be comparable with the challenge's",
            reference.path,
            low,
        )


def _has_geometry(volume: Volume) -> bool:
    return volume.format in GEOMETRIC_FORMATS


def on_reference_grid(prediction: Volume, reference: Volume, resample: bool) -> np.ndarray:
    """The prediction's voxels on the reference's grid: as they are when the grids agree; resampled (linear,
    the prediction's minimum outside its field of view) with ``resample``; otherwise refused."""
    geometric = _has_geometry(prediction) and _has_geometry(reference)
    problem = grid_difference(
        prediction.data.shape,
        prediction.affine if geometric else np.eye(4),
        reference.data.shape,
        reference.affine if geometric else np.eye(4),
    )
    if problem is None:
        return prediction.data
    if not (resample and geometric):
        fix = (
            "pass --resample to resample it onto the reference grid"
            if geometric
            else "these formats carry no position, so they must have the same shape"
        )
        raise SynthmedError(
            f"{prediction.path} and its reference {reference.path} are not on one voxel grid "
            f"({problem}): voxel-wise scores would compare different places; {fix}"
        )
    log.warning("%s: resampled onto the grid of %s (%s)", prediction.path, reference.path, problem)
    return resample_onto(
        prediction.data,
        prediction.affine,
        reference.data.shape,
        reference.affine,
        order=1,
        fill=float(prediction.data.min()),
    )


def mask_for(mask: str | Path | None, subject: str, reference_volume: Volume) -> np.ndarray:
    reference = reference_volume.data
    if mask is None:
        region = foreground_mask(reference)
    else:
        mask = Path(mask)
        path = mask
        if mask.is_dir():
            candidates = [c for c in (mask / subject).parent.glob(Path(subject).name + "*") if volume_suffix(c)]
            candidates += (
                [c for c in (mask / subject).glob("*") if volume_suffix(c)] if (mask / subject).is_dir() else []
            )
            if not candidates:
                raise SynthmedError(f"mask folder {mask} has no mask for {subject}")
            path = candidates[0]
        mask_volume = read_volume(path)
        geometric = _has_geometry(mask_volume) and _has_geometry(reference_volume)
        problem = grid_difference(
            mask_volume.data.shape,
            mask_volume.affine if geometric else np.eye(4),
            reference.shape,
            reference_volume.affine if geometric else np.eye(4),
        )
        if problem:
            raise SynthmedError(
                f"mask {path} is not on the grid of its reference {reference_volume.path} "
                f"({problem}); give a mask of the reference's grid"
            )
        region = mask_volume.data > 0.5
    if not region.any():
        raise SynthmedError(f"empty mask for {subject}: no voxel to evaluate")
    return region


def metric_columns(result: dict[str, Any]) -> list[str]:
    """The CSV's metric columns: the toolkit's fixed set (stable for spreadsheets that read it), or the protocol's
    own metrics in the order it returns them."""
    if result.get("protocol", "toolkit") == "toolkit":
        return list(METRIC_KEYS)
    return list(result["mean"])


def write_metrics(result: dict[str, Any], out: Path, overwrite: bool = True) -> tuple[Path, Path]:
    """``metrics.json`` (strict JSON: an infinite PSNR, identical images, is ``null``) and the CSV beside it,
    each written atomically; an existing one is refused unless ``overwrite``."""
    json_path, csv_path = metrics_paths(out)
    for path in (json_path, csv_path):
        if path.exists() and not overwrite:
            raise SynthmedError(f"{path} exists; pass --overwrite to replace it, or choose another --out")
    try:
        json_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SynthmedError(
            f"cannot create folder {json_path.parent} ({error.strerror or error}); choose another --out"
        ) from None
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    keys = metric_columns(result)
    writer.writerow(["subject", *keys])
    for subject, metrics in result["per_subject"].items():
        writer.writerow([subject, *[metrics.get(k) for k in keys]])
    for row in ("mean", "sd"):
        writer.writerow([row, *[result[row].get(k) for k in keys]])
    write_text_atomic(csv_path, table.getvalue())
    write_text_atomic(json_path, json_text({k: v for k, v in result.items() if k != "written"}))
    record_written([csv_path, json_path], "evaluate")
    return json_path, csv_path


def format_table(rows: dict[str, dict[str, Any]]) -> str:
    """Plain-text table of ``{name: result}`` (mean +/- sd for each metric): the toolkit's main metrics, or every
    metric of another protocol."""
    digits = {"psnr": 2, "ssim": 4, "mae": 3, "nmse": 4, "psnr_fit": 2, "psnr_dz": 2}
    if any(result.get("protocol", "toolkit") != "toolkit" for result in rows.values()):
        keys = list(dict.fromkeys(k for result in rows.values() for k in result["mean"] if k != "slices"))
        digits = {k: digits.get(k, 4) for k in keys}
    width = 22
    header = f"{'method':<20}" + "".join(f"{k.upper() + ' (mean +/- sd)':>{width}}" for k in digits)
    lines = [header, "-" * len(header)]
    for name, result in rows.items():
        cells = ""
        for key, d in digits.items():
            if key not in result["mean"]:
                cells += "-".rjust(width)
                continue
            mean, sd = result["mean"][key], result["sd"][key]
            cells += f"{mean:.{d}f} +/- {sd:.{d}f}".rjust(width)
        lines.append(f"{name:<20}{cells}")
    return "\n".join(lines)
