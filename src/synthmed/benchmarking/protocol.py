"""``synthmed benchmark``: every translation method under one protocol, one command, one results file.

For each method of the suite (or ``--models``) and each repeat (seed):

1. **data** (once per task): phantoms written by ``synthmed phantom`` (default), or ``--data DIR`` (any layout
   ``prepare`` reads, with ``--pattern`` / ``--manifest``), degraded first for a restoration task (``synthmed
   degrade``), prepared once for ``source -> target`` with the lesion map as label when the data has one; split by
   subject with the suite's fixed seed;
2. **train**: ``synthmed train PREP --model M --preset P --steps B --seed S`` in its own process, so its peak
   resident memory (``ru_maxrss`` from ``os.wait4``) is its own; with ``--budget-minutes`` every method also stops
   after that much training time (``train --max-minutes``), an equal-time comparison;
3. **translate** every test subject (``--reference`` = the subject's true target scan, whose two robust
   percentiles alone set the output's scale; one process for the whole test folder). ``--samples K`` draws K
   samples per slice from the stochastic methods (diffusion): their mean is scored and their per-voxel standard
   deviation is the uncertainty map the report shows;
4. **evaluate** in the target's units inside the reference's foreground, and inside the lesion where the subject
   has a label (:mod:`synthmed.benchmarking.scoring`); the identity baseline (the source scan mapped onto the
   reference's scale by the same percentiles) is scored the same way. A task with ``reverse`` also scores the
   methods trained both ways on target -> source (``translate --direction B2A``) with the same runs, in a task
   folder of its own.

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

The suites are declared in :mod:`synthmed.benchmarking.suites`; a suite of one task writes its results into
``DIR``, a suite of several tasks one folder per task and an index in ``DIR/benchmark.json``. Each task's record
ranks the methods and says whether the ordering a paper claims held (:func:`~synthmed.benchmarking.scoring.rank_methods`).
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from synthmed.benchmarking.layout import TaskFolder
from synthmed.benchmarking.results import write_index, write_task_record
from synthmed.benchmarking.runner import child_env, run_measured, synthmed_command
from synthmed.benchmarking.scoring import FidScorer, rank_methods, score_pairs, summarize_repeats
from synthmed.benchmarking.suites import Method, Suite, Task, get_suite
from synthmed.data.io import ensure_writable_folder
from synthmed.data.plan import Plan, load_plan
from synthmed.data.recipes.shared_real import real_suite_manifest
from synthmed.engine.run_folder import RunFolder, is_run_entry, legacy_run
from synthmed.errors import SynthmedError
from synthmed.files import output_lock, remove_owned_folder, write_marker
from synthmed.models.registry import available_models

PROTOCOL_TEXT = (
    "held-out test subjects; target units; inside the reference's foreground (and inside the lesion where "
    "the subject has a label); PSNR data range = reference range in the region; SSIM = mean of 2D slice "
    "SSIMs, SSIM 3D with a 3D window; outputs scaled by the reference's two robust percentiles, the "
    "identity baseline mapped by the same two"
)
CONVENTIONS = {
    "toolkit": "target units, inside the reference's foreground, PSNR data range = the reference's range there",
    "max_normalised": (
        "SynDiff's test code: each axial slice that holds the head, negatives clipped to 0, divided by "
        "its own maximum (prediction and reference separately); PSNR with data range 1 and 2D SSIM "
        "over the whole slice; mean over slices"
    ),
}


@dataclass(frozen=True)
class Protocol:
    """What every method of one benchmark shares besides the data."""

    methods: tuple[Method, ...]
    steps: int
    batch_size: int
    repeats: int = 1
    seed: int = 0
    threads: int | None = None
    device: str = "auto"
    budget_minutes: float | None = None
    samples: int = 1
    inception_weights: str | None = None
    inception_variant: str = "auto"
    progress: bool = True


@dataclass(frozen=True)
class DataSource:
    """Where the scans come from: ``folder`` (None: phantoms drawn by the benchmark) read as ``prepare`` reads it."""

    folder: Path | None
    pattern: str | None = None
    manifest: Path | None = None
    label: str | None = None


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
    chosen = get_suite(suite)
    steps = budget_steps if budget_steps is not None else chosen.steps
    if budget_minutes is not None and budget_steps is None:
        steps = 1_000_000  # the time budget stops training; schedules see this length
    batch_size = batch_size if batch_size is not None else chosen.batch_size
    if steps < 1 or batch_size < 1 or repeats < 1 or samples < 1:
        raise SynthmedError("--budget-steps, --batch-size, --repeats and --samples must be at least 1")
    if budget_minutes is not None and not budget_minutes > 0:
        raise SynthmedError(f"--budget-minutes {budget_minutes}: must be more than 0")
    methods = _methods(chosen, models)
    if inception_weights is not None and not Path(inception_weights).is_file():
        raise SynthmedError(f"--inception-weights {inception_weights}: no such file")
    tasks = _tasks(chosen, source, target)
    if chosen.data == "real":
        if pattern or manifest or label:
            raise SynthmedError("--suite real builds its own manifest from --data; drop --pattern/--manifest/--label")
        if data is None:
            raise SynthmedError(
                "--suite real reads real scans: pass --data with the folder that holds brats/ and ms/ "
                "(e.g. ../shared/data/real)"
            )
    protocol = Protocol(
        methods=methods,
        steps=steps,
        batch_size=batch_size,
        repeats=repeats,
        seed=seed,
        threads=threads,
        device=device,
        budget_minutes=budget_minutes,
        samples=samples,
        inception_weights=str(Path(inception_weights).resolve()) if inception_weights else None,
        inception_variant=inception_variant,
        progress=progress,
    )
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SynthmedError(f"--out {out} is a file, not a folder; choose another --out")
    if out.exists() and (out / "benchmark.json").exists() and not overwrite:
        raise SynthmedError(f"{out} holds a benchmark already; pass --overwrite or choose another --out")
    with output_lock(out):
        ensure_writable_folder(out)
        write_marker(out, "benchmark")
        source_data = DataSource(
            Path(data) if data is not None else None, pattern, Path(manifest) if manifest else None, label
        )
        if chosen.data == "real":
            source_data = DataSource(Path(data), manifest=real_suite_manifest(data, out / "manifest.csv"))
        if chosen.data != "real" and len(tasks) == 1 and not tasks[0].reverse:
            return _run_task(TaskFolder(out), tasks[0], chosen, protocol, source_data)
        return _run_tasks(out, tasks, chosen, protocol, source_data)


def _methods(suite: Suite, models: list[str] | None) -> tuple[Method, ...]:
    """The suite's methods, or ``--models`` (``MODEL`` or ``MODEL:PRESET``); every one a known translator with that
    preset."""
    known = translation_models()
    if models:
        methods = tuple(Method.parse(text) for text in models)
    else:
        methods = suite.methods or tuple(Method(name) for name in known)
    unknown = [m.model for m in methods if m.model not in available_models()]
    if unknown:
        raise SynthmedError(f"--models: unknown {', '.join(unknown)}; available: {', '.join(known)}")
    generators = [m.model for m in methods if m.model not in known]
    if generators:
        raise SynthmedError(
            f"--models: {', '.join(generators)} generate(s) rather than translate; this protocol "
            "scores translations (see benchmarks/segbench.py for generators)"
        )
    for method in methods:
        presets = available_models()[method.model].PRESETS
        if method.preset not in presets:
            raise SynthmedError(
                f"--models {method.model}:{method.preset}: no such preset; {method.model} has {', '.join(presets)}"
            )
    labels = [m.label for m in methods]
    if len(set(labels)) != len(labels):
        raise SynthmedError(f"--models: {', '.join(labels)} names a method twice")
    return methods


def _tasks(suite: Suite, source: str | None, target: str | None) -> tuple[Task, ...]:
    """The suite's tasks, or the one task ``--source``/``--target`` name (the other side kept from the suite's
    first task when only one is given; the real suite needs both)."""
    if not source and not target:
        return suite.tasks
    if suite.data == "real" and bool(source) != bool(target):
        raise SynthmedError("--suite real: give both --source and --target (one task) or neither (all four)")
    first = suite.tasks[0]
    source, target = source or first.source, target or first.target
    if suite.data == "real":
        source, target = source.lower(), target.lower()
    return (Task(source, target, reverse=any(task.reverse for task in suite.tasks)),)


def _run_tasks(
    out: Path, tasks: tuple[Task, ...], suite: Suite, protocol: Protocol, data: DataSource
) -> dict[str, Any]:
    """Every task in ``out/<task>`` (its reverse in ``out/<reverse task>``); ``out/benchmark.json`` lists them."""
    started = time.perf_counter()
    index: dict[str, Any] = {
        "benchmark": "synthmed benchmark",
        "suite": suite.name,
        "description": suite.description,
        "tasks": {},
    }
    if data.folder is not None:
        index["data"] = str(data.folder.resolve())
    if data.manifest is not None:
        index["manifest"] = str(data.manifest)
    if data.folder is None:  # every task draws from the same phantoms
        data = DataSource(_phantoms(TaskFolder(out), suite, protocol), label=data.label or "lesion")

    def add(name: str, task_source: str, task_target: str, result: dict[str, Any]) -> None:
        index["tasks"][name] = {
            "folder": name,
            "source": task_source,
            "target": task_target,
            "identity": result["identity"]["overall"]["mean"],
            "methods": {m: e["summary"] for m, e in result["methods"].items()},
            "ranking": result.get("ranking"),
        }
        index["seconds"] = round(time.perf_counter() - started, 1)
        write_index(out, index)

    for task in tasks:
        _say(protocol, f"task {task.name}")
        folder = TaskFolder(out / task.name)
        folder.root.mkdir(exist_ok=True)
        result = _run_task(folder, task, suite, protocol, data)
        add(task.name, result["data"]["source"], result["data"]["target"], result)
        if task.reverse:
            _say(protocol, f"task {task.reverse_name}")
            reverse = TaskFolder(out / task.reverse_name, runs_root=folder.root / "runs")
            reverse.root.mkdir(exist_ok=True)
            result = _run_reverse(reverse, folder, task, suite, protocol, data)
            add(task.reverse_name, result["data"]["source"], result["data"]["target"], result)
    index["complete"] = True
    write_index(out, index)
    return index


def _phantoms(folder: TaskFolder, suite: Suite, protocol: Protocol) -> Path:
    if not (folder.phantoms / "sub-001").is_dir():
        seed = suite.phantom_seed if suite.phantom_seed is not None else protocol.seed
        _cli(
            folder,
            protocol,
            [
                "phantom",
                str(folder.phantoms),
                "--subjects",
                str(suite.subjects),
                "--size",
                str(suite.size),
                "--seed",
                str(seed),
                "--overwrite",
            ],
            "phantom.log",
        )
    return folder.phantoms


def _prepared(
    folder: TaskFolder, task: Task, suite: Suite, protocol: Protocol, data: DataSource
) -> tuple[dict, DataSource]:
    """The plan of the task's prepared folder (made once; a rerun reuses it) and the data it was prepared from."""
    if data.folder is None:
        data = DataSource(_phantoms(folder, suite, protocol), label=data.label or "lesion")
    source, target = task.source, task.target
    if task.degrade:
        if not any(folder.degraded.glob("*/*")):
            _cli(
                folder,
                protocol,
                [
                    "degrade",
                    str(data.folder),
                    str(folder.degraded),
                    "--name",
                    task.source,
                    "--kind",
                    task.degrade,
                    "--severity",
                    "1",
                    "--seed",
                    str(protocol.seed),
                    "--overwrite",
                ],
                "degrade.log",
            )
        # degrade links the clean scan beside the degraded one, nothing else: no lesion label there
        data = DataSource(folder.degraded)
        source = f"{task.source}_{task.degrade}"
    arguments = [
        "prepare",
        str(data.folder),
        "--source",
        source,
        "--target",
        target,
        "--out",
        str(folder.prep),
        "--size",
        str(suite.size),
        "--seed",
        str(protocol.seed),
    ]
    if suite.split != "manifest":  # the real suite's manifest fixes every subject's split
        arguments += ["--split", suite.split]
    for option, value in (("--label", data.label), ("--pattern", data.pattern), ("--manifest", data.manifest)):
        if value:
            arguments += [option, str(value)]
    if not (folder.prep / "plan.json").is_file():
        _cli(folder, protocol, arguments, "prepare.log")
    plan = load_plan(folder.prep)
    from synthmed.data.discovery import canonical_modality

    wanted = (canonical_modality(source, {}), canonical_modality(target, {}), suite.size)
    if (plan.source, plan.target, plan.size) != wanted:
        raise SynthmedError(
            f"{folder.prep} holds {plan.source} -> {plan.target} at {plan.size} px, not "
            f"{wanted[0]} -> {wanted[1]} at {wanted[2]} px; choose another --out"
        )
    if not plan.test_subjects:
        raise SynthmedError(f"{folder.prep}: no test subjects; the benchmark scores held-out subjects only")
    return plan, data


