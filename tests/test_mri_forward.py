"""The measurement side of synthmed.mri: centred FFT, undersampling masks, SENSE operators, sensitivity
estimation, retrospective undersampling and hard data consistency (all on small images, fast)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from synthmed.errors import SynthmedError
from synthmed.mri import (
    achieved_acceleration,
    calibration_region,
    estimate_sensitivities,
    fft2c,
    gaussian_coil_sensitivities,
    hard_data_consistency,
    ifft2c,
    root_sum_of_squares,
    sense_adjoint,
    sense_combine,
    sense_forward,
    shepp_logan,
    synthetic_phase,
    undersample_image,
    undersample_kspace,
    undersampling_mask,
    zero_filled,
)
from synthmed.mri.masks import center_slice


def _random_complex(*shape: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.complex(torch.randn(shape, generator=generator), torch.randn(shape, generator=generator))


def _inner(a: torch.Tensor, b: torch.Tensor) -> complex:
    return complex((a.to(torch.complex128) * b.to(torch.complex128).conj()).sum())


# ----------------------------------------------------------------------------- FFT


@pytest.mark.parametrize("shape", [(32, 32), (31, 40), (2, 17, 16)])
def test_fft_is_unitary_and_inverted(shape):
    x = _random_complex(*shape)
    k = fft2c(x)
    assert torch.allclose(k.norm(), x.norm(), rtol=1e-5)  # Parseval
    assert torch.allclose(fft2c(ifft2c(x)), x, atol=1e-5)
    assert torch.allclose(ifft2c(k), x, atol=1e-5)


@pytest.mark.parametrize("height, width", [(32, 32), (31, 40)])
def test_centred_delta_and_dc_position(height, width):
    delta = torch.zeros(height, width, dtype=torch.complex64)
    delta[height // 2, width // 2] = 1
    k = fft2c(delta)
    # a delta at the image centre has a flat spectrum with zero phase: 1 / sqrt(H W) everywhere
    assert torch.allclose(k, torch.full_like(k, 1 / math.sqrt(height * width)), atol=1e-6)
    constant = torch.ones(height, width)
    spectrum = fft2c(constant).abs()
    assert tuple(np.unravel_index(int(spectrum.argmax()), spectrum.shape)) == (height // 2, width // 2)
    assert float(spectrum[height // 2, width // 2]) == pytest.approx(math.sqrt(height * width), rel=1e-5)
    spectrum[height // 2, width // 2] = 0
    assert float(spectrum.max()) < 1e-4


# ----------------------------------------------------------------------------- masks


@pytest.mark.parametrize("kind", ["random", "equispaced", "poisson"])
@pytest.mark.parametrize("acceleration", [4, 8])
@pytest.mark.parametrize("shape", [(64, 64), (72, 96)])
def test_mask_acceleration_and_centre(kind, acceleration, shape):
    mask = undersampling_mask(shape, kind, acceleration, center=0.08, seed=3)
    assert mask.dtype == torch.bool and tuple(mask.shape) == shape
    assert achieved_acceleration(mask) == pytest.approx(acceleration, rel=0.05)
    height, width = shape
    if kind == "poisson":
        assert bool(mask[center_slice(height, 0.08), center_slice(width, 0.08)].all())
    else:
        # whole columns (readout along axis 0), the centre columns all acquired
        assert bool((mask == mask[:1]).all())
        assert bool(mask[:, center_slice(width, 0.08)].all())
        assert bool(mask[:, width // 2].all())


def test_line_masks_along_the_other_axis():
    mask = undersampling_mask((64, 48), "random", 4, readout_axis=1)
    assert bool((mask == mask[:, :1]).all())  # whole rows
    assert bool(mask[32].all())
    assert achieved_acceleration(mask) == pytest.approx(4, rel=0.05)


def test_equispaced_lines_are_regular():
    mask = undersampling_mask((8, 128), "equispaced", 4)[0].numpy()
    centre = center_slice(128, 0.08)
    lines = np.flatnonzero(mask)
    for side in (lines[lines < centre.start], lines[lines >= centre.stop]):
        gaps = np.diff(side)
        # a fractional spacing rounded to the grid: two neighbouring gap sizes, at least R
        assert len(gaps) > 5 and gaps.max() - gaps.min() <= 1 and gaps.min() >= 4


@pytest.mark.parametrize("kind", ["random", "poisson"])
def test_masks_are_reproducible_by_seed(kind):
    a = undersampling_mask((64, 64), kind, 4, seed=7)
    assert torch.equal(a, undersampling_mask((64, 64), kind, 4, seed=7))
    assert not torch.equal(a, undersampling_mask((64, 64), kind, 4, seed=8))


def test_poisson_mask_is_denser_at_the_centre():
    mask = undersampling_mask((96, 96), "poisson", 8, seed=0).numpy()
    yy, xx = np.mgrid[:96, :96]
    radius = np.hypot(yy - 48, xx - 48)
    inner, outer = mask[(radius > 10) & (radius < 24)].mean(), mask[radius > 36].mean()
    assert inner > 1.5 * outer > 0
    # Poisson-disc: away from the dense centre, no two samples are grid neighbours
    far = mask & (radius > 36)
    assert not (far[:, 1:] & far[:, :-1]).any() and not (far[1:] & far[:-1]).any()


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(kind="radial"), "unknown undersampling mask kind"),
        (dict(acceleration=0.5), "acceleration"),
        (dict(acceleration=float("nan")), "acceleration"),
        (dict(center=0.0), "centre fraction"),
        (dict(center=1.0), "centre fraction"),
        (dict(center=0.5), "exceeds"),
        (dict(kind="poisson", acceleration=100, center=0.3), "exceeds"),
        (dict(shape=(0, 64)), "empty"),
    ],
)
def test_mask_refusals(kwargs, words):
    arguments = dict(shape=(64, 64), kind="random", acceleration=4) | kwargs
    with pytest.raises(SynthmedError, match=words):
        undersampling_mask(**arguments)


def test_acceleration_one_samples_everything():
    for kind in ("random", "equispaced", "poisson"):
        assert bool(undersampling_mask((32, 32), kind, 1).all())


# ----------------------------------------------------------------------------- undersampling, data consistency


def test_undersampling_and_zero_filled_single_coil():
    image = shepp_logan(64)
    mask = undersampling_mask((64, 64), "random", 4)
    y, x = undersample_image(image, mask, phase_seed=1)
    assert torch.allclose(x.abs(), image, atol=1e-6)  # the phase has unit magnitude
    assert float((x.angle() - x.angle()[32, 32]).abs().max()) > 0.3  # and is not constant
    assert bool((y[~mask.expand_as(y)] == 0).all())
    full = fft2c(x)
    assert torch.allclose(y[mask], full[mask])
    assert torch.allclose(zero_filled(fft2c(x)), image, atol=1e-5)
    assert torch.equal(synthetic_phase((64, 64), seed=1), synthetic_phase((64, 64), seed=1))


def test_hard_data_consistency_single_coil():
    image = shepp_logan(64)
    mask = undersampling_mask((64, 64), "poisson", 4, seed=2)
    y, truth = undersample_image(image, mask, phase_seed=0)
    prior = _random_complex(64, 64, seed=5)
    projected = hard_data_consistency(prior, y, mask)
    k = fft2c(projected)
    relative = float((k[mask] - y[mask]).norm() / y[mask].norm())
    assert relative < 1e-5
    assert torch.allclose(k[~mask], fft2c(prior)[~mask], atol=1e-5)
    assert torch.allclose(hard_data_consistency(truth, y, mask), truth, atol=1e-5)  # the truth is a fixed point
    with pytest.raises(SynthmedError, match="does not match"):
        hard_data_consistency(prior, y, mask[:32])


def test_hard_data_consistency_multi_coil_keeps_a_consistent_truth():
    image = shepp_logan(48).to(torch.complex64)
    sens = gaussian_coil_sensitivities((48, 48), 4)
    sens = sens / root_sum_of_squares(sens)  # normalised: sum_c |S_c|^2 = 1
    mask = undersampling_mask((48, 48), "random", 4)
    y = sense_forward(image, sens, mask)
    assert torch.allclose(hard_data_consistency(image, y, mask, sens), image, atol=1e-5)
    # a wrong prior moves towards the data: the sampled k-space error shrinks
    prior = torch.zeros_like(image)
    corrected = hard_data_consistency(prior, y, mask, sens)
    assert float((sense_forward(corrected, sens, mask) - y).norm()) < 0.8 * float(y.norm())


# ----------------------------------------------------------------------------- SENSE


def test_sense_adjoint_identity():
    sens = _random_complex(6, 40, 36, seed=1)
    mask = undersampling_mask((40, 36), "random", 3, seed=1)
    x = _random_complex(40, 36, seed=2)
    y = _random_complex(6, 40, 36, seed=3)
    left, right = _inner(sense_forward(x, sens, mask), y), _inner(x, sense_adjoint(y, sens, mask))
    assert abs(left - right) < 1e-5 * abs(left)
    # batched images give the same per image
    batch = torch.stack([x, 2 * x])
    assert torch.allclose(sense_forward(batch, sens, mask)[1], 2 * sense_forward(x, sens, mask), atol=1e-4)


def test_sense_refusals():
    sens = _random_complex(4, 16, 16)
    with pytest.raises(SynthmedError, match="do not match"):
        sense_forward(_random_complex(16, 12), sens)
    with pytest.raises(SynthmedError, match="coils"):
        sense_adjoint(_random_complex(3, 16, 16), sens)


def test_estimated_sensitivities_give_the_truth():
    size = 64
    image = shepp_logan(size) * synthetic_phase((size, size), seed=4)
    true_sens = gaussian_coil_sensitivities((size, size), 8)
    full = fft2c(true_sens * image)
    # what a perfect normalised SENSE combination returns: the object weighted by the coils' combined profile
    expected = image.abs() * root_sum_of_squares(true_sens)
    inside = shepp_logan(size) > 0
    for kind in ("random", "poisson"):
        mask = undersampling_mask((size, size), kind, 4)
        y = undersample_kspace(full, mask)
        sens = estimate_sensitivities(y, mask=mask)
        assert sens.shape == true_sens.shape
        weight = sens.abs().square().sum(dim=0)
        assert torch.allclose(weight[inside], torch.ones(()), atol=1e-4)  # normalised inside the object
        combined = sense_combine(ifft2c(full), sens).abs()
        error = float((combined - expected)[inside].norm() / expected[inside].norm())
        assert error < 0.03, (kind, error)
        rss = root_sum_of_squares(ifft2c(full))
        assert torch.allclose(rss, expected, atol=1e-4)  # RSS of full data is the same weighted object
        # the sensitivities can also come from the non-zeros of the k-space alone
        assert torch.allclose(estimate_sensitivities(y), sens)


def test_calibration_region():
    mask = undersampling_mask((64, 64), "random", 4)
    rows, cols = calibration_region(mask)
    assert (rows.start, rows.stop) == (1, 64)  # symmetric about row 32: rows 1..63
    assert cols.start <= 32 - 2 and cols.stop >= 32 + 3
    empty = torch.zeros(8, 8, dtype=torch.bool)
    with pytest.raises(SynthmedError, match="centre is not sampled"):
        calibration_region(empty)
