"""Exponential moving average of selected submodules (used for validation and translation)."""

from __future__ import annotations

import contextlib

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, module_names: tuple[str, ...], decay: float):
        self.decay = decay
        self.modules = {name: getattr(model, name) for name in module_names}
        self.shadow = {
            name: {k: v.detach().clone() for k, v in module.state_dict().items()} for name, module in self.modules.items()
        }

    @torch.no_grad()
    def update(self) -> None:
        for name, module in self.modules.items():
            for key, value in module.state_dict().items():
                shadow = self.shadow[name][key]
                if value.dtype.is_floating_point:
                    shadow.lerp_(value.detach(), 1.0 - self.decay)
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
