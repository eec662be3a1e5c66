"""Feature-space losses of MedGAN (Armanious et al. 2020): perceptual, style and content.

With real target ``y`` and translation ``y_hat``:

- perceptual (discriminator features D_i, i = 0 the images themselves):
  ``sum_i w_i * mean |D_i(y) - D_i(y_hat)|`` (the L1 distance divided by the layer's h * w * c);
- style (pretrained features V_j, e.g. VGG-19 relu{1..5}_1): Gram matrices
  ``Gr(V)[m, n] = sum_{h,w} V[h, w, m] V[h, w, n] / (h * w * c)``, and
  ``sum_j w_j / (4 c_j^2) * ||Gr(V_j(y)) - Gr(V_j(y_hat))||_F^2``;
- content: ``sum_j w_j / (h_j * w_j * c_j) * ||V_j(y) - V_j(y_hat)||_F^2``, i.e. the mean squared difference.

Each is averaged over the batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, C) Gram matrices normalised by C * H * W."""
    b, c, h, w = features.shape
    flat = features.float().reshape(b, c, h * w)
    return flat @ flat.transpose(1, 2) / (c * h * w)


def _weights(weights: Sequence[float] | None, n: int) -> list[float]:
    if weights is None:
        return [1.0] * n
    if len(weights) != n:
        raise ValueError(f"{len(weights)} layer weights for {n} layers")
    return [float(w) for w in weights]


def perceptual_loss(
    real: Sequence[torch.Tensor], fake: Sequence[torch.Tensor], weights: Sequence[float] | None = None
) -> torch.Tensor:
    """Weighted mean absolute difference of matching feature maps (layer 0 may be the images themselves)."""
    return sum(w * (r.float() - f.float()).abs().mean() for w, r, f in zip(_weights(weights, len(real)), real, fake))


def style_loss(
    real: Sequence[torch.Tensor], fake: Sequence[torch.Tensor], weights: Sequence[float] | None = None
) -> torch.Tensor:
    total = 0.0
    for w, r, f in zip(_weights(weights, len(real)), real, fake):
        channels = r.shape[1]
        difference = gram_matrix(r) - gram_matrix(f)
        total = total + w / (4 * channels**2) * difference.pow(2).sum(dim=(1, 2)).mean()
    return total


def content_loss(
    real: Sequence[torch.Tensor], fake: Sequence[torch.Tensor], weights: Sequence[float] | None = None
) -> torch.Tensor:
    return sum(w * (r.float() - f.float()).pow(2).mean() for w, r, f in zip(_weights(weights, len(real)), real, fake))
