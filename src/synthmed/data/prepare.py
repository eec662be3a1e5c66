"""Dataset fingerprint, plan and prepared slice arrays (``synthmed prepare``).

The output folder holds ``plan.json`` (the fingerprint, every choice made from it, the
subject split and the per-volume geometry and normalisation records) and one
memory-mapped ``.npy`` array per role under ``slices/``:

- ``source.npy`` / ``target.npy``: float32 (n, size, size) in [-1, 1];
- ``mask.npy``: uint8 foreground of the source (what metrics are computed inside);
- ``label.npy``: uint8 label map, when ``--label`` is given;
- ``index.npy``: int32 (n, 2) = (subject number in ``plan.subjects``, slice number).

Slices are kept at native resolution by default: every pixel is one in-plane voxel at the data's median
spacing (``--spacing`` another), and ``size`` is the smallest multiple of 16 that holds the largest head, so
most volumes are not resampled at all; models train on random patches of them. ``--size N`` instead squeezes
each volume's foreground box into N x N pixels (the toolkit's earlier, resolution-losing layout).

The folder is written under a temporary name and renamed at the end, so it is either
complete or absent. Re-running with the same inputs and options does nothing. The command holds a lock
on the output for its whole run; ``--overwrite`` replaces only a folder that ``prepare`` itself made (its
``.synthmed`` marker, nothing else in it), never one that holds or lies inside the input data.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from tqdm.auto import tqdm

from synthmed.data.discovery import (
    FileRef,
    Subject,
    canonical_modality,
    discover,
    parse_aliases,
    patient_key,
    require_modalities,
)
from synthmed.data.foreground import foreground_mask
from synthmed.data.geometry import (
    AFFINE_TOLERANCE_MM,
    INTERPOLATION,
    crop_slices,
    fit_geometry,
    fit_native_geometry,
    foreground_side_mm,
    in_plane_spacing,
    native_size,
    resample_onto,
    slice_axis,
)
from synthmed.data.input_profile import measure as measure_input
from synthmed.data.input_profile import training_profile
from synthmed.data.io import Volume, ensure_writable_folder, read_volume
from synthmed.data.normalize import (
    Normalization,
    fit_normalization,
    fit_target_scale,
    median_normalization,
    modality_kind,
)
from synthmed.data.plan import PLAN_VERSION, Plan, load_plan
from synthmed.data.splits import parse_ratios, split_subjects
from synthmed.errors import SynthmedError
from synthmed.files import (
    finite_json,
    json_text,
    move_folder_into_place,
    output_lock,
    ownership_problem,
    refuse_overlap,
    remove_stale_temporaries,
    require_free_space,
    temporary_path,
    write_marker,
)

log = logging.getLogger(__name__)

MAX_SIZE = 1024
MIN_FOREGROUND_FRACTION = 0.01


def read_ref(ref: FileRef) -> Volume:
    return read_volume(ref.path, key=ref.key, channel=ref.channel)


def _input_hash(subjects: list[Subject], options: dict) -> str:
    digest = hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode())
    for subject in subjects:
        for modality, ref in sorted(subject.files.items()):
            paths = glob.glob(ref.path) if any(c in ref.path for c in "*?[") else [ref.path]
            for path in map(Path, sorted(paths)):
                stat = path.stat() if path.exists() else None
                entry = (
                    subject.id,
                    modality,
                    str(path),
                    ref.key,
                    ref.channel,
                    stat and stat.st_size,
                    stat and stat.st_mtime_ns,
                )
                digest.update(repr(entry).encode())
    return digest.hexdigest()


def _check_usable(volume: Volume, foreground: np.ndarray, what: str) -> None:
    finite = volume.data
    if float(finite.max()) == float(finite.min()):
        raise SynthmedError(f"{volume.path}: {what} is a constant image (all voxels {finite.min():g}); check the file")
    if not foreground.any():
        raise SynthmedError(f"{volume.path}: {what} has an empty foreground (nothing above the background level)")


def _coregister(subject: str, source: Volume, other: Volume, role: str, resample: bool, is_label: bool) -> np.ndarray:
    """``other``'s data on the source grid; error if it is not co-registered and resampling is off."""
    same_shape = source.data.shape == other.data.shape
    same_affine = np.allclose(source.affine, other.affine, atol=AFFINE_TOLERANCE_MM)
    if same_shape and same_affine:
        return other.data
    if source.is_2d or other.is_2d:
        if same_shape:
            return other.data
        raise SynthmedError(
            f"subject {subject}: {role} {other.path} has shape {'x'.join(map(str, other.data.shape))}, source has "
            f"{'x'.join(map(str, source.data.shape))}; 2D stacks cannot be resampled: give matching slices"
        )
    if not resample:
        problem = (
            f"shape {'x'.join(map(str, other.data.shape))}, source has {'x'.join(map(str, source.data.shape))}"
            if not same_shape
            else "the same shape but a different affine (position/orientation) than the source"
        )
        raise SynthmedError(
            f"subject {subject}: {role} {Path(other.path).name} has {problem}: not co-registered; "
            "register them or pass --resample to resample onto the source grid"
        )
    return resample_onto(
        other.data,
        other.affine,
        source.data.shape,
        source.affine,
        order=0 if is_label else 1,
        fill=float(other.data.min()),
    )


