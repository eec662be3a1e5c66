"""MR -> CT on real anatomy through the whole protocol: pix2pix, ddpm and syndiff against the intensity-matched MR.

1. The Harvard atlas head CT/MR slice pairs of ``../shared/data/real/ct_mri_2d``, stacked into one volume per case
   and modality with a body mask from the CT (:func:`synthmed.data.recipes.shared_real.ct_mri_layout`): ten cases,
   7 train / 1 validation / 2 test by case number. The CT is an 8-bit display window (0-255), not Hounsfield units,
   so it is prepared as ``ctwin`` with a per-volume range, and every figure is in window units.
2. ``synthmed prepare`` (source ``mr``, target ``ctwin``, native resolution); ``synthmed train --preset small`` for
   ``--minutes`` per method (``--max-minutes``; 64 px patches), ``--jobs`` methods at once on ``--threads`` each.
3. ``synthmed translate`` of the test cases without ``--reference`` (the plan's target scale), the diffusion
   models with their run's default sampler; seconds per slice = the process's wall time over the test slices
   (start-up and model loading included).
4. ``synthmed evaluate --mask <body masks>``: MAE / PSNR / SSIM inside the body, in window units; the identity
   baseline is the MR itself mapped onto each CT's scale (``--match-intensity``). ``evaluate --compare`` of pix2pix
   against the best other method by MAE (two test cases: the paired test cannot reach significance; it is recorded
   for the effect size and the median difference).
5. ``figure.png`` in the work folder: MR / each method / CT for the middle slice of the first test case (real
   scans: kept out of the repository).

    .venv/bin/python benchmarks/mr_to_ct.py --work W [--data ../shared/data/real] [--models pix2pix,ddpm,syndiff] \
        [--minutes 8] [--threads 1] [--jobs 2] [--out F]

Stages already done in ``W`` (prepared data, a finished run, a translated folder, a score file) are reused, so an
interrupted benchmark resumes. Writes ``benchmarks/results/mr-to-ct-cpu.json`` (numbers, settings and paths only).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from synthmed.benchmarking.results import write_json
from synthmed.benchmarking.runner import load_average, run_measured, source_state, synthmed_command
from synthmed.data.recipes.shared_real import CT_WINDOW_MODALITY, ct_mri_layout
from synthmed.runtime.versions import versions

RESULTS = Path(__file__).resolve().parent / "results"
METRICS = ("mae", "psnr", "ssim")


def say(message: str) -> None:
    print(f"[mr-to-ct {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def test_folders(work: Path, scans: Path, split: dict[str, str]) -> Path:
    """A folder of links to the test cases only: ``translate`` of a folder translates every subject in it."""
    folder = work / "test-cases"
    folder.mkdir(parents=True, exist_ok=True)
    for case, name in split.items():
        link = folder / case
        if name == "test" and not link.is_symlink():
            link.symlink_to((scans / case).resolve())
    return folder


def train(work: Path, prep: Path, model: str, minutes: float, threads: int) -> dict[str, Any]:
    """One method's small-preset run for ``minutes``; a finished run is reused."""
    run = work / f"run-{model}"
    if not (run / "train_summary.json").is_file():
        say(f"training {model} for {minutes} min")
        run_measured(
            synthmed_command(["train", str(prep), "--model", model, "--preset", "small", "--steps", "1000000"])
            + ["--max-minutes", str(minutes), "--out", str(run), "--quiet"],
            work / "logs" / f"train-{model}.log",
            threads=threads,
        )
    summary = json.loads((run / "train_summary.json").read_text())
    return {key: summary.get(key) for key in ("trained_steps", "seconds", "parameters")}


def translate(work: Path, cases: Path, model: str, threads: int) -> dict[str, Any]:
    """The test cases through one run, and what it cost (kept beside the outputs, so a resumed benchmark reports
    the translation it reuses)."""
    out = work / "translated" / model
    if (out / ".complete").exists():
        return json.loads((out / ".complete").read_text())
    say(f"translating the test cases with {model}")
    usage = run_measured(
        synthmed_command(["translate", str(work / f"run-{model}"), str(cases), str(out), "--overwrite", "--quiet"]),
        work / "logs" / f"translate-{model}.log",
        threads=threads,
    ).as_record()
    usage["threads"] = threads  # a resumed benchmark may translate its methods on different thread counts
    (out / ".complete").write_text(json.dumps(usage) + "\n")
    return usage


def evaluate(work: Path, name: str, pred: Path, cases: Path, masks: Path, extra: list[str]) -> dict[str, Any]:
    """``synthmed evaluate`` inside the body masks; a score file already written is reused."""
    scores = work / "scores" / f"{name}.json"
    if not scores.is_file():
        run_measured(
            synthmed_command(["evaluate", str(pred), str(cases), "--ref-name", CT_WINDOW_MODALITY])
            + ["--mask", str(masks), "--out", str(scores), "--overwrite", "--quiet", *extra],
            work / "logs" / f"evaluate-{name}.log",
        )
    return json.loads(scores.read_text())


