"""``synthmed benchmark``: every translation method under one protocol, one command, one results file.

For each method of the suite (or ``--models``) and each repeat (seed):

1. **data** (once): phantoms written by ``synthmed phantom`` (default), or ``--data DIR`` (any layout ``prepare``
   reads, with ``--pattern`` / ``--manifest``), prepared once for ``source -> target`` with the lesion map as label
   when the data has one; split by subject with the suite's fixed seed;
2. **train**: ``synthmed train PREP --model M --preset P --steps B --seed S`` in its own process, so its peak
   resident memory (``ru_maxrss`` from ``os.wait4``) is its own; with ``--budget-minutes`` every method also stops
   after that much training time (``train --max-minutes``), an equal-time comparison;
3. **translate** every test subject (``--reference`` = the subject's true target scan, whose two robust
   percentiles alone set the output's scale; one process for the whole test folder). ``--samples K`` draws K
   samples per slice from the stochastic methods (diffusion): their mean is scored and their per-voxel standard
   deviation is the uncertainty map the report shows;
4. **evaluate** in the target's units inside the reference's foreground, and inside the lesion where the subject
   has a label; the identity baseline (the source scan mapped onto the reference's scale by the same percentiles)
   is scored the same way.

Metrics (see the README, *Metrics*): PSNR (data range = the reference's range inside the mask), SSIM as the mean of
2D slice SSIMs and as 3D SSIM, MAE and NMSE, in target units (HU for CT); the same inside the lesion with the head's
data range; the reference repositories' convention ``max_normalised`` (SynDiff's test code: every axial slice that
holds the head divided by its own maximum, separately for prediction and reference, PSNR with data range 1 and 2D
SSIM over the whole slice, averaged over slices); FID with ``--inception-weights`` (Inception-v3 pool features of the
axial slices that hold the head, each subject mapped to [-1, 1] by the reference's 0.5/99.5 percentiles in its
head, against the reference slices; no weights: recorded as unavailable, never replaced by another network).

Recorded besides: training seconds (the loop, from ``train_summary.json``), steps, training slices per second,
translate seconds per volume, peak RSS of training and of translation, parameter count. Written to
``DIR/benchmark.json`` and ``DIR/benchmark.csv`` (one row per method and repeat); ``DIR/runs``, ``DIR/outputs``
and ``DIR/logs`` keep the runs, translations and process logs for the report.

Suites: ``quick`` (6 phantoms of 32^3, the ``small`` presets, 200 steps at batch 8; minutes on a CPU: a smoke
test of the whole protocol, not a ranking), ``full`` (10 phantoms of 64^3, ``small`` presets, 3000 steps: hours on
a CPU, for a GPU) and ``real`` (``--data`` = a folder laid out as ``../shared/data/real``: the BraTS-layout and MS
scans, 64 px, 1000 steps; four tasks, T1 -> T2, T2 -> T1, T1 -> T1c, T2 -> FLAIR, each in its own sub-folder, or
the one task ``--source``/``--target`` name; see :data:`REAL_SUBJECTS`).
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from synthmed.data.io import ensure_writable_folder
from synthmed.data.plan import Plan, load_plan
from synthmed.errors import SynthmedError
from synthmed.files import (
    json_text, output_lock, read_json_record, remove_owned_folder, write_marker, write_text_atomic,
)
from synthmed.models.registry import available_models
from synthmed.records import Int, ListOf, MapOf, Record, Str, validate
from synthmed.engine.run_folder import is_run_entry, legacy_run

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Suite:
    subjects: int
    size: int
    steps: int
    batch_size: int
    preset: str = "small"
    source: str = "T1"
    target: str = "T2"
    split: str = "0.5,0.17,0.33"


SUITES = {
    "quick": Suite(subjects=6, size=32, steps=200, batch_size=8),
    "full": Suite(subjects=10, size=64, steps=3000, batch_size=8, split="0.6,0.2,0.2"),
    "real": Suite(subjects=4, size=64, steps=1000, batch_size=8, split="manifest"),
}
METRICS = ("psnr", "ssim", "ssim3d", "mae", "nmse", "psnr_fit", "ssim_fit", "psnr_dz")
MAX_NORMALISED_METRICS = ("psnr", "ssim")
REAL_TASKS = (("t1", "t2"), ("t2", "t1"), ("t1", "t1c"), ("t2", "flair"))
# The real suite's scans (relative to --data), as in ../shared/data/real: subject -> (folder, files by modality,
# lesion label file or None, split). The two scans with a lesion label are the test subjects, so every test
# subject is also scored inside its lesion. IXI's slices (one subject, T1/T2 only) cannot be split by subject and
# are not part of it.
REAL_SUBJECTS: dict[str, tuple[str, dict[str, str], str | None, str]] = {
    "BraTS-GLI-00001-000": ("brats/BraTS-GLI-00001-000", {
        "t1": "BraTS-GLI-00001-000-t1n.nii.gz", "t1c": "BraTS-GLI-00001-000-t1c.nii.gz",
        "t2": "BraTS-GLI-00001-000-t2w.nii.gz", "flair": "BraTS-GLI-00001-000-t2f.nii.gz"}, None, "train"),
    "AURORA-MET-example": ("brats/AURORA-MET-example", {
        "t1": "t1.nii.gz", "t1c": "t1c.nii.gz", "t2": "t2.nii.gz", "flair": "flair.nii.gz"}, None, "train"),
    "TCGA-DU-7294": ("brats/TCGA-DU-7294", {
        "t1": "TCGA-DU-7294_t1_bet.nii.gz", "t1c": "TCGA-DU-7294_t1c_bet.nii.gz",
        "t2": "TCGA-DU-7294_t2_bet.nii.gz", "flair": "TCGA-DU-7294_fla_bet.nii.gz"},
        "TCGA-DU-7294_seg_fused_mav.nii.gz", "test"),
    "patient07": ("ms/patient07", {
        modality: f"{name}_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz"
        for modality, name in (("t1", "T1"), ("t1c", "T1POST"), ("t2", "T2"), ("flair", "FLAIR"))},
        "GOLD_STANDARD_N4_noneck_reduced_winsor_regtoFLAIR_regtoMNI.nii.gz", "test"),
}


@dataclass(frozen=True)
class Protocol:
    """What every method of one benchmark shares besides the data."""

    models: tuple[str, ...]
    repeats: int = 1
    seed: int = 0
    threads: int | None = None
    device: str = "auto"
    budget_minutes: float | None = None
    samples: int = 1
    inception_weights: str | None = None
    inception_variant: str = "auto"
    progress: bool = True


def translation_models() -> list[str]:
    return [name for name, cls in available_models().items() if cls.task == "translate"]


def benchmark(
    out: str | Path,
    *,
    suite: str = "quick",
    models: list[str] | None = None,
    data: str | Path | None = None,
    pattern: str | None = None,
    manifest: str | Path | None = None,
    source: str | None = None,
    target: str | None = None,
    label: str | None = None,
    budget_steps: int | None = None,
    budget_minutes: float | None = None,
    batch_size: int | None = None,
    repeats: int = 1,
    seed: int = 0,
    threads: int | None = None,
    device: str = "auto",
    samples: int = 1,
    inception_weights: str | Path | None = None,
    inception_variant: str = "auto",
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the suite into ``out``; returns what ``benchmark.json`` holds."""
    if suite not in SUITES:
        raise SynthmedError(f"--suite {suite}: use one of {', '.join(SUITES)}")
    config = SUITES[suite]
    config = replace(config, **{k: v for k, v in (("steps", budget_steps), ("batch_size", batch_size),
                                                   ("source", source), ("target", target)) if v is not None})
    if budget_minutes is not None and budget_steps is None:
        config = replace(config, steps=1_000_000)  # the time budget stops training; schedules see this length
    if config.steps < 1 or config.batch_size < 1 or repeats < 1 or samples < 1:
        raise SynthmedError("--budget-steps, --batch-size, --repeats and --samples must be at least 1")
    if budget_minutes is not None and not budget_minutes > 0:
        raise SynthmedError(f"--budget-minutes {budget_minutes}: must be more than 0")
    known = translation_models()
    chosen = models or known
    unknown = [m for m in chosen if m not in available_models()]
    if unknown:
        raise SynthmedError(f"--models: unknown {', '.join(unknown)}; available: {', '.join(known)}")
    generators = [m for m in chosen if m not in known]
    if generators:
        raise SynthmedError(f"--models: {', '.join(generators)} generate(s) rather than translate; this protocol "
                            "scores translations (see benchmarks/segbench.py for generators)")
    if inception_weights is not None and not Path(inception_weights).is_file():
        raise SynthmedError(f"--inception-weights {inception_weights}: no such file")
    protocol = Protocol(models=tuple(chosen), repeats=repeats, seed=seed, threads=threads, device=device,
                        budget_minutes=budget_minutes, samples=samples,
                        inception_weights=str(Path(inception_weights).resolve()) if inception_weights else None,
                        inception_variant=inception_variant, progress=progress)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SynthmedError(f"--out {out} is a file, not a folder; choose another --out")
    if out.exists() and (out / "benchmark.json").exists() and not overwrite:
        raise SynthmedError(f"{out} holds a benchmark already; pass --overwrite or choose another --out")
    with output_lock(out):
        return _run_suite(out, suite, config, protocol, data=data, pattern=pattern, manifest=manifest, source=source,
                          target=target, label=label)


