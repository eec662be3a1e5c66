"""``synthmed benchmark``: every translation method under one protocol, one command, one results file.

For each method of the suite (or ``--models``) and each repeat (seed):

1. **data** (once): phantoms written by ``synthmed phantom`` (default), or ``--data DIR`` (any layout ``prepare``
   reads, with ``--pattern`` / ``--manifest``), prepared once for ``source -> target`` with the lesion map as label
   when the data has one; split by subject with the suite's fixed seed;
2. **train**: ``synthmed train PREP --model M --preset P --steps B --seed S`` in its own process, so its peak
   resident memory (``ru_maxrss`` from ``os.wait4``) is its own;
3. **translate** every test subject (``--reference`` = the subject's true target scan, whose two robust
   percentiles alone set the output's scale; one process for the whole test folder);
4. **evaluate** in the target's units inside the reference's foreground (:func:`evaluate_pairs`), and inside the
   lesion where the subject has a label; the identity baseline (the source scan mapped onto the reference's scale
   by the same percentiles) is scored the same way.

Recorded per method: PSNR, SSIM, MAE (mean +/- sd over subjects, and over repeats), the same in the lesion,
training seconds (the loop, from ``train_summary.json``), steps, training slices per second, translate seconds per
volume, peak RSS of training and of translation, parameter count. Written to ``DIR/benchmark.json`` and
``DIR/benchmark.csv`` (one row per method and repeat); ``DIR/runs``, ``DIR/outputs`` and ``DIR/logs`` keep the
runs, translations and process logs for the report.

Suites: ``quick`` (6 phantoms of 32^3, the ``small`` presets, 200 steps at batch 8; minutes on a CPU: a smoke
test of the whole protocol, not a ranking) and ``full`` (10 phantoms of 64^3, ``small`` presets, 3000 steps:
hours on a CPU, for a GPU). FID is not part of this protocol yet (issue 8 plans it with ``--inception-weights``).
"""

from __future__ import annotations

import json
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

