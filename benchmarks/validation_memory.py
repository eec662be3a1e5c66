"""Does memory grow with validation? Resident memory after each of several validation rounds during training.

The reference SynDiff code kept growing after validation (no eval mode, graphs kept). This script trains a
model on synthetic phantoms with the engine's ``Trainer``, validating every ``--val-every`` steps, and records
the process's current resident set size (RSS, from ``/proc/self/statm``) right after each validation round,
plus the peak RSS. The allocator makes the RSS wobble by tens of MB from round to round, so growth is judged by
the least-squares slope over rounds 2..N (the first round still allocates caches and pools): memory is flat when
``slope x (N - 2)``, the growth that trend predicts over the run, is within ``--tolerance-mb``.

    .venv/bin/python benchmarks/validation_memory.py [--model syndiff] [--preset small] [--rounds 5]
        [--val-every 5] [--threads 1] [--out benchmarks/results/validation-memory-syndiff-cpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path


def current_rss_mb() -> float:
    with open("/proc/self/statm") as stream:
        resident_pages = int(stream.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 1024**2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="syndiff")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--rounds", type=int, default=5, help="validation rounds")
    parser.add_argument("--val-every", type=int, default=5, help="training steps between validation rounds")
    parser.add_argument("--val-slices", type=int, default=32, help="validation slices per round")
    parser.add_argument("--tolerance-mb", type=float, default=50.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    import torch

    from synthmed.data.datasets import PreparedData, SliceDataset
    from synthmed.data.phantom import write_phantoms
    from synthmed.data.prepare import prepare
    from synthmed.engine.trainer import Trainer, TrainSettings
    from synthmed.models.registry import build_model, model_class
    from synthmed.runtime.devices import seed_everything

    torch.set_num_threads(args.threads)
    rss_after_round: list[float] = []

    class RecordingTrainer(Trainer):
        def validate(self) -> dict[str, float]:
            metrics = super().validate()
            rss_after_round.append(round(current_rss_mb(), 1))
            return metrics

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        work_dir = Path(work)
        model_cls = model_class(args.model)
        seed_everything(0)
        net = build_model(args.model, args.preset)
        size = int(net.config.image_size)
        write_phantoms(work_dir / "phantoms", subjects=4, size=size, seed=0, overwrite=True)
        prepare(
            work_dir / "phantoms",
            source="T1",
            target="T2",
            out=work_dir / "prep",
            size=size,
            split="0.5,0.5,0",
            seed=0,
            progress=False,
        )
        data = PreparedData(work_dir / "prep")
        train_set = SliceDataset(data, "train", unpaired=not model_cls.paired, seed=0)
        val_set = SliceDataset(data, "val")
        steps = args.rounds * args.val_every
        settings = TrainSettings(
            steps=steps,
            batch_size=int(net.config.batch_size),
            val_every=args.val_every,
            checkpoint_every=steps,
            sample_every=steps,
            log_every=args.val_every,
            max_val_slices=args.val_slices,
            progress=False,
            device="cpu",
        )
        trainer = RecordingTrainer(
            net, train_set, val_set, work_dir / "run", settings, {"model": args.model, "preset": args.preset}
        )
        rss_before = round(current_rss_mb(), 1)
        trainer.fit()
    later = rss_after_round[1:] if len(rss_after_round) > 2 else rss_after_round
    mean_x, mean_y = (len(later) - 1) / 2, sum(later) / len(later)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in enumerate(later)) / max(
        sum((x - mean_x) ** 2 for x in range(len(later))), 1e-12
    )
    growth = slope * (len(later) - 1)
    report = {
        "benchmark": "validation-memory",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "model": args.model,
        "preset": args.preset,
        "image_size": size,
        "batch_size": settings.batch_size,
        "parameters_millions": round(sum(p.numel() for p in net.parameters()) / 1e6, 3),
        "training_steps": steps,
        "val_every": args.val_every,
        "val_slices": min(args.val_slices, len(val_set)),
        "rss_mb_before_training": rss_before,
        "rss_mb_after_each_validation": rss_after_round,
        "slope_mb_per_round": round(slope, 2),
        "trend_growth_mb": round(growth, 1),
        "range_mb_after_first_round": round(max(later) - min(later), 1),
        "tolerance_mb": args.tolerance_mb,
        "flat": bool(growth <= args.tolerance_mb),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "seconds": round(time.perf_counter() - started, 1),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
