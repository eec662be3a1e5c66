"""What reduced precision costs in quality and gives in speed at translation time (``translate --amp``).

Trains each of ``--models`` (``small`` preset) on phantoms for ``--steps`` steps in full precision, then translates
the held-out subjects with ``--amp off`` and with each of ``--precisions``, and records per precision: PSNR / SSIM
against the reference (the protocol of ``synthmed evaluate``), PSNR of the reduced-precision output against the
full-precision one in the head (how far round-off moves it), and the seconds per volume; and the identity
baseline (the source scan scored as the prediction) for scale. Writes
``results/amp-quality-<device>.json``.

    .venv/bin/python benchmarks/amp_quality.py --device cpu --models pix2pix,ddpm --steps 400 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from synthmed.benchmarking.results import write_json
from synthmed.benchmarking.runner import load_average, source_state

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--models", default="pix2pix,ddpm")
    parser.add_argument("--precisions", default="bf16", help="comma-separated, compared with off")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--subjects", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", type=Path, default=Path("/tmp/synthmed-amp-quality"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    from synthmed.data.foreground import foreground_mask
    from synthmed.data.io import read_volume
    from synthmed.data.phantom import write_phantoms
    from synthmed.data.prepare import prepare
    from synthmed.metrics.image import psnr
    from synthmed.runtime.devices import pick_device
    from synthmed.workflows.evaluate import evaluate_pairs
    from synthmed.workflows.train import train
    from synthmed.workflows.translate import translate

    device = pick_device(args.device)
    out = args.out or RESULTS / f"amp-quality-{device.type}.json"
    shutil.rmtree(args.work, ignore_errors=True)
    phantoms = args.work / "phantoms"
    write_phantoms(phantoms, subjects=args.subjects, size=args.size, seed=3, overwrite=True)
    prep = prepare(
        phantoms,
        source="T1",
        target="T2",
        out=args.work / "prep",
        size=args.size,
        split="0.625,0.125,0.25",
        seed=0,
        progress=False,
    )
    test = json.loads((prep / "plan.json").read_text())["split"]["test"]
    report: dict[str, Any] = {
        "benchmark": "amp-quality",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "device": str(device),
        "torch": torch.__version__,
        "threads": args.threads,
        "load_at_start": load_average(),
        "source": source_state(),
        "settings": {k: str(v) for k, v in vars(args).items()},
        "test_subjects": test,
        "models": {},
    }
    identity = evaluate_pairs([(s, phantoms / s / "T1.nii.gz", phantoms / s / "T2.nii.gz") for s in test])
    report["identity"] = {"psnr": round(identity["mean"]["psnr"], 3), "ssim": round(identity["mean"]["ssim"], 4)}
    for model in args.models.split(","):
        run = args.work / "runs" / model
        started = time.perf_counter()
        train(
            prep,
            model=model,
            out=run,
            steps=args.steps,
            device=str(device),
            progress=False,
            amp="off",
            val_every=args.steps,
            checkpoint_every=args.steps,
            sample_every=args.steps,
        )
        entry: dict[str, Any] = {"train_seconds": round(time.perf_counter() - started, 1), "precisions": {}}
        outputs: dict[str, dict[str, Path]] = {}
        for amp in ["off", *args.precisions.split(",")]:
            outputs[amp] = {}
            seconds = []
            for subject in test:
                target = args.work / "translated" / model / amp / f"{subject}.nii.gz"
                target.parent.mkdir(parents=True, exist_ok=True)
                started = time.perf_counter()
                translate(
                    run,
                    phantoms / subject / "T1.nii.gz",
                    target,
                    device=str(device),
                    amp=amp,
                    progress=False,
                    overwrite=True,
                )
                seconds.append(time.perf_counter() - started)
                outputs[amp][subject] = target
            scores = evaluate_pairs([(s, outputs[amp][s], phantoms / s / "T2.nii.gz") for s in test])
            record = {
                "psnr": round(scores["mean"]["psnr"], 3),
                "ssim": round(scores["mean"]["ssim"], 4),
                "seconds_per_volume": round(float(np.mean(seconds)), 2),
            }
            if amp != "off":
                against_full = []
                for subject in test:
                    full, low = read_volume(outputs["off"][subject]).data, read_volume(outputs[amp][subject]).data
                    head = foreground_mask(read_volume(phantoms / subject / "T2.nii.gz").data)
                    against_full.append(psnr(low, full, head))  # in the head, as the protocol scores
                record["psnr_against_full_precision"] = round(float(np.mean(against_full)), 2)
                record["speedup"] = round(
                    entry["precisions"]["off"]["seconds_per_volume"] / record["seconds_per_volume"], 2
                )
            entry["precisions"][amp] = record
            print(f"{model} {amp}: {record}", flush=True)
        report["models"][model] = entry
        write_json(out, report)
    report["load_at_end"] = load_average()
    write_json(out, report)
    print(f"results: {out}")


if __name__ == "__main__":
    main()