def _run_task(folder: TaskFolder, task: Task, suite: Suite, protocol: Protocol, data: DataSource) -> dict[str, Any]:
    """One source -> target task in ``folder``: data, then every method and repeat; returns its benchmark.json."""
    return _score_direction(folder, folder, task, suite, protocol, data, "A2B")


def _run_reverse(
    folder: TaskFolder, forward: TaskFolder, task: Task, suite: Suite, protocol: Protocol, data: DataSource
) -> dict[str, Any]:
    """Target -> source with the forward task's runs, for the methods trained both ways."""
    return _score_direction(folder, forward, task, suite, protocol, data, "B2A")


def _score_direction(
    folder: TaskFolder,
    forward: TaskFolder,
    task: Task,
    suite: Suite,
    protocol: Protocol,
    data: DataSource,
    direction: str,
) -> dict[str, Any]:
    """Train (A2B; B2A reuses ``forward``'s runs), translate and score every method and repeat into ``folder``."""
    started = time.perf_counter()
    plan, data = _prepared(forward, task, suite, protocol, data)
    source, target = (plan.source, plan.target) if direction == "A2B" else (plan.target, plan.source)
    test_subjects = plan.test_subjects
    sources = {s: plan.file_of(s, source) for s in test_subjects}
    references = {s: plan.file_of(s, target) for s in test_subjects}
    lesions = _lesion_masks(plan, forward.masks, data)
    fid = FidScorer(protocol.inception_weights, protocol.inception_variant)
    record = _task_record(forward, suite, protocol, plan, data, lesions, fid, source, target)
    pairs = [(s, sources[s], references[s]) for s in test_subjects]
    record["identity"] = score_pairs(pairs, lesions, fid, match=True)
    if task.degrade:  # the degraded scan is in the clean scan's units already
        record["identity_unmatched"] = score_pairs(pairs, lesions, fid)
    methods = list(protocol.methods)
    if direction != "A2B":
        record["trained_in"] = forward.root.name
        methods = [m for m in methods if direction in available_models()[m.model].directions]
        record["skipped"] = {m.label: "translates source -> target only" for m in protocol.methods if m not in methods}
    inputs = _test_folder(folder, sources, source, "inputs")
    reference_folder = _test_folder(folder, references, target, "references")
    for method in methods:
        entries = []
        for repeat in range(protocol.repeats):
            run_seed = protocol.seed + repeat
            if direction == "A2B":
                usage = _train(folder, method, run_seed, protocol)
            else:  # trained by the forward task
                usage = {"peak_rss_mb": None, "wall_seconds": None, "reused": True}
            entries.append(
                _translate_and_score(
                    folder,
                    method,
                    run_seed,
                    protocol,
                    inputs,
                    reference_folder,
                    references,
                    lesions,
                    fid,
                    usage,
                    direction,
                )
            )
        _add_method(folder, record, method, entries, suite, started)
    record["complete"] = True
    write_task_record(folder.root, record, started)
    return record


