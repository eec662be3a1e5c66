"""The small protocol every method follows, so the engine never special-cases one.

A model is an ``nn.Module`` that

- is built from a config dataclass (``Config``), whose defaults are the paper's and
  whose named presets (``PRESETS``: at least ``paper`` and ``small``) override them;
- owns its optimisers (GANs need several) and does its own backward passes in
  ``training_step(batch, step) -> dict`` of detached scalar losses, stepping each optimiser
  through ``self.step_optimizer(optimizer)`` (never ``optimizer.step()`` directly): under
  ``torchrun`` that first averages the gradients over the processes, which keeps them in step;
- translates with ``translate(source, **sampling) -> target`` (translators) or generates
  with ``sample(n, **sampling) -> dict`` (generators: ``{"image"[, "mask"]}``), on tensors in [-1, 1] of
  shape (B, 1, H, W).
  Stochastic translators (``stochastic = True``, e.g. diffusion) also take sampler options
  and a ``generator`` for their noise; deterministic ones take none.
- may override ``validation_translate(source)``: what the engine runs on validation
  slices during training (diffusion models use a cheap few-step sampler there).

The engine moves the model to its device, sets ``amp_dtype`` (autocast inside
``self.autocast()``), keeps EMA copies of ``ema_modules``, checkpoints
``state_dict`` plus the optimiser states, and handles logging and progress.
"""

from __future__ import annotations

import contextlib
from dataclasses import fields
from typing import Any, ClassVar

import torch
from torch import nn

from synthmed.engine.distributed import average_gradients


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

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.amp_dtype: torch.dtype | None = None

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
    def step_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """``optimizer.step()`` with the gradients averaged over the training processes first (a no-op in one
        process); see :mod:`synthmed.engine.distributed`."""
        average_gradients(p for group in optimizer.param_groups for p in group["params"])
        optimizer.step()

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def autocast(self):
        """Mixed precision where the engine enabled it (bf16 on GPUs that have it)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def config_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self.config, f.name)) for f in fields(self.config)}


def _plain(value):
    return list(value) if isinstance(value, tuple) else value
