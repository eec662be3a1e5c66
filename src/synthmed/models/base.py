"""The small protocol every method follows, so the engine never special-cases one.

A model is an ``nn.Module`` that

- is built from a config dataclass (``Config``), whose defaults are the paper's and
  whose named presets (``PRESETS``: at least ``paper`` and ``small``) override them;
- owns its optimisers (GANs need several) and does its own backward passes in
  ``training_step(batch, step) -> dict`` of detached scalar losses, through ``self.backward(loss)``
  (never ``loss.backward()`` directly: under ``--amp fp16`` the loss is scaled first) and stepping
  each optimiser through ``self.step_optimizer(optimizer)`` (never ``optimizer.step()`` directly):
  under ``torchrun`` that first averages the gradients over the processes, which keeps them in step,
  and under fp16 it unscales them and skips a step whose gradients overflowed;
- translates with ``translate(source, **sampling) -> target`` (translators) or generates
  with ``sample(n, **sampling) -> dict`` (generators: ``{"image"[, "mask"]}``), on tensors in [-1, 1] of
  shape (B, 1, H, W).
  Stochastic translators (``stochastic = True``, e.g. diffusion) also take sampler options
  and a ``generator`` for their noise; deterministic ones take none.
- may override ``validation_translate(source)``: what the engine runs on validation
  slices during training (diffusion models use a cheap few-step sampler there).

The engine moves the model to its device, sets ``amp_dtype`` (autocast inside ``self.autocast()``) and,
for fp16, ``grad_scaler`` (updated once per training step), keeps EMA copies of ``ema_modules``,
checkpoints ``state_dict`` plus the optimiser and scaler states, and handles logging and progress.
"""

from __future__ import annotations

import contextlib
from dataclasses import fields
from typing import Any, ClassVar

import torch
from torch import nn

from synthmed.runtime.distributed import average_gradients


