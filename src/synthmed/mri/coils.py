"""Multi-coil (SENSE) encoding, its adjoint, coil sensitivity estimation and coil combination.

A receive array of C coils sees the image ``x`` (H, W) weighted by each coil's smooth complex sensitivity
``S_c``; each coil's k-space is sampled on the same mask ``M``. The SENSE encoding operator and its adjoint are

    A(x)   = M * F(S_c * x)                       for every coil c -> (C, H, W)
    A^H(y) = sum_c conj(S_c) * F^H(M * y_c)                          -> (H, W)

with ``F`` the centred orthonormal FFT (:mod:`synthmed.mri.fourier`). When the sensitivities are normalised to
``sum_c |S_c|^2 = 1`` (as :func:`estimate_sensitivities` returns them) and the mask is all ones, ``A^H A`` is the
identity on the object support, and ``A^H`` of fully sampled data is the optimal (SENSE, Roemer) coil
combination of the coil images.

Sensitivities are estimated here by the *low-resolution ratio* method: the fully sampled calibration region at
the centre of k-space, tapered by a Hann window (which avoids the ringing of a hard cut), gives low-resolution
coil images; dividing each by their root-sum-of-squares cancels the object and leaves the coil profiles. It is
simple, needs no eigen-decomposition and no tuning beyond a threshold, and is accurate where the calibration
region covers the (smooth) sensitivities and the object is smooth at that resolution. ESPIRiT (Uecker et al.
2014), which derives the sensitivities from the null space of a calibration matrix, is better near sharp
object edges, where the low-resolution object is not smooth, and with a field of view smaller than the object
(fold-over, where it needs two sets of maps); BART's ``ecalib`` computes it for those cases.
"""

from __future__ import annotations

import torch

from synthmed.errors import SynthmedError
from synthmed.mri.fourier import fft2c, ifft2c