def _task_record(
    folder: TaskFolder,
    suite: Suite,
    protocol: Protocol,
    plan: Plan,
    data: DataSource,
    lesions: dict[str, Path],
    fid: FidScorer,
    source: str,
    target: str,
) -> dict[str, Any]:
    settings = {key: value for key, value in asdict(protocol).items() if key not in ("methods", "progress")}
    return {
        "benchmark": "synthmed benchmark",
        "suite": suite.name,
        "description": suite.description,
        "settings": {
            **settings,
            "subjects": suite.subjects,
            "size": suite.size,
            "split": suite.split,
            "methods": {m.label: {"model": m.model, "preset": m.preset} for m in protocol.methods},
            "source": source,
            "target": target,
        },
        "data": {
            "folder": str(data.folder),
            "prepared": str(folder.prep),
            "source": source,
            "target": target,
            "label": plan.label or ("manifest" if lesions else None),
            "split": plan.split,
            "lesion_subjects": sorted(lesions),
        },
        "protocol": PROTOCOL_TEXT,
        "conventions": CONVENTIONS,
        "notes": list(suite.notes),
        "fid": fid.status,
        "identity": {},
        "methods": {},
    }


def _add_method(
    folder: TaskFolder, record: dict[str, Any], method: Method, entries: list[dict], suite: Suite, started: float
) -> None:
    record["methods"][method.label] = {
        "model": method.model,
        "preset": method.preset,
        "repeats": entries,
        "summary": summarize_repeats(entries),
    }
    record["ranking"] = rank_methods(record["identity"], record["methods"], suite.claim)
    if suite.claim:
        record["ranking"]["claim"]["source"] = suite.claim_source
    write_task_record(folder.root, record, started)


