"""The pieces of diffusion anomaly detection that need no model: simplex noise and the voxel-level scores."""

import numpy as np
import pytest
import torch

from synthmed.diffusion.simplex import simplex_3d, simplex_noise
from synthmed.metrics.anomaly import auprc, auroc, best_dice, dice_at


def _neighbour_correlation(field: torch.Tensor) -> float:
    a, b = field[..., :, :-1].reshape(-1), field[..., :, 1:].reshape(-1)
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


def test_simplex_noise_is_normalised_per_field_and_spatially_correlated():
    generator = torch.Generator().manual_seed(0)
    noise = simplex_noise((6, 2, 64, 64), generator=generator)
    assert noise.shape == (6, 2, 64, 64) and noise.dtype == torch.float32
    fields = noise.reshape(12, -1)
    assert torch.allclose(fields.mean(1), torch.zeros(12), atol=1e-5)
    assert torch.allclose(fields.std(1), torch.ones(12), atol=1e-4)
    # smooth: neighbours are strongly correlated, unlike white noise
    assert _neighbour_correlation(noise) > 0.8
    assert abs(_neighbour_correlation(torch.randn(12, 64, 64))) < 0.05
    # most of the energy at low spatial frequencies: the top half of the spectrum holds little of it
    spectrum = torch.fft.rfft2(noise.reshape(12, 64, 64)).abs() ** 2
    low = spectrum[:, :16, :16].sum() + spectrum[:, -16:, :16].sum()
    assert low / spectrum.sum() > 0.8
    # every field is its own draw
    assert float(torch.corrcoef(fields[:2])[0, 1]) < 0.5


def test_simplex_noise_is_reproducible_with_a_generator_and_3d_fields_are_smooth_along_depth():
    a = simplex_noise((2, 1, 32, 32), generator=torch.Generator().manual_seed(3))
    b = simplex_noise((2, 1, 32, 32), generator=torch.Generator().manual_seed(3))
    c = simplex_noise((2, 1, 32, 32), generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    volume = simplex_noise((1, 1, 16, 32, 32), generator=torch.Generator().manual_seed(0))
    along_depth = torch.corrcoef(torch.stack([volume[..., :-1, :, :].reshape(-1), volume[..., 1:, :, :].reshape(-1)]))
    assert float(along_depth[0, 1]) > 0.8
    with pytest.raises(ValueError):
        simplex_noise((4,))
    with pytest.raises(ValueError):
        simplex_noise((8, 8), persistence=0)


def test_single_octave_simplex_is_continuous_bounded_and_zero_at_lattice_vertices():
    permutation = torch.cat([torch.randperm(256, generator=torch.Generator().manual_seed(0))] * 2)
    points = torch.rand(20000, 3, generator=torch.Generator().manual_seed(1)) * 40
    values = simplex_3d(points, permutation)
    assert values.abs().max() <= 1.0 and values.std() > 0.2
    nearby = simplex_3d(points + 1e-3, permutation)
    assert (values - nearby).abs().max() < 0.02
    # an integer point whose coordinates sum to a multiple of 3 is a lattice vertex, where the noise is zero
    assert float(simplex_3d(torch.tensor([[3.0, 5.0, 7.0]]), permutation)) == pytest.approx(0.0, abs=1e-6)


def test_auroc_and_auprc_against_hand_computed_values():
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    labels = np.array([0, 0, 1, 1])
    # pairs (positive, negative): (0.35 > 0.1), (0.35 < 0.4), (0.8 > both): 3 of 4
    assert auroc(scores, labels) == pytest.approx(0.75)
    # descending: 0.8 (tp) P=1 R=.5; 0.4 (fp); 0.35 (tp) P=2/3 R=1 -> AP = .5*1 + .5*2/3
    assert auprc(scores, labels) == pytest.approx(0.5 + 1 / 3)
    # ties count half
    assert auroc(np.array([1.0, 1.0]), np.array([0, 1])) == pytest.approx(0.5)
    assert auroc(np.array([0.2, 0.3]), np.array([1, 1])) is None and auprc(scores, np.zeros(4)) is None
    rng = np.random.default_rng(0)
    noise = rng.random(20000)
    assert auroc(noise, rng.random(20000) > 0.9) == pytest.approx(0.5, abs=0.03)


def test_best_dice_picks_the_threshold_and_dice_at_applies_it():
    scores = np.array([0.9, 0.8, 0.7, 0.2, 0.1, 0.75])
    labels = np.array([1, 1, 0, 0, 0, 1])
    dice, threshold = best_dice(scores, labels)
    assert dice == pytest.approx(1.0) and threshold == pytest.approx(0.75)
    assert dice_at(scores, labels, threshold) == pytest.approx(1.0)
    # a threshold chosen elsewhere: 0.7 also marks the healthy 0.7 voxel: 2*3 / (4 + 3)
    assert dice_at(scores, labels, 0.7) == pytest.approx(6 / 7)
    assert best_dice(scores, np.zeros(6)) == (0.0, float("inf"))
    assert dice_at(scores, np.zeros(6), 2.0) == 1.0
