"""Generators of the official PyTorch pix2pix and CycleGAN (junyanz/pytorch-CycleGAN-and-pix2pix) as ours.

Their checkpoints (``latest_net_G.pth``; CycleGAN's ``latest_net_G_A.pth`` and ``latest_net_G_B.pth``) are plain
state dicts of one generator, saved without the ``module.`` prefix of ``DataParallel`` (which
:func:`synthmed.weights.state.read_state_dict` removes where it is present anyway). The architecture is not saved:
it is read here from the keys and shapes, as the layouts of their ``models/networks.py`` define them.

U-Net (``unet_128``: 7 levels, ``unet_256``: 8; ``ngf`` filters at the top, at most 8 x ngf): nested
``UnetSkipConnectionBlock`` modules, each a ``Sequential`` named ``model`` holding the next block, so level k
(0 = outermost) has the prefix ``model.model.`` + ``1.model.`` + ``3.model.`` x (k - 1):

- outermost: ``0`` down conv, ``1`` the next block, ``3`` up conv (with bias), then tanh;
- middle: ``0`` LeakyReLU, ``1`` down conv, ``2`` norm, ``3`` the next block, ``4`` ReLU, ``5`` up conv, ``6`` norm
  (``7`` dropout in the ``num_downs - 5`` blocks next to the innermost when dropout is on);
- innermost: ``1`` down conv, ``3`` up conv, ``4`` norm.

Every block but the outermost returns ``cat([its input, its output])``: the skip comes before the decoder's
features, where :class:`synthmed.nn.unet.UNetGenerator` concatenates the skip second. The up convolutions that take
such a concatenation have their input channels (dimension 0 of a transposed convolution's weight) swapped in
halves, which makes the two networks compute the same function.

ResNet (``resnet_6blocks``, ``resnet_9blocks``): ``model.N`` numbered exactly as
:class:`synthmed.nn.resnet.ResnetGenerator` (reflection pad, 7x7 conv, norm, ReLU, two stride-2 convs, the blocks
from ``model.10``, two transposed convs, reflection pad, 7x7 conv with bias, tanh); a block's ``conv_block.{1, 2, 5,
6}`` (conv, norm, conv, norm; ``{1, 2, 6, 7}`` when dropout sits between them) is our ``block.{1, 2, 5, 6}``.
Their padding inside the blocks is reflection, as ours.

Norm (``--norm``): ``batch`` (pix2pix's default) has weight, bias, running_mean, running_var and
num_batches_tracked, and the convolutions before a norm have no bias; ``instance`` (CycleGAN's) is not affine and
keeps no running statistics, so it has no keys, and the convolutions have biases; ``none`` has neither. Running
statistics of an instance norm (written by versions of their code around 2018) are never used by their current
code, which drops them on loading; so are they here. Our layers that have a bias where theirs have none get zero,
the same function.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from synthmed.errors import SynthmedError
from synthmed.nn.resnet import ResnetGenerator
from synthmed.nn.unet import UNetGenerator
from synthmed.weights.state import KeyMap, convert_state

NORM_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
RUNNING_KEYS = ("running_mean", "running_var", "num_batches_tracked")
RESNET_FIRST_BLOCK = 10  # model.0-9: pad, conv, norm, ReLU and two (conv, norm, ReLU) downsamplings
LAYOUTS = (
    "U-Net (keys model.model.0.weight, model.model.1.model.1.weight, ...) or ResNet (keys model.1.weight, "
    "model.10.conv_block.1.weight, ...)"
)


@dataclass(frozen=True)
class Architecture:
    """A junyanz generator's architecture, as read from its state dict."""

    network: str  # "unet" or "resnet"
    in_channels: int
    out_channels: int
    ngf: int
    norm: str  # "batch", "instance" or "none"
    depth: int = 0  # U-Net: levels (their num_downs)
    blocks: int = 0  # ResNet: residual blocks
    dropout: bool = False  # ResNet: dropout inside the blocks (shifts the keys of their second conv)

    @property
    def name(self) -> str:
        """Their ``--netG`` name (``unet_256``, ``resnet_9blocks``)."""
        return f"unet_{2**self.depth}" if self.network == "unet" else f"resnet_{self.blocks}blocks"

    def describe(self) -> str:
        return (
            f"a {self.name} generator ({self.norm} norm, {self.in_channels} -> {self.out_channels} channels, "
            f"ngf {self.ngf})"
        )

    def build(self) -> nn.Module:
        """Our network of this architecture (the one whose state dict :func:`convert_generator` returns)."""
        if self.network == "unet":
            return UNetGenerator(self.in_channels, self.out_channels, self.ngf, self.depth, norm=self.norm)
        return ResnetGenerator(self.in_channels, self.out_channels, self.ngf, self.blocks, norm=self.norm)


