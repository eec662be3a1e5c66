"""Data-parallel scaling on CPU: ``torchrun`` with 2 training processes against 1 process, same cores.

1. A prepared folder, made once in ``--work``: ``synthmed phantom`` (4 subjects, 32^3, seed 0) and
   ``synthmed prepare --source T1 --target T2 --size 64`` (2 train subjects, 43 slices).
2. The same training (``--model``, default ``pix2pix`` with ``--set generator_channels=16 --set
   discriminator_channels=16``, ``--steps N``, ``--seed 0``, global batch ``B``) three ways, each in
   fresh processes and a fresh run folder:
   * ``1x{T}``: ``python -m synthmed train ... --batch-size B`` with OMP_NUM_THREADS=T;
   * ``2x{T/2}``: ``python -m torch.distributed.run --standalone --nproc_per_node 2 -m synthmed train ...
     --batch-size B/2`` with OMP_NUM_THREADS=T/2 per process (the same number of cores in all);
   * ``2x{T}`` (``--oversubscribed``): 2 processes with T threads each.
   Validation, ``last.pt`` and log rows happen at step 1 and step N only (``--val-every N
   --checkpoint-every N --log-every N``), the same for all.
3. Throughput: steps/s = trained steps / ``seconds`` of the run's ``train_summary.json`` (the training
   loop, the final validation and checkpoint included); ``steady_steps_per_s`` = (N - 1) / (elapsed at
   step N - elapsed at step 1) from ``log.csv`` (no first step, no final validation); wall seconds of the
   whole command (start-up, rendezvous, imports). Scaling efficiency = throughput with 2 processes /
   throughput with 1 (1.0: the two processes together are as fast as one with all the threads; the global
   batch and so the work per step are equal).
4. Final training losses (``log.csv`` at step N, averaged over the ranks): with the same seed, 2 processes
   at batch B/2 see exactly the slices one process sees at batch B (``epoch_batches``). They agree only
   approximately: batch-norm statistics are per process (no SyncBatchNorm; pix2pix uses ``norm=batch``)
   and dropout draws differ, so the two runs are not bit-identical.
5. Resume cost: ``synthmed train ... --resume --steps N+1`` on a copy of the finished 1-process run
   (start-up + checkpoint load + one step + final validation/checkpoint) against a fresh ``--steps 1`` run
   (start-up + one step + the same), each ``--repeats`` times (median); the difference is what resuming
   costs beyond starting.

CPU timings depend on what else runs: the load average at the start and the end is recorded, and a
warning goes into the JSON when it was above 0.5 at the start. Run it on an idle machine. The JSON is
rewritten atomically after every measurement (``"complete": false`` until the end).

    .venv/bin/python benchmarks/ddp_scaling.py [--model pix2pix] [--steps 100] [--batch-size 16] [--threads 2]
        [--oversubscribed] [--repeats 3] [--set KEY=VALUE ...] [--work DIR] [--out F]
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from synthmed.benchmarking.results import write_json
from synthmed.benchmarking.runner import inside, load_average, run_measured, source_state, synthmed_command
from synthmed.errors import SynthmedError

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
DEFAULT_WORK = CACHE / "synthmed" / "bench-ddp-scaling"  # outside the repository
DEFAULT_SETS = {"pix2pix": ["generator_channels=16", "discriminator_channels=16"]}
LOADED = 0.5  # load average above which the timings are flagged


def say(message: str) -> None:
    print(f"[ddp-scaling {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def fail(message: str) -> NoReturn:
    print(f"ddp_scaling: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def run_logged(command: list[str], threads: int, log: Path) -> float:
    """Run ``command`` (output appended to ``log``) with ``threads`` OMP/MKL threads; wall seconds.
    A failure stops the benchmark with the log's last lines."""
    try:
        return run_measured(command, log, threads=threads, cwd=log.parent, tail_lines=15).wall_seconds
    except SynthmedError as error:
        fail(str(error))


