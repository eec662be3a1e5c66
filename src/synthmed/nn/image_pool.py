"""History of generated images for the discriminator (Shrivastava et al., CVPR 2017; CycleGAN).

The discriminator is updated with a mix of the newest translations and up to ``size``
earlier ones, which damps oscillation between generator and discriminator. While the
pool is filling, every new image is stored and returned. Once it is full, each new image
is, with probability 1/2, returned as is; otherwise a random stored image is returned in
its place and the new one takes its slot.

The random choices use torch's global (CPU) generator, so a run seeded with
``torch.manual_seed`` is reproducible; the stored images are part of the module's
``state_dict`` (as extra state, tensors only), so a resumed run continues exactly.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class ImagePool(nn.Module):
    def __init__(self, size: int = 50):
        super().__init__()
        if size < 0:
            raise ValueError(f"image pool size must be 0 or more, got {size}")
        self.size = size
        self.images: list[torch.Tensor] = []  # each (C, H, W), detached

    def __len__(self) -> int:
        return len(self.images)

    @torch.no_grad()
    def query(self, images: torch.Tensor) -> torch.Tensor:
        """A batch of the same shape as ``images`` (B, C, H, W) to show the discriminator; detached."""
        images = images.detach()
        if self.size == 0:
            return images
        out = []
        for image in images:
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
            elif torch.rand(()) < 0.5:
                slot = int(torch.randint(0, self.size, ()))
                out.append(self.images[slot].to(image.device, image.dtype))
                self.images[slot] = image.clone()
            else:
                out.append(image)
        return torch.stack(out)

    # The stored images travel with the model's state_dict (checkpoints, exact resume).
    def get_extra_state(self) -> Any:
        return torch.stack(self.images) if self.images else torch.zeros(0)

    def set_extra_state(self, state: Any) -> None:
        if not isinstance(state, torch.Tensor) or (state.numel() and state.dim() != 4):
            raise RuntimeError("image pool state must be a (N, C, H, W) tensor")
        if len(state) > self.size:
            raise RuntimeError(f"image pool state holds {len(state)} images, more than the pool size {self.size}")
        self.images = [image.clone() for image in state] if state.numel() else []

    def _apply(self, fn, *args, **kwargs):
        # .to(device) / .half() etc. apply to the stored images as well.
        self.images = [fn(image) for image in self.images]
        return super()._apply(fn, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"size={self.size}"
