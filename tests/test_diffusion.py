"""The diffusion core: noise schedules, samplers, the conditional DDPM model and the EMA warm-up.

Everything is checked against closed forms computed here (numpy, float64), against Monte
Carlo estimates with tolerances of a few standard errors, or against exact denoisers (an
oracle that knows the clean image, and the exact posterior mean for Gaussian data), so
no test needs a trained network. Tensors stay tiny: the machine has two cores and is
shared with other jobs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from synthmed.diffusion.joint import JOINT_SAMPLERS
from synthmed.diffusion.samplers import (
    SAMPLERS,
    check_options,
    continuous_grid,
    evaluations,
    get_sampler,
    integer_grid,
    sample,
)
from synthmed.diffusion.schedule import PREDICTIONS, NoiseSchedule, posterior_between
from synthmed.engine.ema import EMA
from synthmed.errors import SynthmedError

SCHEDULE_CASES = [("linear", 1000), ("linear", 10), ("cosine", 1000), ("cosine", 10)]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Two cores shared with a training job: intra-op threads spin against each other and make
    # a tiny UNet forward take ~1 s instead of ~3 ms.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# --- reference values (numpy, float64) -----------------------------------------------------


def cosine_f(t, T):
    return np.cos((np.asarray(t, dtype=np.float64) / T + 0.008) / 1.008 * np.pi / 2) ** 2


def reference_alpha_bars(schedule: NoiseSchedule) -> np.ndarray:
    """alpha_bar from the schedule's betas, by an independent cumulative product."""
    return np.cumprod(1.0 - schedule.betas.numpy().astype(np.float64))


def reference_log_alpha_bar(schedule: NoiseSchedule, s) -> np.ndarray:
    """Piecewise-linear interpolation of log alpha_bar over the knots s = -1, 0, ..., T-1 (np.interp)."""
    knots_s = np.arange(-1, schedule.timesteps, dtype=np.float64)
    knots_v = np.concatenate([[0.0], np.log(reference_alpha_bars(schedule))])
    return np.interp(np.asarray(s, dtype=np.float64), knots_s, knots_v)


# --- 1. schedule -----------------------------------------------------------------------------


@pytest.mark.parametrize("T", [1000, 10])
def test_linear_betas_and_alpha_bars(T):
    schedule = NoiseSchedule(T, "linear")
    assert schedule.betas.dtype == torch.float64 and schedule.betas.shape == (T,)
    np.testing.assert_allclose(schedule.betas.numpy(), np.linspace(1e-4, 0.02, T), rtol=0, atol=1e-15)
    np.testing.assert_allclose(schedule.alphas.numpy(), 1 - np.linspace(1e-4, 0.02, T), rtol=0, atol=1e-15)
    np.testing.assert_allclose(schedule.alpha_bars.numpy(), np.cumprod(1 - np.linspace(1e-4, 0.02, T)), rtol=1e-12)
    assert schedule.alpha_bars[0].item() == pytest.approx(1 - 1e-4, abs=1e-15)


@pytest.mark.parametrize("T", [1000, 10])
def test_cosine_alpha_bars_follow_nichol_dhariwal(T):
    schedule = NoiseSchedule(T, "cosine")
    betas = schedule.betas.numpy()
    alpha_bars = schedule.alpha_bars.numpy()
    closed_form = cosine_f(np.arange(1, T + 1), T) / cosine_f(0, T)  # alpha_bar_t = f(t+1) / f(0)
    unclipped_betas = 1 - cosine_f(np.arange(1, T + 1), T) / cosine_f(np.arange(T), T)
    clipped = unclipped_betas > 0.999
    assert clipped.any() and clipped[-1], "f(T) ~ 0, so the last beta needs the clip"
    first_clipped = int(np.argmax(clipped))
    # Before the first clipped step alpha_bar is exactly the closed form (the product telescopes).
    np.testing.assert_allclose(alpha_bars[:first_clipped], closed_form[:first_clipped], rtol=1e-10)
    np.testing.assert_allclose(betas[clipped], 0.999, rtol=0, atol=1e-15)
    np.testing.assert_allclose(alpha_bars, reference_alpha_bars(schedule), rtol=1e-12)
    assert np.all(betas > 0) and np.all(betas <= 0.999)
    assert np.all(np.diff(alpha_bars) < 0) and 0 < alpha_bars[-1] < alpha_bars[0] < 1
    assert alpha_bars[-1] < 1e-4  # ends (almost) at pure noise