def _run_suite(out: Path, suite: str, config: Suite, protocol: Protocol, *, data, pattern, manifest, source, target,
               label) -> dict[str, Any]:
    if suite == "real":
        if pattern or manifest or label:
            raise SynthmedError("--suite real builds its own manifest from --data; drop --pattern/--manifest/--label")
        if bool(source) != bool(target):
            raise SynthmedError("--suite real: give both --source and --target (one task) or neither (all four)")
        tasks = [(source.lower(), target.lower())] if source and target else list(REAL_TASKS)
        return _real_suite(out, data, tasks, config, protocol)
    ensure_writable_folder(out)
    write_marker(out, "benchmark")
    return _benchmark_task(out, suite, config, protocol, data=data, pattern=pattern, manifest=manifest, label=label)


_TASK_SCHEMA = Record({
    "data": Record({"source": Str(100), "target": Str(100), "prepared": Str(),
                    "split": Record({name: ListOf(Str()) for name in ("train", "val", "test")})}),
    "settings": Record({"steps": Int(1), "batch_size": Int(1)}),
    "protocol": Str(10_000),
    "identity": Record({}),
    "methods": MapOf(Record({"repeats": ListOf(Record({"seed": Int()}), min_length=1), "summary": Record({})})),
})
_INDEX_SCHEMA = Record({"tasks": MapOf(Record({"folder": Str(200)}))})