def unet_prefix(level: int) -> str:
    """The key prefix of U-Net level ``level`` (0: outermost) in their nesting."""
    return "model.model." + ("1.model." if level else "") + "3.model." * max(level - 1, 0)


def read_architecture(state: dict[str, torch.Tensor]) -> Architecture:
    """The architecture of a junyanz generator's state dict (keys without the ``module.`` prefix)."""
    if any(key.startswith("model.model.") for key in state):
        return _read_unet(state)
    if any(re.match(r"model\.\d+\.conv_block\.", key) for key in state):
        return _read_resnet(state)
    first = next(iter(state))
    raise SynthmedError(
        f"not a pix2pix/CycleGAN generator: the keys (first {first!r}) are neither of their layouts, {LAYOUTS}; "
        "a discriminator's file (latest_net_D.pth) cannot translate"
    )


def _tensor(state: dict[str, torch.Tensor], key: str, dims: int, what: str) -> torch.Tensor:
    value = state.get(key)
    if value is None:
        raise SynthmedError(f"lacks key {key!r} of {what}: the file is incomplete or holds another network")
    if value.dim() != dims:
        raise SynthmedError(f"key {key!r} has shape {list(value.shape)}: not a {dims}-D convolution weight of {what}")
    return value


def _norm_of(state: dict[str, torch.Tensor], norm_prefix: str, conv_prefix: str) -> str:
    """batch (affine norm keys), instance (no norm keys, or only running statistics, and biased convolutions) or
    none (neither), from one norm layer and the convolution before it."""
    if norm_prefix + "weight" in state:
        return "batch"
    if norm_prefix + "running_mean" in state or conv_prefix + "bias" in state:
        return "instance"
    return "none"


def _read_unet(state: dict[str, torch.Tensor]) -> Architecture:
    depth = 1
    while any(key.startswith(unet_prefix(depth)) for key in state):
        depth += 1
    what = "a U-Net generator"
    first = _tensor(state, unet_prefix(0) + "0.weight", 4, what)
    last = _tensor(state, unet_prefix(0) + "3.weight", 4, what)
    if depth < 2:
        raise SynthmedError(f"lacks key {unet_prefix(1) + '1.weight'!r} of {what}: it has no inner levels")
    norm = "none"
    if depth > 2:  # the first middle level has the down norm that tells the kind
        norm = _norm_of(state, unet_prefix(1) + "2.", unet_prefix(1) + "1.")
    elif unet_prefix(1) + "1.bias" in state:
        norm = "instance"
    return Architecture("unet", int(first.shape[1]), int(last.shape[1]), int(first.shape[0]), norm, depth=depth)


def _read_resnet(state: dict[str, torch.Tensor]) -> Architecture:
    what = "a ResNet generator"
    blocks = sorted({int(m.group(1)) for key in state if (m := re.match(r"model\.(\d+)\.conv_block\.", key))})
    expected = list(range(RESNET_FIRST_BLOCK, RESNET_FIRST_BLOCK + len(blocks)))
    if blocks != expected:
        raise SynthmedError(
            f"residual blocks at model.{', model.'.join(map(str, blocks))}: {what} has them at model.10, model.11, "
            "... without gaps (another layout)"
        )
    n = len(blocks)
    first = _tensor(state, "model.1.weight", 4, what)
    last = _tensor(state, f"model.{RESNET_FIRST_BLOCK + n + 7}.weight", 4, what)
    second = state.get(f"model.{RESNET_FIRST_BLOCK}.conv_block.6.weight")
    dropout = second is not None and second.dim() == 4
    norm = _norm_of(state, "model.2.", "model.1.")
    return Architecture(
        "resnet", int(first.shape[1]), int(last.shape[0]), int(first.shape[0]), norm, blocks=n, dropout=dropout
    )