def _cli(folder: TaskFolder, protocol: Protocol, arguments: list[str], log_name: str) -> dict[str, Any]:
    usage = run_measured(
        synthmed_command([*arguments, "--quiet"]), folder.logs / log_name, env=child_env(protocol.threads)
    )
    return usage.as_record()


def _train(folder: TaskFolder, method: Method, seed: int, protocol: Protocol) -> dict[str, Any]:
    """Train ``method`` with ``seed`` (a finished run of the same budget is reused); the process's usage."""
    run = folder.run(method.label, seed)
    if _reusable(run, protocol):
        return {"peak_rss_mb": None, "wall_seconds": None, "reused": True}
    remove_owned_folder(run, "train", is_run_entry, legacy=legacy_run)
    arguments = [
        "train",
        str(folder.prep),
        "--model",
        method.model,
        "--preset",
        method.preset,
        "--out",
        str(run),
        "--steps",
        str(protocol.steps),
        "--batch-size",
        str(protocol.batch_size),
        "--seed",
        str(seed),
        "--device",
        protocol.device,
        "--val-every",
        str(protocol.steps),
    ]
    if protocol.budget_minutes is not None:
        arguments += ["--max-minutes", str(protocol.budget_minutes)]
    return _cli(folder, protocol, arguments, f"train-{method.label}-seed{seed}.log")


