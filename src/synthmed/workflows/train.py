"""``synthmed train``: train a registered method on a prepared folder into a run folder.

A run folder (:mod:`synthmed.engine.run_folder`) holds ``run.json`` (model, preset, config, settings, versions),
``plan.json`` (a copy of the data plan, so translation needs nothing else),
``checkpoints/{best,last}.pt``, ``log.csv`` and ``samples/``.

Started by ``torchrun --nproc_per_node N -m synthmed train ...``, the N processes train one model
together (data parallel; ``--batch-size`` is per process); rank 0 writes the run folder.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

from synthmed.data.datasets import PreparedData, SliceDataset
from synthmed.data.io import ensure_writable_folder
from synthmed.data.plan import Plan
from synthmed.engine.run_folder import RunFolder, legacy_run
from synthmed.engine.trainer import Trainer, TrainSettings
from synthmed.errors import SynthmedError
from synthmed.files import (
    MARKER_NAME,
    json_text,
    marked_by,
    output_lock,
    remove_stale_temporaries,
    write_marker,
    write_text_atomic,
)
from synthmed.models.registry import available_models, build_model, make_config, model_class
from synthmed.runtime import distributed
from synthmed.runtime.devices import pick_device, seed_everything
from synthmed.runtime.versions import versions

log = logging.getLogger(__name__)


GENERATOR_MULTIPLE = 32  # the paper PIG U-Net halves the image 5 times


def train(
    prep: str | Path,
    *,
    model: str,
    out: str | Path,
    preset: str = "small",
    steps: int | None = None,
    batch_size: int | None = None,
    patch: int | None = None,
    context: int = 1,
    resume: bool = False,
    seed: int = 0,
    device: str = "auto",
    overrides: dict[str, Any] | None = None,
    progress: bool = True,
    **settings: Any,
) -> dict[str, Any]:
    """Train ``model`` on the prepared data in ``prep``; returns the training summary."""
    ctx = distributed.setup(device)
    finished = False
    try:
        # One command per run folder: a second `train --resume` would interleave its steps and log rows with the
        # first one's. Rank 0 holds the lock for the whole job (the other ranks write nothing).
        with output_lock(out) if ctx.is_main else contextlib.nullcontext():
            summary = _train(
                prep,
                model=model,
                out=out,
                preset=preset,
                steps=steps,
                batch_size=batch_size,
                patch=patch,
                context=context,
                resume=resume,
                seed=seed,
                device=device,
                overrides=overrides,
                progress=progress,
                ctx=ctx,
                **settings,
            )
        finished = True
        return summary
    finally:
        # All ranks arrive here together after training or a stop signal; after an error on one rank torchrun
        # stops the others, so do not wait for them.
        if finished:
            distributed.shutdown()


def _train(
    prep: str | Path,
    *,
    model: str,
    out: str | Path,
    preset: str,
    steps: int | None,
    batch_size: int | None,
    patch: int | None,
    context: int,
    resume: bool,
    seed: int,
    device: str,
    overrides: dict[str, Any] | None,
    progress: bool,
    ctx: distributed.Context,
    **settings: Any,
) -> dict[str, Any]:
    out = Path(out)
    folder = RunFolder(out)
    cls = model_class(model)
    data = PreparedData(prep)
    plan = data.plan
    if cls.task == "translate" and not plan.target:
        raise SynthmedError(f"{prep} was prepared without --target; {model} translates and needs a target modality")
    if cls.makes_masks and not plan.label:
        raise SynthmedError(
            f"{prep} was prepared without --label; {model} generates image + mask pairs and trains on "
            f"them: prepare with --label NAME (e.g. --source FLAIR --label lesion)"
        )

    config_values = dict(overrides or {})
    image_size = _training_size(cls, model, preset, plan, patch, config_values)
    config_values["image_size"] = image_size
    windows = image_size if image_size != plan.size else None  # train on patches of the slices
    if context != 1:
        if not cls.takes_context:
            takers = ", ".join(name for name, c in available_models().items() if c.takes_context)
            raise SynthmedError(
                f"{model} generates slices from noise and takes no source; --context (2.5D input) is "
                f"for the translators: {takers}"
            )
        config_values["context"] = int(context)
    if steps is not None:  # schedules that follow the run length (e.g. CycleGAN's linear decay) see it too
        config_values["steps"] = int(steps)
    seed_everything(seed)  # the initial weights depend on the seed only
    net = build_model(model, preset, config_values)
    settings_obj = TrainSettings(
        steps=int(steps if steps is not None else net.config.steps),
        batch_size=int(batch_size if batch_size is not None else net.config.batch_size),
        seed=seed,
        device=device,
        progress=progress,
        **settings,
    )
    for key in ("steps", "batch_size", "log_every", "val_every", "checkpoint_every", "sample_every", "max_val_slices"):
        if getattr(settings_obj, key) < 1:
            raise SynthmedError(f"--{key.replace('_', '-')} {getattr(settings_obj, key)}: must be at least 1")
    if settings_obj.max_minutes is not None and not settings_obj.max_minutes > 0:
        raise SynthmedError(f"--max-minutes {settings_obj.max_minutes}: must be more than 0")
    if settings_obj.num_workers < 0:
        raise SynthmedError(f"--workers {settings_obj.num_workers}: must be 0 or more")
    pick_device(device)
    checkpoint = folder.checkpoint("last")
    if resume and not checkpoint.is_file():
        raise SynthmedError(f"{out}: nothing to resume (no checkpoints/last.pt); drop --resume to start a new run")
    if not resume and checkpoint.is_file():
        raise SynthmedError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    if out.exists() and not out.is_dir():
        raise SynthmedError(f"--out {out} is a file, not a folder; choose another --out")
    if (
        not resume
        and out.exists()
        and any(p.name not in ("run.json", "plan.json", "checkpoints", MARKER_NAME) for p in out.iterdir())
    ):
        raise SynthmedError(f"{out} is not empty; choose another --out")
    if resume and not (marked_by(out, "train") or legacy_run(out)):
        raise SynthmedError(f"{out} was not made by synthmed train; choose the run folder to resume")
    # Datasets first: nothing is written into the run folder before the inputs are known to work.
    slices = getattr(net.config, "training_slices", "all")
    if slices == "lesion" and not plan.label:
        raise SynthmedError(
            f"{prep} was prepared without --label, so {model} cannot keep the lesion slices "
            "(training_slices=lesion); prepare with --label NAME or --set training_slices=all"
        )
    if slices == "healthy" and not plan.label:
        log.warning("%s was prepared without --label: every training slice counts as healthy", prep)
    context = int(getattr(net.config, "context", 1))
    train_set = SliceDataset(
        data, "train", unpaired=not cls.paired, seed=seed, slices=slices, patch=windows, context=context
    )
    if slices != "all" and ctx.is_main:
        kept = {"lesion": "with a lesion", "healthy": "without any lesion voxel"}[slices]
        log.info("training on the %d train-split slices %s (training_slices=%s)", len(train_set.rows), kept, slices)
    if cls.task == "generate":
        val_set = None  # generators are not validated against references; samples/ shows their output
    else:
        val_set = SliceDataset(data, "val", context=context) if plan.val_subjects else None
        if val_set is None and ctx.is_main:
            log.warning("no validation subjects: best.pt will not be chosen by validation PSNR (last.pt is used)")
    if resume and folder.run_json.is_file():
        saved, _ = folder.load()
        if saved.model != model:
            raise SynthmedError(f"{out} holds a {saved.model} run, not {model}; resume it with --model {saved.model}")
    distributed.barrier()  # every rank has checked (and read) the run folder before rank 0 writes into it

    run_info = {
        "model": model,
        "preset": preset,
        "task": cls.task,
        "paired": cls.paired,
        "config": net.config_dict(),
        "settings": {k: v for k, v in vars(settings_obj).items()},
        "prepared": str(Path(prep).resolve()),
        "source": plan.source,
        "target": plan.target,
        "label": plan.label,
        "training_slice_count": len(train_set),
        "patch": windows,
        "plan_digest": plan.digest(),
        "versions": versions(),
    }
    if ctx.world_size > 1:
        run_info["processes"] = ctx.world_size
    if ctx.is_main:
        ensure_writable_folder(out)
        for inside in (out, folder.checkpoints):
            remove_stale_temporaries(inside)  # of a run killed while writing
        write_marker(out, "train")
        folder.write_record(run_info, plan)
    distributed.barrier()

    trainer = Trainer(net, train_set, val_set, out, settings_obj, run_info)
    summary = trainer.fit(resume=resume)
    summary["parameters"] = int(sum(p.numel() for p in net.parameters()))
    if ctx.is_main:
        write_text_atomic(folder.train_summary, json_text(summary))
    return summary


def _training_size(cls, model: str, preset: str, plan: Plan, patch: int | None, config_values: dict) -> int:
    """The image size a model is built for and trained at: ``--patch``; else, on native-resolution data, the preset's
    image size (``paper`` 256 px, ``small`` a CPU-sized patch), on resized data the prepared slice size (so do priors
    marked ``trains_on_patches``). Other generators make whole slices, so they train on whole slices: native ones padded to a multiple of
    :data:`GENERATOR_MULTIPLE`, which every generator's U-Net halves down evenly."""
    slice_size = plan.size
    # a prior that is applied convolutionally to whole images of any size (score-mri) learns from patches
    if cls.task == "generate" and not getattr(cls, "trains_on_patches", False):
        if patch is not None:
            raise SynthmedError(f"{model} generates whole slices; --patch applies to translation methods")
        if plan.resolution.native:
            return -(-slice_size // GENERATOR_MULTIPLE) * GENERATOR_MULTIPLE
        return slice_size
    if patch is not None:
        if patch < 16 or patch > 1024 or patch % 16:
            raise SynthmedError(f"--patch {patch}: use a multiple of 16 between 16 and 1024 (e.g. 64, 128, 256)")
        return int(patch)
    if plan.resolution.native:
        return int(make_config(model, preset, {k: v for k, v in config_values.items() if k != "image_size"}).image_size)
    return slice_size