def prepared(work: Path, threads: int) -> Path:
    prep = work / "prep"
    if (prep / "plan.json").is_file():
        return prep
    for stale in (work / "phantoms", prep):
        if stale.exists():
            shutil.rmtree(stale)
    log = work / "logs" / "setup.log"
    say("making the prepared folder (4 phantoms, 64 px)")
    run_logged(
        synthmed_command(
            ["phantom", str(work / "phantoms"), "--subjects", "4", "--size", "32", "--seed", "0", "--quiet"]
        ),
        threads,
        log,
    )
    run_logged(
        synthmed_command(
            [
                "prepare",
                str(work / "phantoms"),
                "--source",
                "T1",
                "--target",
                "T2",
                "--size",
                "64",
                "--out",
                str(prep),
                "--quiet",
            ]
        ),
        threads,
        log,
    )
    return prep


def train_arguments(
    args: argparse.Namespace, prep: Path, out: Path, steps: int, batch: int, resume: bool = False
) -> list[str]:
    arguments = [
        "train",
        str(prep),
        "--model",
        args.model,
        "--preset",
        args.preset,
        "--steps",
        str(steps),
        "--batch-size",
        str(batch),
        "--seed",
        "0",
        "--device",
        "cpu",
        "--val-every",
        str(args.steps),
        "--checkpoint-every",
        str(args.steps),
        "--log-every",
        str(args.steps),
        "--quiet",
        "--out",
        str(out),
    ]
    for item in args.sets:
        arguments += ["--set", item]
    return arguments + (["--resume"] if resume else [])


