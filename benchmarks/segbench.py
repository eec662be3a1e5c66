"""Downstream proof for paired generators: lesion segmentation trained on real pairs, with and without
generated image + mask pairs, and statistics of the generated masks.

Given a prepared folder with a lesion label (``synthmed prepare DATA --source FLAIR --label lesion --out PREP``)
and one or more folders written by ``synthmed generate`` with masks (``pig``), this runs
:func:`synthmed.benchmarking.downstream.segbench`:

1. arm ``real``: a 2D MONAI U-Net trained on all train-split slices of PREP (image = the prepared source, mask =
   label > 0); arm ``NAME+N`` for each generated folder ``NAME`` and each ``N > 0`` of ``--extra-counts``: the same
   real slices plus the folder's first N pairs. Same ``--steps`` and ``--batch-size`` for every arm; Dice + BCE,
   Adam, random flips, ``--lesion-fraction`` of each batch from slices with lesion; every ``--seeds`` value trains
   each arm once (the seed fixes initial weights, batches and flips, so arms are paired per seed);
2. Dice and IoU per test-split subject over the pooled voxels of its slices with reference lesion (or all its
   slices with ``--all-slices``), mean over subjects per seed, mean +/- sd over seeds per arm, and the per-seed
   difference to ``real``;
3. per generated folder: area and connected-component statistics of its masks against the real train-split
   masks with two-sample Kolmogorov-Smirnov statistics, and the Dice of each seed's real-only segmenter on the
   generated images against the generated masks (image-mask consistency).

An image-only generated folder (``ddpm-gen``: no masks) is refused: its images cannot supervise a segmenter.
Generated slices must have the prepared slice size.

    .venv/bin/python benchmarks/segbench.py --prep PREP --generated pig=GEN_DIR [NAME=DIR ...] \
        [--extra-counts 0,64,128] [--seeds 0,1,2] [--steps 300] [--batch-size 8] [--lr 1e-3] \
        [--lesion-fraction 0.5] [--all-slices] [--channels 16,32,64] [--device cpu] [--threads 1] \
        [--name NAME] [--out F]

Writes ``benchmarks/results/segbench-<name>-<device>.json`` (``<name>`` defaults to the generated set names joined
by ``-``, or ``real``), atomically; ``"complete": false`` until the end. The JSON holds only numbers, settings and
paths (no image data), so it may stay in the repository even for real scans.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from synthmed.benchmarking.results import write_json
from synthmed.benchmarking.runner import load_average

RESULTS = Path(__file__).resolve().parent / "results"


def say(message: str) -> None:
    print(f"[segbench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def fail(message: str) -> None:
    print(f"segbench: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give whole numbers separated by commas") from None
    if not values:
        raise argparse.ArgumentTypeError("give at least one number")
    return values


def named_folder(text: str) -> tuple[str, Path]:
    name, sep, folder = text.partition("=")
    if not sep or not name or not folder:
        raise argparse.ArgumentTypeError(f"{text!r}: use NAME=DIR (e.g. pig=runs/pig/generated)")
    return name, Path(folder)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prep", type=Path, required=True, help="prepared folder with a lesion label")
    parser.add_argument(
        "--generated",
        type=named_folder,
        nargs="*",
        action="extend",
        default=[],
        metavar="NAME=DIR",
        help="folders written by synthmed generate (pig: with masks; image-only folders get FID only)",
    )
    parser.add_argument(
        "--extra-counts",
        type=int_list,
        default=[0, 64, 128],
        help="numbers of generated pairs added to the real ones (0 = real only; default 0,64,128)",
    )
    parser.add_argument("--seeds", type=int_list, default=[0, 1, 2], help="training seeds (default 0,1,2)")
    parser.add_argument("--steps", type=int, default=300, help="optimiser steps per arm and seed (default 300)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument(
        "--lesion-fraction",
        type=float,
        default=None,
        help="share of each batch drawn from slices with lesion (default: segbench's, 0.5)",
    )
    parser.add_argument(
        "--all-slices",
        action="store_true",
        help="headline Dice over all test slices of a subject (default: slices with lesion only)",
    )
    parser.add_argument("--channels", type=int_list, default=[16, 32, 64], help="U-Net channels per level")
    parser.add_argument(
        "--no-consistency", action="store_true", help="skip applying the real-only segmenters to the generated images"
    )
    parser.add_argument(
        "--inception-weights",
        type=Path,
        default=None,
        help="local Inception-v3 weights for FID of each generated folder (else FID unavailable)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--name", help="result name (default: the generated set names, or 'real')")
    parser.add_argument(
        "--out", type=Path, help="results JSON (default benchmarks/results/segbench-<name>-<device>.json)"
    )
    args = parser.parse_args(argv)
    names = [name for name, _ in args.generated]
    if len(set(names)) != len(names):
        parser.error(f"--generated names must differ, got {names}")
    if args.threads < 1:
        parser.error("--threads must be positive")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    import torch

    from synthmed.benchmarking.downstream import LESION_FRACTION, segbench
    from synthmed.errors import SynthmedError
    from synthmed.runtime.versions import versions

    torch.set_num_threads(args.threads)
    generated = dict(args.generated)
    name = args.name or ("-".join(generated) if generated else "real")
    out = args.out or RESULTS / f"segbench-{name}-{args.device.replace(':', '')}.json"
    lesion_fraction = LESION_FRACTION if args.lesion_fraction is None else args.lesion_fraction
    started = time.perf_counter()
    report: dict[str, Any] = {
        "benchmark": "segbench",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "complete": False,
        "command": [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])],
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "device": args.device,
            "threads_requested": args.threads,
            "torch_threads": torch.get_num_threads(),
            "load_average_at_start": load_average(),
        },
        "versions": versions(),
        "inputs": {"prep": str(args.prep), "generated": {k: str(v) for k, v in generated.items()}},
    }
    write_json(out, report)
    say(
        f"prep {args.prep}, generated {generated or 'none'}, counts {args.extra_counts}, seeds {args.seeds}, "
        f"{args.steps} steps; writing {out}"
    )
    try:
        result = segbench(
            args.prep,
            generated,
            extra_counts=args.extra_counts,
            seeds=args.seeds,
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            device=args.device,
            lesion_slices_only=not args.all_slices,
            channels=args.channels,
            lesion_fraction=lesion_fraction,
            consistency=not args.no_consistency,
            inception_weights=args.inception_weights,
            progress=True,
        )
    except SynthmedError as error:
        report["error"] = str(error)
        write_json(out, report)
        fail(str(error))
    report.update(result)
    report["machine"]["load_average_at_end"] = load_average()
    report["benchmark_seconds"] = round(time.perf_counter() - started, 1)
    report["complete"] = True
    write_json(out, report)
    for arm, entry in result["summary"].items():
        line = f"{arm}: Dice {_pm(entry['dice_mean'], entry['dice_sd'])}, IoU {_pm(entry['iou_mean'], entry['iou_sd'])}"
        if entry["dice_minus_real"]:
            line += f", Dice - real {_pm(entry['dice_minus_real']['mean'], entry['dice_minus_real']['sd'])}"
        say(line)
    for gen_name, entry in result["generated"].items():
        fid = entry["fid"]
        say(f"{gen_name} FID: {_fmt(fid['fid']) if fid['fid'] is not None else fid['unavailable']}")
        if entry["mask_statistics"] is None:
            say(f"{gen_name}: {entry['segmentation']}")
            continue
        ks = entry["mask_statistics"]["ks"]
        say(
            f"{gen_name} masks vs real: KS area {_fmt(ks['area']['statistic'])}, components "
            f"{_fmt(ks['components']['statistic'])}; empty fraction "
            f"{_fmt(entry['mask_statistics']['generated']['empty_fraction'])} (real "
            f"{_fmt(entry['mask_statistics']['real']['empty_fraction'])})"
        )
    say(f"wrote {out}")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _pm(mean: float | None, sd: float | None) -> str:
    return _fmt(mean) + ("" if sd is None else f" +/- {sd:.3f}")


if __name__ == "__main__":
    main()
