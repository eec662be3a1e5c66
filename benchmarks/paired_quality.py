"""Paired translation quality: MedGAN (CasNet) versus its single U-block ablation versus pix2pix, equal budget.

Issue 5 asks for MedGAN's claim (CasNet + perceptual/style losses > single U-block > pix2pix) to be checked at
an equal training budget on held-out subjects. This benchmark trains three paired translators through the
command line, each step in its own process, and scores them against the identity baseline:

- ``medgan`` preset ``small`` (CasNet of 3 U-blocks, 32 channels), ``medgan`` preset ``single-ublock`` (one
  U-block, 64 channels: pix2pix's generator with MedGAN's losses) and ``pix2pix`` preset ``small`` (32 channels).
- No VGG-19 weights exist on this machine: every medgan run trains without the style and content losses
  (adversarial + perceptual only); the JSON says so (``vgg19_weights: null``, ``style_content_losses: false``).

Tasks (``--task``, ``--data``):

1. ``t1t2``: T1 -> T2, 64 px. ``phantoms``: 8 synthetic heads (``synthmed phantom``, 64^3, seed 7), 5 train /
   1 val / 2 test. ``brats``: the three scans of ../shared/data/real/brats (t1n -> t2w), 2 train / 0 val / 1 test.
2. ``motion``: motion-artefact correction. ``synthmed degrade DATA MOTION --name T1 --kind motion --severity 1
   --seed 0`` writes MOTION/<subject>/T1_motion beside a link to T1; ``synthmed prepare MOTION --source T1_motion
   --target T1`` pairs them (same splits as above).

Per model: ``synthmed train PREP --model M --preset P --steps N --batch-size B --seed S`` (the same N, B, S for
all), then per test subject ``synthmed translate RUN SOURCE OUT --reference REF --checkpoint last`` and
``synthmed evaluate OUT REF`` (masked PSNR/SSIM/MAE/NMSE in the reference's units, inside its foreground), as
benchmarks/unpaired_quality.py does; its helpers are imported, not copied. Identity baseline: ``synthmed evaluate
SOURCE REF --match-intensity``; for ``motion`` also without matching (the degraded scan is already in the clean
scan's units). The summary (ranking by mean PSNR, differences in dB, whether the paper's ordering holds) is
computed from the rows.

``--speed`` instead times inference per 256 px slice (batch 1, random weights, after a warm-up, median of
``--repeats`` runs, torch threads = ``--threads``) for medgan ``paper``, ``single-ublock`` and pix2pix ``paper``
and counts their parameters (``benchmarks/results/medgan-speed-cpu.json``).

Every torch subprocess runs with OMP_NUM_THREADS = MKL_NUM_THREADS = ``--threads``. Data, prepared slices, runs and
outputs live in ``--work`` (default ~/.cache/synthmed/bench-paired-quality, outside the repository; real data
refuses a ``--work`` inside it). Finished runs are reused, unfinished ones resumed. The JSON is rewritten
atomically after every measurement (``"complete": false`` until the end).

    cd benchmarks && ../.venv/bin/python paired_quality.py --task t1t2|motion --data phantoms|brats
        [--steps 500] [--batch-size 8] [--seed 0] [--threads 1] [--work DIR] [--out F]
    cd benchmarks && ../.venv/bin/python paired_quality.py --speed [--threads 1] [--repeats 5]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import unpaired_quality as uq  # noqa: E402  (the colleague's helpers: subprocesses, data, metrics, JSON)

REPO = uq.REPO
RESULTS = uq.RESULTS
DEFAULT_WORK = uq.CACHE / "synthmed" / "bench-paired-quality"  # outside the repository

# (label, model, preset), in the order of the paper's claim: best first
MODELS: tuple[tuple[str, str, str], ...] = (
    ("medgan-small", "medgan", "small"),
    ("medgan-single-ublock", "medgan", "single-ublock"),
    ("pix2pix-small", "pix2pix", "small"),
)
PAPER_ORDER = [label for label, _, _ in MODELS]
SPEED_MODELS: tuple[tuple[str, str, str], ...] = (
    ("medgan-paper", "medgan", "paper"),
    ("medgan-single-ublock", "medgan", "single-ublock"),
    ("pix2pix-paper", "pix2pix", "paper"),
)
PAPER_MS_PER_SLICE = 115  # MedGAN paper, 256 x 256 slice, Titan X GPU
MOTION = {"kind": "motion", "severity": 1.0, "seed": 0}
BRATS_MOTION_NAME = "t1"  # modality degraded in the BraTS folders (t1n, t1, t1_bet via aliases)


def say(message: str) -> None:
    print(f"[paired-quality {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def fail(message: str) -> None:
    print(f"paired_quality: error: {message}", file=sys.stderr)
    raise SystemExit(2)


# --------------------------------------------------------------------------- data


# Our own small versions of unpaired_quality's prepare_data and evaluate: their signatures follow that script's
# command line, which changes with it.


def write_phantoms(work: Path, threads: int) -> Path:
    """``synthmed phantom`` (8 heads, 64^3, seed 7, as unpaired_quality.py) into work/phantoms, once."""
    folder, marker = work / "phantoms", work / "phantoms.json"
    if not marker.is_file() or json.loads(marker.read_text()) != uq.PHANTOMS:
        say(f"writing {uq.PHANTOMS['subjects']} phantoms ({uq.SIZE}^3) to {folder}")
        uq.synthmed(["phantom", str(folder), "--subjects", str(uq.PHANTOMS["subjects"]), "--size",
                     str(uq.PHANTOMS["size"]), "--seed", str(uq.PHANTOMS["seed"]), "--overwrite", "--quiet"],
                    threads, work / "logs" / "phantom.log")
        marker.write_text(json.dumps(uq.PHANTOMS))
    return folder


def prepare_t1t2(data: str, work: Path, threads: int) -> tuple[Path, dict]:
    """The prepared T1 -> T2 folder (phantoms 5/1/2 subjects, BraTS 2/0/1), cached in ``work``."""
    prep, log = work / f"prep-{data}", work / "logs" / f"prepare-{data}.log"
    if data == "phantoms":
        folder = write_phantoms(work, threads)
        arguments = [str(folder), "--source", "T1", "--target", "T2", "--split", uq.PHANTOM_SPLIT]
        inputs = {"kind": data, "folder": str(folder), "phantoms": uq.PHANTOMS, "split_ratios": uq.PHANTOM_SPLIT}
    else:
        folder = uq.REAL_DATA / "brats"
        arguments = [str(folder), "--source", "t1", "--target", "t2", "--split", uq.BRATS_SPLIT,
                     "--alias", uq.BRATS_ALIASES]
        inputs = {"kind": data, "folder": str(folder), "aliases": uq.BRATS_ALIASES, "split_ratios": uq.BRATS_SPLIT}
    uq.synthmed(["prepare", *arguments, "--size", str(uq.SIZE), "--seed", str(uq.SPLIT_SEED), "--out", str(prep),
                 "--quiet"], threads, log)
    inputs["split_seed"] = uq.SPLIT_SEED
    return prep, inputs


def evaluate(pred: Path | str, ref: Path | str, out: Path, match: bool, args: argparse.Namespace) -> dict[str, float]:
    """``synthmed evaluate PRED REF [--match-intensity]``: the subject's masked metrics."""
    arguments = ["evaluate", str(pred), str(ref), "--out", str(out), "--overwrite", "--quiet",
                 *(["--match-intensity"] if match else [])]
    uq.synthmed(arguments, args.threads, args.work / "logs" / f"evaluate-{args.task}-{args.data}.log")
    return uq.read_metrics(out)


