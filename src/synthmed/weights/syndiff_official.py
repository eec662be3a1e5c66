"""Weights of the official SynDiff code (icon-lab/SynDiff, after DDGAN) in synthmed's networks.

The reference keeps its NCSN++ generator as one flat ``all_modules`` list (``all_modules.<i>.<layer>``) plus the
latent mapping ``z_transform``; its time-conditional discriminator names blocks ``conv1`` .. ``conv6``. Our
:class:`~synthmed.nn.ncsnpp.NCSNppGenerator` and :class:`~synthmed.nn.time_discriminator.TimeConditionalDiscriminator`
compute the same functions with named parts, so a conversion is a renaming plus one reshaping: the reference's
attention has separate ``NIN`` query, key, value and output layers (``x @ W + b`` over channels), ours one 1x1
convolution for query, key and value together (weight = ``W.T``).

The generator's shape is read from its state dict: the module list is walked in the order the reference builds it
(time embedding, stem, per level the residual blocks with optional attention, a down-sampling block and the input
pyramid's convolution, the middle, the up path, the output norm and convolution). The image size is not in the
weights; it only decides which resolution the attention layers count as, so it is an argument (256 in SynDiff).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from synthmed.errors import SynthmedError
from synthmed.nn.ncsnpp import NCSNppGenerator
from synthmed.nn.time_discriminator import TimeConditionalDiscriminator

RESBLOCK_PARTS = {
    "GroupNorm_0.style": "norm0.style",
    "Conv_0": "conv0",
    "Dense_0": "temb",
    "GroupNorm_1.style": "norm1.style",
    "Conv_1": "conv1",
    "Conv_2": "skip",
}
DISCRIMINATOR_PARTS = {"conv1.0": "conv1", "conv2.0": "conv2", "dense_t1": "temb", "skip.0": "skip"}


def strip_module_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the ``module.`` prefix DistributedDataParallel puts on every key (the released checkpoints have it)."""
    if state and all(key.startswith("module.") for key in state):
        return {key[len("module.") :]: value for key, value in state.items()}
    return dict(state)