class SynthesisModel(nn.Module):
    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    paired: ClassVar[bool] = True
    task: ClassVar[str] = "translate"  # or "generate"
    Config: ClassVar[type]
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}
    ema_modules: ClassVar[tuple[str, ...]] = ()
    stochastic: ClassVar[bool] = False  # translate() draws noise (several samples give an uncertainty map)
    sampling_options: ClassVar[tuple[str, ...]] = ()  # keyword options of translate() users may set
    directions: ClassVar[tuple[str, ...]] = ("A2B",)  # ("A2B", "B2A"): also translate_reverse(target -> source)
    makes_masks: ClassVar[bool] = False  # generators: sample() also returns a lesion "mask"
    # Translators that take 2.5D input (``train --context K``): their config has ``context``, the number of
    # neighbouring slices (odd, the slice itself in the middle) given to the networks as source channels. Only the
    # A -> B direction takes them: a reverse translation (B -> A) of an unpaired model stays single-slice.
    takes_context: ClassVar[bool] = False
    # Networks left out of ``--compile``: torch.compile cannot differentiate twice, which gradient penalties (R1) need.
    uncompiled_modules: ClassVar[tuple[str, ...]] = ()
    # Translation/generation on a CPU keeps the networks' feature maps channels_last, where that was measured to be
    # faster (benchmarks/diffusion_inference.py): the convolutions then skip a layout conversion at every call.
    channels_last_inference: ClassVar[bool] = False
    # Networks built from synthmed.nn.fused layers, whose float32 3x3 convolutions on one CPU thread use Winograd's
    # algorithm, which reads NCHW maps: such a model translates NCHW there, channels_last otherwise.
    fused_winograd: ClassVar[bool] = False

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.amp_dtype: torch.dtype | None = None
        self.grad_scaler: torch.amp.GradScaler | None = None  # set by the engine for fp16 mixed precision

    # --- engine hooks -------------------------------------------------------------
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {}

    def schedulers(self) -> dict[str, Any]:
        return {}

    def training_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor | float]:
        raise TypeError(f"{type(self).__name__} does not train")

    def translate(self, source: torch.Tensor) -> torch.Tensor:
        raise TypeError(f"{type(self).__name__} is not a translator")

    def translate_reverse(self, target: torch.Tensor) -> torch.Tensor:
        """Target modality -> source modality, for models trained in both directions (``B2A``)."""
        raise TypeError(f"{type(self).__name__} translates in one direction only")

    def sample(self, n: int, **sampling: Any) -> dict[str, torch.Tensor]:
        """Generators: ``n`` new slices, ``{"image": (n, 1, H, W) in [-1, 1][, "mask": 0/1]}``."""
        raise TypeError(f"{type(self).__name__} is not a generator")

    def preview(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Generators: a cheap ``sample`` for the sample grids written during training."""
        return self.sample(n, generator=generator)

    def validation_translate(self, source: torch.Tensor) -> torch.Tensor:
        return self.translate(source)

    def check_sampling(self, **options: Any) -> None:
        """Raise ValueError for sampling options this model cannot use (checked before any work)."""

    # --- helpers ------------------------------------------------------------------
    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``; under fp16 mixed precision the loss is multiplied by the grad scaler's factor first,
        so that small gradients do not underflow to zero in fp16 (:meth:`step_optimizer` divides it out again)."""
        (self.grad_scaler.scale(loss) if self.grad_scaler is not None else loss).backward()

    def input_gradient(self, output: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """d output / d inputs with a graph, for gradient penalties (R1). Taken on the unscaled output even under
        fp16: the generic recipe (scale, then divide) overflowed the input gradients to inf at the first scales tried,
        and a discriminator's gradient w.r.t. its input is of order one, where fp16 is safe. The penalty then goes
        into a loss that :meth:`backward` scales as usual."""
        return torch.autograd.grad(output, inputs, create_graph=True)[0]

    def unscaled(self, gradient: torch.Tensor) -> torch.Tensor:
        """A ``.grad`` left by :meth:`backward`, divided by the fp16 loss scale (itself when there is none)."""
        return gradient if self.grad_scaler is None else gradient / self.grad_scaler.get_scale()

    def step_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """``optimizer.step()`` with the gradients averaged over the training processes first (a no-op in one
        process; see :mod:`synthmed.runtime.distributed`). Under fp16 the scaler unscales the gradients and skips the
        step if any is inf or NaN (after the averaging, so every process skips the same steps)."""
        average_gradients(p for group in optimizer.param_groups for p in group["params"])
        if self.grad_scaler is not None:
            self.grad_scaler.step(optimizer)
        else:
            optimizer.step()

    @property
    def size_multiple(self) -> int:
        """Slice sides this model's networks take are multiples of it (translation pads to it): the largest power of
        two dividing the training image size, which covers every network here (U-Nets halving a 64 px patch down to
        1 px need 64, the others less)."""
        size = int(getattr(self.config, "image_size", 1))
        return size & -size

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def autocast(self):
        """Mixed precision where the engine enabled it (``--amp``: bf16 on GPUs that have it, or fp16)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def centre_slice(self, source: torch.Tensor) -> torch.Tensor:
        """The translated slice itself out of a 2.5D source (B, context, H, W): its middle channel."""
        middle = source.shape[1] // 2
        return source[:, middle : middle + 1]

    def slice_by_slice(self, network, stack: torch.Tensor) -> torch.Tensor:
        """A single-slice network (B, 1, H, W) -> (B, 1, H', W') applied to each channel of a 2.5D stack
        (B, K, H, W) -> (B, K, H', W'). Unpaired translators use it to run their reverse networks over a target's
        neighbours, making the estimated source stack their 2.5D forward network takes."""
        n, k = stack.shape[:2]
        if k == 1:
            return network(stack)
        out = network(stack.reshape(n * k, 1, *stack.shape[2:]))
        return out.reshape(n, k, *out.shape[2:])

    def config_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self.config, f.name)) for f in fields(self.config)}


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def check_context(config) -> None:
    """Refuse a 2.5D context that is not an odd number of slices."""
    if config.context < 1 or config.context % 2 == 0:
        raise ValueError(f"context {config.context}: give an odd number of slices (1, 3, 5, ...)")


def check_network_channels(config) -> tuple[int, int]:
    """The (in, out) channels of a translator's generator: ``(context, 1)`` for a grey network, else the config's
    ``network_channels`` (an RGB network takes one slice repeated, so only without 2.5D context)."""
    channels = tuple(int(c) for c in config.network_channels)
    if len(channels) != 2 or min(channels) < 1:
        raise ValueError(f"network_channels {list(config.network_channels)}: give two positive counts like [3, 3]")
    if channels == (1, 1):
        return config.context, 1
    if config.context != 1:
        raise ValueError(
            f"network_channels {list(channels)} (a network made for colour pictures) takes single slices; "
            f"context {config.context} needs a grey network"
        )
    return channels
