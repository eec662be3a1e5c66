"""Diffusion inference speed: seconds per slice and per volume for syndiff, ddpm, ddpm-gen and pig.

Each method is built at ``--preset`` (default ``paper``: 256 px) with random weights (seed 0; the
convolutions a network zero-initialises get small random weights too, so every branch computes something),
then one call of its sampler is timed per configuration:

- ``syndiff``: translation, the paper's 4 reverse steps (one NCSN++ call each);
- ``ddpm``: translation, DDIM with ``--ddpm-steps`` network evaluations (default 10);
- ``ddpm-gen``, ``pig``: generation, DDIM with ``--generator-steps`` evaluations (default 50; pig runs two
  networks per evaluation).

Configurations (``--configs``): ``plain`` (the layers' plain forwards, NCHW, float32: how translation ran before
the inference fast paths), ``fp32`` (fast paths, NCHW), ``fp32-cl`` (fast paths, channels_last),
``bf16-cl`` (the same under bfloat16 autocast, as ``--amp bf16`` runs) and, with ``--compile``,
``fp32-cl-compiled`` / ``bf16-cl-compiled`` (``torch.compile`` of the networks; compilation time is reported
separately). Each configuration runs at every batch size of ``--batches``; the time is the median of ``--repeats``
calls after ``--warmup`` untimed ones. The configurations take turns call by call (each has its own copy of the
networks), so drift in the machine's speed during the run affects all of them alike. Per configuration the output is compared with ``fp32`` on the same noise: the PSNR
(data range 2, outputs in [-1, 1]) shows that the faster paths differ by round-off only.

``--official-seconds`` (default 10.65) is the official SynDiff code's translation time per 256 px slice measured
on this CPU class (paper configuration, batch 1, 1 thread, torch 2.13, its CUDA-only ops replaced by its own CPU
fallbacks); the script reports syndiff's speed-up against it. It is only meaningful with ``--threads 1`` on a
CPU of that class.

The JSON is rewritten after every measurement (``"complete": false`` until the end). On a GPU, ``--device cuda``
reports slices per second for the same table (see ``benchmarks/README.md``).

    .venv/bin/python benchmarks/diffusion_inference.py [--methods syndiff,ddpm,ddpm-gen,pig] [--preset paper]
        [--configs plain,fp32,fp32-cl,bf16-cl] [--compile] [--batches 1,4] [--repeats 2] [--warmup 1] [--threads 1]
        [--device cpu] [--slices-per-volume 155] [--out results.json]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import json
import math
import platform
import statistics
import time
import warnings
from pathlib import Path

METHODS = ("syndiff", "ddpm", "ddpm-gen", "pig")
CONFIGS = ("plain", "fp32", "fp32-cl", "bf16-cl")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--size", type=int, default=None, help="image size (default: the preset's)")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd networks")
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per configuration and batch")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls first (0: the first call is timed)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--ddpm-steps", type=int, default=10)
    parser.add_argument("--generator-steps", type=int, default=50)
    parser.add_argument("--slices-per-volume", type=int, default=155, help="240x240x155: a BraTS volume")
    parser.add_argument("--official-seconds", type=float, default=10.65)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    configs = [c for c in args.configs.split(",") if c]
    unknown = sorted(set(configs) - set(CONFIGS))
    if unknown:
        parser.error(f"unknown configs {unknown}; choose from {CONFIGS}")
    if args.compile:
        configs += ["fp32-cl-compiled", "bf16-cl-compiled"]
    batches = [int(b) for b in args.batches.split(",")]
    methods = [m for m in args.methods.split(",") if m]

    report = {
        "benchmark": "diffusion_inference",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "benchmarks/diffusion_inference.py " + " ".join(_given_arguments(args)),
        "device": str(device),
        "device_name": _device_name(torch, device),
        "threads": args.threads,
        "torch": torch.__version__,
        "platform": platform.platform(),
        "preset": args.preset,
        "weights": "random (seed 0), zero-initialised convolutions re-drawn N(0, 0.02)",
        "slices_per_volume": args.slices_per_volume,
        "official_syndiff_seconds_per_slice": args.official_seconds,
        "methods": {},
        "complete": False,
    }

    def save() -> None:
        text = json.dumps(report, indent=2)
        if args.out:
            Path(args.out).write_text(text + "\n")

    for name in methods:
        entry = report["methods"][name] = _measure_method(
            torch, name, args, device, configs, batches, save_partial=save, report=report
        )
        print(json.dumps({name: entry["summary"]}), flush=True)
        save()
    report["complete"] = True
    save()
    print(json.dumps(report, indent=2))


def _measure_method(torch, name, args, device, configs, batches, save_partial, report) -> dict:
    from synthmed.nn import fused

    model = _build(torch, name, args, device)
    size = model.config.image_size
    task = model.task
    entry: dict = {
        "task": task,
        "image_size": size,
        "sampler": "4 reverse steps (paper)"
        if name == "syndiff"
        else f"ddim, {args.ddpm_steps if name == 'ddpm' else args.generator_steps} network evaluations",
        # The PSNR of every other configuration is taken against this float32 one, on the same noise.
        "psnr_reference": next((c for c in configs if c in ("fp32", "plain")), None),
        "configs": {},
    }
    report["methods"][name] = entry

    # One copy of the sampler's networks per configuration (layout, compilation), so that the configurations can
    # take turns: every round times each once, and a machine that slows down or speeds up during the run (shared
    # hosts do) shifts all of them alike instead of whichever ran at that moment.
    originals = _networks(model)
    variants = {}
    for config in configs:
        layout = torch.channels_last if "-cl" in config else torch.contiguous_format
        copies = {}
        for attribute, network in originals.items():
            network = copy.deepcopy(network).to(memory_format=layout)
            copies[attribute] = torch.compile(network) if config.endswith("compiled") else network
        variants[config] = copies

    def call(config: str, batch: int):
        for attribute, network in variants[config].items():
            setattr(model, attribute, network)
        model.amp_dtype = torch.bfloat16 if config.startswith("bf16") else None
        generator = torch.Generator(device=device).manual_seed(1)
        context = fused.plain() if config == "plain" else contextlib.nullcontext()
        with context:
            if task == "translate":
                source = torch.rand(batch, 1, size, size, generator=generator, device=device) * 2 - 1
                if "-cl" in config:
                    source = source.contiguous(memory_format=torch.channels_last)
                options = {} if name == "syndiff" else {"sampler": "ddim", "steps": args.ddpm_steps}
                return model.translate(source, generator=generator, **options)
            return model.sample(batch, sampler="ddim", steps=args.generator_steps, generator=generator)["image"]

    for batch in batches:
        times: dict[str, list[float]] = {config: [] for config in configs}
        syncs: dict[str, int] = dict.fromkeys(configs, 0)
        outputs: dict[str, torch.Tensor] = {}
        # The warm-up rounds (and, compiled, the compilation) are timed but left out of the median.
        for _ in range(args.warmup + args.repeats):
            for config in configs:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    start = time.perf_counter()
                    with _counting_syncs(torch, device):
                        output = call(config, batch).float()
                    _sync(torch, device)
                    times[config].append(time.perf_counter() - start)
                syncs[config] += sum("synchroniz" in str(w.message) for w in caught)
                outputs[config] = output.cpu()
        for config in configs:
            seconds = statistics.median(times[config][args.warmup :]) / batch
            result = {
                "seconds_per_slice": round(seconds, 4),
                "slices_per_second": round(1 / seconds, 3),
                "seconds_per_volume": round(seconds * args.slices_per_volume, 1),
                "first_call_seconds": round(times[config][0], 2),
                "calls_seconds": [round(t, 3) for t in times[config][args.warmup :]],
            }
            if device.type == "cuda":
                result["host_syncs_per_call"] = syncs[config] / len(times[config])
            reference = entry["psnr_reference"]
            if reference is not None and config != reference:
                result["psnr_vs_fp32_db"] = _psnr(torch, outputs[config], outputs[reference])
                result["max_abs_diff_vs_fp32"] = round((outputs[config] - outputs[reference]).abs().max().item(), 5)
            entry["configs"].setdefault(config, {})[f"batch_{batch}"] = result
        save_partial()
    for attribute, network in originals.items():
        setattr(model, attribute, network)
    entry["summary"] = _summary(name, entry, args)
    return entry


def _summary(name: str, entry: dict, args) -> dict:
    best: dict = {}
    for config, row in entry["configs"].items():
        fastest = min(row.items(), key=lambda item: item[1]["seconds_per_slice"])
        best[config] = {"batch": int(fastest[0].split("_")[1]), **fastest[1]}
    summary = {
        config: {
            "seconds_per_slice": values["seconds_per_slice"],
            "seconds_per_volume": values["seconds_per_volume"],
            "best_batch": values["batch"],
            **({"psnr_vs_fp32_db": values["psnr_vs_fp32_db"]} if "psnr_vs_fp32_db" in values else {}),
        }
        for config, values in best.items()
    }
    if name == "syndiff" and args.official_seconds and args.threads == 1 and args.device == "cpu":
        for config, values in summary.items():
            values["speedup_vs_official"] = round(args.official_seconds / values["seconds_per_slice"], 2)
    return summary


def _build(torch, name: str, args, device):
    from synthmed.models.registry import build_model

    torch.manual_seed(0)
    overrides = {"image_size": args.size} if args.size else {}
    model = build_model(name, args.preset, overrides)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d) and not module.weight.any():
                module.weight.normal_(0, 0.02)
                if module.bias is not None:
                    module.bias.normal_(0, 0.02)
    return model.to(device).eval()


def _networks(model) -> dict:
    """The networks a method's sampler calls, by attribute name."""
    names = {
        "syndiff": ["diffusive_b"],
        "ddpm": ["network"],
        "ddpm-gen": ["network"],
        "pig": ["network_x", "network_y"],
    }[model.name]
    return {attribute: getattr(model, attribute) for attribute in names}


def _psnr(torch, output, reference) -> float:
    mse = (output - reference).pow(2).mean().item()
    return round(10 * math.log10(4 / mse), 2) if mse > 0 else None  # None: identical outputs


@contextlib.contextmanager
def _counting_syncs(torch, device):
    """On a GPU, make every implicit host-device synchronisation warn (counted from the caught warnings): a
    sampler that waits for the device (an ``.item()``, the truth value of a tensor) stalls the GPU at every step."""
    if device.type != "cuda":
        yield
        return
    torch.cuda.set_sync_debug_mode("warn")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def _sync(torch, device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_name(torch, device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def _given_arguments(args) -> list[str]:
    defaults = {"methods": ",".join(METHODS), "preset": "paper", "configs": ",".join(CONFIGS)}
    parts = []
    for key, value in vars(args).items():
        if value in (None, False) or defaults.get(key) == value:
            continue
        flag = "--" + key.replace("_", "-")
        parts.append(flag if value is True else f"{flag} {value}")
    return parts


if __name__ == "__main__":
    main()