def _translate_and_score(
    folder: TaskFolder,
    method: Method,
    seed: int,
    protocol: Protocol,
    inputs: Path,
    reference_folder: Path,
    references: dict[str, Path],
    lesions: dict[str, Path],
    fid: FidScorer,
    train_usage: dict[str, Any],
    direction: str,
) -> dict[str, Any]:
    run = folder.run(method.label, seed)
    summary = RunFolder(run).load_summary()
    outputs = folder.outputs(method.label, seed)
    arguments = [
        "translate",
        str(run),
        str(inputs),
        str(outputs),
        "--reference",
        str(reference_folder),
        "--checkpoint",
        "last",
        "--device",
        protocol.device,
        "--overwrite",
    ]
    if direction != "A2B":
        arguments += ["--direction", direction]
    stochastic = available_models()[method.model].stochastic
    if stochastic and protocol.samples > 1:
        arguments += ["--samples", str(protocol.samples), "--seed", str(seed)]
    translate_usage = _cli(folder, protocol, arguments, f"translate-{method.label}-seed{seed}.log")
    pairs = [(s, folder.output_volume(method.label, seed, s), references[s]) for s in references]
    seconds = float(summary["seconds"])
    steps = int(summary["steps"])
    entry = {
        "seed": seed,
        "scores": score_pairs(pairs, lesions, fid),
        "train_seconds": seconds,
        "steps": steps,
        "stopped": summary.get("stopped"),
        "train_slices_per_second": round(steps * protocol.batch_size / seconds, 2) if seconds else None,
        "train_peak_rss_mb": train_usage.get("peak_rss_mb"),
        "translate_seconds_per_volume": round(translate_usage["wall_seconds"] / len(references), 2),
        "translate_peak_rss_mb": translate_usage["peak_rss_mb"],
        "parameters": int(summary.get("parameters", 0)),
        "samples": protocol.samples if stochastic else 1,
    }
    mean = entry["scores"]["overall"]["mean"]
    _say(
        protocol,
        f"{method.label} seed {seed}{'' if direction == 'A2B' else ' ' + direction}: PSNR "
        f"{mean['psnr']:.2f} dB, SSIM {mean['ssim']:.3f}, {steps} steps in {seconds:.0f} s",
    )
    return entry


