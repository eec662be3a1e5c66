"""Exponential moving average of selected submodules (used for validation and translation).

The decay warms up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so that short
runs (and the first thousands of steps of long ones) are not dominated by the random
initial weights: with decay 0.9999 and no warm-up, the average after 3000 steps would still
be 74% initialisation. The warm-up depends on the step only, so a resumed run continues it.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, module_names: tuple[str, ...], decay: float):
        self.decay = decay
        self.modules = {name: getattr(model, name) for name in module_names}
        self.shadow = {
            name: {k: v.detach().clone() for k, v in module.state_dict().items()}
            for name, module in self.modules.items()
        }

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1.0 + step) / (10.0 + step))

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Fold in the current weights after optimisation step number ``step`` (0-based)."""
        weight = 1.0 - self.decay_at(step)
        for name, module in self.modules.items():
            for key, value in module.state_dict().items():
                shadow = self.shadow[name][key]
                if value.dtype.is_floating_point:
                    shadow.lerp_(value.detach(), weight)
                else:
                    shadow.copy_(value)

    def state_dict(self) -> dict:
        return {name: dict(values) for name, values in self.shadow.items()}

    def load_state_dict(self, state: dict) -> None:
        for name, values in state.items():
            for key, value in values.items():
                self.shadow[name][key].copy_(value)

    @contextlib.contextmanager
    def applied(self):
        """Temporarily put the averaged weights into the model."""
        backup = {name: {k: v.detach().clone() for k, v in m.state_dict().items()} for name, m in self.modules.items()}
        try:
            for name, module in self.modules.items():
                module.load_state_dict(self.shadow[name])
            yield
        finally:
            for name, module in self.modules.items():
                module.load_state_dict(backup[name])
