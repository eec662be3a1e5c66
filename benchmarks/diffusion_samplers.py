"""Diffusion sampler benchmark: PSNR/SSIM and time per slice of the five samplers of one trained ddpm, by NFE.

One conditional ``ddpm`` (preset ``small``) is trained on prepared 2D slices (or an existing
run is loaded, EMA weights), then a fixed set of test-split slices is translated in one batch
with every sampler (ddpm, ddim, em, pc, ode) at every budget of network evaluations (NFE).
Quality is measured against the real target inside the prepared mask, in the normalised
[-1, 1] space (data range 2), and averaged over the slices; the identity baseline (the
source slice itself as the prediction) is measured once. Every sampler draws its noise from
a generator with the same seed, so the rows differ by sampler and NFE only.

Data (``--data``):
- ``phantoms``: 8 synthetic subjects (64^3, fixed seed), T1 -> T2, split 0.7/0.1/0.2
  (5 train, 1 val, 2 test subjects); best.pt is chosen by validation PSNR during training.
- ``brats``: the three BraTS-layout subjects of ../shared/data/real/brats, T1 -> T2, 64 px,
  prepared as tests/test_real_data.py does; split 2 train / 0 val / 1 test (last.pt is used).
  When the real data folder is absent the benchmark says so and exits 0 without writing.

Phantoms, the prepared folder and the trained run are cached under ``--work`` (outside the
repository: prepared real data must not enter it), so a rerun only re-evaluates; an
interrupted training resumes. The JSON is rewritten after every measurement, so a run
killed midway keeps what it measured (``"complete": false``).

    .venv/bin/python benchmarks/diffusion_samplers.py --data phantoms|brats [--work DIR]
        [--train-steps 2000] [--batch-size 8] [--slices 8] [--samplers ddpm,ddim,em,pc,ode]
        [--nfe 10,25,50,100,250,1000] [--seed 0] [--run RUN_DIR] [--checkpoint best|last]
        [--eta 0] [--device cpu] [--threads N] [--out results.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import os
import platform
import sys
import time
from pathlib import Path

from synthmed.benchmarking.results import write_json
from synthmed.benchmarking.runner import inside, load_average

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = REPO.parent / "shared" / "data" / "real"
RESULTS = Path(__file__).resolve().parent / "results"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
DEFAULT_WORK = CACHE / "synthmed" / "bench-diffusion-samplers"  # outside the repository

TOLERANCE_DB = 0.5  # "as good as the best": PSNR within this of the best
MIN_MASK_FRACTION = 0.2  # benchmark slices: the mask covers at least this share of the slice
SIZE = 64
PHANTOMS = {"subjects": 8, "size": SIZE, "seed": 7}
PHANTOM_SPLIT = (0.7, 0.1, 0.2)
BRATS_ALIASES = "t1_bet=t1,t1c_bet=t1c,t2_bet=t2,fla_bet=flair"
BRATS_SPLIT = (0.67, 0.0, 0.33)  # 3 subjects -> 2 train, 0 val, 1 test
SPLIT_SEED = 0


def say(message: str) -> None:
    print(f"[diffusion-samplers {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def fail(message: str) -> None:
    print(f"diffusion_samplers: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def number(value, digits: int = 4):
    """A float for JSON: rounded, and None where it is not finite (JSON has no inf/nan)."""
    value = float(value)
    return round(value, digits) if math.isfinite(value) else None


def prepare_data(kind: str, work: Path) -> tuple[Path, dict]:
    """The prepared folder for ``kind`` (cached under ``work``) and a description of its inputs."""
    from synthmed.data.prepare import load_plan, prepare

    prep = work / f"prep-{kind}"
    if kind == "phantoms":
        from synthmed.data.phantom import write_phantoms

        folder, marker = work / "phantoms", work / "phantoms.json"
        if not marker.is_file() or json.loads(marker.read_text()) != PHANTOMS:
            say(f"writing {PHANTOMS['subjects']} phantoms ({PHANTOMS['size']}^3) to {folder}")
            write_phantoms(folder, PHANTOMS["subjects"], PHANTOMS["size"], PHANTOMS["seed"], overwrite=True)
            marker.write_text(json.dumps(PHANTOMS))
        prepare(
            folder, source="T1", target="T2", out=prep, size=SIZE, split=PHANTOM_SPLIT, seed=SPLIT_SEED, progress=False
        )
        inputs = {"kind": "phantoms", "folder": str(folder), "phantoms": PHANTOMS, "split_ratios": list(PHANTOM_SPLIT)}
    else:
        prepare(
            REAL_DATA / "brats",
            source="t1",
            target="t2",
            out=prep,
            size=SIZE,
            split=BRATS_SPLIT,
            seed=SPLIT_SEED,
            aliases=BRATS_ALIASES,
            progress=False,
        )
        inputs = {
            "kind": "brats",
            "folder": str(REAL_DATA / "brats"),
            "aliases": BRATS_ALIASES,
            "split_ratios": list(BRATS_SPLIT),
        }
        split = load_plan(prep).split
        counts = {name: len(split[name]) for name in ("train", "val", "test")}
        if counts != {"train": 2, "val": 0, "test": 1}:
            fail(
                f"{prep}: expected 2 train / 0 val / 1 test subjects, the plan has {counts}; "
                "remove that folder (the BraTS folder changed?) or check the split"
            )
    inputs["split_seed"] = SPLIT_SEED
    return prep, inputs


def train_run(prep: Path, kind: str, args) -> Path:
    """Train (or reuse, or resume) the cached run for these settings."""
    from synthmed.workflows.train import train

    run = args.work / "runs" / f"{kind}-ddpm-small-steps{args.train_steps}-bs{args.batch_size}-seed{args.seed}"
    if (run / "train_summary.json").is_file():
        say(f"reusing the trained run {run}")
        return run
    resume = (run / "checkpoints" / "last.pt").is_file()
    every = max(args.train_steps // 8, min(args.train_steps, 250))
    say(
        f"{'resuming' if resume else 'training'} ddpm (small) for {args.train_steps} steps, batch {args.batch_size}, "
        f"into {run}"
    )
    start = time.perf_counter()
    train(
        prep,
        model="ddpm",
        preset="small",
        out=run,
        steps=args.train_steps,
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
        resume=resume,
        progress=False,
        val_every=every,
        checkpoint_every=every,
        sample_every=every,
        log_every=min(every, 50),
    )
    if resume:  # the summary's seconds cover this session only
        summary = json.loads((run / "train_summary.json").read_text())
        summary["resumed"] = True
        (run / "train_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    say(f"trained in {time.perf_counter() - start:.1f} s")
    return run


def check_run_against_data(run_plan: dict, plan: dict, run: Path) -> bool:
    """Refuse a run whose training subjects include a test subject, or of other modalities/size."""
    for key in ("source", "target", "size", "axis"):
        if run_plan.get(key) != plan.get(key):
            fail(f"{run} was trained on {key} {run_plan.get(key)!r}, the benchmark data has {plan.get(key)!r}")
    seen = set(run_plan["split"]["train"]) | set(run_plan["split"]["val"])
    leaked = sorted(seen & set(plan["split"]["test"]))
    if leaked:
        fail(
            f"{run} was trained or validated on {', '.join(leaked)}, a test subject here; "
            "evaluate it on data prepared with its own split"
        )
    return run_plan.get("inputs_hash") == plan.get("inputs_hash")


def ema_weights(checkpoint: Path) -> bool:
    """Whether the checkpoint holds EMA weights (load_run then uses them)."""
    from synthmed.engine.checkpoint import load_checkpoint

    return bool(load_checkpoint(checkpoint, map_location="cpu").get("ema"))


def pick_slices(data, count: int):
    """``count`` test rows evenly spaced over those whose mask covers >= MIN_MASK_FRACTION."""
    import numpy as np

    rows = data.rows("test")
    if len(rows) == 0:
        fail(f"{data.root}: the test split has no slices")
    cover = np.asarray(data.arrays["mask"][rows], dtype=np.float32).reshape(len(rows), -1).mean(axis=1)
    eligible = rows[cover >= MIN_MASK_FRACTION]
    if len(eligible) == 0:
        fail(f"{data.root}: no test slice has a mask covering {MIN_MASK_FRACTION:.0%} of it")
    positions = np.unique(np.linspace(0, len(eligible) - 1, min(count, len(eligible))).round().astype(int))
    picks = eligible[positions]
    subject_of = {record.number: name for name, record in data.plan.volumes.items()}
    described = []
    for row in picks:
        volume, slice_index = (int(v) for v in data.arrays["index"][row])
        described.append(
            {
                "row": int(row),
                "subject": subject_of[volume],
                "slice": slice_index,
                "mask_fraction": number(cover[np.searchsorted(rows, row)], 3),
            }
        )
    return picks, described, int(len(eligible))


# --------------------------------------------------------------------------- metrics, recommendation


def score(pred, ref, mask) -> dict:
    """Masked PSNR/SSIM (data range 2) per slice and their mean; arrays are (N, H, W)."""
    import numpy as np

    from synthmed.metrics import psnr, ssim

    p = np.asarray(pred, dtype=np.float32)
    psnrs = [psnr(p[i], ref[i], mask[i], data_range=2.0) for i in range(len(p))]
    ssims = [ssim(p[i], ref[i], mask[i], data_range=2.0) for i in range(len(p))]
    return {
        "psnr": number(np.mean(psnrs)),
        "ssim": number(np.mean(ssims)),
        "psnr_slices": [number(v) for v in psnrs],
        "ssim_slices": [number(v) for v in ssims],
    }


def recommend(rows: list[dict], tolerance: float = TOLERANCE_DB) -> dict:
    """Per sampler, the smallest NFE within ``tolerance`` dB of its best PSNR; overall, the lowest-NFE
    (sampler, NFE) within ``tolerance`` dB of the best PSNR of all rows. Ties: higher PSNR, then faster."""
    usable = [r for r in rows if r.get("psnr") is not None]

    def brief(row: dict) -> dict:
        return {k: row[k] for k in ("sampler", "steps", "nfe", "psnr", "ssim", "seconds_per_slice")}

    def cheapest(candidates: list[dict]) -> dict:
        best = max(r["psnr"] for r in candidates)
        close = [r for r in candidates if r["psnr"] >= best - tolerance]
        choice = min(close, key=lambda r: (r["nfe"], -r["psnr"], r["seconds_per_slice"]))
        top = max(candidates, key=lambda r: (r["psnr"], -r["nfe"]))
        return {**brief(choice), "best": brief(top)}

    per_sampler = {}
    for sampler in dict.fromkeys(r["sampler"] for r in usable):
        per_sampler[sampler] = cheapest([r for r in usable if r["sampler"] == sampler])
    return {
        "tolerance_db": tolerance,
        "rule": (
            f"per sampler: the smallest NFE whose PSNR is within {tolerance} dB of that sampler's best; "
            f"overall: the lowest NFE among all rows within {tolerance} dB of the overall best PSNR "
            "(ties: higher PSNR, then faster)"
        ),
        "per_sampler": per_sampler,
        "overall": cheapest(usable) if usable else None,
    }


# --------------------------------------------------------------------------- main


def parse_args():
    from synthmed.diffusion.samplers import SAMPLERS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=("phantoms", "brats"), default="phantoms")
    parser.add_argument(
        "--work",
        type=Path,
        default=DEFAULT_WORK,
        help=f"cache for phantoms, prepared data and trained runs (default {DEFAULT_WORK})",
    )
    parser.add_argument("--train-steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=8, help="training batch size")
    parser.add_argument("--slices", type=int, default=8, help="test slices translated (one batch)")
    parser.add_argument("--samplers", default=",".join(SAMPLERS))
    parser.add_argument("--nfe", default="10,25,50,100,250,1000", help="budgets of network evaluations (steps)")
    parser.add_argument("--eta", type=float, default=0.0, help="eta of the ddim sampler (0: deterministic)")
    parser.add_argument("--seed", type=int, default=0, help="training seed and sampling noise seed")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--run", type=Path, default=None, help="evaluate this trained run instead of training one")
    parser.add_argument("--checkpoint", default="best", help="best (falls back to last) or last")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON path (default benchmarks/results/diffusion-samplers-<data>-<device>.json)",
    )
    args = parser.parse_args()
    args.samplers = [s.strip() for s in args.samplers.split(",") if s.strip()]
    unknown = [s for s in args.samplers if s not in SAMPLERS]
    if unknown or not args.samplers:
        parser.error(f"--samplers: unknown {', '.join(unknown) or '(none given)'}; use some of {', '.join(SAMPLERS)}")
    try:
        args.nfe = [int(v) for v in args.nfe.split(",") if v.strip()]
    except ValueError:
        parser.error(f"--nfe {args.nfe!r}: give whole numbers like 10,25,50")
    if not args.nfe or min(args.nfe) < 1:
        parser.error("--nfe: give budgets of at least 1")
    for key in ("train_steps", "batch_size", "slices"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be at least 1")
    return args


def main() -> None:
    args = parse_args()
    if args.data == "brats" and not (REAL_DATA / "brats").is_dir():
        print(
            f"diffusion_samplers: {REAL_DATA / 'brats'} is absent; skipping the brats benchmark (nothing written)",
            file=sys.stderr,
        )
        return
    if args.data == "brats" and inside(args.work, REPO):
        fail(f"--work {args.work} is inside the repository; prepared real scans must stay outside it")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    import numpy as np
    import torch

    from synthmed.data.datasets import PreparedData
    from synthmed.diffusion.samplers import evaluations
    from synthmed.errors import SynthmedError
    from synthmed.runtime.devices import pick_device
    from synthmed.runtime.versions import versions
    from synthmed.workflows.translate import Sampling, load_run, translate_slices

    if args.threads is not None:
        if args.threads < 1:
            fail(f"--threads {args.threads}: must be at least 1")
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    out = args.out or RESULTS / f"diffusion-samplers-{args.data}-{device.type}.json"
    started = time.perf_counter()
    machine = {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "load_average_at_start": load_average(),
    }
    if device.type == "cuda":
        machine["gpu"] = torch.cuda.get_device_name(device)

    try:
        args.work.mkdir(parents=True, exist_ok=True)
        prep, inputs = prepare_data(args.data, args.work)
        run = args.run if args.run is not None else train_run(prep, args.data, args)
        loaded = load_run(run, device=args.device, checkpoint=args.checkpoint)
    except SynthmedError as error:
        fail(str(error))
    model = loaded.model
    if model.name != "ddpm":
        fail(f"{run} holds a {model.name} run; this benchmark needs a ddpm run")
    data = PreparedData(prep)
    plan = data.plan.to_record()
    same_inputs = check_run_against_data(loaded.plan.to_record(), plan, run)
    if not same_inputs:
        say(f"note: {run} was prepared from other inputs or options than {prep} (no test subject was seen in training)")

    summary_path = Path(run) / "train_summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    info = loaded.info.to_record()
    best = summary.get("best")
    training = {
        "run": str(Path(run).resolve()),
        "checkpoint": loaded.checkpoint.name,
        "ema_weights": ema_weights(loaded.checkpoint),
        "steps": summary.get("steps"),
        "trained_steps": summary.get("trained_steps"),
        "seconds": summary.get("seconds"),
        "resumed": bool(summary.get("resumed", False)),
        "batch_size": info.get("settings", {}).get("batch_size"),
        "seed": info.get("settings", {}).get("seed"),
        "device": summary.get("device"),
        "best_validation": best
        if best and best.get("value") is not None and math.isfinite(best["value"])
        else None,  # None: no val split
        "summary_file": str(summary_path) if summary else None,
    }

    picks, described, eligible = pick_slices(data, args.slices)
    source = np.ascontiguousarray(data.arrays["source"][picks], dtype=np.float32)
    target = np.asarray(data.arrays["target"][picks], dtype=np.float32)
    mask = np.asarray(data.arrays["mask"][picks]) > 0
    n = len(picks)
    data_info = {
        **inputs,
        "prepared": str(prep.resolve()),
        "source": plan["source"],
        "target": plan["target"],
        "slice_size": int(plan["size"]),
        "axis": plan["axis"],
        "subjects": {name: list(plan["split"][name]) for name in ("train", "val", "test")},
        "n_subjects": {name: len(plan["split"][name]) for name in ("train", "val", "test")},
        "n_slices": plan["n_slices"],
        "run_prepared_from_same_inputs": same_inputs,
        "slice_rule": (
            f"{args.slices} requested: evenly spaced over the {eligible} test-split slices whose mask "
            f"covers at least {MIN_MASK_FRACTION:.0%} of the slice"
        ),
        "slices": described,
    }
    identity = score(source, target, mask)
    T = model.config.timesteps
    report = {
        "benchmark": "diffusion-samplers",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "complete": False,
        "machine": machine,
        "versions": versions(),
        "model": {
            "name": model.name,
            "preset": info.get("preset"),
            "timesteps": T,
            "parameters": int(sum(p.numel() for p in model.parameters())),
            "config": model.config_dict(),
        },
        "training": training,
        "data": data_info,
        "evaluation": {
            "samplers": args.samplers,
            "steps": args.nfe,
            "ddim_eta": args.eta,
            "seed": args.seed,
            "batch": n,
            "space": "normalised [-1, 1] slices as prepared",
            "data_range": 2.0,
            "mask": "prepared mask (source foreground)",
            "metrics": "PSNR (dB) and SSIM per slice, mean over slices",
            "timing": (
                "time.perf_counter around one translate_slices call on the whole batch under "
                "torch.inference_mode, after one untimed warm-up; seconds_per_slice = seconds / batch"
            ),
        },
        "identity": identity,
        "rows": [],
        "recommendation": None,
    }
    say(
        f"{args.data}: {plan['source']} -> {plan['target']}, {n} test slices, run {run} ({loaded.checkpoint.name}); "
        f"identity PSNR {identity['psnr']} dB, SSIM {identity['ssim']}"
    )
    write_json(out, report)

    with torch.inference_mode():  # warm-up: first-call allocations and kernel selection stay out of the timings
        model.translate(
            torch.from_numpy(source)[:, None].to(device),
            sampler="ddim",
            steps=2,
            eta=0.0,
            generator=torch.Generator(device=device).manual_seed(args.seed),
        )
    for sampler in args.samplers:
        for steps in args.nfe:
            options = {"sampler": sampler, "steps": steps, **({"eta": args.eta} if sampler == "ddim" else {})}
            sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
            sync()
            with torch.inference_mode():
                start = time.perf_counter()
                pred, _ = translate_slices(model, source, batch_size=n, sampling=Sampling(options, 1, args.seed))
                sync()
                seconds = time.perf_counter() - start
            row = {
                "sampler": sampler,
                "steps": steps,
                "nfe": evaluations(sampler, steps, T),
                **score(pred, target, mask),
                "seconds_per_slice": number(seconds / n),
                "seconds": number(seconds, 3),
            }
            row = {
                k: row[k]
                for k in (
                    "sampler",
                    "steps",
                    "nfe",
                    "psnr",
                    "ssim",
                    "seconds_per_slice",
                    "seconds",
                    "psnr_slices",
                    "ssim_slices",
                )
            }
            report["rows"].append(row)
            report["recommendation"] = recommend(report["rows"])
            write_json(out, report)
            say(
                f"{sampler:>4} steps {steps:>4} (NFE {row['nfe']:>4}): PSNR {row['psnr']} dB  SSIM {row['ssim']}  "
                f"{row['seconds_per_slice']} s/slice"
            )

    report["complete"] = True
    machine["load_average_at_end"] = load_average()
    report["benchmark_seconds"] = round(time.perf_counter() - started, 1)
    write_json(out, report)
    overall = report["recommendation"]["overall"]
    say(
        f"recommended: {overall['sampler']} with {overall['nfe']} NFE (PSNR {overall['psnr']} dB; best "
        f"{overall['best']['psnr']} dB with {overall['best']['sampler']} at {overall['best']['nfe']} NFE); wrote {out}"
    )


if __name__ == "__main__":
    main()
