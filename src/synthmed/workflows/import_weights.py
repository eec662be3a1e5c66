"""``synthmed import``: a run folder from a checkpoint of a method's official implementation.

People who trained pix2pix, CycleGAN or SynDiff with the authors' code have weights, not a synthmed run. This turns such a
checkpoint into a run folder that ``synthmed translate`` applies to whole volumes like any trained run:

::

    run.json               model, preset "imported", config, source/target names, and under settings.imported the
                           kind, the original file, its SHA-256 and the architecture read from it
    plan.json              a plan stub: how a volume becomes the network's slices, and its intensity scale
    checkpoints/best.pt    the converted weights in synthmed's checkpoint format

**Kinds.** Each kind is a function in :data:`KINDS` taking the checkpoint's state dict (and, optionally, that of the
reverse generator of a two-way model) as :class:`Weights`, and the ``--size`` asked for, and returning
:class:`Converted`: our model name, its config overrides on top of the model's ``paper`` preset, and
``{network attribute: our state dict}``. Everything
else (reading the file safely, the plan stub, the run folder, refusing an existing output) is shared here.

**The plan stub.** The official code trains on 2D pictures: 8-bit grey levels [0, 255] scaled to [-1, 1], each
picture resized to the network's size (256 px by default). A scan has no fixed grey levels, so each volume is mapped
to [-1, 1] by synthmed's recorded per-volume normalisation, chosen per modality (``source_norm``, ``target_norm``):

- ``mr`` (default for every name but CT's): a robust min/max, the volume's 0.5th percentile (its background) to -1
  and the foreground's 99.5th percentile to 1, values beyond clipped; what a picture exported with its window
  set to the scan's range looks like, without a few bright voxels setting the scale;
- ``ct`` (default for CT names): the fixed window [-1000, 2000] HU to [-1, 1], the same for every scan.

Slices are cut along ``axis`` and, by default, each volume's foreground box is resized (bicubic, as their loader
resizes) to the network's size, as a picture of the head would be; with ``spacing`` they are kept at that pixel
size instead (native resolution, whole slices padded to what the network needs). The output comes back in the
source's own intensity range for MR -> MR (no training targets exist to learn a scale from; ``translate
--reference`` gives a real target scan's), on the HU window for CT, and in 8-bit units [0, 255] for an MR output
from a CT input. Without training data the plan has no input profile, so ``translate`` cannot warn about inputs
unlike the training scans.

An existing output is never replaced, except with ``overwrite`` a folder that ``synthmed import`` made and that
holds nothing else; the run folder is written beside its destination and renamed into place, so it appears whole
or not at all.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch

from synthmed.data.discovery import canonical_modality
from synthmed.data.io import ensure_writable_folder
from synthmed.data.normalize import CT_WINDOW, Normalization, TargetScale, modality_kind
from synthmed.data.plan import PLAN_VERSION, SPLITS, Plan
from synthmed.engine.checkpoint import save_checkpoint
from synthmed.engine.run_folder import RunFolder, is_run_entry
from synthmed.errors import SynthmedError
from synthmed.files import (
    finite_json,
    move_folder_into_place,
    output_lock,
    ownership_problem,
    refuse_overlap,
    remove_stale_temporaries,
    temporary_path,
    write_marker,
)
from synthmed.models.registry import instantiate, make_config, model_class
from synthmed.nn.layers import unwrapped
from synthmed.runtime.versions import versions
from synthmed.weights import junyanz, syndiff_official
from synthmed.weights.state import file_sha256, read_state_dict

PRESET = "imported"
COMMAND = "import"
NORMALIZATIONS = ("mr", "ct")
EIGHT_BIT = (0.0, 255.0)  # the grey levels of the pictures the official codes read and write


class Weights(NamedTuple):
    """One checkpoint file and its state dict (``module.`` prefixes removed)."""

    path: Path
    state: dict[str, torch.Tensor]

    def convert(self, converter: Callable[[dict[str, torch.Tensor]], Any]) -> Any:
        """``converter(state)``, its errors naming this file."""
        try:
            return converter(self.state)
        except SynthmedError as error:
            raise SynthmedError(f"{self.path}: {error}") from None


class Converted(NamedTuple):
    """What a kind makes of a checkpoint."""

    model: str  # our registered model that runs the networks
    config: dict[str, Any]  # overrides of its "paper" preset (image_size: the network's natural size)
    networks: dict[str, dict[str, torch.Tensor]]  # model attribute (e.g. "generator") -> state dict of that network
    directions: tuple[str, ...] = ("A2B",)  # the directions the given networks translate
    size_multiple: int = 16  # image sizes the networks take are multiples of it
    details: dict[str, Any] | None = None  # recorded in run.json under settings.imported (architecture, ...)
    only_given: bool = False  # store only ``networks`` (the others would be large and never used)


# (weights, reverse weights, --size or None) -> Converted
Kind = Callable[[Weights, "Weights | None", "int | None"], Converted]


def junyanz_kind(weights: Weights, reverse: Weights | None, size: int | None = None) -> Converted:
    """pix2pix and CycleGAN of junyanz/pytorch-CycleGAN-and-pix2pix (:mod:`synthmed.weights.junyanz`).

    Both of their models save generators of the same layouts, so both kinds read either: a U-Net runs in our
    ``pix2pix`` (one direction), a ResNet in our ``cyclegan``, with the reverse generator (CycleGAN's
    ``latest_net_G_B.pth``) when given, else translating A -> B only. The discriminators of the run are freshly
    initialised: the networks translate as the originals do, but the run is not a training state to resume."""
    arch, state = weights.convert(junyanz.convert_generator)
    details: dict[str, Any] = {
        "architecture": arch.name,
        "norm": arch.norm,
        "ngf": arch.ngf,
        "channels": [arch.in_channels, arch.out_channels],
    }
    common = {
        "generator_channels": arch.ngf,
        "norm": arch.norm,
        "network_channels": [arch.in_channels, arch.out_channels],
    }
    if arch.network == "unet":
        if reverse is not None:
            raise SynthmedError(
                f"{weights.path} is a {arch.name} generator, which synthmed runs as pix2pix (one direction); "
                "--reverse takes the second generator of a ResNet (CycleGAN) pair: import each U-Net on its own"
            )
        config = {**common, "image_size": 2**arch.depth, "generator_depth": arch.depth}
        return Converted("pix2pix", config, {"generator": state}, ("A2B",), 2**arch.depth, details)
    networks = {"generator_ab": state}
    directions: tuple[str, ...] = ("A2B",)
    if reverse is not None:
        back, back_state = reverse.convert(junyanz.convert_generator)
        expected = (arch.network, arch.ngf, arch.norm, arch.blocks, arch.out_channels, arch.in_channels)
        if (back.network, back.ngf, back.norm, back.blocks, back.in_channels, back.out_channels) != expected:
            raise SynthmedError(
                f"--reverse {reverse.path} is {back.describe()}; the reverse of {arch.describe()} must be the same "
                f"network with {arch.out_channels} -> {arch.in_channels} channels"
            )
        networks["generator_ba"] = back_state
        directions = ("A2B", "B2A")
    config = {**common, "image_size": 256, "resnet_blocks": arch.blocks}
    return Converted("cyclegan", config, networks, directions, 4, details)


SYNDIFF_NATURAL_SIZE = 256  # the official code's image size: attention sits at 16 px of it


def _syndiff_generator(weights: Weights, size: int) -> tuple[dict, dict[str, torch.Tensor]]:
    """One official diffusive generator for our SynDiff at ``size`` px: attention kept on the same level (16 px of
    256), and only the first of the two output channels (the one SynDiff's sampler keeps)."""
    kwargs, state = weights.convert(lambda s: syndiff_official.convert_generator(s, SYNDIFF_NATURAL_SIZE))
    if kwargs["in_channels"] != 2:
        raise SynthmedError(
            f"{weights.path}: a diffusive generator takes 2 channels (x_t+1 and the source), this one takes "
            f"{kwargs['in_channels']}"
        )
    levels = len(kwargs["channel_mult"])
    smallest = 4 * 2 ** (levels - 1)
    if size < smallest or size & (size - 1):
        raise SynthmedError(
            f"--size {size}: this generator's {levels} levels need a power-of-two slice size of at least {smallest}"
        )
    kwargs["attention_resolutions"] = tuple(r * size // SYNDIFF_NATURAL_SIZE for r in kwargs["attention_resolutions"])
    state = dict(state)
    state["out_conv.weight"] = state["out_conv.weight"][:1].clone()
    state["out_conv.bias"] = state["out_conv.bias"][:1].clone()
    return kwargs, state


def syndiff_kind(weights: Weights, reverse: Weights | None, size: int | None = None) -> Converted:
    """SynDiff (icon-lab/SynDiff): the diffusive generators ``gen_diffusive_<1|2>_<epoch>.pth``.

    Translation needs only the diffusive generator of its direction: ``gen_diffusive_2`` makes contrast2 from
    contrast1 (``--source contrast1 --target contrast2``), ``gen_diffusive_1`` the reverse (``--reverse``). Only the
    given generators are stored; the run's other networks (discriminators, the non-diffusive half) are not, so the
    run translates but cannot be trained on. Our NCSN++ computes the official network's function exactly
    (:mod:`synthmed.weights.syndiff_official`), and the sampler is the same 4-step posterior chain."""
    size = size or SYNDIFF_NATURAL_SIZE
    kwargs, state = _syndiff_generator(weights, size)
    networks = {"diffusive_b": state}
    directions: tuple[str, ...] = ("A2B",)
    if reverse is not None:
        back_kwargs, back_state = _syndiff_generator(reverse, size)
        if back_kwargs != kwargs:
            raise SynthmedError(f"--reverse {reverse.path} is not the same network as {weights.path}")
        networks["diffusive_a"] = back_state
        directions = ("A2B", "B2A")
    config = {
        "image_size": size,
        "generator_channels": kwargs["base_channels"],
        "channel_mult": list(kwargs["channel_mult"]),
        "num_res_blocks": kwargs["num_res_blocks"],
        "attention_resolutions": list(kwargs["attention_resolutions"]),
        "nz": kwargs["nz"],
        "z_embedding": kwargs["z_embedding"],
        "n_mlp": kwargs["n_mlp"],
    }
    details = {
        "architecture": "NCSN++ (official SynDiff)",
        "channel_mult": list(kwargs["channel_mult"]),
        "base_channels": kwargs["base_channels"],
        "num_res_blocks": kwargs["num_res_blocks"],
    }
    return Converted("syndiff", config, networks, directions, 2 ** (len(kwargs["channel_mult"]) - 1), details, True)


# Kind name -> converter.
KINDS: dict[str, Kind] = {
    "pix2pix": junyanz_kind,
    "cyclegan": junyanz_kind,
    "syndiff": syndiff_kind,
}


def plan_stub(
    source: str,
    target: str,
    size: int,
    *,
    source_norm: str,
    target_norm: str,
    axis: str = "axial",
    spacing: float | None = None,
    origin: dict[str, Any] | None = None,
) -> Plan:
    """The plan of an imported run (see the module docstring): no subjects, the slicing and the normalisation the
    network expects. ``origin``: recorded for people under ``imported``."""
    reference = {
        role: Normalization(kind, *(CT_WINDOW if kind == "ct" else EIGHT_BIT)).to_dict()
        for role, kind in ((source, source_norm), (target, target_norm))
    }
    target_scale = None
    if source_norm == "mr" and target_norm == "mr":  # the output takes the input's own range: lo and span kept
        target_scale = TargetScale("affine", *EIGHT_BIT, 0.0, 1.0, {"median": None, "affine": None}, 1).to_dict()
    record = {
        "synthmed_plan": PLAN_VERSION,
        "source": source,
        "target": target,
        "label": None,
        "aliases": {},
        "axis": str(axis),
        "size": int(size),
        "resolution": {"mode": "native" if spacing else "resized", "spacing_mm": spacing},
        "interpolation": "bicubic",
        "normalization_kind": {source: source_norm, target: target_norm},
        "reference_normalization": reference,
        "target_scale": target_scale,
        "input_profile": None,
        "split": {name: [] for name in SPLITS},
        "subjects": [],
        "volumes": {},
        "n_slices": {name: 0 for name in SPLITS},
        "imported": origin or {},
    }
    return Plan.from_record(finite_json(record), "plan.json")


def import_weights(
    kind: str,
    checkpoint: str | Path,
    out: str | Path,
    *,
    source: str = "A",
    target: str = "B",
    reverse: str | Path | None = None,
    size: int | None = None,
    spacing: float | None = None,
    axis: str = "axial",
    source_norm: str | None = None,
    target_norm: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the run folder ``out`` from ``checkpoint`` (a ``kind`` in :data:`KINDS`); returns ``out``.

    ``reverse``: the reverse direction's generator of a two-way model. ``size``: the slice size (default: the
    network's natural one, 256 px for the official defaults). ``spacing``: native resolution at that pixel size
    instead of resizing each foreground box. ``source_norm``/``target_norm``: ``mr`` or ``ct`` (default from the
    modality names). ``overwrite``: replace a folder that ``synthmed import`` made."""
    if kind not in KINDS:
        raise SynthmedError(f"unknown kind {kind!r}; available: {', '.join(sorted(KINDS))}")
    out, checkpoint = Path(out), Path(checkpoint)
    source_mod, target_mod = canonical_modality(source), canonical_modality(target)
    if source_mod == target_mod:
        raise SynthmedError(f"--source and --target are both {source_mod}; name the two modalities")
    norms = {}
    for role, name, given in (("source", source_mod, source_norm), ("target", target_mod, target_norm)):
        norms[role] = given or modality_kind(name)
        if norms[role] not in NORMALIZATIONS:
            raise SynthmedError(f"--{role}-norm {given}: use mr (robust per-volume range) or ct (HU window)")
    if size is not None and spacing is not None:
        raise SynthmedError("--size and --spacing exclude each other: --spacing keeps native resolution")
    if spacing is not None and not 0.01 <= spacing <= 100:
        raise SynthmedError(f"--spacing {spacing}: give the in-plane pixel size in mm, e.g. 1.0")
    if size is not None and (size < 16 or size > 1024 or size % 16):
        raise SynthmedError(f"--size {size}: use a multiple of 16 between 16 and 1024 (e.g. 128, 256)")
    refuse_overlap(out, [checkpoint, reverse], what="RUN_OUT")
    with output_lock(out):
        _refuse_existing(out, overwrite)
        weights = Weights(checkpoint, read_state_dict(checkpoint))
        back = Weights(Path(reverse), read_state_dict(reverse)) if reverse is not None else None
        converted = KINDS[kind](weights, back, size)
        overrides = dict(converted.config)
        if size is not None:
            if size % converted.size_multiple:
                raise SynthmedError(
                    f"--size {size}: this network needs slice sides that are multiples of {converted.size_multiple}"
                )
            overrides["image_size"] = size
        model = _build(converted, overrides, checkpoint)
        origin = {
            "kind": kind,
            "file": str(checkpoint.resolve()),
            "sha256": file_sha256(checkpoint),
            **({"reverse_file": str(Path(reverse).resolve()), "reverse_sha256": file_sha256(reverse)} if back else {}),
            **(converted.details or {}),
            "normalization": norms,
        }
        plan = plan_stub(
            source_mod,
            target_mod,
            int(model.config.image_size),
            source_norm=norms["source"],
            target_norm=norms["target"],
            axis=axis,
            spacing=spacing,
            origin=origin,
        )
        cls = model_class(converted.model)
        info = {
            "model": converted.model,
            "preset": PRESET,
            "task": cls.task,
            "paired": cls.paired,
            "config": model.config_dict(),
            "settings": {"imported": origin},
            "source": source_mod,
            "target": target_mod,
            "label": None,
            "plan_digest": plan.digest(),
            "versions": versions(),
        }
        if tuple(converted.directions) != tuple(cls.directions):
            info["directions"] = list(converted.directions)
        payload = {
            "model": converted.model,
            "preset": PRESET,
            "config": model.config_dict(),
            "step": 0,
            "state": _stored_state(model, converted),
            "ema": None,
            "plan_digest": plan.digest(),
            "imported": origin,
        }
        if converted.only_given:
            payload["networks"] = list(converted.networks)
        _write_run(out, info, plan, payload)
    return out


def _stored_state(model, converted: Converted) -> dict[str, torch.Tensor]:
    """The model's state, or with ``only_given`` just the converted networks' entries (``translate`` loads those
    and leaves the rest as built)."""
    state = model.state_dict()
    if not converted.only_given:
        return state
    return {key: value for key, value in state.items() if key.split(".", 1)[0] in converted.networks}


def _refuse_existing(out: Path, overwrite: bool) -> None:
    """An existing RUN_OUT is refused; with ``overwrite`` a folder ``synthmed import`` made (and nothing else) may
    be replaced. Nothing is deleted here: the old folder goes only once the new one is complete."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise SynthmedError(f"{out} exists and is not a folder; choose another RUN_OUT")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not overwrite:
        raise SynthmedError(f"{out} exists; choose another RUN_OUT (or --overwrite to replace an imported run)")
    problem = ownership_problem(out, COMMAND, is_run_entry)
    if problem:
        raise SynthmedError(
            f"{out} {problem}; --overwrite replaces only runs synthmed import made: choose another RUN_OUT"
        )


def _build(converted: Converted, overrides: dict[str, Any], checkpoint: Path):
    """Our model with the converted networks loaded; its other networks (discriminators) initialised from a fixed
    seed, so the same file always gives the same run folder."""
    config = make_config(converted.model, "paper", overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = instantiate(converted.model, config)
    for name, state in converted.networks.items():
        try:
            unwrapped(model.get_submodule(name)).load_state_dict(state)
        except RuntimeError as error:
            raise SynthmedError(
                f"{checkpoint}: the converted {name} does not fit synthmed's {converted.model} with "
                f"image size {config.image_size} ({str(error).splitlines()[0][:100]})"
            ) from None
    return model.eval()


def _write_run(out: Path, info: dict[str, Any], plan: Plan, payload: dict[str, Any]) -> None:
    """The run folder, written beside ``out`` and renamed into place (an old imported run is moved aside first and
    deleted last)."""
    ensure_writable_folder(out.parent)
    remove_stale_temporaries(out.parent, names=lambda name: name == out.name)
    tmp = temporary_path(out, "tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        folder = RunFolder(tmp)
        tmp.mkdir()
        folder.write_record(info, plan)
        save_checkpoint(folder.checkpoint("best"), payload)
        write_marker(tmp, COMMAND)
        move_folder_into_place(tmp, out)
    except OSError as error:
        shutil.rmtree(tmp, ignore_errors=True)
        raise SynthmedError(
            f"{out}: writing the run folder failed ({error.strerror or error}); check free space and permissions "
            "(nothing was changed)"
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
