"""SynDiff speed and memory at a preset, to compare with the reference implementation's figures.

The issue quotes the reference (2 CPU threads, torch 2.13, random weights): one training
iteration (both discriminator steps, generator step, EMA) 91.7 s median at 256 px (7.2 s at
64 px), 94.6 s amortised with R1 every 10 iterations, peak memory 15.2 GB; translation
(4 reverse steps) 6.49 s per 256 px slice at batch 1 (0.41 s at 64 px).

This script times the same things for ``syndiff`` on random inputs: ``--iterations``
training steps (step 0 carries the R1 penalty, as every 10th step does; the others do not),
the EMA update the engine makes after each, translation of one batch at batch 1 and at
``--translate-batch``, and the process's peak RSS. Prints one JSON document.

    .venv/bin/python benchmarks/syndiff_speed.py [--preset paper] [--size 256] [--iterations 3]
        [--translate-batch 8] [--threads 2] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--size", type=int, default=None, help="image size (default: the preset's)")
    parser.add_argument("--iterations", type=int, default=3, help="training iterations timed (the first has R1)")
    parser.add_argument("--translate-batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    import torch

    from synthmed.engine.ema import EMA
    from synthmed.models.registry import build_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    overrides = {"image_size": args.size} if args.size else {}
    model = build_model("syndiff", args.preset, overrides)
    size, batch = model.config.image_size, model.config.batch_size
    ema = EMA(model, model.ema_modules, model.config.ema_decay)
    data = {
        "source": torch.rand(batch, 1, size, size) * 2 - 1,
        "target": torch.rand(batch, 1, size, size) * 2 - 1,
        "mask": torch.ones(batch, 1, size, size),
    }
    model.train()
    times = []
    for step in range(args.iterations):
        start = time.perf_counter()
        model.training_step(data, step)
        ema.update(step)
        times.append(time.perf_counter() - start)
    with_r1, without_r1 = times[0], times[1:] or times
    lazy = model.config.lazy_reg
    model.eval()
    translate = {}
    for count in (1, args.translate_batch):
        source = torch.rand(count, 1, size, size) * 2 - 1
        generator = torch.Generator().manual_seed(0)
        start = time.perf_counter()
        model.translate(source, generator=generator)
        translate[f"batch_{count}_seconds_per_slice"] = round((time.perf_counter() - start) / count, 3)
    parameters = {
        name: round(sum(p.numel() for p in getattr(model, name).parameters()) / 1e6, 3)
        for name, _ in model.named_children()
    }
    report = {
        "benchmark": "syndiff-speed",
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads()},
        "preset": args.preset,
        "image_size": size,
        "batch_size": batch,
        "train_seconds_with_r1": round(with_r1, 2),
        "train_seconds_median_without_r1": round(statistics.median(without_r1), 2),
        "train_seconds_amortised": round((with_r1 + (lazy - 1) * statistics.median(without_r1)) / lazy, 2),
        "iterations_timed": args.iterations,
        **translate,
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2),
        "parameters_millions": parameters,
        "reference": {
            "train_seconds_median": 91.7,
            "train_seconds_amortised": 94.6,
            "peak_memory_gb": 15.2,
            "translate_seconds_per_slice_batch_1": 6.49,
            "at": "256 px, 2 threads, torch 2.13 CPU",
        },
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as stream:
            stream.write(text + "\n")


if __name__ == "__main__":
    main()
