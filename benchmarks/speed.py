"""Speed benchmark: training and translation throughput and peak memory per model and preset.

Prints one JSON document. Each (model, preset) runs in its own subprocess so that the
peak RSS belongs to it alone. Inputs are synthetic (random slices; a phantom-like
240x240x155 volume), so the numbers measure compute, not data loading.

    .venv/bin/python benchmarks/speed.py [--models pix2pix] [--presets small,paper] [--amp off,bf16]
                                         [--train-steps 10] [--device auto] [--out speed.json]

``--amp``: the precisions to time (each its own subprocess; as ``train --amp``: fp16 trains with a gradient
scaler, whose first steps may be skipped while it settles).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time


def measure(
    model_name: str, preset: str, train_steps: int, device: str, volume_shape: tuple[int, int, int], amp: str = "off"
) -> dict:
    import numpy as np
    import torch

    from synthmed.data.io import Volume
    from synthmed.data.normalize import Normalization
    from synthmed.data.plan import Plan
    from synthmed.models.registry import build_model
    from synthmed.runtime.devices import pick_device, set_precision
    from synthmed.workflows.translate import LoadedRun, translate_volume

    torch.manual_seed(0)
    target = pick_device(device)
    model = build_model(model_name, preset).to(target)
    set_precision(model, amp, target)
    size, batch = model.config.image_size, model.config.batch_size
    batch_data = {
        "source": torch.rand(batch, 1, size, size, device=target) * 2 - 1,
        "target": torch.rand(batch, 1, size, size, device=target) * 2 - 1,
        "mask": torch.ones(batch, 1, size, size, device=target),
    }
    model.train()
    model.training_step(batch_data, 0)  # warm-up
    if model.grad_scaler is not None:
        model.grad_scaler.update()
    sync = torch.cuda.synchronize if target.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for step in range(train_steps):
        model.training_step(batch_data, step + 1)
        if model.grad_scaler is not None:
            model.grad_scaler.update()
    sync()
    train_seconds = time.perf_counter() - start

    model.eval()
    plan = Plan.from_record(
        {
            "synthmed_plan": 3,
            "source": "t1",
            "target": "t2",
            "label": None,
            "size": size,
            "axis": "axial",
            "normalization_kind": {"t1": "mr", "t2": "mr"},
            "reference_normalization": {role: {"kind": "mr", "lo": 0.0, "hi": 800.0} for role in ("t1", "t2")},
            "split": {"train": [], "val": [], "test": []},
            "subjects": [],
            "volumes": {},
            "n_slices": {},
        },
        "speed.py",
    )
    loaded = LoadedRun(model=model, plan=plan, info={}, checkpoint=None)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in volume_shape], indexing="ij")
    head = (x**2 / 0.8 + y**2 / 0.9 + z**2 / 0.9) < 0.8
    data = (head * (500 + 300 * np.cos(6 * x) * np.sin(5 * y))).astype(np.float32)
    volume = Volume(data=data, affine=np.eye(4), path="synthetic", format="nifti")
    norm = Normalization("mr", 0.0, 800.0)
    z0 = volume_shape[2] // 2 - 4
    translate_volume(
        loaded, Volume(data=data[:, :, z0 : z0 + 8].copy(), affine=np.eye(4), path="warm", format="nifti"), norm
    )
    sync()
    start = time.perf_counter()
    translate_volume(loaded, volume, norm)
    sync()
    volume_seconds = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = {
        "model": model_name,
        "preset": preset,
        "amp": amp,
        "autocast": str(model.amp_dtype or "off"),
        "device": str(target),
        "image_size": size,
        "batch_size": batch,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "train_steps_per_s": round(train_steps / train_seconds, 3),
        "train_slices_per_s": round(train_steps * batch / train_seconds, 2),
        "translate_volume_shape": list(volume_shape),
        "translate_seconds_per_volume": round(volume_seconds, 3),
        "translate_seconds_per_slice": round(volume_seconds / volume_shape[2], 5),
        "peak_rss_mb": round(peak_kb / 1024, 1),
    }
    if target.type == "cuda":
        result["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=None, help="comma-separated (default: all registered)")
    parser.add_argument("--presets", default="small,paper")
    parser.add_argument("--train-steps", type=int, default=10)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", default="off", help="comma-separated precisions to time: off, bf16, fp16, auto")
    parser.add_argument("--volume", default="240,240,155", help="translated volume shape")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # model:preset:amp, run in this process
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.volume.split(","))
    if args.one:
        name, preset, amp = args.one.split(":")
        print(json.dumps(measure(name, preset, args.train_steps, args.device, shape, amp)))
        return

    from synthmed.models.registry import available_models
    from synthmed.runtime.versions import versions

    names = args.models.split(",") if args.models else list(available_models())
    results = []
    for name in names:
        for preset in args.presets.split(","):
            for amp in args.amp.split(","):
                command = [
                    sys.executable,
                    __file__,
                    "--one",
                    f"{name}:{preset}:{amp}",
                    "--train-steps",
                    str(args.train_steps),
                    "--device",
                    args.device,
                    "--volume",
                    args.volume,
                ]
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode != 0:
                    results.append(
                        {"model": name, "preset": preset, "amp": amp, "error": done.stderr.strip().splitlines()[-1:]}
                    )
                else:
                    results.append(json.loads(done.stdout.strip().splitlines()[-1]))
                print(json.dumps(results[-1]), file=sys.stderr)
    report = {
        "benchmark": "speed",
        "machine": platform.platform(),
        "processor": platform.processor(),
        "versions": versions(),
        "results": results,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as stream:
            stream.write(text + "\n")


if __name__ == "__main__":
    main()