def _masked(y: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return y if mask is None else y * mask.to(device=y.device)


def _check_sens(x: torch.Tensor, sens: torch.Tensor, what: str) -> None:
    if sens.ndim != 3 or tuple(sens.shape[-2:]) != tuple(x.shape[-2:]):
        raise SynthmedError(
            f"coil sensitivities of shape {tuple(sens.shape)} do not match {what} of shape {tuple(x.shape)}; "
            "give sensitivities (C, H, W) with the same (H, W)"
        )


def sense_forward(x: torch.Tensor, sens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``A(x) = M * F(S * x)``: image(s) ``(..., H, W)`` -> masked multi-coil k-space ``(..., C, H, W)``.
    ``mask`` (broadcastable to (H, W), boolean or 0/1) of ``None`` means fully sampled."""
    _check_sens(x, sens, "the image")
    return _masked(fft2c(sens * x.unsqueeze(-3)), mask)


def sense_adjoint(y: torch.Tensor, sens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``A^H(y) = sum_c conj(S_c) * F^H(M * y_c)``: multi-coil k-space ``(..., C, H, W)`` -> image
    ``(..., H, W)``; the exact adjoint of :func:`sense_forward` with the same arguments."""
    _check_sens(y, sens, "the k-space")
    if y.shape[-3] != sens.shape[0]:
        raise SynthmedError(f"k-space has {y.shape[-3]} coils but the sensitivities have {sens.shape[0]}")
    return (sens.conj() * ifft2c(_masked(y, mask))).sum(dim=-3)


def root_sum_of_squares(coil_images: torch.Tensor, dim: int = -3) -> torch.Tensor:
    """``sqrt(sum_c |I_c|^2)`` over the coil dimension: the standard magnitude combination when the
    sensitivities are unknown. It weights the image by the coils' combined profile ``sqrt(sum_c |S_c|^2)`` and
    loses the phase, which is why reconstruction uses SENSE with estimated sensitivities instead."""
    return coil_images.abs().square().sum(dim=dim).sqrt()


def calibration_region(mask: torch.Tensor) -> tuple[slice, slice]:
    """The largest centred block of a boolean (H, W) mask that is fully sampled and symmetric about the
    k-space centre ``(H // 2, W // 2)``: the calibration region (autocalibration signal) of the acquisition.
    A line mask gives full height (the readout) by the centre lines; a Poisson mask its centre rectangle."""
    mask = torch.as_tensor(mask).bool()
    if mask.ndim != 2:
        raise SynthmedError(f"the calibration region needs a 2D mask; got shape {tuple(mask.shape)}")
    height, width = mask.shape
    cy, cx = height // 2, width // 2
    if not bool(mask[cy, cx]):
        raise SynthmedError("the k-space centre is not sampled: no calibration region for sensitivity estimation")

    def half_run(line: torch.Tensor, centre: int) -> int:
        # the largest h with line[centre - h : centre + h + 1] all sampled
        h = 0
        while centre - h - 1 >= 0 and centre + h + 1 < line.numel() and line[centre - h - 1] and line[centre + h + 1]:
            h += 1
        return h

    hy, hx = half_run(mask[:, cx], cy), half_run(mask[cy, :], cx)
    while not bool(mask[cy - hy : cy + hy + 1, cx - hx : cx + hx + 1].all()):
        hy, hx = max(hy - 1, 0), max(hx - 1, 0)
    return slice(cy - hy, cy + hy + 1), slice(cx - hx, cx + hx + 1)


def _hann(length: int, device, dtype) -> torch.Tensor:
    # A symmetric Hann window without its two zero end points: every calibration sample contributes.
    return torch.hann_window(length + 2, periodic=False, dtype=dtype, device=device)[1:-1]


def estimate_sensitivities(
    kspace: torch.Tensor,
    mask: torch.Tensor | None = None,
    calibration: tuple[slice, slice] | None = None,
    threshold: float = 0.05,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Coil sensitivities ``(C, H, W)`` (complex, ``sum_c |S_c|^2 = 1`` inside the object, 0 outside) from
    multi-coil k-space ``(C, H, W)`` by the low-resolution ratio method (see the module docstring).

    The calibration region is ``calibration`` (two slices), else the centred fully sampled block of ``mask``
    (:func:`calibration_region`), else that of the k-space's non-zero samples. Where the low-resolution
    root-sum-of-squares falls below ``threshold`` times its maximum (background: noise or nothing) the
    sensitivities are set to zero rather than amplifying noise; ``eps`` guards the division.
    """
    if kspace.ndim != 3:
        raise SynthmedError(f"multi-coil k-space must be (C, H, W); got shape {tuple(kspace.shape)}")
    if not 0 <= threshold < 1:
        raise SynthmedError(f"threshold {threshold!r} must lie in [0, 1)")
    if calibration is None:
        sampled = mask if mask is not None else (kspace.abs().sum(dim=0) > 0)
        calibration = calibration_region(sampled)
    rows, cols = calibration
    real = kspace.real.dtype
    window = torch.zeros(kspace.shape[-2:], dtype=real, device=kspace.device)
    window[rows, cols] = torch.outer(
        _hann(rows.stop - rows.start, kspace.device, real), _hann(cols.stop - cols.start, kspace.device, real)
    )
    low = ifft2c(kspace * window)
    rss = root_sum_of_squares(low)
    sens = low / (rss + eps)
    return sens * (rss >= threshold * rss.max()).to(sens.dtype)


def sense_combine(coil_images: torch.Tensor, sens: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """The pixel-wise least-squares coil combination ``sum_c conj(S_c) I_c / sum_c |S_c|^2`` of coil images
    ``(..., C, H, W)``: complex, phase kept, noise-optimal for white noise; 0 where no coil has sensitivity."""
    _check_sens(coil_images, sens, "the coil images")
    weight = sens.abs().square().sum(dim=0)
    combined = (sens.conj() * coil_images).sum(dim=-3)
    return torch.where(weight > eps, combined / weight.clamp_min(eps), torch.zeros_like(combined))