def _swap_halves(weight: torch.Tensor) -> torch.Tensor:
    """A transposed convolution's input channels (dimension 0) ``[skip, features]`` -> ``[features, skip]``."""
    half = weight.shape[0] // 2
    return torch.cat([weight[half:], weight[:half]], dim=0)


def _add_conv(keys: KeyMap, theirs: str, ours: str, biased: bool, our_bias: bool, transform=None) -> None:
    keys.add(theirs + "weight", ours + "weight", transform)
    if biased:
        keys.add(theirs + "bias", ours + "bias")
    elif our_bias:
        keys.zero.add(ours + "bias")


def _add_norm(keys: KeyMap, theirs: str, ours: str, norm: str) -> None:
    if norm == "batch":
        for name in NORM_KEYS:
            keys.add(theirs + name, ours + name)
        keys.optional.add(theirs + "num_batches_tracked")  # PyTorch before 0.4.1 did not write it
    elif norm == "instance":
        keys.ignored.update(theirs + name for name in RUNNING_KEYS)


def key_map(arch: Architecture) -> KeyMap:
    """Their keys -> ours for ``arch`` (see the module docstring)."""
    keys = KeyMap()
    biased = arch.norm == "instance"  # their use_bias
    ours_biased = arch.norm != "batch"  # ours
    if arch.network == "unet":
        d = arch.depth
        top = unet_prefix(0)
        _add_conv(keys, top + "0.", "downs.0.0.", biased, True)
        _add_conv(keys, top + "3.", f"ups.{d - 1}.1.", True, True, _swap_halves)
        for level in range(1, d):
            prefix, up = unet_prefix(level), d - 1 - level
            _add_conv(keys, prefix + "1.", f"downs.{level}.1.", biased, ours_biased)
            if level < d - 1:
                _add_norm(keys, prefix + "2.", f"downs.{level}.2.", arch.norm)
                _add_conv(keys, prefix + "5.", f"ups.{up}.1.", biased, ours_biased, _swap_halves)
                _add_norm(keys, prefix + "6.", f"ups.{up}.2.", arch.norm)
            else:  # innermost: no down norm, and the up conv takes the bottleneck alone
                _add_conv(keys, prefix + "3.", f"ups.{up}.1.", biased, ours_biased)
                _add_norm(keys, prefix + "4.", f"ups.{up}.2.", arch.norm)
        return keys
    for conv in (1, 4, 7):  # c7s1-ngf and the two downsamplings, each followed by its norm
        _add_conv(keys, f"model.{conv}.", f"model.{conv}.", biased, ours_biased)
        _add_norm(keys, f"model.{conv + 1}.", f"model.{conv + 1}.", arch.norm)
    second = 6 if arch.dropout else 5
    for index in range(RESNET_FIRST_BLOCK, RESNET_FIRST_BLOCK + arch.blocks):
        theirs, ours = f"model.{index}.conv_block.", f"model.{index}.block."
        _add_conv(keys, theirs + "1.", ours + "1.", biased, ours_biased)
        _add_norm(keys, theirs + "2.", ours + "2.", arch.norm)
        _add_conv(keys, f"{theirs}{second}.", ours + "5.", biased, ours_biased)
        _add_norm(keys, f"{theirs}{second + 1}.", ours + "6.", arch.norm)
    after = RESNET_FIRST_BLOCK + arch.blocks
    for conv in (after, after + 3):  # the two transposed convolutions, each followed by its norm
        _add_conv(keys, f"model.{conv}.", f"model.{conv}.", biased, ours_biased)
        _add_norm(keys, f"model.{conv + 1}.", f"model.{conv + 1}.", arch.norm)
    _add_conv(keys, f"model.{after + 7}.", f"model.{after + 7}.", True, True)
    return keys


def convert_generator(state: dict[str, torch.Tensor]) -> tuple[Architecture, dict[str, torch.Tensor]]:
    """(architecture, state dict of ``architecture.build()``) from a junyanz generator's state dict; a
    :class:`SynthmedError` names the first key that does not fit."""
    arch = read_architecture(state)
    ours = arch.build().state_dict()
    return arch, convert_state(state, key_map(arch), ours, arch.describe())