def log_rows(run: Path) -> list[dict[str, Any]]:
    with (run / "log.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    out = []
    for row in rows:
        parsed: dict[str, Any] = {}
        for key, value in row.items():
            if value in ("", None):
                continue
            try:
                parsed[key] = int(value) if key in ("step", "epoch") else float(value)
            except ValueError:
                parsed[key] = value
        out.append(parsed)
    return out


def measure_training(args: argparse.Namespace, prep: Path, name: str, processes: int, threads: int) -> dict[str, Any]:
    run = args.work / "runs" / name
    if run.exists():
        shutil.rmtree(run)
    batch = args.batch_size // processes
    command = synthmed_command(train_arguments(args, prep, run, args.steps, batch), processes)
    say(f"{name}: {processes} process(es) x {threads} thread(s), batch {batch} per process")
    wall = run_logged(command, threads, args.work / "logs" / f"{name}.log")
    summary = json.loads((run / "train_summary.json").read_text())
    rows = log_rows(run)
    first = next((r for r in rows if r.get("step") == 1 and "elapsed_s" in r), None)
    last = next((r for r in reversed(rows) if r.get("step") == args.steps and "elapsed_s" in r), None)
    steady = None
    if first and last and args.steps > 1 and last["elapsed_s"] > first["elapsed_s"]:
        steady = (args.steps - 1) / (last["elapsed_s"] - first["elapsed_s"])
    trained, seconds = int(summary["trained_steps"]), float(summary["seconds"])
    losses = {
        k: v for k, v in (last or {}).items() if k not in ("step", "epoch", "elapsed_s") and not k.startswith("val_")
    }
    return {
        "name": name,
        "processes": processes,
        "threads_per_process": threads,
        "cores_used": processes * threads,
        "batch_per_process": batch,
        "global_batch": batch * processes,
        "summary_processes": summary.get("processes"),
        "trained_steps": trained,
        "loop_seconds": seconds,
        "steps_per_s": trained / seconds if seconds > 0 else None,
        "slices_per_s": trained * batch * processes / seconds if seconds > 0 else None,
        "steady_steps_per_s": steady,
        "wall_seconds": round(wall, 2),
        "final_losses": losses,
        "first_step_losses": {k: v for k, v in (first or {}).items() if k not in ("step", "epoch", "elapsed_s")},
        "final_validation": {k: v for k, v in (last or {}).items() if k.startswith("val_")},
        "run": str(run),
        "command": f"OMP_NUM_THREADS={threads} {shlex.join(command)}",
    }


def loss_agreement(one: dict[str, Any], two: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, a in one["final_losses"].items():
        b = two["final_losses"].get(key)
        if isinstance(a, float) and isinstance(b, float):
            out[key] = {"one_process": a, "two_processes": b, "relative_difference": abs(a - b) / max(abs(a), 1e-12)}
    return out


def measure_resume(args: argparse.Namespace, prep: Path, finished: Path) -> dict[str, Any]:
    """Median wall seconds: --resume --steps N+1 on a copy of the finished run, and a fresh --steps 1 run."""
    logs = args.work / "logs"
    resumed, fresh = [], []
    resumed_loop, fresh_loop = [], []
    for index in range(args.repeats):
        copy = args.work / "runs" / "resume-copy"
        if copy.exists():
            shutil.rmtree(copy)
        shutil.copytree(finished, copy)
        command = synthmed_command(train_arguments(args, prep, copy, args.steps + 1, args.batch_size, resume=True))
        resumed.append(run_logged(command, args.threads, logs / "resume.log"))
        summary = json.loads((copy / "train_summary.json").read_text())
        if int(summary["steps"]) != args.steps + 1 or int(summary["trained_steps"]) != 1:
            fail(
                f"the resumed run ended at step {summary['steps']} after {summary['trained_steps']} step(s); "
                f"expected step {args.steps + 1} after 1"
            )
        resumed_loop.append(float(summary["seconds"]))
        run = args.work / "runs" / "fresh-1-step"
        if run.exists():
            shutil.rmtree(run)
        # The same settings as the resumed run, except the steps: --val-every etc. stay at N, so both
        # validate and checkpoint once, at their last step.
        command = synthmed_command(train_arguments(args, prep, run, 1, args.batch_size))
        fresh.append(run_logged(command, args.threads, logs / "fresh.log"))
        fresh_loop.append(float(json.loads((run / "train_summary.json").read_text())["seconds"]))
        say(f"resume {index + 1}/{args.repeats}: resume {resumed[-1]:.2f} s, fresh 1 step {fresh[-1]:.2f} s")
    checkpoint = finished / "checkpoints" / "last.pt"
    return {
        "resume_wall_seconds": round(statistics.median(resumed), 2),
        "fresh_one_step_wall_seconds": round(statistics.median(fresh), 2),
        "resume_minus_fresh_seconds": round(statistics.median(resumed) - statistics.median(fresh), 2),
        "resume_loop_seconds": round(statistics.median(resumed_loop), 3),
        "fresh_loop_seconds": round(statistics.median(fresh_loop), 3),
        "all_resume_wall_seconds": [round(s, 2) for s in resumed],
        "all_fresh_wall_seconds": [round(s, 2) for s in fresh],
        "checkpoint_mb": round(checkpoint.stat().st_size / 1024**2, 2),
        "threads": args.threads,
        "what": "resume: start-up + checkpoint load + 1 step + validation/checkpoint/samples at that step; fresh: "
        "start-up + model init + 1 step + the same; both with 1 process and the global batch",
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="pix2pix", help="model to train (default pix2pix)")
    parser.add_argument("--preset", default="small")
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="config overrides for every run (default for pix2pix: generator_channels=16, discriminator_channels=16)",
    )
    parser.add_argument("--steps", type=int, default=100, help="training steps N (default 100)")
    parser.add_argument("--batch-size", type=int, default=16, help="global batch B, even (default 16)")
    parser.add_argument("--threads", type=int, default=2, help="cores T of the 1-process run, even (default 2)")
    parser.add_argument("--oversubscribed", action="store_true", help="also run 2 processes x T threads")
    parser.add_argument("--repeats", type=int, default=3, help="resume/fresh measurements (median; default 3)")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help=f"work folder (default {DEFAULT_WORK})")
    parser.add_argument(
        "--out", type=Path, default=None, help="JSON report (default benchmarks/results/ddp-scaling-cpu.json)"
    )
    args = parser.parse_args()
    if args.steps < 2:
        parser.error(f"--steps {args.steps}: must be at least 2 (the steady rate needs steps 1 and N)")
    if args.batch_size < 2 or args.batch_size % 2:
        parser.error(f"--batch-size {args.batch_size}: the global batch must be even and at least 2 (B/2 per process)")
    if args.threads < 2 or args.threads % 2:
        parser.error(f"--threads {args.threads}: must be even and at least 2 (T/2 threads per process)")
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: must be at least 1")
    for item in args.sets or []:
        if "=" not in item or not item.split("=", 1)[0].strip():
            parser.error(f"--set {item!r}: use KEY=VALUE")
    if args.sets is None:
        args.sets = list(DEFAULT_SETS.get(args.model, []))
    if inside(args.work, REPO):
        parser.error(f"--work {args.work} is inside the repository; choose a folder outside it")
    args.out = args.out or RESULTS / "ddp-scaling-cpu.json"
    if args.out.suffix != ".json" or args.out.is_dir():
        parser.error(f"--out {args.out}: give a .json file name")
    from synthmed.models.registry import model_class  # noqa: E402  (after the cheap checks)

    try:
        cls = model_class(args.model)
    except Exception as error:  # noqa: BLE001 - the registry's own message names the models
        parser.error(f"--model {args.model}: {str(error).splitlines()[0]}")
    if cls.task != "translate":
        parser.error(f"--model {args.model}: a {cls.task} model; this benchmark trains translation models on T1 -> T2")
    return args