def _modules(state: Mapping[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """``all_modules.<i>.<rest>`` -> a list (by i) of {rest: tensor}."""
    found: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key.startswith("all_modules."):
            index, _, rest = key[len("all_modules.") :].partition(".")
            if not index.isdigit():
                raise SynthmedError(f"not an official SynDiff generator: unexpected key {key}")
            found.setdefault(int(index), {})[rest] = value
    if not found or sorted(found) != list(range(len(found))):
        raise SynthmedError("not an official SynDiff generator: no consecutive all_modules.<i> keys")
    return [found[i] for i in range(len(found))]


def _kind(parts: Mapping[str, torch.Tensor]) -> str:
    if "GroupNorm_0.style.weight" in parts:
        return "resblock"
    if "NIN_0.W" in parts:
        return "attention"
    if "Conv2d_0.weight" in parts:
        return "pyramid"
    weight = parts.get("weight")
    if weight is None:
        raise SynthmedError(f"not an official SynDiff generator: a module with keys {sorted(parts)}")
    return {1: "groupnorm", 2: "linear", 4: "conv"}.get(weight.ndim, "unknown")


def _generator_layout(modules: list[dict[str, torch.Tensor]], image_size: int) -> dict:
    """NCSN++ constructor arguments read from the module sequence (see the module docstring)."""
    kinds = [_kind(parts) for parts in modules]
    if kinds[:3] != ["linear", "linear", "conv"] or kinds[-2:] != ["groupnorm", "conv"]:
        raise SynthmedError(
            "not an official SynDiff generator (expected a positional time embedding, a stem convolution and a "
            f"GroupNorm + convolution output; found {kinds[:3]} ... {kinds[-2:]})"
        )
    base = modules[2]["weight"].shape[0]
    in_channels = modules[2]["weight"].shape[1]
    out_channels = modules[-1]["weight"].shape[0]
    levels = kinds.count("pyramid") + 1
    first_pyramid = kinds.index("pyramid") if levels > 1 else None
    if first_pyramid is None:
        raise SynthmedError("not an official SynDiff generator: a single-level NCSN++ is not supported")
    num_res_blocks = kinds[3:first_pyramid].count("resblock") - 1  # the last one is the down-sampling block
    position, channel_mult, attention_levels = 3, [], set()
    for level in range(levels):
        for _ in range(num_res_blocks):
            if kinds[position] != "resblock":
                raise SynthmedError(f"unexpected module all_modules.{position} ({kinds[position]}) on level {level}")
            if not channel_mult or len(channel_mult) == level:
                channel_mult.append(modules[position]["Conv_0.weight"].shape[0] // base)
            position += 1
            if kinds[position] == "attention":
                attention_levels.add(level)
                position += 1
        if level != levels - 1:
            if kinds[position : position + 2] != ["resblock", "pyramid"]:
                raise SynthmedError(f"expected a down-sampling block and the pyramid at all_modules.{position}")
            position += 2
    mid_attention = kinds[position : position + 3] == ["resblock", "attention", "resblock"]
    if not mid_attention:
        raise SynthmedError(f"expected the middle block - attention - block at all_modules.{position}")
    position += 3
    for level in reversed(range(levels)):
        position += num_res_blocks + 1
        if kinds[position] == "attention":
            attention_levels.add(level)
            position += 1
        if level != 0:
            position += 1
    if position != len(kinds) - 2:
        raise SynthmedError("not an official SynDiff generator: the up path does not mirror the down path")
    return {
        "in_channels": in_channels,
        "out_channels": out_channels,
        "base_channels": base,
        "channel_mult": tuple(channel_mult),
        "num_res_blocks": num_res_blocks,
        "attention_resolutions": tuple(sorted({image_size >> level for level in attention_levels})),
        "image_size": image_size,
    }


def _our_order(net: NCSNppGenerator) -> list[tuple[str, str]]:
    """Our module names, with their kind, in the order the reference builds its module list."""
    order = [("time_embed.0", "linear"), ("time_embed.2", "linear"), ("stem", "conv")]
    levels, block = len(net.channel_mult), 0
    for level in range(levels):
        for i in range(net.num_res_blocks):
            order.append((f"down_blocks.{block}", "resblock"))
            block += 1
            if f"{level}_{i}" in net.down_attention:
                order.append((f"down_attention.{level}_{i}", "attention"))
        if level != levels - 1:
            order += [(f"downsamplers.{level}", "resblock"), (f"pyramid.{level}", "pyramid")]
    order += [("mid.0", "resblock"), ("mid.1", "attention"), ("mid.2", "resblock")]
    block, upsampler = 0, 0
    for level in reversed(range(levels)):
        for _ in range(net.num_res_blocks + 1):
            order.append((f"up_blocks.{block}", "resblock"))
            block += 1
        if str(level) in net.up_attention:
            order.append((f"up_attention.{level}", "attention"))
        if level != 0:
            order.append((f"upsamplers.{upsampler}", "resblock"))
            upsampler += 1
    return order + [("out_norm", "groupnorm"), ("out_conv", "conv")]


def _convert_module(ours: str, kind: str, parts: Mapping[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    converted: dict[str, torch.Tensor] = {}
    if kind == "resblock":
        for key, value in parts.items():
            layer, _, leaf = key.rpartition(".")
            if layer not in RESBLOCK_PARTS:
                raise SynthmedError(f"unknown key {where}.{key} in an official SynDiff residual block")
            converted[f"{ours}.{RESBLOCK_PARTS[layer]}.{leaf}"] = value
    elif kind == "attention":
        expected = {"GroupNorm_0.weight", "GroupNorm_0.bias"} | {f"NIN_{i}.{p}" for i in range(4) for p in "Wb"}
        unknown = sorted(set(parts) - expected)
        if unknown:
            raise SynthmedError(f"unknown key {where}.{unknown[0]} in an official SynDiff attention block")
        converted[f"{ours}.norm.weight"] = parts["GroupNorm_0.weight"]
        converted[f"{ours}.norm.bias"] = parts["GroupNorm_0.bias"]
        converted[f"{ours}.qkv.weight"] = torch.cat([parts[f"NIN_{i}.W"].t() for i in range(3)])[:, :, None, None]
        converted[f"{ours}.qkv.bias"] = torch.cat([parts[f"NIN_{i}.b"] for i in range(3)])
        converted[f"{ours}.out.weight"] = parts["NIN_3.W"].t()[:, :, None, None]
        converted[f"{ours}.out.bias"] = parts["NIN_3.b"]
    elif kind == "pyramid":
        for key, value in parts.items():
            if not key.startswith("Conv2d_0."):
                raise SynthmedError(f"unknown key {where}.{key} in an official SynDiff pyramid convolution")
            converted[f"{ours}.conv.{key[len('Conv2d_0.') :]}"] = value
    else:
        for key, value in parts.items():
            converted[f"{ours}.{key}"] = value
    return {key: value.detach().clone().contiguous() for key, value in converted.items()}


def _check_and_load(net: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Refuse, naming the first key, anything the network does not have in exactly that shape; then load."""
    expected = net.state_dict()
    for key, value in state.items():
        if key not in expected:
            raise SynthmedError(f"{what}: key {key} has no place in the network")
        if tuple(value.shape) != tuple(expected[key].shape):
            raise SynthmedError(
                f"{what}: key {key} has shape {tuple(value.shape)}, the network expects {tuple(expected[key].shape)}"
            )
    missing = [key for key in expected if key not in state]
    if missing:
        raise SynthmedError(f"{what}: the checkpoint lacks {missing[0]} ({len(missing)} entries missing)")
    net.load_state_dict(state, strict=True)


def convert_generator(state: Mapping[str, torch.Tensor], image_size: int = 256) -> tuple[dict, dict[str, torch.Tensor]]:
    """An official NCSN++ state dict -> (:class:`NCSNppGenerator` keyword arguments, its state dict).

    The keyword arguments reproduce the reference network exactly, including its two output channels (SynDiff keeps
    the first); load them with ``strict=True``. Unknown keys and wrong shapes raise :class:`SynthmedError` naming the
    first one.
    """
    state = strip_module_prefix(state)
    modules = _modules(state)
    layout = _generator_layout(modules, image_size)
    mapping_keys = sorted(
        {int(key.split(".")[1]) for key in state if key.startswith("z_transform.") and key.endswith(".weight")}
    )
    unknown = sorted(key for key in state if not key.startswith(("all_modules.", "z_transform.")))
    if unknown:
        raise SynthmedError(f"unknown key {unknown[0]} in an official SynDiff generator")
    if not mapping_keys:
        raise SynthmedError("not an official SynDiff generator: no z_transform (latent mapping) weights")
    nz = state[f"z_transform.{mapping_keys[0]}.weight"].shape[1]
    z_embedding = state[f"z_transform.{mapping_keys[0]}.weight"].shape[0]
    kwargs = {**layout, "nz": nz, "z_embedding": z_embedding, "n_mlp": len(mapping_keys) - 1}
    net = NCSNppGenerator(**kwargs)
    order = _our_order(net)
    if len(order) != len(modules):
        raise SynthmedError(
            f"the official generator has {len(modules)} modules, the layout read from it gives {len(order)}"
        )
    converted: dict[str, torch.Tensor] = {}
    for index, ((ours, kind), parts) in enumerate(zip(order, modules)):
        found = _kind(parts)
        if found != kind:
            raise SynthmedError(f"all_modules.{index} is a {found}, expected a {kind} there")
        converted.update(_convert_module(ours, kind, parts, f"all_modules.{index}"))
    for key, value in state.items():
        if key.startswith("z_transform."):
            converted[key] = value.detach().clone()
    _check_and_load(net, converted, "official SynDiff generator")
    return kwargs, net.state_dict()


def convert_discriminator(
    state: Mapping[str, torch.Tensor], image_size: int = 256
) -> tuple[dict, dict[str, torch.Tensor]]:
    """An official ``Discriminator_large`` state dict -> (:class:`TimeConditionalDiscriminator` arguments, state).

    The reference always has six down-sampling blocks, down to a 1x1 map for a 64 px image; ``smallest=1`` lets ours
    do the same at any size.
    """
    state = strip_module_prefix(state)
    blocks = sorted({int(key[4]) for key in state if key.startswith("conv") and key[4:5].isdigit()})
    if "start_conv.weight" not in state or not blocks:
        raise SynthmedError("not an official SynDiff time-conditional discriminator (no start_conv / conv<N> keys)")
    converted: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("t_embed.main."):
            ours = "time_embed." + key[len("t_embed.main.") :]
        elif key.startswith("start_conv."):
            ours = "start." + key[len("start_conv.") :]
        elif key.startswith(("final_conv.", "end_linear.")):
            ours = key.replace("end_linear.", "end.")
        elif key.startswith("conv") and key[4:5].isdigit():
            block, _, rest = key.partition(".")
            layer, _, leaf = rest.rpartition(".")
            if layer not in DISCRIMINATOR_PARTS:
                raise SynthmedError(f"unknown key {key} in an official SynDiff discriminator")
            ours = f"blocks.{int(block[4:]) - 1}.{DISCRIMINATOR_PARTS[layer]}.{leaf}"
        else:
            raise SynthmedError(f"unknown key {key} in an official SynDiff discriminator")
        converted[ours] = value.detach().clone()
    kwargs = {
        "in_channels": state["start_conv.weight"].shape[1],
        "base_channels": state["start_conv.weight"].shape[0] // 2,
        "t_embedding": state["t_embed.main.0.weight"].shape[1],
        "image_size": image_size,
        "max_blocks": len(blocks),
        "smallest": 1,
    }
    net = TimeConditionalDiscriminator(**kwargs)
    _check_and_load(net, converted, "official SynDiff discriminator")
    return kwargs, net.state_dict()