def _volume_summary(volume: Volume) -> dict:
    return {
        "shape": "x".join(map(str, volume.data.shape)),
        "spacing": [float(s) for s in volume.spacing],
        "orientation": "".join(nib.aff2axcodes(volume.affine)),
        "format": volume.format,
    }


def _fingerprint(summaries: dict[str, list[dict]], percentiles: dict[str, list[list[float]]]) -> dict:
    result = {}
    for modality, items in summaries.items():
        result[modality] = {
            "shapes": sorted({item["shape"] for item in items}),
            "spacing_median": [float(s) for s in np.median([item["spacing"] for item in items], axis=0)],
            "orientations": sorted({item["orientation"] for item in items}),
            "formats": sorted({item["format"] for item in items}),
            "foreground_percentiles_median": dict(
                zip(["p0.5", "p50", "p99.5"], [float(x) for x in np.median(percentiles[modality], axis=0)])
            ),
        }
    return result


def prepare(
    data: str | Path | None,
    *,
    source: str,
    out: str | Path,
    target: str | None = None,
    label: str | None = None,
    size: int | None = None,
    spacing: float | None = None,
    axis: str | int = "axial",
    pattern: str | None = None,
    manifest: str | Path | None = None,
    split: str | Sequence[float] = (0.7, 0.1, 0.2),
    seed: int = 0,
    aliases=None,
    resample: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Prepare a dataset for training; returns the output folder. See the module docstring."""
    out = Path(out)
    with output_lock(out):
        return _prepare(
            data,
            source=source,
            out=out,
            target=target,
            label=label,
            size=size,
            spacing=spacing,
            axis=axis,
            pattern=pattern,
            manifest=manifest,
            split=split,
            seed=seed,
            aliases=aliases,
            resample=resample,
            overwrite=overwrite,
            progress=progress,
        )


def _prepare(
    data,
    *,
    source,
    out: Path,
    target,
    label,
    size,
    spacing,
    axis,
    pattern,
    manifest,
    split,
    seed,
    aliases,
    resample,
    overwrite,
    progress,
) -> Path:
    ratios = parse_ratios(split)
    alias_map = parse_aliases(aliases)
    source_mod = canonical_modality(source, alias_map)
    target_mod = canonical_modality(target, alias_map) if target else None
    label_mod = canonical_modality(label, alias_map) if label else None
    if target_mod == source_mod:
        raise SynthmedError(f"--source and --target are both {source_mod}; choose two modalities")
    if size is not None and spacing is not None:
        raise SynthmedError(
            "--size and --spacing exclude each other: --spacing keeps native resolution (at that pixel "
            "size), --size resizes every foreground box to N x N pixels"
        )
    if spacing is not None and not (np.isfinite(spacing) and 0.01 <= spacing <= 100):
        raise SynthmedError(f"--spacing {spacing}: give the in-plane pixel size in mm, e.g. 1.0")
    if size is not None and (size < 16 or size > MAX_SIZE or size % 16):
        raise SynthmedError(f"--size {size}: use a multiple of 16 between 16 and {MAX_SIZE} (e.g. 64, 128, 256)")
    native = size is None

    subjects = discover(data, pattern=pattern, manifest=manifest, aliases=aliases)
    if not subjects:
        raise SynthmedError(f"{data or manifest}: no subjects found")
    roles = [m for m in (source_mod, target_mod) if m]
    require_modalities(subjects, roles)
    if label_mod:
        missing = [s.id for s in subjects if label_mod not in s.files and s.label is None]
        if missing:
            raise SynthmedError(
                f"subject {missing[0]} has no {label_mod} label (--label {label}); {len(missing)} subject(s) lack it"
            )

    options = {
        "version": PLAN_VERSION,
        "source": source_mod,
        "target": target_mod,
        "label": label_mod,
        "size": size,
        "spacing": spacing,
        "axis": str(axis),
        "pattern": pattern,
        "manifest": str(manifest) if manifest else None,
        "split": ratios,
        "seed": seed,
        "resample": resample,
    }
    inputs_hash = _input_hash(subjects, options)
    _check_output(out, data, manifest, subjects, overwrite)
    if out.is_dir() and (out / "plan.json").is_file() and not overwrite and _owned(out):
        try:
            if load_plan(out).inputs_hash == inputs_hash:
                log.info("%s is up to date (same inputs and options); nothing to do", out)
                return out
        except SynthmedError:  # a damaged plan is not up to date: prepared again below
            pass
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise SynthmedError(
            f"{out} exists and holds something else; pass --overwrite to replace it or choose another --out"
        )

    ensure_writable_folder(out.parent)
    remove_stale_temporaries(out.parent, names=lambda name: name == out.name)

    target_spacing = None
    if native:
        # A pre-pass over the sources alone: each one's pixel size and the square its foreground needs, which give
        # the target spacing (their median, unless --spacing) and the slice size that holds the largest of them.
        pixel_mm, side_mm = {}, {}
        for subject in tqdm(subjects, desc="sizing", disable=not progress, unit="subject"):
            src = read_ref(subject.files[source_mod])
            volume_axis = slice_axis(src.affine, axis, src.is_2d)
            pixel_mm[subject.id] = in_plane_spacing(src.spacing, volume_axis)
            side_mm[subject.id] = foreground_side_mm(foreground_mask(src.data), volume_axis, pixel_mm[subject.id])
            del src
        target_spacing = float(spacing if spacing is not None else np.median(list(pixel_mm.values())))
        widest = max(side_mm, key=side_mm.get)
        size = native_size(side_mm[widest], target_spacing)
        if size > MAX_SIZE:
            raise SynthmedError(
                f"subject {widest}: its foreground needs {size} px at {target_spacing:g} mm per pixel, "
                f"more than {MAX_SIZE}; pass a coarser --spacing (e.g. {2 * target_spacing:g}) or --size"
            )

    records: dict[str, dict] = {}
    stacks: dict[str, dict[str, np.ndarray]] = {}
    fp_volumes: dict[str, list[dict]] = {m: [] for m in roles}
    fp_percentiles: dict[str, list[list[float]]] = {m: [] for m in roles}
    skipped: dict[str, str] = {}
    source_measures: dict[str, dict] = {}  # what translate compares a new input with (input_profile.py)
    seen: dict[str, tuple[str, str, str]] = {}  # content digest -> (subject, role, path) of the first volume with it
    for subject in tqdm(subjects, desc="preparing", disable=not progress, unit="subject"):
        volumes = {role: read_ref(subject.files[role]) for role in roles}
        for role, volume in volumes.items():
            _refuse_duplicate(seen, subject.id, role, volume)
        src = volumes[source_mod]
        src_fg = foreground_mask(src.data)
        _check_usable(src, src_fg, source_mod)
        arrays = {source_mod: src.data}
        if target_mod:
            arrays[target_mod] = _coregister(subject.id, src, volumes[target_mod], target_mod, resample, is_label=False)
            if np.array_equal(arrays[target_mod], src.data):
                skipped[subject.id] = f"{target_mod} is an exact copy of {source_mod}"
                log.warning(
                    "subject %s skipped: %s (a missing sequence replaced by a copy?)", subject.id, skipped[subject.id]
                )
                continue
        label_ref = (subject.files.get(label_mod) or subject.label) if label_mod else None
        if label_ref is not None:
            arrays["label"] = _coregister(subject.id, src, read_ref(label_ref), "label", resample, is_label=True)

        volume_axis = slice_axis(src.affine, axis, src.is_2d)
        if native:
            geometry = fit_native_geometry(
                src_fg, volume_axis, size, in_plane_spacing(src.spacing, volume_axis), target_spacing
            )
        else:
            geometry = fit_geometry(src_fg, volume_axis, size)
        normalizations: dict[str, Normalization] = {}
        subject_stacks: dict[str, np.ndarray] = {}
        for role in roles:
            fg = src_fg if role == source_mod else foreground_mask(arrays[role])
            _check_usable(volumes[role], fg, role)
            norm = fit_normalization(arrays[role], fg, modality_kind(role), name=f"{subject.id} {role}")
            normalizations[role] = norm
            subject_stacks[role] = crop_slices(norm.apply(arrays[role]), geometry, fill=-1.0)
            fp_volumes[role].append(_volume_summary(volumes[role]))
            fp_percentiles[role].append([float(v) for v in np.percentile(arrays[role][fg], [0.5, 50, 99.5])])
            if role == source_mod:
                source_measures[subject.id] = measure_input(src.data, src_fg, src.spacing, norm.apply(src.data[src_fg]))
        mask = crop_slices(src_fg.astype(np.float32), geometry, fill=0.0, nearest=True) > 0.5
        keep = np.flatnonzero(mask.reshape(len(mask), -1).mean(axis=1) >= MIN_FOREGROUND_FRACTION)
        subject_stacks = {role: stack[keep] for role, stack in subject_stacks.items()}
        subject_stacks["mask"] = mask[keep].astype(np.uint8)
        if "label" in arrays:
            labels = crop_slices(arrays["label"], geometry, fill=0.0, nearest=True)
            subject_stacks["label"] = labels[keep].round().astype(np.uint8)
        number = len(records)
        subject_stacks["index"] = np.stack([np.full(len(keep), number), keep], axis=1).astype(np.int32)
        stacks[subject.id] = subject_stacks
        records[subject.id] = {
            "number": number,
            "files": {role: subject.files[role].path for role in roles},
            "file_refs": {role: _ref_dict(subject.files[role]) for role in roles},
            "geometry": geometry.to_dict(),
            "normalization": {role: n.to_dict() for role, n in normalizations.items()},
            "n_slices": int(len(keep)),
        }
    if not records:
        raise SynthmedError("no usable subjects left after checks; see the warnings above")

    subject_ids = list(records)
    fixed = {s.id: s.split for s in subjects if s.split and s.id in records}
    split_ids = split_subjects(subject_ids, ratios, seed, group_of=patient_key, fixed=fixed)

    reference = {
        role: median_normalization(
            [Normalization.from_dict(records[s]["normalization"][role]) for s in split_ids["train"] if s in records]
            or [Normalization.from_dict(r["normalization"][role]) for r in records.values()]
        ).to_dict()
        for role in roles
    }
    input_profile = training_profile([source_measures[s] for s in (split_ids["train"] or list(records))])
    target_scale = None
    if target_mod and modality_kind(source_mod) == "mr" and modality_kind(target_mod) == "mr":
        fitted_on = [s for s in split_ids["train"] if s in records] or list(records)
        target_scale = fit_target_scale(
            [
                (
                    Normalization.from_dict(records[s]["normalization"][source_mod]),
                    Normalization.from_dict(records[s]["normalization"][target_mod]),
                )
                for s in fitted_on
            ]
        ).to_dict()
    record = {
        "synthmed_plan": PLAN_VERSION,
        "inputs_hash": inputs_hash,
        "data": str(Path(data).resolve()) if data else None,
        "pattern": pattern,
        "manifest": str(Path(manifest).resolve()) if manifest else None,
        "source": source_mod,
        "target": target_mod,
        "label": label_mod,
        "aliases": alias_map,
        "axis": str(axis),
        "size": int(size),
        "resolution": {"mode": "native" if native else "resized", "spacing_mm": target_spacing},
        "interpolation": INTERPOLATION,
        "normalization_kind": {role: modality_kind(role) for role in roles},
        "reference_normalization": reference,
        "target_scale": target_scale,
        "input_profile": input_profile,
        "fingerprint": _fingerprint(fp_volumes, fp_percentiles),
        "coregistration": "resampled onto the source grid" if resample else "checked: same shape and affine",
        "seed": seed,
        "split_ratios": list(ratios),
        "split": split_ids,
        "subjects": subject_ids,
        "skipped": skipped,
        "volumes": records,
        "n_slices": {name: int(sum(records[s]["n_slices"] for s in ids)) for name, ids in split_ids.items()},
    }
    # Checked as every reader checks it: a plan that its readers would refuse is never written.
    plan = Plan.from_record(finite_json(record), out / "plan.json")
    _write_prepared(out, plan, stacks, subject_ids, overwrite)
    return out


def _ref_dict(ref: FileRef) -> dict:
    return {"path": ref.path, "key": ref.key, "channel": ref.channel}


def _check_output(out: Path, data, manifest, subjects: list[Subject], overwrite: bool) -> None:
    """Refuse an ``--out`` that is a file or a link, that overlaps the input data (it, inside it, or holding
    part of it), or (with ``overwrite``) a folder ``prepare`` did not make."""
    if out.is_symlink():
        raise SynthmedError(f"--out {out} is a symbolic link; give a real folder (nothing was changed)")
    if out.exists() and not out.is_dir():
        raise SynthmedError(f"--out {out} is a file, not a folder; prepare writes a folder: choose another --out")
    inputs: list[str | Path] = [p for p in (data, manifest) if p is not None and not isinstance(p, list)]
    for subject in subjects:
        for ref in (*subject.files.values(), subject.mask, subject.label):
            if ref is not None:
                inputs.append(os.path.dirname(ref.path) if any(c in ref.path for c in "*?[") else ref.path)
    refuse_overlap(out, inputs, what="--out")
    if overwrite and out.is_dir() and any(out.iterdir()):
        problem = ownership_problem(out, "prepare", _prepared_entry, legacy=_legacy_prepared)
        if problem:
            raise SynthmedError(
                f"{out} {problem}; --overwrite replaces only a folder made by synthmed prepare: choose another --out"
            )


def _prepared_entry(entry: Path) -> bool:
    """Whether ``entry`` (in a prepared folder) is something prepare writes: plan.json, slices/ of .npy arrays."""
    if entry.name == "plan.json":
        return entry.is_file() and not entry.is_symlink()
    if entry.name == "slices" and entry.is_dir() and not entry.is_symlink():
        return all(child.suffix == ".npy" and child.is_file() and not child.is_symlink() for child in entry.iterdir())
    return False


def _legacy_prepared(folder: Path) -> bool:
    """A prepared folder written before folders carried markers: its plan.json is a synthmed plan."""
    try:
        return "synthmed_plan" in json.loads((folder / "plan.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, TypeError):
        return False


def _owned(out: Path) -> bool:
    return ownership_problem(out, "prepare", _prepared_entry, legacy=_legacy_prepared) is None


def _refuse_duplicate(seen: dict[str, tuple[str, str, str]], subject: str, role: str, volume: Volume) -> None:
    """One scan listed under two subject ids would put the same image in training and test data: refuse it.
    Compared by voxel content, so a copy under another name or format is found as well."""
    data = np.ascontiguousarray(volume.data)
    digest = hashlib.blake2b(data.view(np.uint8).reshape(-1), digest_size=20)
    digest.update(repr(data.shape).encode())
    key = digest.hexdigest()
    first = seen.setdefault(key, (subject, role, str(volume.path)))
    if first[0] != subject:
        raise SynthmedError(
            f"subjects {first[0]} and {subject} hold the same scan ({first[1]} {first[2]} and {role} {volume.path} "
            "have identical voxels): one scan under two ids would land in both training and test data; remove "
            "the duplicate"
        )


def _write_prepared(
    out: Path, plan: Plan, stacks: dict[str, dict[str, np.ndarray]], order: list[str], overwrite: bool
) -> None:
    """Write the arrays and plan.json into a temporary folder beside ``out``, then move it into place (an
    existing prepared folder is moved aside first and deleted last). Plain writes, not memory maps: a full disk
    is then an error (with the temporary folder removed), not a crash."""
    tmp = temporary_path(out, "tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    names = sorted({name for s in stacks.values() for name in s})
    arrays = {name: [stacks[s][name] for s in order if name in stacks[s]] for name in names}
    needed = sum(part.nbytes for parts in arrays.values() for part in parts)
    require_free_space(out.parent, needed, "the prepared slices")
    try:
        (tmp / "slices").mkdir(parents=True)
        for name, parts in arrays.items():
            _write_npy(tmp / "slices" / f"{_array_file(plan, name)}.npy", parts)
        (tmp / "plan.json").write_text(json_text(plan.to_record()), encoding="utf-8")
        write_marker(tmp, "prepare")
        move_folder_into_place(tmp, out)
    except OSError as error:
        shutil.rmtree(tmp, ignore_errors=True)
        raise SynthmedError(
            f"{out}: writing the prepared data failed ({error.strerror or error}); check free space "
            "and permissions (nothing was changed)"
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_npy(path: Path, parts: list[np.ndarray]) -> None:
    """One .npy file of the stacked ``parts`` (same dtype and slice shape), written part by part."""
    dtype = parts[0].dtype
    shape = (sum(len(p) for p in parts), *parts[0].shape[1:])
    with open(path, "wb") as stream:
        np.lib.format.write_array_header_1_0(
            stream, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
        )
        for part in parts:
            np.ascontiguousarray(part, dtype=dtype).tofile(stream)


def _array_file(plan: Plan, name: str) -> str:
    if name == plan.source:
        return "source"
    if name == plan.target:
        return "target"
    return name
