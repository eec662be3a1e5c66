"""MedGAN inference speed: ms per 256 px slice and parameter counts of the paper-size CasNet, its single U-block
ablation and pix2pix, next to the paper's figure (115 ms per 256 x 256 slice on a Titan X GPU).

Each model: random initial weights (``--seed``), eval and inference mode, one 1x1x256x256 random slice,
``--warmup`` untimed runs, then the median of ``--repeats`` timed runs (``time.perf_counter``; CUDA synchronised
around each), torch threads = ``--threads``. The JSON is rewritten atomically after every model.

    cd benchmarks && ../.venv/bin/python medgan_speed.py [--threads 1] [--repeats 5] [--device cpu] [--out F]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from synthmed.benchmarking.results import write_json
from synthmed.benchmarking.runner import load_average

RESULTS = Path(__file__).resolve().parent / "results"
# (label, model, preset)
SPEED_MODELS: tuple[tuple[str, str, str], ...] = (
    ("medgan-paper", "medgan", "paper"),
    ("medgan-single-ublock", "medgan", "single-ublock"),
    ("pix2pix-paper", "pix2pix", "paper"),
)
PAPER_MS_PER_SLICE = 115  # MedGAN paper, 256 x 256 slice, Titan X GPU


def say(message: str) -> None:
    print(f"[medgan-speed {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def speed(args: argparse.Namespace) -> None:
    import torch

    from synthmed.models.registry import build_model
    from synthmed.runtime.versions import versions

    torch.set_num_threads(args.threads)
    out = Path(args.out) if args.out else RESULTS / f"medgan-speed-{args.device}.json"
    report: dict[str, Any] = {
        "benchmark": "medgan-speed",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "complete": False,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "device": args.device,
            "torch_threads": torch.get_num_threads(),
            "load_average_at_start": load_average(),
        },
        "versions": versions(),
        "method": f"model.translate(x) on one 1x1x256x256 random slice (random initial weights, seed {args.seed}), "
        f"eval mode, inference mode; {args.warmup} untimed warm-up runs, then the median of "
        f"{args.repeats} timed runs (time.perf_counter)",
        "paper_reference": {
            "ms_per_slice": PAPER_MS_PER_SLICE,
            "hardware": "NVIDIA Titan X GPU",
            "model": "MedGAN, CasNet of 6 U-blocks, 256 x 256",
        },
        "rows": [],
    }
    write_json(out, report)
    device = torch.device(args.device)
    for label, model_name, preset in SPEED_MODELS:
        torch.manual_seed(args.seed)
        model = build_model(model_name, preset, {"image_size": 256}).to(device).eval()
        generator = sum(p.numel() for p in model.generator.parameters())
        total = sum(p.numel() for p in model.parameters())
        x = torch.rand(1, 1, 256, 256, device=device) * 2 - 1
        with torch.inference_mode():
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
        row = {
            "model": label,
            "name": model_name,
            "preset": preset,
            "generator": {
                k: config.get(k) for k in ("n_ublocks", "generator_channels", "generator_depth") if k in config
            },
            "generator_parameters": generator,
            "parameters_with_discriminator": total,
            "ms_per_slice_median": round(statistics.median(times), 1),
            "ms_per_slice_runs": [round(t, 1) for t in times],
            "ratio_to_paper_115ms": round(statistics.median(times) / PAPER_MS_PER_SLICE, 2),
        }
        report["rows"].append(row)
        write_json(out, report)
        say(f"{label}: {row['ms_per_slice_median']} ms per 256 px slice, {generator} generator parameters")
        del model
    report["machine"]["load_average_at_end"] = load_average()
    report["complete"] = True
    write_json(out, report)
    say(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per model")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs per model")
    parser.add_argument("--out", help="JSON path (default benchmarks/results/medgan-speed-<device>.json)")
    args = parser.parse_args()
    if args.threads < 1 or args.repeats < 1 or args.warmup < 0:
        parser.error("--threads and --repeats must be at least 1, --warmup at least 0")
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    speed(args)


if __name__ == "__main__":
    main()
