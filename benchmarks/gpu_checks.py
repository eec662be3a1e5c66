"""The GPU checks in one prepared script: mixed precision, channels_last, torch.compile and the NCCL
process group, each a short ``synthmed train`` run on the same prepared phantoms.

Variants (``small`` preset of each of ``--models``, pix2pix by default, ``--steps`` steps at ``--batch-size``, each in
its own process):

- ``fp32``: ``--amp off``, the reference;
- ``bf16``: ``--amp bf16`` (autocast; the summary's ``autocast`` says whether it was active);
- ``fp16``: ``--amp fp16`` (float16 autocast with a gradient scaler; its first steps are skipped while the scale
  settles, so its losses differ more from fp32's at this length);
- ``bf16+channels_last``: also ``--channels-last``;
- ``bf16+compile``: also ``--compile`` (``--skip-compile`` leaves it out; the first steps compile);
- ``nccl``: ``torchrun --standalone --nproc_per_node N`` (N = ``--processes``, default every GPU) with the
  bf16 settings: the NCCL process group starts, trains and shuts down cleanly. NCCL wants one GPU per process, so
  with a single GPU this variant is recorded as skipped (one process would not start a process group at all).

Recorded per variant: steps/s over the loop and in the steady state (after step 1, from ``log.csv``), the final
losses, their relative difference to fp32 (the same seed and data order: bf16 should stay within a few per cent
at this length), the autocast dtype actually used, and the wall time. Written to
``results/gpu-checks-<device>.json``.

On a machine without a GPU, ``--device cpu`` runs the same plumbing (``--amp bf16`` is CPU autocast there), so the
script is known to work before device time is spent on it, and ``--models all`` checks that every method trains
under bf16 autocast, channels_last and a real ``torch.compile``:

    .venv/bin/python benchmarks/gpu_checks.py --device cpu --steps 3 --size 32 --skip-compile --out /tmp/x.json
    .venv/bin/python benchmarks/gpu_checks.py --device cpu --models all --steps 20 --size 32 --batch-size 4
    .venv/bin/python benchmarks/gpu_checks.py            # on the GPU machine (estimated 3-5 minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from synthmed.benchmarking.results import write_json
from synthmed.benchmarking.runner import load_average, run_measured, source_state, synthmed_command
from synthmed.errors import SynthmedError

RESULTS = Path(__file__).resolve().parent / "results"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


def say(message: str) -> None:
    print(f"[gpu-checks {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def final_row(run_dir: Path) -> tuple[dict[str, float], float | None]:
    """The last log.csv row's losses, and the steady steps/s between the first and the last logged step."""
    import csv

    rows = list(csv.DictReader((run_dir / "log.csv").open()))
    timed = [r for r in rows if r.get("elapsed_s")]
    steady = None
    if len(timed) >= 2:
        steps = int(timed[-1]["step"]) - int(timed[0]["step"])
        seconds = float(timed[-1]["elapsed_s"]) - float(timed[0]["elapsed_s"])
        steady = steps / seconds if seconds > 0 else None
    losses = {
        k: float(v)
        for k, v in timed[-1].items()
        if k not in ("step", "epoch", "elapsed_s") and not k.startswith("val_") and v not in ("", None)
    }
    return losses, steady