def main() -> None:
    args = parse_args()
    import torch

    from synthmed.runtime.versions import versions

    started = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    load_start = load_average()
    report: dict[str, Any] = {
        "benchmark": "ddp-scaling",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "complete": False,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "load_average_at_start": load_start,
        },
        "versions": versions(),
        "source_state_at_start": source_state(),
        "settings": {
            "model": args.model,
            "preset": args.preset,
            "sets": args.sets,
            "steps": args.steps,
            "global_batch": args.batch_size,
            "threads": args.threads,
            "seed": 0,
            "oversubscribed": args.oversubscribed,
            "repeats": args.repeats,
            "work": str(args.work),
        },
        "runs": [],
    }
    if max(load_start) > LOADED:
        report["warning"] = (
            f"load average {load_start} at the start: other jobs were running, so the timings "
            "(and the efficiency) are not representative; rerun on an idle machine"
        )
        say(f"warning: {report['warning']}")

    def refresh() -> None:
        write_json(args.out, report)

    prep = prepared(args.work, args.threads)
    plan = json.loads((prep / "plan.json").read_text())
    train_slices = int(plan["n_slices"]["train"])
    if args.batch_size > train_slices:
        fail(
            f"--batch-size {args.batch_size} is more than the {train_slices} training slices; the runs would "
            "clamp it differently"
        )
    report["data"] = {"prepared": str(prep), "training_slices": train_slices, "slice_size": int(plan["size"])}
    refresh()

    half = args.threads // 2
    configurations = [(f"1x{args.threads}", 1, args.threads), (f"2x{half}", 2, half)]
    if args.oversubscribed:
        configurations.append((f"2x{args.threads}", 2, args.threads))
    for name, processes, threads in configurations:
        row = measure_training(args, prep, name, processes, threads)
        report["runs"].append(row)
        say(
            f"{name}: {row['steps_per_s']:.3f} steps/s (loop), steady {row['steady_steps_per_s'] or float('nan'):.3f}, "
            f"wall {row['wall_seconds']} s, final losses {row['final_losses']}"
        )
        refresh()

    one = report["runs"][0]
    report["scaling"] = {}
    for row in report["runs"][1:]:
        entry = {
            "efficiency_loop": row["steps_per_s"] / one["steps_per_s"],
            "efficiency_steady": (
                row["steady_steps_per_s"] / one["steady_steps_per_s"]
                if row["steady_steps_per_s"] and one["steady_steps_per_s"]
                else None
            ),
            "efficiency_wall": one["wall_seconds"] / row["wall_seconds"],
            "final_losses": loss_agreement(one, row),
        }
        report["scaling"][f"{row['name']} vs {one['name']}"] = entry
        say(
            f"{row['name']} vs {one['name']}: efficiency {entry['efficiency_loop']:.3f} (loop), "
            f"{(entry['efficiency_steady'] or float('nan')):.3f} (steady), {entry['efficiency_wall']:.3f} (wall)"
        )
    report["scaling_definition"] = (
        "throughput with 2 processes / throughput with 1 at the same global batch "
        "(loop: train_summary seconds; steady: log.csv steps 1..N; wall: whole command)"
    )
    refresh()

    report["resume"] = measure_resume(args, prep, Path(one["run"]))
    say(
        f"resume: {report['resume']['resume_wall_seconds']} s vs fresh 1 step "
        f"{report['resume']['fresh_one_step_wall_seconds']} s (difference {report['resume']['resume_minus_fresh_seconds']} s)"
    )
    report["machine"]["load_average_at_end"] = load_average()
    report["benchmark_seconds"] = round(time.perf_counter() - started, 1)
    report["complete"] = True
    refresh()
    say(f"wrote {args.out}")


if __name__ == "__main__":
    main()