def _reusable(run: Path, protocol: Protocol) -> bool:
    """A finished run (an interrupted benchmark started again) is reused only if it had this budget."""
    if not RunFolder(run).train_summary.is_file():
        return False
    settings = RunFolder(run).load_summary().get("settings")
    if not isinstance(settings, dict):
        return False
    return (settings.get("steps"), settings.get("batch_size"), settings.get("max_minutes")) == (
        protocol.steps,
        protocol.batch_size,
        protocol.budget_minutes,
    )


def _test_folder(folder: TaskFolder, files: dict[str, Path], modality: str, name: str) -> Path:
    """A folder of links ``name/<subject>/<modality><suffix>`` so one translate call covers every test subject
    (named by the canonical modality, which ``translate`` looks for, whatever the original file names)."""
    from synthmed.data.formats.common import suffix_of_name

    root = folder.test_files(name)
    for subject, path in files.items():
        suffix = suffix_of_name(path.name) or path.suffix
        link = root / subject / f"{modality}{path.name[len(path.name) - len(suffix) :]}"
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(path.resolve())
    return root


def _lesion_masks(plan: Plan, folder: Path, data: DataSource) -> dict[str, Path]:
    """Binary lesion masks (label > 0) of the test subjects whose label is not empty: the ``label`` modality (found
    as ``prepare`` found it), or else a manifest's ``label`` column (the real suite's test scans; the training
    scans there have none, so ``prepare`` runs without ``--label``)."""
    from synthmed.data.discovery import canonical_modality, discover
    from synthmed.data.io import read_volume, write_volume

    if not data.label and not data.manifest:
        return {}
    subjects = {s.id: s for s in discover(data.folder, pattern=data.pattern, manifest=data.manifest)}
    masks: dict[str, Path] = {}
    for subject_id in plan.test_subjects:
        subject = subjects.get(subject_id)
        if subject is None:
            continue
        ref = (subject.files.get(canonical_modality(data.label, {})) if data.label else None) or subject.label
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


def _say(protocol: Protocol, message: str) -> None:
    if protocol.progress:
        print(f"[benchmark] {message}", file=sys.stderr, flush=True)
