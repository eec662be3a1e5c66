"""Fréchet Inception Distance (FID, Heusel et al. 2017) between two sets of 2D images.

FID = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2}), the Fréchet (Wasserstein-2) distance between two Gaussians
fitted to Inception-v3 pool features (2048-d, :mod:`synthmed.nn.inception`) of the real and the generated images.

- Weights are never downloaded: the caller gives a local Inception-v3 state dict (``--inception-weights PATH``).
  Published FID values use pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (variant ``"fid"``);
  torchvision's ImageNet weights give a different (not comparable) number. :func:`fid_or_unavailable` reports the
  metric as unavailable when no file is given, rather than inventing one.
- The matrix square root: ``Tr((S1 S2)^{1/2}) = Tr((S1^{1/2} S2 S1^{1/2})^{1/2})`` (S1 S2 is similar to the
  symmetric positive semi-definite ``S1^{1/2} S2 S1^{1/2}``, so their eigenvalues, all real and >= 0, agree). We
  eigendecompose the symmetric S1 (``numpy.linalg.eigh``), keep its eigenvalues above a round-off threshold
  (``max eigenvalue * d * machine epsilon``; smaller or negative ones are round-off of a positive semi-definite
  matrix and are set to zero), form the symmetric ``S1^{1/2} S2 S1^{1/2}`` on that subspace and sum the square
  roots of its eigenvalues, again ignoring those under the same round-off threshold (the square root would turn
  round-off of 1e-15 into 3e-8 each). This is exact for singular covariances (fewer samples
  than feature dimensions) and never produces the complex round-off of ``scipy.linalg.sqrtm(S1 @ S2)``, so
  pytorch-fid's fallback of adding ``eps * I`` to both covariances when the product is singular is not needed; for
  non-singular covariances the two agree to round-off.
- With fewer images than feature dimensions, :func:`frechet_distance_of_features` computes the same value from the
  centred features (singular values of an n1 x n2 matrix), exactly and faster.
- Statistics use the unbiased covariance (``numpy.cov``, ``ddof=1``), in float64, as pytorch-fid.
- FID is biased upwards at small sample sizes; with fewer than :data:`RECOMMENDED_SAMPLES` (2048, the feature
  dimension) images in a set a warning is logged, but the value is computed.

:func:`frechet_distance` and :func:`feature_statistics` need only numpy; the functions that run the network import
torch lazily, so importing this module does not import torch. (It is not re-exported from ``synthmed.metrics``:
``from synthmed.metrics.fid import fid`` there would make the attribute ``synthmed.metrics.fid`` the function and
break ``import synthmed.metrics.fid as ...``.)
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from synthmed.errors import SynthmedError

if TYPE_CHECKING:  # pragma: no cover
    from synthmed.nn.inception import InceptionV3Features

log = logging.getLogger(__name__)

__all__ = [
    "NO_WEIGHTS_MESSAGE",
    "RECOMMENDED_SAMPLES",
    "feature_statistics",
    "fid",
    "fid_or_unavailable",
    "frechet_distance",
    "frechet_distance_of_features",
    "inception_features",
]

RECOMMENDED_SAMPLES = 2048
NO_WEIGHTS_MESSAGE = "no Inception-v3 weights given (--inception-weights PATH)"


def _as_statistics(mu, sigma, name: str) -> tuple[np.ndarray, np.ndarray]:
    mu = np.atleast_1d(np.asarray(mu, dtype=np.float64))
    sigma = np.atleast_2d(np.asarray(sigma, dtype=np.float64))
    if mu.ndim != 1 or sigma.shape != (mu.size, mu.size):
        raise ValueError(f"{name}: mean of shape {mu.shape} and covariance of shape {sigma.shape} do not match")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"{name}: mean or covariance has non-finite values")
    return mu, (sigma + sigma.T) / 2


def _trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr((S1 S2)^{1/2}) for symmetric positive semi-definite S1, S2 (see the module docstring)."""
    values, vectors = np.linalg.eigh(sigma1)
    keep = _above_round_off(values)
    if not keep.any():
        return 0.0
    half = vectors[:, keep] * np.sqrt(values[keep])  # S1^{1/2} restricted to its range: (d, r)
    inner = half.T @ sigma2 @ half  # (r, r), same non-zero eigenvalues as S1^{1/2} S2 S1^{1/2}
    eigen = np.linalg.eigvalsh((inner + inner.T) / 2)
    return float(np.sqrt(eigen[_above_round_off(eigen)]).sum())


def _above_round_off(values: np.ndarray) -> np.ndarray:
    """Eigenvalues of a symmetric positive semi-definite matrix that are not round-off of zero: above
    ``max eigenvalue * size * machine epsilon`` (eigh's absolute error is of the order of eps * ||matrix||)."""
    largest = max(float(values.max(initial=0.0)), 0.0)
    return values > largest * values.size * np.finfo(np.float64).eps


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2}) between N(mu1, S1) and N(mu2, S2).

    Covariances must be symmetric positive semi-definite (singular ones are fine). The result is clipped at 0
    (round-off can make the distance of identical statistics a tiny negative number)."""
    mu1, sigma1 = _as_statistics(mu1, sigma1, "first statistics")
    mu2, sigma2 = _as_statistics(mu2, sigma2, "second statistics")
    if mu1.shape != mu2.shape:
        raise ValueError(f"statistics of different dimensions: {mu1.size} and {mu2.size}")
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * _trace_sqrt_product(sigma1, sigma2))
    return max(value, 0.0)


def _checked_features(features) -> np.ndarray:
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2:
        raise ValueError(f"features must be (n, d), got shape {features.shape}")
    if features.shape[0] < 2:
        raise SynthmedError(f"FID needs at least 2 images per set, got {features.shape[0]}")
    if not np.isfinite(features).all():
        raise SynthmedError("FID: the Inception features contain non-finite values")
    return features


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean (d,) and unbiased covariance (d, d) of features (n, d), in float64; needs n >= 2."""
    features = _checked_features(features)
    return features.mean(axis=0), np.atleast_2d(np.cov(features, rowvar=False))