def prepare_motion(data: str, work: Path, threads: int) -> tuple[Path, dict]:
    """Degraded copies of every subject's T1 (cached in ``work``) and the prepared T1_motion -> T1 folder."""
    log = work / "logs" / f"prepare-motion-{data}.log"
    if data == "phantoms":
        clean, name, aliases = write_phantoms(work, threads), "T1", None
        split = uq.PHANTOM_SPLIT
    else:
        clean, name, aliases = uq.REAL_DATA / "brats", BRATS_MOTION_NAME, uq.BRATS_ALIASES
        split = uq.BRATS_SPLIT
    degraded, marker = work / f"motion-{data}", work / f"motion-{data}.json"
    wanted = {**MOTION, "input": str(clean), "name": name}
    if not marker.is_file() or json.loads(marker.read_text()) != wanted:
        say(f"degrading {name} of {clean} into {degraded} (motion, severity {MOTION['severity']}, seed {MOTION['seed']})")
        uq.synthmed(["degrade", str(clean), str(degraded), "--name", name, "--kind", MOTION["kind"],
                     "--severity", str(MOTION["severity"]), "--seed", str(MOTION["seed"]), "--overwrite", "--quiet",
                     *(["--alias", aliases] if aliases else [])], threads, log)
        marker.write_text(json.dumps(wanted))
    source = f"{name}_{MOTION['kind']}"
    prep = work / f"prep-motion-{data}"
    uq.synthmed(["prepare", str(degraded), "--source", source, "--target", name, "--split", split,
                 "--size", str(uq.SIZE), "--seed", str(uq.SPLIT_SEED), "--out", str(prep), "--quiet",
                 *(["--alias", aliases] if aliases else [])], threads, log)
    inputs = {"kind": data, "clean_folder": str(clean), "folder": str(degraded), "degrade": wanted,
              "split_ratios": split, "split_seed": uq.SPLIT_SEED,
              **({"phantoms": uq.PHANTOMS} if data == "phantoms" else {"aliases": aliases})}
    return prep, inputs