from synthmed.data.io import ensure_writable_folder, write_text_atomic
from synthmed.errors import SynthmedError
from synthmed.models.registry import available_models

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
}
METRICS = ("psnr", "ssim", "mae")


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
    batch_size: int | None = None,
    repeats: int = 1,
    seed: int = 0,
    threads: int | None = None,
    device: str = "auto",
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the suite into ``out``; returns what ``benchmark.json`` holds."""
    if suite not in SUITES:
        raise SynthmedError(f"--suite {suite}: use one of {', '.join(SUITES)}")
    config = SUITES[suite]
    config = replace(config, **{k: v for k, v in (("steps", budget_steps), ("batch_size", batch_size),
                                                   ("source", source), ("target", target)) if v is not None})
    if config.steps < 1 or config.batch_size < 1 or repeats < 1:
        raise SynthmedError("--budget-steps, --batch-size and --repeats must be at least 1")
    known = translation_models()
    chosen = models or known
    unknown = [m for m in chosen if m not in available_models()]
    if unknown:
        raise SynthmedError(f"--models: unknown {', '.join(unknown)}; available: {', '.join(known)}")
    generators = [m for m in chosen if m not in known]
    if generators:
        raise SynthmedError(f"--models: {', '.join(generators)} generate(s) rather than translate; this protocol "
                            "scores translations (see benchmarks/segbench.py for generators)")
    out = Path(out)
    if out.exists() and (out / "benchmark.json").exists() and not overwrite:
        raise SynthmedError(f"{out} holds a benchmark already; pass --overwrite or choose another --out")
    ensure_writable_folder(out)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    env = {**os.environ}
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    started = time.perf_counter()

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
                 "--size", str(config.size), "--split", config.split, "--seed", str(seed)]
    if label:
        arguments += ["--label", label]
    if pattern:
        arguments += ["--pattern", pattern]
    if manifest:
        arguments += ["--manifest", str(manifest)]
    if not (prep / "plan.json").is_file():
        cli(arguments, "prepare.log")
    plan = json.loads((prep / "plan.json").read_text())
    test_subjects = plan["split"]["test"]
    if not test_subjects:
        raise SynthmedError(f"{prep}: no test subjects; the benchmark scores held-out subjects only")
    references = {s: Path(plan["volumes"][s]["files"][plan["target"]]) for s in test_subjects}
    sources = {s: Path(plan["volumes"][s]["files"][plan["source"]]) for s in test_subjects}
    lesions = _lesion_masks(plan, out / "masks", Path(data), pattern, manifest)

    report: dict[str, Any] = {
        "benchmark": "synthmed benchmark", "suite": suite, "settings": {**asdict(config), "repeats": repeats,
                                                                        "seed": seed, "threads": threads,
                                                                        "device": device},
        "data": {"folder": str(data), "prepared": str(prep), "source": plan["source"], "target": plan["target"],
                 "label": plan.get("label"), "split": plan["split"], "lesion_subjects": sorted(lesions)},
        "protocol": ("held-out test subjects; target units; inside the reference's foreground (and inside the "
                     "lesion where the subject has a label); PSNR data range = reference range in the region; "
                     "SSIM = mean of 2D slice SSIMs; outputs scaled by the reference's two robust percentiles, "
                     "the identity baseline mapped by the same two"),
        "identity": _scores([(s, sources[s], references[s]) for s in test_subjects], lesions, match=True),
        "methods": {},
    }
    for model in chosen:
        entries = []
        for repeat in range(repeats):
            run_seed = seed + repeat
            run = out / "runs" / f"{model}-seed{run_seed}"
            if not (run / "train_summary.json").is_file():
                if run.exists():
                    import shutil

                    shutil.rmtree(run)
                train_usage = cli(["train", str(prep), "--model", model, "--preset", config.preset, "--out", str(run),
                                   "--steps", str(config.steps), "--batch-size", str(config.batch_size),
                                   "--seed", str(run_seed), "--device", device,
                                   "--val-every", str(config.steps)], f"train-{model}-seed{run_seed}.log")
            else:
                train_usage = {"peak_rss_mb": None, "wall_seconds": None, "reused": True}
            summary = json.loads((run / "train_summary.json").read_text())
            outputs = out / "outputs" / f"{model}-seed{run_seed}"
            translate_usage = cli(["translate", str(run), str(_test_folder(out, sources)), str(outputs),
                                   "--reference", str(_test_folder(out, references, "references")),
                                   "--checkpoint", "last", "--device", device, "--overwrite"],
                                  f"translate-{model}-seed{run_seed}.log")
            pairs = [(s, _output_for(outputs, s), references[s]) for s in test_subjects]
            seconds = float(summary["seconds"])
            entry = {
                "seed": run_seed,
                "scores": _scores(pairs, lesions),
                "train_seconds": seconds,
                "steps": int(summary["steps"]),
                "train_slices_per_second": round(int(summary["steps"]) * config.batch_size / seconds, 2) if seconds else None,
                "train_peak_rss_mb": train_usage.get("peak_rss_mb"),
                "translate_seconds_per_volume": round(translate_usage["wall_seconds"] / len(test_subjects), 2),
                "translate_peak_rss_mb": translate_usage["peak_rss_mb"],
                "parameters": int(summary.get("parameters", 0)),
            }
            entries.append(entry)
            if progress:
                mean = entry["scores"]["overall"]["mean"]
                print(f"[benchmark] {model} seed {run_seed}: PSNR {mean['psnr']:.2f} dB, SSIM {mean['ssim']:.3f}, "
                      f"{seconds:.0f} s training", file=sys.stderr, flush=True)
        report["methods"][model] = {"repeats": entries, "summary": _over_repeats(entries)}
        _write(out, report, started)
    report["complete"] = True
    _write(out, report, started)
    return report


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


def _test_folder(out: Path, files: dict[str, Path], name: str = "inputs") -> Path:
    """A folder of links ``name/<subject>/<file>`` so one translate call covers every test subject."""
    folder = out / "test" / name
    for subject, path in files.items():
        link = folder / subject / path.name
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(path.resolve())
    return folder


def _output_for(outputs: Path, subject: str) -> Path:
    found = sorted((outputs / subject).glob("*"))
    volumes = [p for p in found if not p.name.startswith(".") and "_std" not in p.name]
    if len(volumes) != 1:
        raise SynthmedError(f"{outputs / subject}: expected one translated volume, found {len(volumes)}")
    return volumes[0]


def _lesion_masks(plan: dict, folder: Path, data: Path, pattern: str | None, manifest: str | Path | None
                  ) -> dict[str, Path]:
    """Binary lesion masks (label > 0) of the test subjects whose label file is not empty (found as ``prepare``
    found it)."""
    from synthmed.data.discovery import canonical_modality, discover
    from synthmed.data.io import read_volume, write_volume

    label = plan.get("label")
    if not label:
        return {}
    subjects = {s.id: s for s in discover(data, pattern=pattern, manifest=manifest)}
    masks: dict[str, Path] = {}
    for subject_id in plan["split"]["test"]:
        subject = subjects.get(subject_id)
        ref = (subject.files.get(canonical_modality(label, {})) or subject.label) if subject else None
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


def _scores(pairs: list[tuple[str, Path, Path]], lesions: dict[str, Path], match: bool = False) -> dict[str, Any]:
    """Overall scores (:func:`evaluate_pairs`: inside the reference's foreground, its range there as the PSNR data
    range) and, for subjects with a lesion, the same metrics inside the lesion with the *same* data range (the
    head's), so lesion PSNR is on the overall scale rather than on the lesion's own narrow range."""
    from synthmed.data.io import read_volume
    from synthmed.metrics import foreground_mask, image_metrics
    from synthmed.workflows.evaluate import evaluate_pairs, match_intensity

    overall = evaluate_pairs(pairs, match=match)
    result = {"overall": {k: overall[k] for k in ("n", "per_subject", "mean", "sd")}}
    per_subject = {}
    for subject, prediction_path, reference_path in pairs:
        if subject not in lesions:
            continue
        reference = read_volume(reference_path).data
        prediction = read_volume(prediction_path).data
        if match:
            prediction = match_intensity(prediction, reference)
        head = reference[foreground_mask(reference)]
        region = read_volume(lesions[subject]).data > 0
        per_subject[subject] = image_metrics(prediction, reference, region,
                                             data_range=float(head.max() - head.min()))
    if per_subject:
        means = {m: float(np.mean([v[m] for v in per_subject.values()])) for m in METRICS}
        result["lesion"] = {"n": len(per_subject), "per_subject": per_subject, "mean": means,
                            "data_range": "the reference's range inside the head"}
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
    for key in ("train_seconds", "train_slices_per_second", "train_peak_rss_mb", "translate_seconds_per_volume",
                "translate_peak_rss_mb", "parameters"):
        summary[key] = stats([e.get(key) for e in entries])
    return summary


def _write(out: Path, report: dict[str, Any], started: float) -> None:
    report["seconds"] = round(time.perf_counter() - started, 1)
    write_text_atomic(out / "benchmark.json", json.dumps(report, indent=2, default=_plain))
    rows = []
    identity = report["identity"]["overall"]["mean"]
    identity_lesion = report["identity"].get("lesion", {}).get("mean", {})
    rows.append({"method": "identity", "seed": "", "psnr": identity["psnr"], "ssim": identity["ssim"],
                 "mae": identity["mae"], "lesion_psnr": identity_lesion.get("psnr"),
                 "lesion_ssim": identity_lesion.get("ssim"), "lesion_mae": identity_lesion.get("mae")})
    for model, entry in report["methods"].items():
        for repeat in entry["repeats"]:
            mean = repeat["scores"]["overall"]["mean"]
            lesion = repeat["scores"].get("lesion", {}).get("mean", {})
            rows.append({"method": model, "seed": repeat["seed"], "psnr": mean["psnr"], "ssim": mean["ssim"],
                         "mae": mean["mae"], "lesion_psnr": lesion.get("psnr"), "lesion_ssim": lesion.get("ssim"),
                         "lesion_mae": lesion.get("mae"), "train_seconds": repeat["train_seconds"],
                         "steps": repeat["steps"], "train_slices_per_second": repeat["train_slices_per_second"],
                         "train_peak_rss_mb": repeat["train_peak_rss_mb"],
                         "translate_seconds_per_volume": repeat["translate_seconds_per_volume"],
                         "translate_peak_rss_mb": repeat["translate_peak_rss_mb"], "parameters": repeat["parameters"]})
    fields = list(dict.fromkeys(k for row in rows for k in row))
    text_rows = [",".join(fields)] + [",".join("" if row.get(f) is None else str(row.get(f)) for f in fields) for row in rows]
    write_text_atomic(out / "benchmark.csv", "\n".join(text_rows) + "\n")


def _plain(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")