def _as_image_batch(images, name: str) -> np.ndarray:
    array = images.detach().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
    if array.ndim == 4 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 3:
        raise SynthmedError(f"FID: {name} images must be (n, H, W) or (n, 1, H, W), got shape {array.shape}")
    if array.shape[0] == 0:
        raise SynthmedError(f"FID: no {name} images")
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        raise SynthmedError(f"FID: {name} images contain non-finite values")
    low, high = float(array.min()), float(array.max())
    if low < -1.05 or high > 1.05:
        log.warning("FID: %s images span [%.3g, %.3g]; the network expects [-1, 1]", name, low, high)
    return array


def inception_features(images, network: InceptionV3Features, batch_size: int = 32, device="cpu") -> np.ndarray:
    """Pool features (n, 2048), float64, of images (n, H, W) or (n, 1, H, W) in [-1, 1] (numpy or torch)."""
    import torch

    array = _as_image_batch(images, "input")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    network = network.to(device).eval()
    outputs = []
    with torch.inference_mode():
        for start in range(0, array.shape[0], batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(array[start : start + batch_size])).to(device)
            outputs.append(network(batch.unsqueeze(1)).double().cpu().numpy())
    return np.concatenate(outputs, axis=0)


def _fid_with_network(real_images, fake_images, network, batch_size: int, device) -> float:
    real = _as_image_batch(real_images, "real")
    fake = _as_image_batch(fake_images, "generated")
    smallest = min(real.shape[0], fake.shape[0])
    if smallest < RECOMMENDED_SAMPLES:
        log.warning(
            "FID from %d real and %d generated images: fewer than %d samples per set bias FID upwards; "
            "compare values only at equal sample sizes",
            real.shape[0],
            fake.shape[0],
            RECOMMENDED_SAMPLES,
        )
    return frechet_distance_of_features(
        inception_features(real, network, batch_size, device), inception_features(fake, network, batch_size, device)
    )


def frechet_distance_of_features(features1, features2) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (n1, d) and (n2, d) (mean, unbiased covariance).

    The same value as ``frechet_distance(*feature_statistics(features1), *feature_statistics(features2))``. When both
    sets have fewer samples than dimensions (covariances of rank < d, the usual case of a quick evaluation) it works
    on the centred features A1, A2 instead of the d x d covariances: Tr S = ||A||_F^2 / (n - 1) and
    Tr((S1 S2)^{1/2}) = (sum of the singular values of A1 A2^T) / sqrt((n1 - 1)(n2 - 1)), which is exact, costs
    O(n1 n2 d) instead of a d x d eigendecomposition, and takes no square root of round-off."""
    f1, f2 = _checked_features(features1), _checked_features(features2)
    if f1.shape[1] != f2.shape[1]:
        raise ValueError(f"features of different dimensions: {f1.shape[1]} and {f2.shape[1]}")
    (n1, d), n2 = f1.shape, f2.shape[0]
    if max(n1, n2) >= d:
        return frechet_distance(*feature_statistics(f1), *feature_statistics(f2))
    mu1, mu2 = f1.mean(axis=0), f2.mean(axis=0)
    a1, a2 = f1 - mu1, f2 - mu2
    diff = mu1 - mu2
    trace1 = float(np.sum(a1 * a1)) / (n1 - 1)
    trace2 = float(np.sum(a2 * a2)) / (n2 - 1)
    cross = float(np.linalg.svd(a1 @ a2.T, compute_uv=False).sum()) / np.sqrt((n1 - 1) * (n2 - 1))
    return max(float(diff @ diff) + trace1 + trace2 - 2 * cross, 0.0)


def fid(
    real_images,
    fake_images,
    weights_path: str | Path | None = None,
    *,
    network: InceptionV3Features | None = None,
    variant: str = "auto",
    batch_size: int = 32,
    device="cpu",
) -> float:
    """FID between two image sets ((n, H, W) or (n, 1, H, W), in [-1, 1]); Inception-v3 loaded from
    ``weights_path`` (see :func:`synthmed.nn.inception.load_inception`), or an already loaded ``network``."""
    if (weights_path is None) == (network is None):
        raise ValueError("give exactly one of weights_path and network")
    if network is None:
        from synthmed.nn.inception import load_inception

        network = load_inception(weights_path, variant=variant)
    return _fid_with_network(real_images, fake_images, network, batch_size, device)


def fid_or_unavailable(
    real, fake, weights_path: str | Path | None, *, variant: str = "auto", batch_size: int = 32, device="cpu"
) -> dict:
    """``{"fid": value, "weights": path, "variant": ..., "n_real": n, "n_fake": m}``, or, without weights,
    ``{"fid": None, "unavailable": "no Inception-v3 weights given (--inception-weights PATH)"}`` (never a made-up
    number). A weight file that is given but wrong raises :class:`SynthmedError`."""
    if weights_path is None or str(weights_path) == "":
        return {"fid": None, "unavailable": NO_WEIGHTS_MESSAGE}
    from synthmed.nn.inception import load_inception

    network = load_inception(weights_path, variant=variant)
    value = _fid_with_network(real, fake, network, batch_size, device)
    return {
        "fid": value,
        "weights": str(weights_path),
        "variant": network.variant,
        "n_real": int(len(real)),
        "n_fake": int(len(fake)),
    }