def prepare_task(task: str, data: str, work: Path, threads: int) -> tuple[Path, dict]:
    if task == "t1t2":
        return prepare_t1t2(data, work, threads)
    return prepare_motion(data, work, threads)


# --------------------------------------------------------------------------- training, translation


def train_model(label: str, model: str, preset: str, prep: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Train (or reuse a finished, or resume an unfinished) run; returns the training record."""
    name = f"{args.task}-{args.data}-{label}-steps{args.steps}-bs{args.batch_size}-seed{args.seed}"
    run = args.work / "runs" / name
    summary_path, timing_path = run / "train_summary.json", run / "bench_timing.json"
    reused = summary_path.is_file()
    if reused:
        say(f"reusing the finished run {run}")
    else:
        resume = (run / "checkpoints" / "last.pt").is_file()
        if not resume and run.exists():  # killed before its first checkpoint: start afresh
            shutil.rmtree(run)
        say(f"{'resuming' if resume else 'training'} {model} ({preset}) for {args.steps} steps at batch "
            f"{args.batch_size} into {run}")
        arguments = ["train", str(prep), "--model", model, "--preset", preset, "--out", str(run),
                     "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--seed", str(args.seed),
                     "--device", args.device, "--quiet", *(["--resume"] if resume else [])]
        wall = uq.synthmed(arguments, args.threads, args.work / "logs" / f"train-{name}.log")
        timing_path.write_text(json.dumps({"wall_seconds": round(wall, 2), "resumed": resume,
                                           "load_average_after": uq.load_average()}))
    summary = json.loads(summary_path.read_text())
    timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {}
    info = json.loads((run / "run.json").read_text())
    config = info["config"]
    trained, seconds = summary.get("trained_steps") or 0, summary.get("seconds")
    record: dict[str, Any] = {
        "run": str(run),
        "model": model,
        "preset": preset,
        "steps": summary.get("steps"),
        "batch_size": info["settings"]["batch_size"],
        "seed": info["settings"]["seed"],
        "images_seen": int(summary.get("steps") or 0) * int(info["settings"]["batch_size"]),
        "parameters": summary.get("parameters"),
        "parameters_note": "generator + discriminator",
        "generator_parameters": generator_parameters(model, preset, int(config["image_size"])),
        "generator": {key: config.get(key) for key in ("n_ublocks", "generator_channels", "generator_depth",
                                                         "image_size", "discriminator_channels", "patch_size")
                      if key in config},
        "seconds": seconds,
        "trained_steps_this_session": trained,
        "seconds_per_step": round(seconds / trained, 4) if trained and seconds else None,
        "wall_seconds": timing.get("wall_seconds"),
        "resumed": bool(timing.get("resumed", False)),
        "reused": reused,
        "load_average_after": timing.get("load_average_after"),
        "device": summary.get("device"),
    }
    if model == "medgan":
        record["vgg19_weights"] = config.get("vgg19_weights") or None
        record["style_content_losses"] = bool(config.get("vgg19_weights"))
    if record["steps"] != args.steps:
        fail(f"{run} holds {record['steps']} steps, not {args.steps}; remove it")
    say(f"{label}: {record['steps']} steps, {seconds} s in the training loop ({record['seconds_per_step']} s/step), "
        f"{record['parameters']} parameters")
    return record


def generator_parameters(model: str, preset: str, image_size: int) -> int:
    """Parameters of the generator alone (the run's count includes the discriminator)."""
    from synthmed.models.registry import build_model

    return sum(p.numel() for p in build_model(model, preset, {"image_size": image_size}).generator.parameters())


def translate(run: Path, case: dict[str, str], out: Path, args: argparse.Namespace) -> float:
    arguments = ["translate", str(run), case["source"], str(out), "--reference", case["target"],
                 "--checkpoint", "last", "--device", args.device, "--overwrite", "--quiet"]
    return uq.synthmed(arguments, args.threads, args.work / "logs" / f"translate-{args.task}-{args.data}.log")


# --------------------------------------------------------------------------- summary


def summarise(rows: list[dict], identity: list[dict], identity_raw: list[dict] | None = None) -> dict[str, Any]:
    """Ranking by mean PSNR and SSIM, differences in dB, gains over identity, and the paper's ordering."""
    by_model = uq.means(rows, ("model",))
    labels = [label for label in PAPER_ORDER if label in by_model]
    if len(labels) < 2:
        return {}
    identity_psnr = uq.mean_of(identity)["psnr"] if identity else None
    psnr_ranking = sorted(labels, key=lambda m: by_model[m]["psnr"], reverse=True)
    ssim_ranking = sorted(labels, key=lambda m: by_model[m]["ssim"], reverse=True)
    per_subject: dict[str, dict[str, float]] = {}
    for row in rows:
        per_subject.setdefault(row["subject"], {})[row["model"]] = row["psnr"]
    pairwise = {}
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            higher = sum(1 for s in per_subject.values() if a in s and b in s and s[a] > s[b])
            both = sum(1 for s in per_subject.values() if a in s and b in s)
            pairwise[f"{a}_minus_{b}"] = {
                "psnr_db": round(by_model[a]["psnr"] - by_model[b]["psnr"], 2),
                "ssim": round(by_model[a]["ssim"] - by_model[b]["ssim"], 4),
                "mae": round(by_model[a]["mae"] - by_model[b]["mae"], 4),
                "subjects_first_higher_psnr": f"{higher} of {both}",
            }
    complete = labels == PAPER_ORDER
    return {
        "psnr_ranking": psnr_ranking,
        "psnr_ranking_db": {m: by_model[m]["psnr"] for m in psnr_ranking},
        "ssim_ranking": ssim_ranking,
        "pairwise": pairwise,
        "gain_over_identity_psnr_db": {m: round(by_model[m]["psnr"] - identity_psnr, 2) for m in labels}
        if identity_psnr is not None else None,
        **({"gain_over_identity_raw_psnr_db": {m: round(by_model[m]["psnr"] - uq.mean_of(identity_raw)["psnr"], 2)
                                               for m in labels}} if identity_raw else {}),
        "paper_ordering": " > ".join(PAPER_ORDER) + " (the paper's CasNet also had style/content losses; off here)",
        "paper_ordering_holds_psnr": psnr_ranking == PAPER_ORDER if complete else None,
        "paper_ordering_holds_ssim": ssim_ranking == PAPER_ORDER if complete else None,
    }


# --------------------------------------------------------------------------- speed


def speed(args: argparse.Namespace) -> None:
    """Inference ms per 256 px slice (random weights, batch 1) and parameter counts of the paper-size models."""
    import torch

    from synthmed.models.registry import build_model
    from synthmed.runtime.versions import versions

    torch.set_num_threads(args.threads)
    out = args.out or RESULTS / f"medgan-speed-{args.device}.json"
    report: dict[str, Any] = {
        "benchmark": "medgan-speed",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "complete": False,
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpu_count": os.cpu_count(), "device": args.device, "torch_threads": torch.get_num_threads(),
                    "load_average_at_start": uq.load_average()},
        "versions": versions(),
        "method": f"model.translate(x) on one 1x1x256x256 random slice (random initial weights, seed {args.seed}), "
                  f"eval mode, inference mode; {args.warmup} untimed warm-up runs, then the median of "
                  f"{args.repeats} timed runs (time.perf_counter)",
        "paper_reference": {"ms_per_slice": PAPER_MS_PER_SLICE, "hardware": "NVIDIA Titan X GPU",
                            "model": "MedGAN, CasNet of 6 U-blocks, 256 x 256"},
        "rows": [],
    }
    uq.write_json(out, report)
    device = torch.device(args.device)
    for label, model_name, preset in SPEED_MODELS:
        torch.manual_seed(args.seed)
        model = build_model(model_name, preset, {"image_size": 256}).to(device).eval()
        generator = sum(p.numel() for p in model.generator.parameters())
        total = sum(p.numel() for p in model.parameters())
        x = torch.rand(1, 1, 256, 256, device=device) * 2 - 1
        for _ in range(args.warmup):
            model.translate(x)
        times = []
        for _ in range(args.repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            model.translate(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append((time.perf_counter() - start) * 1000)
        config = model.config_dict()
        row = {"model": label, "name": model_name, "preset": preset,
               "generator": {k: config.get(k) for k in ("n_ublocks", "generator_channels", "generator_depth")
                             if k in config},
               "generator_parameters": generator, "parameters_with_discriminator": total,
               "ms_per_slice_median": round(statistics.median(times), 1),
               "ms_per_slice_runs": [round(t, 1) for t in times],
               "ratio_to_paper_115ms": round(statistics.median(times) / PAPER_MS_PER_SLICE, 2)}
        report["rows"].append(row)
        uq.write_json(out, report)
        say(f"{label}: {row['ms_per_slice_median']} ms per 256 px slice, {generator} generator parameters")
        del model
    report["machine"]["load_average_at_end"] = uq.load_average()
    report["complete"] = True
    uq.write_json(out, report)
    say(f"wrote {out}")


# --------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=("t1t2", "motion"), default="t1t2")
    parser.add_argument("--data", choices=("phantoms", "brats"), default="phantoms")
    parser.add_argument("--steps", type=int, default=500, help="training steps, the same for every model")
    parser.add_argument("--batch-size", type=int, default=8, help="training batch size, the same for every model")
    parser.add_argument("--seed", type=int, default=0, help="training seed (and the random weights of --speed)")
    parser.add_argument("--threads", type=int, default=1, help="OMP/MKL threads of every torch process")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK,
                        help=f"cache for data, prepared slices, runs and outputs (default {DEFAULT_WORK})")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON path (default benchmarks/results/paired-quality-<task>-<data>-<device>.json, "
                             "or medgan-speed-<device>.json with --speed)")
    parser.add_argument("--speed", action="store_true", help="time inference per 256 px slice instead")
    parser.add_argument("--repeats", type=int, default=5, help="--speed: timed runs per model")
    parser.add_argument("--warmup", type=int, default=2, help="--speed: untimed runs per model")
    args = parser.parse_args()
    for key in ("steps", "batch_size", "threads", "repeats"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be at least 1")
    args.work = args.work.expanduser().resolve()
    return args


def main() -> None:
    args = parse_args()
    if args.speed:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
        speed(args)
        return
    if args.data == "brats" and not (uq.REAL_DATA / "brats").is_dir():
        print(f"paired_quality: {uq.REAL_DATA / 'brats'} is absent; skipping the brats benchmark (nothing written)",
              file=sys.stderr)
        return
    if args.data == "brats" and uq.inside(args.work, REPO):
        fail(f"--work {args.work} is inside the repository; prepared real scans must stay outside it")

    import torch

    from synthmed.runtime.versions import versions

    torch.set_num_threads(args.threads)
    out = args.out or RESULTS / f"paired-quality-{args.task}-{args.data}-{args.device}.json"
    started = time.perf_counter()
    machine = {
        "platform": platform.platform(), "processor": platform.processor(), "python": platform.python_version(),
        "cpu_count": os.cpu_count(), "torch": torch.__version__, "device": args.device,
        "threads_requested": args.threads, "subprocess_torch_threads": uq.subprocess_torch_threads(args.threads),
        "load_average_at_start": uq.load_average(),
    }
    args.work.mkdir(parents=True, exist_ok=True)
    prep, inputs = prepare_task(args.task, args.data, args.work, args.threads)
    plan = json.loads((prep / "plan.json").read_text())
    if args.data == "brats":
        counts = {name: len(plan["split"][name]) for name in ("train", "val", "test")}
        if counts != {"train": 2, "val": 0, "test": 1}:
            fail(f"{prep}: expected 2 train / 0 val / 1 test subjects, the plan has {counts}")
    cases = uq.test_cases(plan)
    report: dict[str, Any] = {
        "benchmark": "paired-quality",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "complete": False,
        "task": args.task,
        "machine": machine,
        "versions": versions(),
        "source_state_at_start": uq.source_state(),
        "data": {
            **inputs,
            "prepared": str(prep),
            "source": plan["source"],
            "target": plan["target"],
            "slice_size": int(plan["size"]),
            "axis": plan["axis"],
            "interpolation": plan.get("interpolation", "bilinear (plan without an interpolation entry)"),
            "subjects": {name: list(plan["split"][name]) for name in ("train", "val", "test")},
            "n_subjects": {name: len(plan["split"][name]) for name in ("train", "val", "test")},
            "n_slices": plan["n_slices"],
        },
        "budget": {
            "models": [{"label": label, "model": model, "preset": preset} for label, model, preset in MODELS],
            "steps": args.steps, "batch_size": args.batch_size, "images_seen": args.steps * args.batch_size,
            "seed": args.seed, "threads": args.threads,
            "note": "the same steps, batch size and seed for every model; each model keeps its preset's "
                    "architecture and optimiser settings (--batch-size and --steps override the preset's)",
            "vgg19_weights": None,
            "style_content_losses": False,
            "style_content_note": "no VGG-19 weights on this machine: every medgan run trains with its adversarial "
                                  "and perceptual losses only (run.json: vgg19_weights \"\")",
            "training": {},
        },
        "evaluation": {
            "checkpoint": "last",
            "translate": "synthmed translate RUN SOURCE OUT --reference REF --checkpoint last (REF: the subject's "
                         "true target scan; only its two robust percentiles set the output's scale), the same for "
                         "every model",
            "metrics": "synthmed evaluate OUT REF: whole volume in the reference's units, inside the reference's "
                       "foreground (evaluate's default mask); PSNR data range = reference range in the mask",
            "identity": "synthmed evaluate SOURCE REF --match-intensity (the source scan mapped linearly onto the "
                        "reference's scale by the same two percentiles)"
                        + ("; identity_raw: the degraded scan as it is (already in the clean scan's units)"
                           if args.task == "motion" else ""),
        },
        "identity": [],
        "identity_means": {},
        "rows": [],
        "means": {},
        "summary": {},
    }
    if args.task == "motion":
        report["identity_raw"], report["identity_raw_means"] = [], {}
    uq.write_json(out, report)
    say(f"{args.task} {args.data}: {plan['source']} -> {plan['target']}, test subjects "
        f"{', '.join(c['subject'] for c in cases)}; writing {out}")

    outputs = args.work / "outputs" / f"{args.task}-{args.data}"
    identities = [("identity", True)] + ([("identity_raw", False)] if args.task == "motion" else [])
    for key, match in identities:
        for case in cases:
            metrics = evaluate(case["source"], case["target"], outputs / key / f"{case['subject']}.json", match, args)
            report[key].append({"model": key, "subject": case["subject"], **{k: round(v, 4) for k, v in metrics.items()}})
            report[f"{key}_means"] = uq.mean_of(report[key])
            uq.write_json(out, report)
            say(f"{key} {case['subject']}: PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.4f}")

    for label, model, preset in MODELS:
        training = train_model(label, model, preset, prep, args)
        report["budget"]["training"][label] = training
        uq.write_json(out, report)
        run = Path(training["run"])
        for case in cases:
            folder = outputs / run.name
            prediction = folder / f"{case['subject']}.nii.gz"
            seconds = translate(run, case, prediction, args)
            metrics = evaluate(prediction, case["target"], folder / f"{case['subject']}.json", False, args)
            report["rows"].append({"model": label, "subject": case["subject"],
                                   **{k: round(v, 4) for k, v in metrics.items()},
                                   "translate_wall_seconds": round(seconds, 2)})
            report["means"] = uq.means(report["rows"], ("model",))
            report["summary"] = summarise(report["rows"], report["identity"], report.get("identity_raw"))
            uq.write_json(out, report)
            say(f"{label} {case['subject']}: PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.4f}")

    machine["load_average_at_end"] = uq.load_average()
    report["source_state_at_end"] = uq.source_state()
    report["complete"] = True
    report["benchmark_seconds"] = round(time.perf_counter() - started, 1)
    uq.write_json(out, report)
    summary = report["summary"]
    say(f"PSNR ranking: {' > '.join(summary['psnr_ranking'])}; paper ordering holds (PSNR): "
        f"{summary['paper_ordering_holds_psnr']}")
    say(f"wrote {out}")


if __name__ == "__main__":
    main()