def load_benchmark_record(path: str | Path) -> dict[str, Any]:
    """A ``benchmark.json``, checked: a suite index (``tasks``) or one task's results, every field the report
    reads present and of the right type (a one-line error naming the field otherwise)."""
    path = Path(path)
    fix = "run the benchmark again into a new --out"
    record = read_json_record(path, "benchmark record", fix)
    if isinstance(record, dict) and "tasks" in record:
        record = validate(record, _INDEX_SCHEMA, path, fix)
        for name, task in record["tasks"].items():
            if Path(task["folder"]).is_absolute() or ".." in Path(task["folder"]).parts:
                raise SynthmedError(f"{path}: field tasks.{name}.folder {task['folder']!r} must name a folder inside "
                                    f"the benchmark folder; {fix}")
        return record
    return validate(record, _TASK_SCHEMA, path, fix)


def real_suite_manifest(root: str | Path, out: str | Path) -> Path:
    """Write the real suite's manifest (CSV: subject, modality, path, split, label) for the scans of
    :data:`REAL_SUBJECTS` under ``root``; refuses a folder that lacks any of them."""
    root = Path(root)
    if not root.is_dir():
        raise SynthmedError(f"--suite real: {root} is not a folder; pass --data with the folder that holds brats/ "
                            "and ms/ (as ../shared/data/real)")
    lines, missing = ["subject,modality,path,split,label"], []
    for subject, (folder, files, label, split) in REAL_SUBJECTS.items():
        label_path = root / folder / label if label else None
        for modality, name in files.items():
            path = root / folder / name
            missing += [str(p) for p in (path, label_path) if p is not None and not p.is_file()]
            lines.append(f"{subject},{modality},{path.resolve()},{split},{label_path.resolve() if label_path else ''}")
    if missing:
        raise SynthmedError(f"--suite real: {len(set(missing))} file(s) missing under {root}, e.g. {sorted(missing)[0]}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, "\n".join(lines) + "\n")
    return out


def _real_suite(out: Path, data: str | Path | None, tasks: list[tuple[str, str]], config: Suite,
                protocol: Protocol) -> dict[str, Any]:
    """Every task of the real suite in ``out/<source>-to-<target>``; ``out/benchmark.json`` lists them."""
    if data is None:
        raise SynthmedError("--suite real reads real scans: pass --data with the folder that holds brats/ and ms/ "
                            "(e.g. ../shared/data/real)")
    ensure_writable_folder(out)
    write_marker(out, "benchmark")
    manifest = real_suite_manifest(data, out / "manifest.csv")
    started = time.perf_counter()
    index: dict[str, Any] = {"benchmark": "synthmed benchmark", "suite": "real", "data": str(Path(data).resolve()),
                             "manifest": str(manifest), "tasks": {}}
    for source, target in tasks:
        name = f"{source}-to-{target}"
        if protocol.progress:
            print(f"[benchmark] task {source} -> {target}", file=sys.stderr, flush=True)
        folder = out / name
        folder.mkdir(exist_ok=True)
        result = _benchmark_task(folder, "real", replace(config, source=source, target=target), protocol,
                                 data=Path(data), manifest=manifest, label=None)
        index["tasks"][name] = {"folder": name, "source": source, "target": target,
                                "identity": result["identity"]["overall"]["mean"],
                                "methods": {m: e["summary"] for m, e in result["methods"].items()}}
        index["seconds"] = round(time.perf_counter() - started, 1)
        write_text_atomic(out / "benchmark.json", json_text(index, default=_plain))
    index["complete"] = True
    write_text_atomic(out / "benchmark.json", json_text(index, default=_plain))
    return index


def _benchmark_task(out: Path, suite: str, config: Suite, protocol: Protocol, *, data: str | Path | None,
                    pattern: str | None = None, manifest: str | Path | None = None,
                    label: str | None = None) -> dict[str, Any]:
    """One source -> target benchmark in ``out``: data, then every method and repeat; returns benchmark.json."""
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    env = {**os.environ}
    if protocol.threads:
        env.update(OMP_NUM_THREADS=str(protocol.threads), MKL_NUM_THREADS=str(protocol.threads))
    started = time.perf_counter()
    seed = protocol.seed

    def cli(arguments: list[str], log_name: str) -> dict[str, float]:
        return _measured([sys.executable, "-m", "synthmed", *arguments, "--quiet"], env, logs / log_name)

    # 1. data
    if data is None:
        data = out / "phantoms"
        if not (data / "sub-001").is_dir():
            cli(["phantom", str(data), "--subjects", str(config.subjects), "--size", str(config.size),
                 "--seed", str(seed), "--overwrite"], "phantom.log")
        label = label or "lesion"
    prep = out / "prep"
    arguments = ["prepare", str(data), "--source", config.source, "--target", config.target, "--out", str(prep),
                 "--size", str(config.size), "--seed", str(seed)]
    if config.split != "manifest":  # the real suite's manifest fixes every subject's split
        arguments += ["--split", config.split]
    if label:
        arguments += ["--label", label]
    if pattern:
        arguments += ["--pattern", pattern]
    if manifest:
        arguments += ["--manifest", str(manifest)]
    if not (prep / "plan.json").is_file():
        cli(arguments, "prepare.log")
    plan = load_plan(prep)
    from synthmed.data.discovery import canonical_modality

    wanted = (canonical_modality(config.source, {}), canonical_modality(config.target, {}), config.size)
    if (plan.source, plan.target, plan.size) != wanted:
        raise SynthmedError(f"{prep} holds {plan.source} -> {plan.target} at {plan.size} px, not "
                            f"{wanted[0]} -> {wanted[1]} at {wanted[2]} px; choose another --out")
    test_subjects = plan.split["test"]
    if not test_subjects:
        raise SynthmedError(f"{prep}: no test subjects; the benchmark scores held-out subjects only")
    references = {s: Path(plan.volumes[s].files[plan.target]) for s in test_subjects}
    sources = {s: Path(plan.volumes[s].files[plan.source]) for s in test_subjects}
    lesions = _lesion_masks(plan, label, out / "masks", Path(data), pattern, manifest)
    fid = _FidScorer(protocol.inception_weights, protocol.inception_variant)

    report: dict[str, Any] = {
        "benchmark": "synthmed benchmark", "suite": suite,
        "settings": {**asdict(config), "repeats": protocol.repeats, "seed": seed, "threads": protocol.threads,
                     "device": protocol.device, "budget_minutes": protocol.budget_minutes,
                     "samples": protocol.samples, "inception_weights": protocol.inception_weights},
        "data": {"folder": str(data), "prepared": str(prep), "source": plan.source, "target": plan.target,
                 "label": plan.label or ("manifest" if lesions else None), "split": plan.split,
                 "lesion_subjects": sorted(lesions)},
        "protocol": ("held-out test subjects; target units; inside the reference's foreground (and inside the "
                     "lesion where the subject has a label); PSNR data range = reference range in the region; "
                     "SSIM = mean of 2D slice SSIMs, SSIM 3D with a 3D window; outputs scaled by the reference's "
                     "two robust percentiles, the identity baseline mapped by the same two"),
        "conventions": {
            "toolkit": "target units, inside the reference's foreground, PSNR data range = the reference's range there",
            "max_normalised": ("SynDiff's test code: each axial slice that holds the head, negatives clipped to 0, "
                               "divided by its own maximum (prediction and reference separately); PSNR with data "
                               "range 1 and 2D SSIM over the whole slice; mean over slices"),
        },
        "fid": fid.status,
        "identity": _scores([(s, sources[s], references[s]) for s in test_subjects], lesions, fid, match=True),
        "methods": {},
    }
    for model in protocol.models:
        entries = []
        for repeat in range(protocol.repeats):
            run_seed = seed + repeat
            run = out / "runs" / f"{model}-seed{run_seed}"
            if not _reusable(run, config, protocol):
                remove_owned_folder(run, "train", is_run_entry, legacy=legacy_run)
                train_arguments = ["train", str(prep), "--model", model, "--preset", config.preset, "--out", str(run),
                                   "--steps", str(config.steps), "--batch-size", str(config.batch_size),
                                   "--seed", str(run_seed), "--device", protocol.device,
                                   "--val-every", str(config.steps)]
                if protocol.budget_minutes is not None:
                    train_arguments += ["--max-minutes", str(protocol.budget_minutes)]
                train_usage = cli(train_arguments, f"train-{model}-seed{run_seed}.log")
            else:
                train_usage = {"peak_rss_mb": None, "wall_seconds": None, "reused": True}
            summary = read_json_record(run / "train_summary.json", "training summary",
                                       f"remove {run} and run the benchmark again")
            outputs = out / "outputs" / f"{model}-seed{run_seed}"
            translate_arguments = ["translate", str(run), str(_test_folder(out, sources, plan.source)),
                                   str(outputs), "--reference",
                                   str(_test_folder(out, references, plan.target, "references")),
                                   "--checkpoint", "last", "--device", protocol.device, "--overwrite"]
            stochastic = available_models()[model].stochastic
            if stochastic and protocol.samples > 1:
                translate_arguments += ["--samples", str(protocol.samples), "--seed", str(run_seed)]
            translate_usage = cli(translate_arguments, f"translate-{model}-seed{run_seed}.log")
            pairs = [(s, _output_for(outputs, s), references[s]) for s in test_subjects]
            seconds = float(summary["seconds"])
            entry = {
                "seed": run_seed,
                "scores": _scores(pairs, lesions, fid),
                "train_seconds": seconds,
                "steps": int(summary["steps"]),
                "stopped": summary.get("stopped"),
                "train_slices_per_second": round(int(summary["steps"]) * config.batch_size / seconds, 2) if seconds else None,
                "train_peak_rss_mb": train_usage.get("peak_rss_mb"),
                "translate_seconds_per_volume": round(translate_usage["wall_seconds"] / len(test_subjects), 2),
                "translate_peak_rss_mb": translate_usage["peak_rss_mb"],
                "parameters": int(summary.get("parameters", 0)),
                "samples": protocol.samples if stochastic else 1,
            }
            entries.append(entry)
            if protocol.progress:
                mean = entry["scores"]["overall"]["mean"]
                print(f"[benchmark] {model} seed {run_seed}: PSNR {mean['psnr']:.2f} dB, SSIM {mean['ssim']:.3f}, "
                      f"{entry['steps']} steps in {seconds:.0f} s", file=sys.stderr, flush=True)
        report["methods"][model] = {"repeats": entries, "summary": _over_repeats(entries)}
        _write(out, report, started)
    report["complete"] = True
    _write(out, report, started)
    return report


def _reusable(run: Path, config: Suite, protocol: Protocol) -> bool:
    """A finished run (an interrupted benchmark started again) is reused only if it had this budget."""
    path = run / "train_summary.json"
    if not path.is_file():
        return False
    summary = read_json_record(path, "training summary", f"remove {run} and run the benchmark again")
    settings = summary.get("settings") if isinstance(summary, dict) else None
    if not isinstance(settings, dict):
        return False
    return (settings.get("steps"), settings.get("batch_size"), settings.get("max_minutes")) == (
        config.steps, config.batch_size, protocol.budget_minutes)


def _measured(command: list[str], env: dict[str, str], log_path: Path) -> dict[str, float]:
    """Run a child process with its output in ``log_path``; its own peak RSS (``os.wait4``) and wall time."""
    with log_path.open("a") as stream:
        stream.write(f"$ {shlex.join(command)}\n")
        stream.flush()
        start = time.perf_counter()
        process = subprocess.Popen(command, env=env, stdout=stream, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        tail = "\n".join(log_path.read_text().splitlines()[-8:])
        raise SynthmedError(f"`{shlex.join(command[2:5])} ...` failed (exit {code}); log {log_path}:\n{tail}")
    return {"peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "wall_seconds": round(seconds, 2)}


def _test_folder(out: Path, files: dict[str, Path], modality: str, name: str = "inputs") -> Path:
    """A folder of links ``name/<subject>/<modality><suffix>`` so one translate call covers every test subject
    (named by the canonical modality, which ``translate`` looks for, whatever the original file names)."""
    from synthmed.data.discovery import IMAGE_SUFFIXES

    folder = out / "test" / name
    for subject, path in files.items():
        suffix = next((s for s in IMAGE_SUFFIXES if path.name.lower().endswith(s)), path.suffix)
        link = folder / subject / f"{modality}{path.name[len(path.name) - len(suffix):]}"
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(path.resolve())
    return folder


def _output_for(outputs: Path, subject: str) -> Path:
    found = sorted((outputs / subject).glob("*"))
    volumes = [p for p in found if not p.name.startswith(".") and "_std" not in p.name]
    if len(volumes) != 1:
        raise SynthmedError(f"{outputs / subject}: expected one translated volume, found {len(volumes)}")
    return volumes[0]


def _lesion_masks(plan: Plan, label: str | None, folder: Path, data: Path, pattern: str | None,
                  manifest: str | Path | None) -> dict[str, Path]:
    """Binary lesion masks (label > 0) of the test subjects whose label is not empty: the ``label`` modality (found
    as ``prepare`` found it), or else a manifest's ``label`` column (the real suite's test scans; the training
    scans there have none, so ``prepare`` runs without ``--label``)."""
    from synthmed.data.discovery import canonical_modality, discover
    from synthmed.data.io import read_volume, write_volume

    if not label and not manifest:
        return {}
    subjects = {s.id: s for s in discover(data, pattern=pattern, manifest=manifest)}
    masks: dict[str, Path] = {}
    for subject_id in plan.split["test"]:
        subject = subjects.get(subject_id)
        if subject is None:
            continue
        ref = (subject.files.get(canonical_modality(label, {})) if label else None) or subject.label
        if ref is None:
            continue
        volume = read_volume(ref.path, key=ref.key, channel=ref.channel)
        binary = (volume.data > 0).astype(np.float32)
        if not binary.any():
            continue
        target = folder / f"{subject_id}.nii.gz"
        if not target.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            write_volume(target, binary, like=volume)
        masks[subject_id] = target
    return masks


def max_normalised_scores(prediction: np.ndarray, reference: np.ndarray, head: np.ndarray) -> dict[str, float]:
    """PSNR and SSIM in the convention of SynDiff's test code, for comparison with published tables: every axial
    slice (last axis) that holds part of ``head``, negatives clipped to 0, divided by its own maximum (prediction
    and reference separately), scored over the whole slice (no mask) with data range 1; mean over those slices."""
    from synthmed.metrics import PSNR_CAP_DB, max_normalised, psnr, ssim

    keep = np.flatnonzero(head.any(axis=(0, 1)))
    if keep.size == 0:
        raise SynthmedError("max-normalised scores: the reference has no foreground slice")
    values: dict[str, list[float]] = {"psnr": [], "ssim": []}
    for z in keep:
        p, r = max_normalised(np.clip(prediction[..., z], 0, None), np.clip(reference[..., z], 0, None))
        values["psnr"].append(min(psnr(p, r, data_range=1.0), PSNR_CAP_DB))
        values["ssim"].append(ssim(p, r, data_range=1.0))
    return {k: float(np.mean(v)) for k, v in values.items()} | {"slices": int(keep.size)}


class _FidScorer:
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
            self.status = {"available": True, "weights": weights, "variant": self.network.variant,
                           "images": "axial slices that hold the head; each subject mapped to [-1, 1] by the "
                                     "reference's 0.5/99.5 percentiles inside its head"}

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
        return frechet_distance_of_features(self._reference_features,
                                            inception_features(np.concatenate(predicted), self.network))


def _scores(pairs: list[tuple[str, Path, Path]], lesions: dict[str, Path], fid: _FidScorer,
            match: bool = False) -> dict[str, Any]:
    """Per subject and summarised: ``overall`` (inside the reference's foreground, its range there as the PSNR data
    range), ``lesion`` (for subjects with a lesion: inside it, with the *same* data range, so lesion PSNR is on the
    overall scale rather than on the lesion's own narrow range), ``max_normalised`` (:func:`max_normalised_scores`)
    and ``fid`` (None without Inception weights). Each volume is read once."""
    from synthmed.data.io import read_volume
    from synthmed.data.foreground import foreground_mask
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
            lesion[subject] = image_metrics(prediction, reference, region,
                                            data_range=float(values.max() - values.min()))
        if fid.network is not None:
            fid_predicted.append(fid.slices(prediction, reference, head))
            if fid.needs_references:
                fid_references.append(fid.slices(reference, reference, head))
    result: dict[str, Any] = {"overall": {"n": len(overall), "per_subject": overall, **summarize(overall)}}
    if lesion:
        result["lesion"] = {"n": len(lesion), "per_subject": lesion, **summarize(lesion),
                            "data_range": "the reference's range inside the head"}
    result["max_normalised"] = {"n": len(normalised), "per_subject": normalised, **summarize(normalised)}
    result["fid"] = fid(fid_predicted, fid_references)
    return result


def _over_repeats(entries: list[dict]) -> dict[str, Any]:
    def stats(values: list[float | None]) -> dict[str, Any]:
        values = [v for v in values if v is not None]
        if not values:
            return {"mean": None, "sd": None, "n": 0}
        return {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1)) if len(values) > 1 else None,
                "n": len(values)}

    summary = {f"{region}_{metric}": stats([e["scores"].get(region, {}).get("mean", {}).get(metric) for e in entries])
               for region in ("overall", "lesion") for metric in METRICS}
    summary.update({f"max_normalised_{metric}": stats([e["scores"]["max_normalised"]["mean"][metric] for e in entries])
                    for metric in MAX_NORMALISED_METRICS})
    summary["fid"] = stats([e["scores"].get("fid") for e in entries])
    for key in ("train_seconds", "steps", "train_slices_per_second", "train_peak_rss_mb", "translate_seconds_per_volume",
                "translate_peak_rss_mb", "parameters"):
        summary[key] = stats([e.get(key) for e in entries])
    return summary


def _csv_scores(scores: dict[str, Any]) -> dict[str, Any]:
    overall = scores["overall"]["mean"]
    lesion = scores.get("lesion", {}).get("mean", {})
    normalised = scores["max_normalised"]["mean"]
    return {**{metric: overall.get(metric) for metric in METRICS},
            **{f"lesion_{metric}": lesion.get(metric) for metric in METRICS},
            **{f"max_normalised_{metric}": normalised.get(metric) for metric in MAX_NORMALISED_METRICS},
            "fid": scores.get("fid")}


def _write(out: Path, report: dict[str, Any], started: float) -> None:
    report["seconds"] = round(time.perf_counter() - started, 1)
    write_text_atomic(out / "benchmark.json", json_text(report, default=_plain))
    rows = [{"method": "identity", "seed": "", **_csv_scores(report["identity"])}]
    for model, entry in report["methods"].items():
        for repeat in entry["repeats"]:
            rows.append({"method": model, "seed": repeat["seed"], **_csv_scores(repeat["scores"]),
                         **{key: repeat[key] for key in (
                             "train_seconds", "steps", "train_slices_per_second", "train_peak_rss_mb",
                             "translate_seconds_per_volume", "translate_peak_rss_mb", "parameters", "samples")}})
    fields = list(dict.fromkeys(k for row in rows for k in row))
    text_rows = [",".join(fields)] + [",".join("" if row.get(f) is None else str(row.get(f)) for f in fields) for row in rows]
    write_text_atomic(out / "benchmark.csv", "\n".join(text_rows) + "\n")


def _plain(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")