def slices_of(cases: Path) -> int:
    import nibabel as nib

    return sum(int(nib.load(case / "mr.nii.gz").shape[2]) for case in sorted(cases.iterdir()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, type=Path)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/real")
    parser.add_argument("--models", default="pix2pix,ddpm,syndiff")
    parser.add_argument("--minutes", type=float, default=8.0, help="training time per method")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--jobs", type=int, default=2, help="methods trained (and translated) at once")
    parser.add_argument("--out", type=Path, default=RESULTS / "mr-to-ct-cpu.json")
    args = parser.parse_args()
    models = [m for m in args.models.split(",") if m]
    work = args.work.resolve()
    (work / "logs").mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    # every invocation on this work folder: a resumed benchmark's figures come from all of them
    command = shlex.join(["python", "benchmarks/mr_to_ct.py", *sys.argv[1:]])
    with (work / "commands.log").open("a") as stream:
        stream.write(command + "\n")
    manifest, scans, masks, split = ct_mri_layout(args.data, work)
    cases = test_folders(work, scans, split)
    prep = work / "prep"
    if not (prep / "plan.json").is_file():
        run_measured(
            synthmed_command(["prepare", "--manifest", str(manifest), "--source", "mr"])
            + ["--target", CT_WINDOW_MODALITY, "--out", str(prep), "--quiet"],
            work / "logs" / "prepare.log",
        )
    plan = json.loads((prep / "plan.json").read_text())
    result: dict[str, Any] = {
        "benchmark": "mr-to-ct",
        "complete": False,
        "command": command,
        "commands_on_this_work_folder": (work / "commands.log").read_text().splitlines(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_average": load_average()},
        "source": source_state(),
        "versions": versions(),
        "units": "CT display window 0-255 (8-bit PNG), not Hounsfield units: MAE is in window units",
        "settings": {
            "models": models,
            "minutes_per_model": args.minutes,
            "threads": args.threads,
            "jobs": args.jobs,
            "preset": "small",
            "slice_px": plan["size"],
            "resolution": plan["resolution"],
            "translate": "without --reference (the plan's target scale); diffusion: the run's default sampler",
            "mask": "body mask from the CT window: > 10, holes filled, largest component per slice",
        },
        "split": plan["split"],
        "slices": plan["n_slices"],
        "training": {},
        "translation": {},
        "scores": {},
    }

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        trained = dict(zip(models, pool.map(lambda m: train(work, prep, m, args.minutes, args.threads), models)))
    result["training"] = trained
    write_json(args.out, result)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        usages = dict(zip(models, pool.map(lambda m: translate(work, cases, m, args.threads), models)))
    test_slices = slices_of(cases)
    for model, usage in usages.items():
        result["translation"][model] = {
            **usage,
            "test_slices": test_slices,
            "seconds_per_slice": round(usage["wall_seconds"] / test_slices, 2),
        }

    def summary(scores: dict[str, Any]) -> dict[str, Any]:
        return {
            "mean": {k: scores["mean"][k] for k in METRICS},
            "sd": {k: scores["sd"][k] for k in METRICS},
            "per_subject": {s: {k: r[k] for k in METRICS} for s, r in scores["per_subject"].items()},
        }

    identity = evaluate(work, "identity", cases, cases, masks, ["--pred-name", "mr", "--match-intensity"])
    result["scores"]["identity (MR, intensity-matched)"] = summary(identity)
    for model in models:
        scores = evaluate(work, model, work / "translated" / model, cases, masks, ["--pred-name", CT_WINDOW_MODALITY])
        result["scores"][model] = summary(scores)
        say(f"{model}: " + ", ".join(f"{k} {scores['mean'][k]:.3f}" for k in METRICS))
    others = [m for m in models if m != "pix2pix"]
    if "pix2pix" in models and others:
        best = min(others, key=lambda m: result["scores"][m]["mean"]["mae"])
        compared = evaluate(
            work,
            f"pix2pix-vs-{best}",
            work / "translated" / "pix2pix",
            cases,
            masks,
            ["--pred-name", CT_WINDOW_MODALITY, "--compare", str(work / "translated" / best)],
        )
        result["compare"] = {"pix2pix_vs": best, **compared.get("compare", {})}
    result["figure"] = str(figure(work, cases, models))
    result["complete"] = True
    result["seconds"] = round(time.perf_counter() - started, 1)
    write_json(args.out, result)
    say(f"wrote {args.out}")


def figure(work: Path, cases: Path, models: list[str]) -> Path:
    """MR / each method / CT at the middle slice of the first test case, on the window's 0-255 scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from synthmed.data.io import read_volume

    case = sorted(cases.iterdir())[0]
    mr = read_volume(case / "mr.nii.gz").data
    z = mr.shape[2] // 2
    panels = [("MR", mr)]
    panels += [
        (m, read_volume(work / "translated" / m / case.name / f"{CT_WINDOW_MODALITY}.nii.gz").data) for m in models
    ]
    panels += [("CT (window)", read_volume(case / f"{CT_WINDOW_MODALITY}.nii.gz").data)]
    fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3.3))
    for axis, (title, volume) in zip(axes, panels):
        high = np.percentile(volume, 99.5) if title == "MR" else 255
        axis.imshow(volume[..., z], cmap="gray", vmin=0, vmax=high)
        axis.set_title(f"{title}" + ("" if title != "MR" else f" {case.name} z={z}"), fontsize=9)
        axis.axis("off")
    path = work / "figure.png"
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
