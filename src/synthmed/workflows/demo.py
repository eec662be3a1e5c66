"""``synthmed demo``: the whole path on phantoms, T1 -> T2 with pix2pix, against identity.

phantoms -> prepare -> train pix2pix (small) -> translate the held-out test subjects
-> evaluate, next to the identity baseline (the source image itself, mapped onto the
reference's intensity scale exactly as the translation is) -> table + figure.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from synthmed.data.io import ensure_writable_folder, read_volume, volume_suffix
from synthmed.data.phantom import write_phantoms
from synthmed.data.plan import load_plan
from synthmed.data.prepare import prepare
from synthmed.engine.run_folder import is_run_entry, legacy_run
from synthmed.errors import SynthmedError
from synthmed.files import (
    MARKER_NAME,
    json_text,
    marked_by,
    output_lock,
    remove_owned_folder,
    write_marker,
    write_text_atomic,
)
from synthmed.workflows.evaluate import evaluate_pairs, format_table, match_intensity
from synthmed.workflows.train import train
from synthmed.workflows.translate import translate

log = logging.getLogger(__name__)


def demo(
    out: str | Path = "synthmed-demo",
    *,
    subjects: int = 10,
    size: int = 64,
    steps: int | None = None,
    model: str = "pix2pix",
    source: str = "T1",
    target: str = "T2",
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    device: str = "auto",
) -> dict[str, Any]:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SynthmedError(f"--out {out} is a file, not a folder; choose another --out")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise SynthmedError(f"{out} is not empty; pass --overwrite to redo the demo there or choose another --out")
        if not (marked_by(out, "demo") or (out / "demo_results.json").is_file()):
            raise SynthmedError(
                f"{out} was not made by synthmed demo (no {MARKER_NAME} marker); --overwrite redoes "
                "only a demo folder: choose another --out"
            )
    if subjects < 4:
        raise SynthmedError("--subjects: the demo needs at least 4 phantoms (train, val and test subjects)")
    with output_lock(out):
        return _demo(
            out,
            subjects=subjects,
            size=size,
            steps=steps,
            model=model,
            source=source,
            target=target,
            seed=seed,
            overwrite=overwrite,
            progress=progress,
            device=device,
        )


def _demo(
    out: Path,
    *,
    subjects: int,
    size: int,
    steps: int | None,
    model: str,
    source: str,
    target: str,
    seed: int,
    overwrite: bool,
    progress: bool,
    device: str,
) -> dict[str, Any]:
    started = time.perf_counter()
    ensure_writable_folder(out)
    write_marker(out, "demo")
    phantoms, prep, run, translations = out / "phantoms", out / "prep", out / "run", out / "translations"
    # A rerun replaces the demo's own folders, each only as far as it holds what the demo wrote there.
    remove_owned_folder(run, "train", is_run_entry, legacy=legacy_run)
    remove_owned_folder(
        translations,
        "demo",
        lambda entry: entry.is_dir() and not entry.is_symlink() and all(volume_suffix(f) for f in entry.iterdir()),
        legacy=lambda _: overwrite,
    )
    print(f"[1/5] {subjects} phantoms of {size}^3 voxels -> {phantoms}")
    write_phantoms(phantoms, subjects=subjects, size=size, seed=seed, overwrite=overwrite)
    print(f"[2/5] prepare {source} -> {target} -> {prep}")
    prepare(
        phantoms,
        source=source,
        target=target,
        out=prep,
        size=size,
        split=(0.6, 0.2, 0.2),
        seed=seed,
        overwrite=overwrite,
        progress=progress,
    )
    plan = load_plan(prep)
    print(
        f"      split by subject: train {list(plan.train_subjects)}, val {list(plan.val_subjects)}, "
        f"test {list(plan.test_subjects)}"
    )
    print(f"[3/5] train {model} (small preset) -> {run}")
    summary = train(
        prep, model=model, preset="small", out=run, steps=steps, seed=seed, progress=progress, device=device
    )
    print(f"      {summary['steps']} steps in {summary['seconds']:.0f} s")
    print(f"[4/5] translate the {len(plan.test_subjects)} test subjects -> {translations}")
    model_pairs, identity_pairs = [], []
    ensure_writable_folder(translations)
    write_marker(translations, "demo")
    for subject in plan.test_subjects:
        source_file, target_file = plan.file_of(subject, plan.source), plan.file_of(subject, plan.target)
        output = translations / subject / target_file.name
        translate(run, source_file, output, reference=target_file, device=device, progress=False)
        model_pairs.append((subject, output, target_file))
        identity_pairs.append((subject, source_file, target_file))
    print("[5/5] evaluate on the held-out subjects (inside the head mask, target units)")
    results = {
        "identity (source)": evaluate_pairs(
            identity_pairs, match=True, out=out / "metrics_identity.json", overwrite=overwrite
        ),
        model: evaluate_pairs(model_pairs, out=out / f"metrics_{model}.json", overwrite=overwrite),
    }
    table = format_table(results)
    print(table)
    gain_psnr = results[model]["mean"]["psnr"] - results["identity (source)"]["mean"]["psnr"]
    gain_ssim = results[model]["mean"]["ssim"] - results["identity (source)"]["mean"]["ssim"]
    print(f"{model} vs identity: PSNR {gain_psnr:+.2f} dB, SSIM {gain_ssim:+.4f}")
    figure = write_figure(out / "demo.png", model_pairs, identity_pairs, model)
    seconds = time.perf_counter() - started
    report = {
        "model": model,
        "source": plan.source,
        "target": plan.target,
        "subjects": subjects,
        "size": size,
        "train_steps": summary["steps"],
        "train_seconds": summary["seconds"],
        "total_seconds": round(seconds, 1),
        "results": {name: {"mean": r["mean"], "sd": r["sd"], "n": r["n"]} for name, r in results.items()},
        "gain_psnr_db": gain_psnr,
        "gain_ssim": gain_ssim,
        "figure": str(figure),
    }
    write_text_atomic(out / "demo_results.json", json_text(report))
    print(f"figure: {figure}\nresults: {out / 'demo_results.json'} (total {seconds:.0f} s)")
    return report


def write_figure(path: Path, model_pairs, identity_pairs, model: str, rows: int = 3) -> Path:
    """Mid-slice grid per test subject: source | model | target | |model - target|."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = min(rows, len(model_pairs))
    fig, axes = plt.subplots(rows, 4, figsize=(10, 2.6 * rows), squeeze=False)
    for row, ((subject, pred_file, ref_file), (_, src_file, _)) in enumerate(zip(model_pairs, identity_pairs)):
        if row >= rows:
            break
        ref = read_volume(ref_file).data
        pred = read_volume(pred_file).data
        src = match_intensity(read_volume(src_file).data, ref)
        z = ref.shape[2] // 2
        vmax = float(np.percentile(ref, 99.5))
        panels = [(src, f"{subject} source"), (pred, model), (ref, "target"), (np.abs(pred - ref), "|error|")]
        for col, (image, title) in enumerate(panels):
            axis = axes[row, col]
            axis.imshow(
                np.rot90(image[:, :, z]),
                cmap="magma" if col == 3 else "gray",
                vmin=0,
                vmax=vmax if col < 3 else vmax / 4,
            )
            axis.set_title(title, fontsize=9)
            axis.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