def check_model(
    model: str,
    task: str,
    prep: Path,
    args: argparse.Namespace,
    processes: int,
    logs: Path,
    report: dict[str, Any],
    out: Path,
) -> dict[str, Any]:
    """Every variant of one model; the entry is written into ``report`` (and to ``out``) after each variant."""
    variants = {
        "fp32": ["--amp", "off"],
        "bf16": ["--amp", "bf16"],
        "fp16": ["--amp", "fp16"],
        "bf16+channels_last": ["--amp", "bf16", "--channels-last"],
    }
    if not args.skip_compile:
        variants["bf16+compile"] = ["--amp", "bf16", "--compile"]
    if processes:
        variants["nccl"] = ["--amp", "bf16"]
    entries: dict[str, Any] = {}
    report["models"][model] = {"task": task, "variants": entries}
    for name, flags in variants.items():
        run_dir = args.work / "runs" / model / name
        shutil.rmtree(run_dir, ignore_errors=True)
        arguments = [
            "train",
            str(prep),
            "--model",
            model,
            "--out",
            str(run_dir),
            "--steps",
            str(args.steps),
            "--batch-size",
            str(args.batch_size // (processes if name == "nccl" else 1)),
            "--device",
            args.device,
            "--val-every",
            str(args.steps),
            "--log-every",
            str(max(1, args.steps // 10)),
            "--checkpoint-every",
            str(args.steps),
            "--seed",
            "0",
            "--quiet",
            *flags,
        ]
        say(f"{model} {name}: {' '.join(flags)}")
        entry: dict[str, Any] = {"flags": flags}
        try:
            usage = run_measured(
                synthmed_command(arguments, processes if name == "nccl" else 1),
                logs / f"{model}-{name}.log",
                threads=args.threads,
            )
            entry["wall_seconds"] = usage.wall_seconds
            summary = json.loads((run_dir / "train_summary.json").read_text())
            losses, steady = final_row(run_dir)
            entry.update(
                ok=True,
                steps=summary["steps"],
                loop_seconds=summary["seconds"],
                steps_per_s=round(summary["steps"] / summary["seconds"], 3) if summary["seconds"] else None,
                steady_steps_per_s=round(steady, 3) if steady else None,
                autocast=summary.get("autocast"),
                processes=summary.get("processes"),
                final_losses=losses,
            )
        except (SynthmedError, OSError, KeyError, ValueError) as error:
            entry.update(ok=False, error=str(error))
        entries[name] = entry
        write_json(out, report)
    reference = entries["fp32"].get("final_losses") or {}
    for name, entry in entries.items():
        if entry.get("ok") and name != "fp32":
            entry["relative_loss_difference_to_fp32"] = {
                k: round(abs(v - reference[k]) / max(abs(reference[k]), 1e-12), 4)
                for k, v in entry["final_losses"].items()
                if k in reference
            }
            base = entries["fp32"].get("steady_steps_per_s")
            if base and entry.get("steady_steps_per_s"):
                entry["speedup_over_fp32"] = round(entry["steady_steps_per_s"] / base, 2)
    return entries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--models", default="pix2pix", help="comma-separated model names, or 'all'")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--size", type=int, default=128, help="slice size of the prepared phantoms")
    parser.add_argument(
        "--processes",
        type=int,
        default=0,
        help="torchrun processes for the nccl check (default: every GPU; 0 GPUs: skipped)",
    )
    parser.add_argument("--skip-compile", action="store_true")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--work", type=Path, default=CACHE / "synthmed" / "gpu-checks")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    import torch

    from synthmed.models.registry import available_models

    registry = available_models()
    models = list(registry) if args.models == "all" else [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in registry]
    if unknown or not models:
        parser.error(f"--models: unknown {', '.join(unknown) or '(none given)'}; available: {', '.join(registry)}")
    gpus = torch.cuda.device_count() if args.device.startswith("cuda") else 0
    if args.device.startswith("cuda") and not gpus:
        parser.error("--device cuda: no GPU visible here (use --device cpu for a dry run of the plumbing)")
    out = args.out or RESULTS / f"gpu-checks-{args.device.split(':')[0]}.json"
    work, logs = args.work, args.work / "logs"
    # Translators train on T1 -> T2; generators on FLAIR slices with their lesion masks.
    preps = {
        "translate": (work / "prep", ["--source", "T1", "--target", "T2"]),
        "generate": (work / "prep-lesion", ["--source", "FLAIR", "--label", "lesion"]),
    }
    report: dict[str, Any] = {
        "benchmark": "gpu-checks",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "device": torch.cuda.get_device_name(0) if gpus else args.device,
        "gpus": gpus,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "load_at_start": load_average(),
        "source": source_state(),
        "settings": vars(args) | {"work": str(work), "out": str(out)},
        "models": {},
    }
    plan = preps["translate"][0] / "plan.json"
    if not plan.is_file() or json.loads(plan.read_text())["size"] != args.size:
        shutil.rmtree(work, ignore_errors=True)
        say(f"phantoms at {args.size} px in {work}")
        run_measured(
            synthmed_command(
                ["phantom", str(work / "phantoms"), "--subjects", "8", "--size", str(args.size), "--quiet"]
            ),
            logs / "setup.log",
            threads=args.threads,
        )
    processes = args.processes or gpus
    if processes == 1:
        report["nccl_skipped"] = "one GPU: NCCL needs one GPU per process, and one process forms no process group"
        processes = 0
    for model in models:
        task = registry[model].task
        prep, selection = preps[task]
        if not (prep / "plan.json").is_file():
            say(f"preparing {prep.name}")
            run_measured(
                synthmed_command(
                    [
                        "prepare",
                        str(work / "phantoms"),
                        *selection,
                        "--size",
                        str(args.size),
                        "--out",
                        str(prep),
                        "--quiet",
                    ]
                ),
                logs / "setup.log",
                threads=args.threads,
            )
        check_model(model, task, prep, args, processes, logs, report, out)
    report["all_ok"] = all(entry.get("ok") for m in report["models"].values() for entry in m["variants"].values())
    write_json(out, report)
    for model, record in report["models"].items():
        for name, entry in record["variants"].items():
            say(
                f"{model} {name}: "
                + (
                    f"{entry.get('steady_steps_per_s')} steps/s, autocast {entry.get('autocast')}, "
                    f"x{entry.get('speedup_over_fp32', 1.0)} vs fp32"
                    if entry.get("ok")
                    else entry["error"]
                )
            )
    say(f"results: {out}")
    raise SystemExit(0 if report["all_ok"] else 1)


if __name__ == "__main__":
    main()
