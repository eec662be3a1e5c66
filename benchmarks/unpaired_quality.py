"""Unpaired translation quality: SynDiff versus CycleGAN at an equal training budget, both directions.

Issue 4 asks for the quality of the two unpaired translators on held-out subjects, T1 -> T2 and
T2 -> T1, trained unpaired and evaluated against the true paired image, at an equal training
budget. This benchmark does that through the command line only, each step in its own process:

1. data: ``synthmed phantom`` (8 synthetic heads, 64^3, seed 7) or the three BraTS-layout scans
   of ../shared/data/real/brats; ``synthmed prepare`` once (source T1 = A, target T2 = B, 64 px).
   Phantoms split 5 train / 1 val / 2 test subjects, BraTS 2 train / 0 val / 1 test.
2. ``synthmed train`` for ``syndiff`` and ``cyclegan`` (preset ``small``), the same ``--steps``,
   ``--batch-size`` and ``--seed`` for both. Training time is taken from the run's
   ``train_summary.json`` (the training loop, periodic validation included) and from the wall
   clock of the process (start-up included).
3. For every test subject and both directions, ``synthmed translate RUN INPUT OUT --direction
   A2B|B2A --reference REF --checkpoint last`` (SynDiff with ``--seed 0``), then ``synthmed
   evaluate OUT REF``: masked PSNR/SSIM/MAE/NMSE in the reference's units, inside the
   reference's foreground (evaluate's default mask). ``REF`` is the subject's true scan of the
   output modality; translate takes only its two robust percentiles as the output's intensity
   scale, for both models alike.
4. Identity baseline: ``synthmed evaluate INPUT REF --match-intensity`` (the input scan mapped
   onto the reference's scale by the same two percentiles).

Both models are scored from ``last.pt`` (the end of the equal budget): ``best.pt`` is picked by
validation PSNR of the A2B direction only, and the BraTS split has no validation subject.

Every torch process runs with OMP_NUM_THREADS = MKL_NUM_THREADS = ``--threads`` (train and
translate have no threads option of their own). Phantoms, the prepared folder, runs, outputs
and logs live in ``--work`` (default ~/.cache/synthmed/bench-unpaired-quality, outside the
repository; ``--data brats`` refuses a ``--work`` inside it). A finished run is reused on a
rerun, an unfinished one resumed with ``--resume``. The JSON is rewritten atomically after
every measurement (``"complete": false`` until the end).

    .venv/bin/python benchmarks/unpaired_quality.py --data phantoms|brats [--steps 1500]
        [--batch-size 4] [--seed 0] [--threads 1] [--checkpoint last|best] [--work DIR] [--out F]
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = REPO.parent / "shared" / "data" / "real"
RESULTS = Path(__file__).resolve().parent / "results"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
DEFAULT_WORK = CACHE / "synthmed" / "bench-unpaired-quality"  # outside the repository

MODELS = ("syndiff", "cyclegan")
PRESET = "small"
SIZE = 64
PHANTOMS = {"subjects": 8, "size": SIZE, "seed": 7}
PHANTOM_SPLIT = "0.7,0.1,0.2"  # 8 subjects -> 5 train, 1 val, 2 test
BRATS_ALIASES = "t1_bet=t1,t1c_bet=t1c,t2_bet=t2,fla_bet=flair"
BRATS_SPLIT = "0.67,0,0.33"  # 3 subjects -> 2 train, 0 val, 1 test
SPLIT_SEED = 0
METRICS = ("psnr", "ssim", "ssim3d", "mae", "nmse")
# direction -> (input modality, output/reference modality), in the plan's names (A = source, B = target)
DIRECTIONS = {"A2B": ("source", "target"), "B2A": ("target", "source")}


def say(message: str) -> None:
    print(f"[unpaired-quality {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def fail(message: str) -> None:
    print(f"unpaired_quality: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (strict JSON has no inf/nan)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def write_json(path: Path, report: dict) -> None:
    """Write atomically (a kill never leaves half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    partial.write_text(json.dumps(finite(report), indent=2, allow_nan=False) + "\n")
    os.replace(partial, path)


def inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def source_state() -> dict[str, Any]:
    """The repository's commit and its uncommitted files under src/ (the code the subprocesses import)."""
    def git(*arguments: str) -> str:
        try:
            return subprocess.run(["git", *arguments], cwd=REPO, capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            return ""

    return {"commit": git("rev-parse", "HEAD").strip() or None,
            "src_uncommitted": [line[3:] for line in git("status", "--porcelain", "--", "src").splitlines()]}


# --------------------------------------------------------------------------- subprocesses


def thread_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(threads)
    env["MKL_NUM_THREADS"] = str(threads)
    return env


def synthmed(arguments: list[str], threads: int, log: Path) -> float:
    """Run ``python -m synthmed ARGUMENTS`` with ``threads`` threads, output appended to ``log``;
    returns the wall seconds. A failure stops the benchmark with the log's last lines."""
    command = [sys.executable, "-m", "synthmed", *arguments]
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as stream:
        stream.write(f"$ {shlex.join(command)}\n")
        stream.flush()
        start = time.perf_counter()
        code = subprocess.run(command, env=thread_env(threads), stdout=stream, stderr=subprocess.STDOUT,
                              cwd=log.parent).returncode
        seconds = time.perf_counter() - start
    if code != 0:
        tail = "\n".join(log.read_text().splitlines()[-15:])
        fail(f"`synthmed {arguments[0]}` exited with status {code}; log {log}:\n{tail}")
    return seconds


def subprocess_torch_threads(threads: int) -> int:
    """The thread count torch reports in a child process started with our environment."""
    code = "import torch; print(torch.get_num_threads())"
    out = subprocess.run([sys.executable, "-c", code], env=thread_env(threads), capture_output=True, text=True,
                         check=True)
    return int(out.stdout.strip())


# --------------------------------------------------------------------------- data


def prepare_data(kind: str, work: Path, threads: int) -> tuple[Path, dict]:
    """Phantoms (when asked) and the prepared folder, cached under ``work``; and a description of the inputs."""
    prep, log = work / f"prep-{kind}", work / "logs" / f"prepare-{kind}.log"
    if kind == "phantoms":
        folder, marker = work / "phantoms", work / "phantoms.json"
        if not marker.is_file() or json.loads(marker.read_text()) != PHANTOMS:
            say(f"writing {PHANTOMS['subjects']} phantoms ({SIZE}^3) to {folder}")
            synthmed(["phantom", str(folder), "--subjects", str(PHANTOMS["subjects"]), "--size", str(PHANTOMS["size"]),
                      "--seed", str(PHANTOMS["seed"]), "--overwrite", "--quiet"], threads, log)
            marker.write_text(json.dumps(PHANTOMS))
        arguments = [str(folder), "--source", "T1", "--target", "T2", "--split", PHANTOM_SPLIT]
        inputs = {"kind": kind, "folder": str(folder), "phantoms": PHANTOMS, "split_ratios": PHANTOM_SPLIT}
    else:
        folder = REAL_DATA / "brats"
        arguments = [str(folder), "--source", "t1", "--target", "t2", "--split", BRATS_SPLIT, "--alias", BRATS_ALIASES]
        inputs = {"kind": kind, "folder": str(folder), "aliases": BRATS_ALIASES, "split_ratios": BRATS_SPLIT}
    synthmed(["prepare", *arguments, "--size", str(SIZE), "--seed", str(SPLIT_SEED), "--out", str(prep), "--quiet"],
             threads, log)
    inputs["split_seed"] = SPLIT_SEED
    plan = json.loads((prep / "plan.json").read_text())
    if kind == "brats":
        counts = {name: len(plan["split"][name]) for name in ("train", "val", "test")}
        if counts != {"train": 2, "val": 0, "test": 1}:
            fail(f"{prep}: expected 2 train / 0 val / 1 test subjects, the plan has {counts}; "
                 "remove that folder (the BraTS folder changed?) or check the split")
    return prep, inputs


def test_cases(plan: dict) -> list[dict[str, str]]:
    """Per test subject: its scan of the plan's source (A) and target (B) modality."""
    cases = []
    for subject in plan["split"]["test"]:
        files = plan["volumes"][subject]["files"]
        cases.append({"subject": subject, "source": files[plan["source"]], "target": files[plan["target"]]})
    if not cases:
        fail("the prepared data has no test subject")
    return cases


# --------------------------------------------------------------------------- training, evaluation


def train_model(model: str, prep: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Train (or reuse a finished, or resume an unfinished) run; returns the training record."""
    name = f"{args.data}-{model}-{PRESET}-steps{args.steps}-bs{args.batch_size}-seed{args.seed}"
    run = args.work / "runs" / name
    summary_path, timing_path = run / "train_summary.json", run / "bench_timing.json"
    reused = summary_path.is_file()
    if reused:
        say(f"reusing the finished run {run}")
    else:
        resume = (run / "checkpoints" / "last.pt").is_file()
        if not resume and run.exists():  # started but killed before its first checkpoint: start afresh
            shutil.rmtree(run)
        say(f"{'resuming' if resume else 'training'} {model} ({PRESET}) for {args.steps} steps at batch "
            f"{args.batch_size} into {run}")
        arguments = ["train", str(prep), "--model", model, "--preset", PRESET, "--out", str(run),
                     "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--seed", str(args.seed),
                     "--device", args.device, "--quiet", *(["--resume"] if resume else [])]
        wall = synthmed(arguments, args.threads, args.work / "logs" / f"train-{name}.log")
        timing_path.write_text(json.dumps({"wall_seconds": round(wall, 2), "resumed": resume,
                                           "load_average_after": load_average()}))
    summary = json.loads(summary_path.read_text())
    timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {}
    info = json.loads((run / "run.json").read_text())
    trained, seconds = summary.get("trained_steps") or 0, summary.get("seconds")
    best = summary.get("best") or {}
    record = {
        "run": str(run),
        "model": model,
        "preset": PRESET,
        "steps": summary.get("steps"),
        "batch_size": info["settings"]["batch_size"],
        "seed": info["settings"]["seed"],
        "images_seen": int(summary.get("steps") or 0) * int(info["settings"]["batch_size"]),
        "parameters": summary.get("parameters"),
        "seconds": seconds,
        "trained_steps_this_session": trained,
        "seconds_per_step": round(seconds / trained, 4) if trained and seconds else None,
        "wall_seconds": timing.get("wall_seconds"),
        "resumed": bool(timing.get("resumed", False)),
        "reused": reused,
        "load_average_after": timing.get("load_average_after"),
        "device": summary.get("device"),
        "best_validation_a2b": best if math.isfinite(best.get("value", -math.inf)) else None,
    }
    if record["steps"] != args.steps:
        fail(f"{run} holds {record['steps']} steps, not {args.steps}; remove it")
    say(f"{model}: {record['steps']} steps, {seconds} s in the training loop ({record['seconds_per_step']} s/step)")
    return record


def read_metrics(path: Path) -> dict[str, float]:
    """The one subject's metrics of an ``evaluate --out`` file ("inf" strings become inf)."""
    per_subject = json.loads(path.read_text())["per_subject"]
    (values,) = per_subject.values()
    return {key: float(values[key]) for key in METRICS}


def evaluate(pred: Path | str, ref: Path | str, out: Path, match: bool, args: argparse.Namespace) -> dict[str, float]:
    arguments = ["evaluate", str(pred), str(ref), "--out", str(out), "--quiet", *(["--match-intensity"] if match else [])]
    synthmed(arguments, args.threads, args.work / "logs" / f"evaluate-{args.data}.log")
    return read_metrics(out)


def translate(run: Path, model: str, direction: str, case: dict[str, str], out: Path,
              args: argparse.Namespace) -> float:
    input_key, output_key = DIRECTIONS[direction]
    arguments = ["translate", str(run), case[input_key], str(out), "--direction", direction,
                 "--reference", case[output_key], "--checkpoint", args.checkpoint, "--device", args.device,
                 "--overwrite", "--quiet", *(["--seed", str(args.seed)] if model == "syndiff" else [])]
    return synthmed(arguments, args.threads, args.work / "logs" / f"translate-{args.data}.log")


# --------------------------------------------------------------------------- summaries


def mean_of(rows: list[dict]) -> dict[str, Any]:
    result: dict[str, Any] = {"n": len(rows)}
    for key in METRICS:
        values = [r[key] for r in rows if r[key] is not None and math.isfinite(r[key])]
        result[key] = round(sum(values) / len(values), 4) if values else None
    return result


def means(rows: list[dict], keys: tuple[str, ...]) -> dict[str, Any]:
    """Mean metrics grouped by ``keys`` (nested dicts), e.g. ("model", "direction")."""
    grouped: dict[Any, list[dict]] = {}
    for row in rows:
        grouped.setdefault(tuple(row[k] for k in keys), []).append(row)
    result: dict[str, Any] = {}
    for group, members in grouped.items():
        level = result
        for part in group[:-1]:
            level = level.setdefault(part, {})
        level[group[-1]] = mean_of(members)
    return result


def summarise(rows: list[dict], identity: list[dict]) -> dict[str, Any]:
    """Per direction: which model has the higher mean PSNR and SSIM, by how much, and each gain over identity."""
    model_means, identity_means = means(rows, ("direction", "model")), means(identity, ("direction",))
    summary: dict[str, Any] = {}
    for direction, by_model in model_means.items():
        if not all(m in by_model for m in MODELS):
            continue
        a, b = (by_model[m] for m in MODELS)
        base = identity_means.get(direction, {})
        psnr_diff, ssim_diff = a["psnr"] - b["psnr"], a["ssim"] - b["ssim"]
        per_subject = {}
        for row in rows:
            if row["direction"] == direction:
                per_subject.setdefault(row["subject"], {})[row["model"]] = row["psnr"]
        better = sum(1 for s in per_subject.values() if len(s) == 2 and s[MODELS[0]] > s[MODELS[1]])
        summary[direction] = {
            "psnr_winner": MODELS[0] if psnr_diff > 0 else MODELS[1],
            "psnr_margin_db": round(abs(psnr_diff), 2),
            "ssim_winner": MODELS[0] if ssim_diff > 0 else MODELS[1],
            "ssim_margin": round(abs(ssim_diff), 4),
            f"{MODELS[0]}_minus_{MODELS[1]}_psnr_db": round(psnr_diff, 2),
            f"subjects_{MODELS[0]}_higher_psnr": f"{better} of {len(per_subject)}",
            "gain_over_identity_psnr_db": {m: round(by_model[m]["psnr"] - base["psnr"], 2) for m in MODELS}
            if base.get("psnr") is not None else None,
        }
    return summary


# --------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=("phantoms", "brats"), default="phantoms")
    parser.add_argument("--steps", type=int, default=1500, help="training steps, the same for both models")
    parser.add_argument("--batch-size", type=int, default=4, help="training batch size, the same for both models")
    parser.add_argument("--seed", type=int, default=0, help="training seed and SynDiff's sampling seed")
    parser.add_argument("--threads", type=int, default=1, help="OMP/MKL threads of every torch process")
    parser.add_argument("--checkpoint", choices=("last", "best"), default="last",
                        help="checkpoint translated (default last: the end of the equal budget)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK,
                        help=f"cache for data, prepared slices, runs and outputs (default {DEFAULT_WORK})")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON path (default benchmarks/results/unpaired-quality-<data>-<device>.json)")
    args = parser.parse_args()
    for key in ("steps", "batch_size", "threads"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be at least 1")
    args.work = args.work.expanduser().resolve()
    return args


def main() -> None:
    args = parse_args()
    if args.data == "brats" and not (REAL_DATA / "brats").is_dir():
        print(f"unpaired_quality: {REAL_DATA / 'brats'} is absent; skipping the brats benchmark (nothing written)",
              file=sys.stderr)
        return
    if args.data == "brats" and inside(args.work, REPO):
        fail(f"--work {args.work} is inside the repository; prepared real scans must stay outside it")

    import torch

    from synthmed.workflows.train import versions

    torch.set_num_threads(args.threads)
    out = args.out or RESULTS / f"unpaired-quality-{args.data}-{args.device}.json"
    started = time.perf_counter()
    machine = {
        "platform": platform.platform(), "processor": platform.processor(), "python": platform.python_version(),
        "cpu_count": os.cpu_count(), "torch": torch.__version__, "device": args.device,
        "threads_requested": args.threads, "subprocess_torch_threads": subprocess_torch_threads(args.threads),
        "load_average_at_start": load_average(),
    }
    args.work.mkdir(parents=True, exist_ok=True)
    prep, inputs = prepare_data(args.data, args.work, args.threads)
    plan = json.loads((prep / "plan.json").read_text())
    cases = test_cases(plan)
    report: dict[str, Any] = {
        "benchmark": "unpaired-quality",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "complete": False,
        "machine": machine,
        "versions": versions(),
        "source_state_at_start": source_state(),
        "data": {
            **inputs,
            "prepared": str(prep),
            "source_A": plan["source"],
            "target_B": plan["target"],
            "slice_size": int(plan["size"]),
            "axis": plan["axis"],
            "subjects": {name: list(plan["split"][name]) for name in ("train", "val", "test")},
            "n_subjects": {name: len(plan["split"][name]) for name in ("train", "val", "test")},
            "n_slices": plan["n_slices"],
            "directions": {"A2B": f"{plan['source']} -> {plan['target']}", "B2A": f"{plan['target']} -> {plan['source']}"},
        },
        "budget": {
            "models": list(MODELS), "preset": PRESET, "steps": args.steps, "batch_size": args.batch_size,
            "images_seen": args.steps * args.batch_size,
            "images_seen_note": "slices per domain: each step takes batch_size source (A) slices and batch_size "
                                "unpaired target (B) slices",
            "seed": args.seed, "threads": args.threads, "training": {},
        },
        "evaluation": {
            "checkpoint": args.checkpoint,
            "translate": "synthmed translate RUN INPUT OUT --direction A2B|B2A --reference REF (the true scan of the "
                         "output modality: only its two robust percentiles set the output's scale), same for both "
                         "models; syndiff with --seed " + str(args.seed) + " (one sample, T = 4 steps)",
            "metrics": "synthmed evaluate OUT REF: whole volume in the reference's units, inside the reference's "
                       "foreground (evaluate's default mask); PSNR data range = reference range in the mask",
            "identity": "synthmed evaluate INPUT REF --match-intensity (the input scan mapped linearly onto the "
                        "reference's scale by the same two percentiles)",
        },
        "identity": [],
        "rows": [],
        "identity_means": {},
        "means": {},
        "summary": {},
    }
    write_json(out, report)
    say(f"{args.data}: {plan['source']} <-> {plan['target']}, test subjects {', '.join(c['subject'] for c in cases)}; "
        f"writing {out}")

    outputs = args.work / "outputs" / args.data
    for direction, (input_key, output_key) in DIRECTIONS.items():
        for case in cases:
            metrics = evaluate(case[input_key], case[output_key],
                               outputs / "identity" / direction / f"{case['subject']}.json", True, args)
            report["identity"].append({"model": "identity", "direction": direction, "subject": case["subject"],
                                       **{k: round(v, 4) for k, v in metrics.items()}})
            report["identity_means"] = means(report["identity"], ("direction",))
            write_json(out, report)
            say(f"identity {direction} {case['subject']}: PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.4f}")

    for model in MODELS:
        training = train_model(model, prep, args)
        report["budget"]["training"][model] = training
        write_json(out, report)
        run = Path(training["run"])
        for direction, (_, output_key) in DIRECTIONS.items():
            for case in cases:
                folder = outputs / run.name / direction
                prediction = folder / f"{case['subject']}.nii.gz"
                seconds = translate(run, model, direction, case, prediction, args)
                metrics = evaluate(prediction, case[output_key], folder / f"{case['subject']}.json", False, args)
                report["rows"].append({"model": model, "direction": direction, "subject": case["subject"],
                                       **{k: round(v, 4) for k, v in metrics.items()},
                                       "translate_wall_seconds": round(seconds, 2)})
                report["means"] = means(report["rows"], ("model", "direction"))
                report["summary"] = summarise(report["rows"], report["identity"])
                write_json(out, report)
                say(f"{model} {direction} {case['subject']}: PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.4f}")

    machine["load_average_at_end"] = load_average()
    report["complete"] = True
    report["benchmark_seconds"] = round(time.perf_counter() - started, 1)
    write_json(out, report)
    for direction, entry in report["summary"].items():
        say(f"{direction}: {entry['psnr_winner']} higher PSNR by {entry['psnr_margin_db']} dB; "
            f"{entry['ssim_winner']} higher SSIM by {entry['ssim_margin']}")
    say(f"wrote {out}")


if __name__ == "__main__":
    main()