@pytest.mark.parametrize("kind,T", SCHEDULE_CASES)
def test_alpha_bar_and_snr_at_integer_steps(kind, T):
    schedule = NoiseSchedule(T, kind)
    ab = reference_alpha_bars(schedule)
    t = torch.tensor([0, 1, T // 2, T - 2, T - 1])
    got_ab = schedule.alpha_bar(t)
    got_snr = schedule.snr(t)
    assert got_ab.dtype == torch.float32 and got_snr.dtype == torch.float32
    np.testing.assert_allclose(got_ab.numpy(), ab[t.numpy()], rtol=1e-6)
    np.testing.assert_allclose(got_snr.numpy(), ab[t.numpy()] / (1 - ab[t.numpy()]), rtol=1e-5)
    # works for any shape of t
    assert schedule.alpha_bar(t.reshape(5, 1)).shape == (5, 1)


@pytest.mark.parametrize("kind,T", SCHEDULE_CASES)
def test_continuous_interpolation(kind, T):
    schedule = NoiseSchedule(T, kind)
    ab = reference_alpha_bars(schedule)
    betas = schedule.betas.numpy()
    # Integer knots, and s = -1 is clean data.
    assert schedule.log_alpha_bar_at(-1) == 0.0
    assert schedule.alpha_bar_at(-1) == 1.0
    for s in range(T):
        assert schedule.log_alpha_bar_at(s) == pytest.approx(math.log(ab[s]), rel=1e-12, abs=1e-14)
        assert schedule.log_alpha_bar_at(float(s)) == pytest.approx(math.log(ab[s]), rel=1e-12, abs=1e-14)
        assert schedule.beta_at(s) == pytest.approx(-math.log(1 - betas[s]), rel=1e-9)
        assert schedule.sigma_at(s) == pytest.approx(math.sqrt((1 - ab[s]) / ab[s]), rel=1e-9)
    # Fractional steps: linear in log alpha_bar between the knots (np.interp as reference).
    rng = np.random.default_rng(0)
    points = np.concatenate([rng.uniform(-1, T - 1, 40), [-0.5, -0.999, T - 1.5, T - 1 - 1e-9]])
    for s in points:
        expected = float(reference_log_alpha_bar(schedule, s))
        assert schedule.log_alpha_bar_at(float(s)) == pytest.approx(expected, rel=1e-10, abs=1e-12)
        assert schedule.alpha_bar_at(float(s)) == pytest.approx(math.exp(expected), rel=1e-10)
        assert schedule.sigma_at(float(s)) == pytest.approx(
            math.sqrt((1 - math.exp(expected)) / math.exp(expected)), rel=1e-9
        )
        # beta(s) is the slope -d log alpha_bar / ds of the segment containing s: -log(1 - beta_i), i = ceil(s).
        segment = min(max(int(math.ceil(s)), 0), T - 1)
        assert schedule.beta_at(float(s)) == pytest.approx(-math.log(1 - betas[segment]), rel=1e-9)
    # ... and agrees with a central finite difference inside a segment.
    for s in [-0.5, 0.5, T / 2 - 0.5, T - 1.5]:
        h = 1e-3
        slope = -(schedule.log_alpha_bar_at(s + h) - schedule.log_alpha_bar_at(s - h)) / (2 * h)
        assert schedule.beta_at(s) == pytest.approx(slope, rel=1e-6)
    # The interpolation is piecewise linear: midpoint of a segment is the mean of its ends.
    for i in [0, T // 3, T - 2]:
        mid = schedule.log_alpha_bar_at(i + 0.5)
        assert mid == pytest.approx(0.5 * (math.log(ab[i]) + math.log(ab[i + 1])), rel=1e-12)
    for bad in (-1.001, T - 1 + 1e-6, float(T)):
        with pytest.raises(ValueError):
            schedule.log_alpha_bar_at(bad)


@pytest.mark.parametrize("kind,T", SCHEDULE_CASES)
def test_posterior_closed_form(kind, T):
    schedule = NoiseSchedule(T, kind)
    ab = reference_alpha_bars(schedule)
    betas = schedule.betas.numpy()
    t = torch.tensor(sorted({0, 1, 2, T // 2, T - 1}))
    generator = torch.Generator().manual_seed(0)
    x0 = torch.rand(len(t), 1, 2, 3, generator=generator) * 2 - 1
    x_t = torch.randn(len(t), 1, 2, 3, generator=generator)
    mean, variance = schedule.posterior(x0, x_t, t)
    assert mean.shape == x0.shape and variance.shape == (len(t), 1, 1, 1)

    tn = t.numpy()
    ab_t = ab[tn]
    ab_prev = np.where(tn > 0, ab[np.maximum(tn - 1, 0)], 1.0)
    beta_t = betas[tn]
    c0 = np.sqrt(ab_prev) * beta_t / (1 - ab_t)
    c1 = np.sqrt(1 - beta_t) * (1 - ab_prev) / (1 - ab_t)
    expected_mean = c0[:, None, None, None] * x0.double().numpy() + c1[:, None, None, None] * x_t.double().numpy()
    expected_var = beta_t * (1 - ab_prev) / (1 - ab_t)
    # alpha_bar() is float32, so 1 - alpha_bar at the first steps (~1e-4) carries ~1e-3 relative error.
    np.testing.assert_allclose(mean.double().numpy(), expected_mean, rtol=0, atol=5e-4)
    np.testing.assert_allclose(variance.double().numpy().ravel(), expected_var, rtol=2e-3, atol=1e-12)
    # At t = 0 the posterior is the clean image itself.
    assert variance[0].item() == 0.0
    torch.testing.assert_close(mean[0], x0[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "kind,T,t,skip",
    [
        ("linear", 1000, 500, 1),
        ("linear", 1000, 700, 100),
        ("cosine", 10, 5, 1),
        ("cosine", 10, 8, 3),
        ("linear", 10, 0, 1),
    ],
)
def test_posterior_between_is_gaussian_conditioning(kind, T, t, skip):
    """posterior_between(ab_t, ab_prev) against conditioning the joint Gaussian of (x_prev, x_t) given x0."""
    schedule = NoiseSchedule(T, kind)
    ab = reference_alpha_bars(schedule)
    ab_t = float(ab[t])
    ab_p = float(ab[t - skip]) if t - skip >= 0 else 1.0
    a = ab_t / ab_p
    # x_prev = sqrt(ab_p) x0 + sqrt(1 - ab_p) e1, x_t = sqrt(a) x_prev + sqrt(1 - a) e2.
    cov = math.sqrt(a) * (1 - ab_p)
    slope = cov / (1 - ab_t)
    x0, x_t = torch.tensor([0.7, -0.2], dtype=torch.float64), torch.tensor([-1.3, 0.4], dtype=torch.float64)
    expected_mean = math.sqrt(ab_p) * x0 + slope * (x_t - math.sqrt(ab_t) * x0)
    expected_var = (1 - ab_p) - cov**2 / (1 - ab_t)
    mean, var = posterior_between(x0, x_t, ab_t, ab_p)
    torch.testing.assert_close(mean, expected_mean, rtol=1e-10, atol=1e-12)
    assert var == pytest.approx(expected_var, rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("kind,T,t", [("linear", 1000, 500), ("linear", 1000, 20), ("cosine", 10, 5)])
def test_posterior_matches_monte_carlo_regression(kind, T, t):
    """Simulate x_{t-1} ~ q(.|x0), x_t ~ q(.|x_{t-1}); regress x_{t-1} on x_t: slope, intercept, residual variance."""
    schedule = NoiseSchedule(T, kind)
    ab = reference_alpha_bars(schedule)
    beta = float(schedule.betas[t])
    x0 = 0.6
    n = 200_000
    rng = np.random.default_rng(1234)
    x_prev = math.sqrt(ab[t - 1]) * x0 + math.sqrt(1 - ab[t - 1]) * rng.standard_normal(n)
    x_t = math.sqrt(1 - beta) * x_prev + math.sqrt(beta) * rng.standard_normal(n)
    design = np.stack([np.ones(n), x_t], 1)
    (intercept, slope), *_ = np.linalg.lstsq(design, x_prev, rcond=None)
    residual_var = np.var(x_prev - design @ np.array([intercept, slope]))

    # The implementation's coefficients: mean(x0, x_t) = c0 x0 + c1 x_t.
    def impl(x0_value, xt_value):
        mean, var = schedule.posterior(
            torch.tensor([[[[x0_value]]]], dtype=torch.float64),
            torch.tensor([[[[xt_value]]]], dtype=torch.float64),
            torch.tensor([t]),
        )
        return mean.item(), var.item()

    c0, var = impl(1.0, 0.0)
    c1, _ = impl(0.0, 1.0)
    se_slope = math.sqrt(residual_var / (n * np.var(x_t)))
    assert slope == pytest.approx(c1, abs=5 * se_slope + 1e-4 * abs(c1))
    se_intercept = math.sqrt(residual_var / n * (1 + np.mean(x_t) ** 2 / np.var(x_t)))
    assert intercept == pytest.approx(c0 * x0, abs=5 * se_intercept + 1e-4)
    assert residual_var == pytest.approx(var, rel=5 * math.sqrt(2 / n) + 1e-3)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_q_sample_moments(kind):
    schedule = NoiseSchedule(1000, kind)
    ab = reference_alpha_bars(schedule)
    steps = [0, 50, 400, 999]
    per_step = 50_000
    t = torch.tensor(steps).repeat_interleave(per_step)
    x0 = torch.full((len(t), 1, 1, 1), 0.8)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(7))
    x_t = schedule.q_sample(x0, t, noise).double().reshape(len(steps), per_step)
    for row, step in zip(x_t, steps):
        var = 1 - ab[step]
        se_mean = math.sqrt(var / per_step)
        se_var = var * math.sqrt(2 / per_step)
        assert row.mean().item() == pytest.approx(math.sqrt(ab[step]) * 0.8, abs=5 * se_mean)
        assert row.var().item() == pytest.approx(var, abs=5 * se_var)
    # And it is exactly the affine combination of its inputs.
    small_t = torch.tensor([3, 600])
    x0s = torch.tensor([0.5, -0.25]).reshape(2, 1, 1, 1).expand(2, 1, 2, 2)
    eps = torch.tensor([1.5, -0.75]).reshape(2, 1, 1, 1).expand(2, 1, 2, 2)
    expected = torch.tensor(
        [math.sqrt(ab[s]) * a + math.sqrt(1 - ab[s]) * e for s, a, e in [(3, 0.5, 1.5), (600, -0.25, -0.75)]],
        dtype=torch.float32,
    ).reshape(2, 1, 1, 1)
    torch.testing.assert_close(schedule.q_sample(x0s, small_t, eps), expected.expand(2, 1, 2, 2), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-4)])
def test_training_target_split_prediction_round_trip(prediction, dtype, tol):
    schedule = NoiseSchedule(1000, "linear")
    generator = torch.Generator().manual_seed(3)
    t = torch.tensor([0, 10, 500, 999])
    x0 = (torch.rand(4, 1, 3, 3, generator=generator) * 2 - 1).to(dtype)
    noise = torch.randn(4, 1, 3, 3, generator=generator).to(dtype)
    ab = torch.from_numpy(reference_alpha_bars(schedule)[t.numpy()]).to(dtype).reshape(-1, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    target = NoiseSchedule.training_target(prediction, x0, noise, ab)
    independent = {"epsilon": noise, "x0": x0, "v": ab.sqrt() * noise - (1 - ab).sqrt() * x0}[prediction]
    torch.testing.assert_close(target, independent, rtol=0, atol=1e-12 if dtype == torch.float64 else 1e-6)
    x0_hat, noise_hat = NoiseSchedule.split_prediction(prediction, target, x_t, ab)
    torch.testing.assert_close(x0_hat, x0, rtol=0, atol=tol)
    torch.testing.assert_close(noise_hat, noise, rtol=0, atol=tol)
    # A Python float alpha_bar (what the samplers pass) works the same way.
    for i in range(4):
        x0_i, noise_i = NoiseSchedule.split_prediction(prediction, target[i : i + 1], x_t[i : i + 1], float(ab[i]))
        torch.testing.assert_close(x0_i, x0[i : i + 1], rtol=0, atol=tol)
        torch.testing.assert_close(noise_i, noise[i : i + 1], rtol=0, atol=tol)


def test_unknown_prediction_and_schedule_raise():
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError):
        NoiseSchedule.training_target("score", x, x, torch.tensor(0.5))
    with pytest.raises(ValueError):
        NoiseSchedule.split_prediction("score", x, x, 0.5)
    with pytest.raises(ValueError):
        NoiseSchedule(100, "quadratic")
    with pytest.raises(ValueError):
        NoiseSchedule(1, "linear")
    with pytest.raises(ValueError):
        NoiseSchedule(100, "linear", beta_start=0.02, beta_end=1e-4)


# --- 2. samplers ---------------------------------------------------------------------------------


def oracle(schedule: NoiseSchedule, x0: torch.Tensor, calls: list | None = None):
    """The perfect denoiser for a single known clean image."""

    def denoise(x, s):
        if calls is not None:
            calls.append((s, x.clone()))
        ab = schedule.alpha_bar_at(s)
        return x0.clone(), (x - math.sqrt(ab) * x0) / math.sqrt(1 - ab)

    return denoise


MU, S0 = 0.3, 0.5


def gaussian_denoiser(schedule: NoiseSchedule):
    """The exact E[x0 | x_s] for data x0 ~ N(MU, S0^2) per pixel."""

    def denoise(x, s):
        ab = schedule.alpha_bar_at(s)
        x0 = MU + math.sqrt(ab) * S0**2 * (x - math.sqrt(ab) * MU) / (ab * S0**2 + 1 - ab)
        return x0, (x - math.sqrt(ab) * x0) / math.sqrt(1 - ab)

    return denoise


def exact_flow(schedule: NoiseSchedule, z: torch.Tensor) -> torch.Tensor:
    """Where the exact probability-flow ODE takes the initial noise z (at s = T-1) for Gaussian data,
    followed by the final denoising at s = 0: in y = x / sqrt(ab), sigma coordinates
    y - MU is proportional to sqrt(S0^2 + sigma^2)."""
    ab = reference_alpha_bars(schedule)
    sigma_start = math.sqrt((1 - ab[-1]) / ab[-1])
    sigma_end = math.sqrt((1 - ab[0]) / ab[0])
    c = (z.double() / math.sqrt(ab[-1]) - MU) / math.sqrt(S0**2 + sigma_start**2)
    return MU + c * S0**2 / math.sqrt(S0**2 + sigma_end**2)


def _clean_image() -> torch.Tensor:
    return torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(11)) * 2 - 1


@pytest.mark.parametrize("steps", [1, 2, 7, 10, 50])
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_oracle_denoiser_recovers_clean_image(sampler, steps):
    schedule = NoiseSchedule(1000, "linear")
    x0 = _clean_image()
    calls = []
    out = sample(
        oracle(schedule, x0, calls),
        schedule,
        tuple(x0.shape),
        sampler=sampler,
        steps=steps,
        generator=torch.Generator().manual_seed(0),
    )
    assert out.shape == x0.shape and out.dtype == torch.float32
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-4)
    s_values = [s for s, _ in calls]
    assert len(calls) == evaluations(sampler, steps, 1000)
    assert s_values[0] == 999
    assert all(0 <= s <= 999 for s in s_values)
    assert all(a >= b for a, b in zip(s_values, s_values[1:])), "steps must run from T-1 down to 0"
    if len(calls) > 1:
        assert s_values[-1] == 0
    # The first evaluation sees pure noise, drawn from the caller's generator.
    # (the ODE goes through y = x / sqrt(ab) and back, hence one rounding)
    torch.testing.assert_close(
        calls[0][1], torch.randn(x0.shape, generator=torch.Generator().manual_seed(0)), rtol=0, atol=1e-6
    )


@pytest.mark.parametrize(
    "sampler",
    [
        "ddim",
        "ode",
    ],
)
@pytest.mark.parametrize(
    "kind",
    [
        "linear",
        "cosine",
    ],
)
def test_deterministic_samplers_follow_oracle_trajectory(kind, sampler):
    """With the oracle the probability-flow trajectory is a straight line in (sigma, y): every state the
    sampler visits is sqrt(ab) x0 + sqrt(1-ab) z' for the one noise z' implied by the starting point."""
    schedule = NoiseSchedule(1000, kind)
    x0 = _clean_image()
    calls = []
    sample(
        oracle(schedule, x0, calls),
        schedule,
        tuple(x0.shape),
        sampler=sampler,
        steps=11,
        eta=0.0,
        generator=torch.Generator().manual_seed(4),
    )
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(4))
    ab_start = schedule.alpha_bar_at(999)
    z_implied = (z - math.sqrt(ab_start) * x0) / math.sqrt(1 - ab_start)
    assert len(calls) == 11
    for s, x in calls:
        ab = schedule.alpha_bar_at(s)
        torch.testing.assert_close(
            x,
            math.sqrt(ab) * x0 + math.sqrt(1 - ab) * z_implied,
            rtol=0,
            atol=1e-4,
            msg=lambda m: f"{sampler} at s={s}: {m}",
        )


DISTRIBUTION_CASES = [
    pytest.param("ddpm", 500, {}, id="ddpm-500"),
    pytest.param("ddim", 200, {"eta": 0.0}, id="ddim-200"),
    pytest.param("em", 500, {}, id="em-500"),
    pytest.param("pc", 201, {}, id="pc-201"),
    pytest.param("pc", 201, {"predictor": "em"}, id="pc-em-201"),
    # snr = 0 switches the corrector off: the predictors alone must be samplers too.
    pytest.param("pc", 401, {"snr": 0.0}, id="pc-reverse-diffusion-only-401"),
    pytest.param("pc", 401, {"snr": 0.0, "predictor": "em"}, id="pc-em-only-401"),
    pytest.param("ode", 81, {}, id="ode-81"),
]


@pytest.mark.parametrize("sampler,steps,options", DISTRIBUTION_CASES)
@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_exact_gaussian_denoiser_reproduces_data_distribution(kind, sampler, steps, options):
    """Data x0 ~ N(0.3, 0.5^2) per pixel, exact denoiser: 4096 samples must have mean 0.3 and std 0.5.

    Standard errors for n = 4096: mean 0.5/64 = 0.0078, std 0.5/sqrt(2n) = 0.0055. The tolerances
    (0.035 ~ 4.5 SE for the mean, 0.03 ~ 5.5 SE for the std) leave ~0.01 for discretisation bias,
    which is what these budgets have (measured over 12 seeds: |bias| <= 0.015 for the std); coarse
    budgets are far outside (e.g. ddim/ddpm with 10 steps: std off by 0.11-0.18).
    """
    schedule = NoiseSchedule(1000, kind)
    out = sample(
        gaussian_denoiser(schedule),
        schedule,
        (16, 1, 16, 16),
        sampler=sampler,
        steps=steps,
        generator=torch.Generator().manual_seed(0),
        **options,
    )
    assert out.shape == (16, 1, 16, 16) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert out.mean().item() == pytest.approx(MU, abs=0.035)
    assert out.std().item() == pytest.approx(S0, abs=0.03)


@pytest.mark.parametrize("snr", [0.16, 0.5])
@pytest.mark.parametrize("predictor", ["reverse-diffusion", "em"])
def test_pc_corrector_step_hits_the_target_snr(snr, predictor):
    """The Langevin corrector moves x by step * score + sqrt(2 step) z with |step * score| / |sqrt(2 step) z|
    = snr * sqrt(alpha) (Song et al., alpha = 1 - beta of the current segment). The noise draws are
    reproduced from the seed (order: start, then corrector and predictor noise per step), and each
    sample's move is decomposed on (score, z) by least squares."""
    schedule = NoiseSchedule(1000, "linear")
    shape = (4, 1, 8, 8)
    inner = gaussian_denoiser(schedule)
    calls = []

    def denoise(x, s):
        calls.append((s, x.clone()))
        return inner(x, s)

    sample(
        denoise,
        schedule,
        shape,
        sampler="pc",
        steps=9,
        snr=snr,
        predictor=predictor,
        generator=torch.Generator().manual_seed(9),
    )
    assert len(calls) == 9  # 4 x (corrector, predictor) + final
    replay = torch.Generator().manual_seed(9)
    draws = [torch.randn(shape, generator=replay) for _ in range(1 + 2 * 4)]
    betas = schedule.betas.numpy()
    for k in range(4):
        (s_c, x_c), (s_p, x_p) = calls[2 * k], calls[2 * k + 1]
        assert s_c == s_p
        z = draws[1 + 2 * k].double()
        ab = schedule.alpha_bar_at(s_c)
        score = (-inner(x_c, s_c)[1] / math.sqrt(1 - ab)).double()
        delta = (x_p - x_c).double()
        alpha = 1 - betas[int(math.ceil(s_c))]
        for i in range(shape[0]):
            design = torch.stack([score[i].flatten(), z[i].flatten()], 1)
            solution = torch.linalg.lstsq(design, delta[i].flatten()[:, None]).solution.flatten()
            step, noise_scale = solution.tolist()
            assert (design @ solution - delta[i].flatten()).abs().max().item() < 1e-5
            assert step > 0
            assert noise_scale == pytest.approx(math.sqrt(2 * step), rel=1e-3)
            ratio = (step * score[i]).norm() / (noise_scale * z[i]).norm()
            assert ratio.item() == pytest.approx(snr * math.sqrt(alpha), rel=1e-3)


def test_coarse_budgets_are_measurably_off():
    """The distribution test above can fail: few-step ancestral sampling under-disperses."""
    schedule = NoiseSchedule(1000, "linear")
    for sampler in ("ddpm", "ddim"):
        out = sample(
            gaussian_denoiser(schedule),
            schedule,
            (16, 1, 16, 16),
            sampler=sampler,
            steps=10,
            generator=torch.Generator().manual_seed(0),
        )
        assert out.std().item() < S0 - 0.1


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_ddim_follows_the_exact_probability_flow(kind):
    schedule = NoiseSchedule(1000, kind)
    z = torch.randn(16, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    exact = exact_flow(schedule, z)
    errors = {}
    for steps in (50, 100, 200):
        out = sample(
            gaussian_denoiser(schedule),
            schedule,
            tuple(z.shape),
            sampler="ddim",
            steps=steps,
            eta=0.0,
            generator=torch.Generator().manual_seed(2),
        )
        errors[steps] = (out.double() - exact).abs().max().item()
    assert errors[200] < 0.04
    # First order (DDIM is Euler's method for the probability-flow ODE): halving the step halves the error.
    assert 1.6 < errors[50] / errors[100] < 2.5 and 1.6 < errors[100] / errors[200] < 2.5


@pytest.mark.parametrize(
    "kind",
    [
        "linear",
        "cosine",
    ],
)
def test_ode_follows_the_exact_probability_flow_at_second_order(kind):
    schedule = NoiseSchedule(1000, kind)
    z = torch.randn(16, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    exact = exact_flow(schedule, z)
    errors = {}
    for steps in (41, 81, 161):
        out = sample(
            gaussian_denoiser(schedule),
            schedule,
            tuple(z.shape),
            sampler="ode",
            steps=steps,
            generator=torch.Generator().manual_seed(2),
        )
        errors[steps] = (out.double() - exact).abs().max().item()
    assert errors[161] < 0.02
    # Heun is second order: halving the step (20 -> 40 -> 80 intervals) divides the error by ~4 in the limit;
    # at these budgets the measured ratios are 2.9-3.3, against 2.0 for DDIM (first order, test above).
    assert errors[41] / errors[81] > 2.6 and errors[81] / errors[161] > 2.8


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("steps", [2, 5, 50])
def test_ddim_with_eta_one_is_ancestral_ddpm(kind, steps):
    """Song et al.: DDIM with eta = 1 samples q(x_prev | x_t, x0_hat), i.e. it *is* the (respaced) DDPM
    chain, drawing the same noise in the same order; eta = 0.5 is a different process."""
    schedule = NoiseSchedule(1000, kind)
    denoise = gaussian_denoiser(schedule)
    kwargs = dict(shape=(4, 1, 4, 4), steps=steps)
    ddpm = sample(denoise, schedule, sampler="ddpm", generator=torch.Generator().manual_seed(3), **kwargs)
    ddim1 = sample(denoise, schedule, sampler="ddim", eta=1.0, generator=torch.Generator().manual_seed(3), **kwargs)
    ddim_half = sample(denoise, schedule, sampler="ddim", eta=0.5, generator=torch.Generator().manual_seed(3), **kwargs)
    torch.testing.assert_close(ddim1, ddpm, rtol=0, atol=1e-5)
    assert (ddim_half - ddpm).abs().max().item() > 1e-2


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_same_seed_same_output(sampler):
    schedule = NoiseSchedule(1000, "linear")
    denoise = gaussian_denoiser(schedule)

    def run(seed):
        return sample(
            denoise,
            schedule,
            (2, 1, 4, 4),
            sampler=sampler,
            steps=9,
            eta=0.0,
            generator=torch.Generator().manual_seed(seed),
        )

    assert torch.equal(run(5), run(5))
    assert (run(5) - run(6)).abs().max().item() > 1e-2


@pytest.mark.parametrize("sampler", ["ddim", "ode"])
def test_deterministic_samplers_depend_only_on_the_initial_noise(sampler):
    """eta = 0 DDIM and the ODE draw noise once: the output is a function of the start.

    Reproduce the start outside the sampler and feed a denoiser that records it: the
    generator's state afterwards shows that exactly one tensor of noise was drawn."""
    schedule = NoiseSchedule(1000, "linear")
    shape = (2, 1, 4, 4)
    generator = torch.Generator().manual_seed(8)
    sample(gaussian_denoiser(schedule), schedule, shape, sampler=sampler, steps=9, eta=0.0, generator=generator)
    reference = torch.Generator().manual_seed(8)
    torch.randn(shape, generator=reference)
    assert torch.equal(generator.get_state(), reference.get_state())


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_evaluations_counts_denoiser_calls(sampler):
    for T, budgets in ((1000, [1, 2, 3, 4, 5, 7, 10, 11, 50, 999, 1000, 1003]), (10, list(range(1, 26)))):
        schedule = NoiseSchedule(T, "cosine")
        for steps in budgets:
            if T == 1000 and steps > 60 and sampler in ("em", "pc", "ode"):
                continue  # the count formula is linear; keep it fast
            count = 0
            denoise_inner = gaussian_denoiser(schedule)

            def denoise(x, s):
                nonlocal count
                count += 1
                return denoise_inner(x, s)

            sample(
                denoise,
                schedule,
                (1, 1, 2, 2),
                sampler=sampler,
                steps=steps,
                generator=torch.Generator().manual_seed(0),
            )
            expected = evaluations(sampler, steps, T)
            assert count == expected, f"{sampler} T={T} steps={steps}: {count} calls, evaluations() says {expected}"
            assert expected <= steps, "a sampler must not exceed its budget"
            if sampler in ("ddpm", "ddim"):
                assert count == min(steps, T)
            elif sampler == "em":
                assert count == steps
            else:
                assert count >= steps - 1


@pytest.mark.parametrize("T", [2, 3, 10, 1000])
def test_grids(T):
    schedule = NoiseSchedule(T, "linear")
    for points in list(range(1, 30)) + [T - 1, T, T + 1, 2 * T]:
        if points < 1:
            continue
        cont = continuous_grid(schedule, points)
        assert len(cont) == points
        assert cont[0] == T - 1
        if points > 1:
            assert cont[-1] == 0
            np.testing.assert_allclose(np.diff(cont), -(T - 1) / (points - 1), rtol=1e-9)
        grid = integer_grid(schedule, points)
        assert all(isinstance(t, int) for t in grid)
        assert len(grid) == min(points, T)
        assert grid[0] == T - 1 and (points == 1 or grid[-1] == 0)
        assert all(a > b for a, b in zip(grid, grid[1:]))


def test_invalid_sampler_arguments():
    schedule = NoiseSchedule(10, "linear")
    denoise = gaussian_denoiser(schedule)
    with pytest.raises(ValueError):
        sample(denoise, schedule, (1, 1, 2, 2), sampler="heun")
    with pytest.raises(ValueError):
        sample(denoise, schedule, (1, 1, 2, 2), sampler="ddim", steps=0)
    with pytest.raises(ValueError):
        sample(denoise, schedule, (1, 1, 2, 2), sampler="ddim", steps=-3)
    with pytest.raises(ValueError):
        sample(denoise, schedule, (1, 1, 2, 2), sampler="ddim", eta=-0.1)
    with pytest.raises(ValueError):
        sample(denoise, schedule, (1, 1, 2, 2), sampler="pc", predictor="langevin")
    with pytest.raises(ValueError):
        evaluations("heun", 10, 1000)
    with pytest.raises(ValueError):
        evaluations("ddim", 0, 1000)


def test_sampler_registry_knows_each_samplers_budget_and_options(caplog):
    """The registry is the one place that knows a sampler's default budget, NFE, eta and chain."""
    assert list(SAMPLERS) == ["ddpm", "ddim", "em", "pc", "ode"]
    assert all(SAMPLERS[name].name == name for name in SAMPLERS)
    # with no budget given the ancestral sampler runs the whole chain, the others the model's configured budget
    assert [SAMPLERS[n].default_steps(1000, 10) for n in SAMPLERS] == [1000, 10, 10, 10, 10]
    assert [SAMPLERS[n].evaluations(9, 5) for n in SAMPLERS] == [5, 5, 9, 9, 9]
    assert [n for n in SAMPLERS if SAMPLERS[n].uses_eta] == ["ddim"]
    assert JOINT_SAMPLERS == ("ddpm", "ddim")  # PIG's joint sampler steps along the integer chain
    with pytest.raises(ValueError, match="unknown sampler 'pc'; use one of ddpm, ddim"):
        get_sampler("pc", JOINT_SAMPLERS)
    check_options("ddim", 5, 0.5, default="ddpm")
    with pytest.raises(ValueError, match="whole number"):
        check_options(None, 2.5, None, default="ddim")
    with pytest.raises(ValueError, match="whole number"):
        check_options(None, True, None, default="ddim")
    with pytest.raises(ValueError, match="eta -1"):
        check_options(None, None, -1.0, default="ddim")
    with caplog.at_level("WARNING"):
        check_options(None, None, 0.5, default="ode")
    assert "eta applies to the ddim sampler only; ignored for ode" in caplog.text


def test_models_noise_their_training_targets_with_the_schedules_forward_process(monkeypatch):
    """ddpm, ddpm-gen and pig draw x_t through NoiseSchedule.q_sample (one formula, tested above)."""
    from synthmed.models.registry import build_model

    calls = []
    original = NoiseSchedule.q_sample

    def counting(self, x0, t, noise):
        calls.append(tuple(x0.shape))
        return original(self, x0, t, noise)

    monkeypatch.setattr(NoiseSchedule, "q_sample", counting)
    tiny = {
        "image_size": 16,
        "channels": (8, 8),
        "attention_levels": (False, False),
        "num_res_blocks": 1,
        "norm_num_groups": 8,
        "num_head_channels": 8,
        "timesteps": 20,
        "batch_size": 2,
    }
    batch = {
        "source": torch.rand(2, 1, 16, 16) * 2 - 1,
        "target": torch.rand(2, 1, 16, 16) * 2 - 1,
        "label": (torch.rand(2, 1, 16, 16) > 0.8).float(),
    }
    for name, expected in (("ddpm", 1), ("ddpm-gen", 1), ("pig", 2)):
        calls.clear()
        model = build_model(name, "small", tiny)
        model.training_step(batch, 0)
        assert calls == [(2, 1, 16, 16)] * expected, name


# --- 3. the model --------------------------------------------------------------------------------


def build_tiny(**overrides):
    from synthmed.models.registry import build_model

    return build_model("ddpm", "tiny", overrides)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_tiny().eval()


def _source(batch=2):
    return torch.rand(batch, 1, 16, 16, generator=torch.Generator().manual_seed(21)) * 2 - 1


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_translate_shape_range_and_seed(tiny_model, sampler):
    source = _source()
    out = tiny_model.translate(source, sampler=sampler, steps=3, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 1, 16, 16) and out.dtype == torch.float32
    assert torch.isfinite(out).all() and out.min() >= -1 and out.max() <= 1
    again = tiny_model.translate(source, sampler=sampler, steps=3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_translate_ddim_depends_on_the_seed(tiny_model):
    source = _source()

    def run(seed):
        return tiny_model.translate(
            source, sampler="ddim", steps=3, eta=0.0, generator=torch.Generator().manual_seed(seed)
        )

    first, repeat, other = run(0), run(0), run(1)
    assert torch.equal(first, repeat)
    assert (first - other).abs().max().item() > 1e-3
    # validation_translate is the cheap deterministic sampler with its own fixed seed.
    torch.testing.assert_close(
        tiny_model.validation_translate(source), tiny_model.validation_translate(source), rtol=0, atol=0
    )


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_training_step_updates_weights(prediction):
    torch.manual_seed(0)
    model = build_tiny(prediction=prediction).train()
    before = {k: v.detach().clone() for k, v in model.network.state_dict().items()}
    source = _source(2)
    target = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(22)) * 2 - 1
    batch = {"source": source, "target": target}

    def changed():
        after = model.network.state_dict()
        return {k for k, v in before.items() if v.dtype.is_floating_point and not torch.equal(v, after[k])}

    loss = model.training_step(batch, 0)["loss"]
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.item() > 0
    # MONAI zero-initialises the UNet's output convolution (and each res-block's last conv), so the
    # first step can only move the output layer ...
    first = changed()
    assert {"out.2.conv.weight", "out.2.conv.bias"} <= first
    # ... and the next one reaches back to the input convolution.
    loss = model.training_step(batch, 1)["loss"]
    assert torch.isfinite(loss)
    second = changed()
    assert first < second and "conv_in.conv.weight" in second


class ExactNetwork(nn.Module):
    """Stands in for the UNet: knows the clean target and outputs what a perfect network of the
    given prediction type would, using this file's formulas (not the schedule's helpers)."""

    def __init__(self, schedule: NoiseSchedule, clean: torch.Tensor, source: torch.Tensor, prediction: str):
        super().__init__()
        self.schedule, self.clean, self.source, self.prediction = schedule, clean.double(), source, prediction
        self.dummy = nn.Parameter(torch.zeros(()))
        self.timesteps = []

    def forward(self, inputs, timesteps):
        assert inputs.shape[1] == 2
        torch.testing.assert_close(inputs[:, 1:], self.source, rtol=0, atol=0)  # channel 1 is the condition
        self.timesteps.append(timesteps.clone())
        log_ab = torch.from_numpy(reference_log_alpha_bar(self.schedule, timesteps.double().numpy()))
        ab = log_ab.exp().reshape(-1, 1, 1, 1)
        x = inputs[:, :1].double()
        eps = (x - ab.sqrt() * self.clean) / (1 - ab).sqrt()
        out = {"epsilon": eps, "x0": self.clean, "v": ab.sqrt() * eps - (1 - ab).sqrt() * self.clean}[self.prediction]
        return out.float() + 0 * self.dummy


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_model_conventions_with_a_perfect_network(prediction):
    """training_step's target, the denoiser's reading of the output and translate's plumbing agree:
    a perfect network has ~zero loss and translates to the clean target with every sampler."""
    torch.manual_seed(0)
    model = build_tiny(prediction=prediction)
    source = _source(3)
    clean = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(23)) * 1.8 - 0.9
    model.network = ExactNetwork(model.schedule, clean, source, prediction)
    loss = model.training_step({"source": source, "target": clean}, 0)["loss"]
    assert loss.item() < 1e-8
    assert model.network.timesteps[0].dtype in (torch.int64, torch.int32)

    # The denoiser at a fractional step returns the clean image and the matching noise.
    denoise = model.denoiser(source)
    x = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(24))
    for s in (0.0, 123.4, 998.5):
        ab = math.exp(float(reference_log_alpha_bar(model.schedule, s)))
        x0_hat, eps_hat = denoise(x, s)
        # 5e-4: split_prediction turns a float alpha_bar into a float32 tensor, so 1 - ab at s = 0 (1e-4)
        # is off by 1.7e-4 relative, which puts ~3e-4 on x0_hat for epsilon / v predictions.
        torch.testing.assert_close(x0_hat, clean, rtol=0, atol=5e-4)
        # eps_hat is compared in units of x (it is multiplied by sqrt(1 - ab) in x = sqrt(ab) x0 + sqrt(1 - ab) eps).
        eps_true = (x - math.sqrt(ab) * clean) / math.sqrt(1 - ab)
        torch.testing.assert_close(math.sqrt(1 - ab) * eps_hat, math.sqrt(1 - ab) * eps_true, rtol=0, atol=5e-4)
        torch.testing.assert_close(math.sqrt(ab) * x0_hat + math.sqrt(1 - ab) * eps_hat, x, rtol=0, atol=1e-5)

    model.eval()
    for sampler in SAMPLERS:
        out = model.translate(source, sampler=sampler, steps=7, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(out, clean, rtol=0, atol=5e-4, msg=lambda m: f"{sampler}: {m}")


def test_model_rejects_invalid_configs():
    for overrides in (
        {"attention_levels": [False]},
        {"image_size": 15},
        {"norm_num_groups": 5},
        {"prediction": "score"},
        {"sampler": "heun"},
        {"schedule": "quadratic"},
    ):
        with pytest.raises((ValueError, SynthmedError)):
            build_tiny(**overrides)


# --- 4. EMA -----------------------------------------------------------------------------------


class Holder(nn.Module):
    def __init__(self):
        super().__init__()
        self.network = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
        self.other = nn.Linear(2, 2)


def test_ema_warmup_decay():
    ema = EMA(Holder(), ("network",), 0.9999)
    assert ema.decay_at(0) == pytest.approx(0.1, abs=1e-15)
    for n in (0, 1, 2, 10, 100, 1000, 9998, 9999, 10_000, 100_000, 10**7):
        assert ema.decay_at(n) == pytest.approx(min(0.9999, (1 + n) / (10 + n)), abs=1e-15)
    assert ema.decay_at(10**7) == 0.9999
    # The warm-up only ever lowers the decay.
    assert EMA(Holder(), ("network",), 0.5).decay_at(100) == 0.5


def test_ema_update_blends_weights():
    torch.manual_seed(0)
    holder = Holder()
    ema = EMA(holder, ("network",), 0.9999)
    assert set(ema.shadow) == {"network"}
    old = {k: v.detach().clone() for k, v in holder.network.state_dict().items()}
    with torch.no_grad():
        for p in holder.network.parameters():
            p.add_(torch.randn_like(p))
        holder.network[1].num_batches_tracked.fill_(7)
    new = {k: v.detach().clone() for k, v in holder.network.state_dict().items()}
    ema.update(0)
    shadow = ema.state_dict()["network"]
    for key, value in new.items():
        if value.dtype.is_floating_point:
            torch.testing.assert_close(shadow[key], 0.9 * value + 0.1 * old[key], rtol=1e-6, atol=1e-7)
        else:
            assert torch.equal(shadow[key], value)  # integer buffers are copied
    # The model itself keeps its new weights.
    for key, value in holder.network.state_dict().items():
        assert torch.equal(value, new[key])
    # A second update at step 1 uses decay 2/11.
    with torch.no_grad():
        for p in holder.network.parameters():
            p.mul_(-2.0)
    newer = {k: v.detach().clone() for k, v in holder.network.state_dict().items()}
    expected = {k: (2 / 11) * shadow[k] + (9 / 11) * newer[k] for k in newer if newer[k].dtype.is_floating_point}
    ema.update(1)
    for key, value in expected.items():
        torch.testing.assert_close(ema.state_dict()["network"][key], value, rtol=1e-6, atol=1e-7)
    # applied() swaps the average in and restores the live weights afterwards.
    with ema.applied():
        for key, value in holder.network.state_dict().items():
            assert torch.equal(value, ema.state_dict()["network"][key])
    for key, value in holder.network.state_dict().items():
        assert torch.equal(value, newer[key])
