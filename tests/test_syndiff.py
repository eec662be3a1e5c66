"""SynDiff: few-step VP schedule, NCSN++ generator, time-conditional discriminator, one training step,
translation in both directions, end to end, and a learning test."""

import json
import math

import numpy as np
import pytest
import torch

from synthmed.diffusion.few_step import FewStepSchedule, vp_alpha_bar
from synthmed.engine.trainer import Trainer, TrainSettings
from synthmed.errors import SynthmedError
from synthmed.models.registry import available_models, build_model
from synthmed.nn.discriminators import PatchDiscriminator
from synthmed.nn.ncsnpp import NCSNppGenerator, fir_downsample, fir_upsample
from synthmed.nn.resnet import ResnetGenerator
from synthmed.nn.time_discriminator import TimeConditionalDiscriminator, minibatch_stddev

TINY = dict(available_models()["syndiff"].PRESETS["tiny"])  # the registered tiny preset
GENERATORS = ("diffusive_a", "diffusive_b", "generator_ab", "generator_ba")
DISCRIMINATORS = ("discriminator_diff_a", "discriminator_diff_b", "discriminator_a", "discriminator_b")


def tiny_model(**extra):
    torch.manual_seed(0)
    return build_model("syndiff", "tiny", extra)


def unpaired_batch(n=2, size=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    source = torch.rand(n, 1, size, size, generator=g) * 2 - 1
    return {
        "source": source,
        "target": torch.tanh(2 * torch.rand(n, 1, size, size, generator=g) - 1),
        "mask": torch.ones(n, 1, size, size),
    }


def wake_up(network: torch.nn.Module) -> torch.nn.Module:
    """Give the zero-initialised last convolutions of the residual branches small random weights.

    NCSN++ and the DDGAN discriminator start every residual branch at zero, so at initialisation the
    time and latent conditioning (which act inside those branches) cannot reach the output yet."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, torch.nn.Conv2d) and not module.weight.any():
                module.weight.copy_(torch.randn(module.weight.shape, generator=g) * 0.05)
    return network


# --- Few-step schedule ------------------------------------------------------------------------


def test_schedule_levels_are_the_vp_marginals_on_the_grid():
    schedule = FewStepSchedule(4, 0.1, 20.0)
    times = np.arange(5) / 4 * (1 - 1e-3) + 1e-3
    assert np.allclose(schedule.times.numpy(), times)
    log_mean = -0.25 * times**2 * (20.0 - 0.1) - 0.5 * times * 0.1
    vp = np.exp(2 * log_mean)  # alpha_bar = 1 - sigma^2
    assert np.allclose(schedule.alpha_bars.numpy()[1:], vp[1:] / vp[0], rtol=1e-12)
    assert schedule.alpha_bars[0] == 1 and abs(vp[0] - 1) < 1.2e-4  # level 0: clean data (s_0 = 1e-3 is ~clean)
    assert np.allclose(schedule.betas.numpy(), 1 - vp[1:] / vp[:-1], rtol=1e-12)
    assert vp_alpha_bar(1.0) == pytest.approx(math.exp(-10.05))
    # Large steps: after 4 of them the signal is gone (alpha_bar ~ 4e-5); the first step already removes half.
    assert schedule.alpha_bars[-1] < 1e-4 and 0.4 < schedule.alpha_bars[1] < 0.6
    with pytest.raises(ValueError):
        FewStepSchedule(0)


def test_posterior_coefficients_match_the_ddpm_formulas():
    schedule = FewStepSchedule(4)
    # Independently, in numpy: betas from the VP formula, then the DDPM posterior of Ho et al. (eq. 7).
    s = np.arange(5) / 4 * (1 - 1e-3) + 1e-3
    ab_grid = np.exp(2 * (-0.25 * s**2 * 19.9 - 0.05 * s))
    betas = 1 - ab_grid[1:] / ab_grid[:-1]
    alphas = 1 - betas
    alphas_cumprod = np.cumprod(alphas)
    alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
    coef_x0 = betas * np.sqrt(alphas_cumprod_prev) / (1 - alphas_cumprod)
    coef_xt = (1 - alphas_cumprod_prev) * np.sqrt(alphas) / (1 - alphas_cumprod)
    variance = betas * (1 - alphas_cumprod_prev) / (1 - alphas_cumprod)

    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 1, 3, 3, generator=g, dtype=torch.float64)
    x_next = torch.randn(4, 1, 3, 3, generator=g, dtype=torch.float64)
    t = torch.arange(4)
    mean, var = schedule.posterior(x0, x_next, t)
    expected = torch.from_numpy(coef_x0).view(-1, 1, 1, 1) * x0 + torch.from_numpy(coef_xt).view(-1, 1, 1, 1) * x_next
    assert torch.allclose(mean, expected, atol=1e-12)
    assert np.allclose(var.flatten().numpy(), variance, atol=1e-15)
    assert variance[0] == 0
    # At t = 0 the posterior is x0 itself, and posterior_sample adds no noise there.
    sample = schedule.posterior_sample(x0, x_next, torch.zeros(4, dtype=torch.long), generator=g)
    assert torch.allclose(sample, x0, atol=1e-12)
    assert not torch.allclose(
        schedule.posterior_sample(x0, x_next, torch.full((4,), 2), generator=g),
        schedule.posterior(x0, x_next, torch.full((4,), 2))[0],
    )


def test_q_sample_and_the_forward_pair_have_the_right_statistics():
    schedule = FewStepSchedule(4)
    g = torch.Generator().manual_seed(0)
    n = 200_000
    x0 = torch.full((n, 1, 1, 1), 0.6, dtype=torch.float64)
    for level in range(5):
        x = schedule.q_sample(x0, torch.full((n,), level), generator=g)
        ab = float(schedule.alpha_bars[level])
        assert x.mean().item() == pytest.approx(math.sqrt(ab) * 0.6, abs=0.01)
        assert x.std().item() == pytest.approx(math.sqrt(1 - ab), abs=0.01)
    for t in range(4):
        x_t, x_next = schedule.q_sample_pair(x0, torch.full((n,), t), generator=g)
        ab_t, ab_next = float(schedule.alpha_bars[t]), float(schedule.alpha_bars[t + 1])
        assert x_t.mean().item() == pytest.approx(math.sqrt(ab_t) * 0.6, abs=0.01)
        assert x_next.mean().item() == pytest.approx(math.sqrt(ab_next) * 0.6, abs=0.01)
        assert x_next.std().item() == pytest.approx(math.sqrt(1 - ab_next), abs=0.01)
        covariance = ((x_t - x_t.mean()) * (x_next - x_next.mean())).mean().item()
        assert covariance == pytest.approx(math.sqrt(ab_next / ab_t) * (1 - ab_t), abs=0.01)
    with pytest.raises(ValueError):
        schedule.q_sample_pair(x0[:1], torch.tensor([4]))


# --- Networks -----------------------------------------------------------------------------------


def test_fir_resampling_keeps_constants_and_halves_or_doubles_the_size():
    x = torch.full((1, 3, 8, 8), 2.0)
    down, up = fir_downsample(x), fir_upsample(x)
    assert down.shape == (1, 3, 4, 4) and up.shape == (1, 3, 16, 16)
    assert torch.allclose(down[..., 1:-1, 1:-1], x[..., :2, :2]) and torch.allclose(
        up[..., 2:-2, 2:-2], torch.full((1, 3, 12, 12), 2.0)
    )


@pytest.mark.parametrize("size", [32, 64])
def test_ncsnpp_generator_shapes_and_conditioning(size):
    torch.manual_seed(0)
    net = wake_up(
        NCSNppGenerator(
            2,
            1,
            base_channels=8,
            channel_mult=(1, 1, 2, 2, 4, 4),
            num_res_blocks=1,
            attention_resolutions=(16,),
            image_size=size,
            nz=10,
            z_embedding=16,
        )
    )
    assert net.channel_mult == (1, 1, 2, 2, 4, 4)[: 1 + int(math.log2(size // 4))]  # smallest map 4 px
    assert len(net.down_attention) == 1 and len(net.up_attention) == 1  # the 16 px level
    x, z = torch.randn(2, 2, size, size), torch.randn(2, 10)
    t = torch.tensor([0, 3])
    with torch.no_grad():
        y = net(x, t, z)
        assert y.shape == (2, 1, size, size) and y.abs().max() <= 1
        assert not torch.allclose(y, net(x, t, torch.randn(2, 10)), atol=1e-5)
        assert not torch.allclose(y, net(x, torch.tensor([1, 2]), z), atol=1e-5)
        assert not torch.allclose(y[:1], net(x[:1], t[:1].flip(0) + 1, z[:1]), atol=1e-5)


def test_ncsnpp_generator_refuses_bad_sizes():
    net = NCSNppGenerator(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, image_size=16, nz=4, z_embedding=8)
    with pytest.raises(ValueError, match="divisible"):
        net(torch.zeros(1, 2, 15, 15), torch.zeros(1), torch.zeros(1, 4))
    with pytest.raises(ValueError, match="power-of-two"):
        NCSNppGenerator(image_size=48)


@pytest.mark.parametrize("size", [32, 64])
def test_time_conditional_discriminator_gives_one_logit_per_image(size):
    torch.manual_seed(0)
    net = wake_up(TimeConditionalDiscriminator(2, base_channels=8, t_embedding=16, image_size=size))
    assert len(net.blocks) == int(math.log2(size // 4))  # down to 4 px
    x, x_next, t = torch.randn(3, 1, size, size), torch.randn(3, 1, size, size), torch.tensor([0, 1, 3])
    with torch.no_grad():
        out = net(x, t, x_next)
        assert out.shape == (3, 1) and torch.isfinite(out).all()
        assert not torch.allclose(out, net(x, torch.tensor([2, 2, 2]), x_next), atol=1e-6)
        assert not torch.allclose(out, net(x, t, torch.randn(3, 1, size, size)), atol=1e-6)
        assert net(x[:1], t[:1], x_next[:1]).shape == (1, 1)  # batch 1 (the paper's): a constant stddev channel


def test_minibatch_stddev_channel():
    x = torch.randn(4, 3, 5, 5)
    y = minibatch_stddev(x)
    assert y.shape == (4, 4, 5, 5) and torch.equal(y[:, :3], x)
    expected = (x.var(0, unbiased=False) + 1e-8).sqrt().mean()
    assert torch.allclose(y[:, 3], expected.expand(4, 5, 5))
    assert minibatch_stddev(torch.randn(5, 3, 2, 2)).shape == (5, 4, 2, 2)  # 5 images: groups of one


# --- Model ----------------------------------------------------------------------------------------


def test_registered_as_a_stochastic_unpaired_two_way_translator():
    cls = available_models()["syndiff"]
    assert not cls.paired and cls.stochastic and cls.task == "translate" and cls.directions == ("A2B", "B2A")
    assert cls.ema_modules == ("diffusive_a", "diffusive_b") and cls.sampling_options == ()
    paper = cls.Config()
    assert (paper.image_size, paper.timesteps, paper.beta_min, paper.beta_max) == (256, 4, 0.1, 20.0)
    assert (paper.generator_channels, paper.channel_mult, paper.num_res_blocks, paper.attention_resolutions) == (
        64,
        (1, 1, 2, 2, 4, 4),
        2,
        (16,),
    )
    assert (paper.nz, paper.z_embedding, paper.lambda_l1, paper.lambda_cycle, paper.lambda_adv) == (
        100,
        256,
        0.5,
        0.5,
        1.0,
    )
    assert (paper.r1_gamma, paper.lazy_reg, paper.lr_g, paper.lr_d, paper.lr_min, paper.betas) == (
        1.0,
        10,
        1.6e-4,
        1e-4,
        1e-5,
        (0.5, 0.9),
    )
    assert (paper.ema_decay, paper.batch_size) == (0.999, 1)


def test_paper_preset_network_sizes():
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = build_model("syndiff", "paper")
    millions = {
        name: sum(p.numel() for p in getattr(model, name).parameters()) / 1e6 for name in GENERATORS + DISCRIMINATORS
    }
    # Reference: NCSN++ 39.7 M, time-conditional discriminators 27.7 M, ResNet generators 7.8 M, PatchGANs 2.8 M.
    assert millions["diffusive_a"] == millions["diffusive_b"] == pytest.approx(39.7, abs=0.1)
    assert millions["discriminator_diff_a"] == millions["discriminator_diff_b"] == pytest.approx(27.7, abs=0.1)
    assert millions["generator_ab"] == pytest.approx(7.8, abs=0.05)
    assert millions["discriminator_a"] == pytest.approx(2.8, abs=0.05)
    assert isinstance(model.generator_ab, ResnetGenerator) and isinstance(model.discriminator_a, PatchDiscriminator)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"image_size": 48}, "power of two"),
        ({"image_size": 8}, "at least 16"),
        ({"timesteps": 0}, "timesteps"),
        ({"lazy_reg": 0}, "lazy_reg"),
        ({"lr_g": 0.0}, "lr_g"),
        ({"lambda_l1": -1.0}, "lambda_l1"),
        ({"betas": [0.5, 1.5]}, "betas"),
        ({"ema_decay": 1.0}, "ema_decay"),
        ({"channel_mult": [1, 0]}, "channel_mult"),
    ],
)
def test_invalid_settings_are_refused(overrides, message):
    with pytest.raises(SynthmedError, match=message):
        build_model("syndiff", "tiny", overrides)


@pytest.mark.filterwarnings(r"ignore:Seems like `optimizer.step\(\)` has been overridden")
def test_training_step_updates_all_eight_networks_each_on_its_own_step():
    model = tiny_model()
    model.train()
    before = {
        name: [p.detach().clone() for p in getattr(model, name).parameters()] for name in GENERATORS + DISCRIMINATORS
    }
    seen = {}

    def has_grad(name):
        return [p.grad is not None and bool(p.grad.any()) for p in getattr(model, name).parameters()]

    def spy(role, optimizer):
        step = optimizer.step

        def wrapped(*args, **kwargs):
            seen[role] = {name: has_grad(name) for name in GENERATORS + DISCRIMINATORS}
            if role == "discriminator":
                seen["d_grads"] = {
                    name: [None if p.grad is None else p.grad.clone() for p in getattr(model, name).parameters()]
                    for name in DISCRIMINATORS
                }
            return step(*args, **kwargs)

        optimizer.step = wrapped

    for role, optimizer in model.optimizers().items():
        spy(role, optimizer)
    losses = model.training_step(unpaired_batch(), 0)
    assert {"loss_g", "loss_d", "adv_diff", "adv_cycle", "l1", "cycle", "r1"} <= set(losses)
    assert all(torch.isfinite(torch.as_tensor(v)) for v in losses.values())
    assert losses["r1"] > 0  # step 0 is a regularisation step
    # Discriminator step: every discriminator has gradients, no generator has any (fakes are detached).
    for name in DISCRIMINATORS:
        assert any(seen["discriminator"][name]), name
    for name in GENERATORS:
        assert not any(seen["discriminator"][name]), name
    # Generator step: every generator has gradients; the discriminators' are those of their own step.
    for name in GENERATORS:
        assert any(seen["generator"][name]), name
    for name in DISCRIMINATORS:
        for old, param in zip(seen["d_grads"][name], getattr(model, name).parameters()):
            assert param.grad is None if old is None else torch.equal(old, param.grad), name
    for name in GENERATORS + DISCRIMINATORS:
        after = list(getattr(model, name).parameters())
        assert any(not torch.equal(a, b) for a, b in zip(before[name], after)), f"{name} did not change"
    assert all(p.requires_grad for p in model.parameters())
    # Lazy R1: not on the next step, again on step 10.
    assert model.training_step(unpaired_batch(), 1)["r1"] == 0
    assert model.training_step(unpaired_batch(), 10)["r1"] > 0


def joint_training_step(model, batch, step):
    """The training step written as one loss per optimiser (the seed's equations 1-3 summed), with both
    directions' graphs alive together: the reference the memory-saving step must reproduce exactly."""
    import torch.nn.functional as F

    a, b, cfg = batch["source"], batch["target"], model.config
    opt_g, opt_d = model.optimizers()["generator"], model.optimizers()["discriminator"]

    def forward():
        a_hat, b_hat = model.generator_ba(b), model.generator_ab(a)
        draw = model._draw_diffusion(a, b)
        a0 = model.diffusive_a(torch.cat([draw["a_next"], b_hat], 1), draw["t_a"], draw["z_a"])
        a_fake = model.schedule.posterior_sample(a0, draw["a_next"], draw["t_a"])
        b0 = model.diffusive_b(torch.cat([draw["b_next"], a_hat], 1), draw["t_b"], draw["z_b"])
        b_fake = model.schedule.posterior_sample(b0, draw["b_next"], draw["t_b"])
        return a_hat, b_hat, draw, a0, a_fake, b0, b_fake

    dda, ddb, d_a, d_b = (getattr(model, n) for n in DISCRIMINATORS)
    with torch.no_grad():
        a_hat, b_hat, draw, _, a_fake, _, b_fake = forward()
    a_t, b_t = draw["a_t"].requires_grad_(True), draw["b_t"].requires_grad_(True)
    real_a, real_b = dda(a_t, draw["t_a"], draw["a_next"]), ddb(b_t, draw["t_b"], draw["b_next"])
    loss_d = (
        F.softplus(-real_a).mean()
        + F.softplus(-real_b).mean()
        + F.softplus(dda(a_fake, draw["t_a"], draw["a_next"])).mean()
        + F.softplus(ddb(b_fake, draw["t_b"], draw["b_next"])).mean()
        + F.softplus(-d_a(a)).mean()
        + F.softplus(d_a(a_hat)).mean()
        + F.softplus(-d_b(b)).mean()
        + F.softplus(d_b(b_hat)).mean()
    )
    if step % cfg.lazy_reg == 0:
        grads = torch.autograd.grad(real_a.sum() + real_b.sum(), [a_t, b_t], create_graph=True)
        loss_d = loss_d + cfg.r1_gamma / 2 * cfg.lazy_reg * sum(g.flatten(1).pow(2).sum(1).mean() for g in grads)
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    opt_d.step()
    for name in DISCRIMINATORS:
        getattr(model, name).requires_grad_(False)
    a_hat, b_hat, draw, a0, a_fake, b0, b_fake = forward()
    loss_g = (
        F.softplus(-dda(a_fake, draw["t_a"], draw["a_next"])).mean()
        + F.softplus(-ddb(b_fake, draw["t_b"], draw["b_next"])).mean()
        + F.softplus(-d_a(a_hat)).mean()
        + F.softplus(-d_b(b_hat)).mean()
        + cfg.lambda_l1 * (F.l1_loss(a0, a) + F.l1_loss(b0, b))
        + cfg.lambda_cycle * (F.l1_loss(model.generator_ba(b_hat), a) + F.l1_loss(model.generator_ab(a_hat), b))
    )
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    opt_g.step()
    for name in DISCRIMINATORS:
        getattr(model, name).requires_grad_(True)
    for scheduler in model.schedulers().values():
        scheduler.step()
    return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach()}


def test_direction_by_direction_backward_gives_the_joint_losses_gradients():
    """The step back-propagates one direction at a time (for memory); the gradients each optimiser steps with
    must equal those of the joint loss, on a step with the R1 penalty and on one without. (Gradients, not
    updated weights, are compared: Adam turns round-off in a near-zero gradient, e.g. of a bias before instance
    norm, into a full-size step.)"""
    for step in (0, 1):
        grads = []
        for training_step in (our_training_step, joint_training_step):
            model = tiny_model()
            for name in ("diffusive_a", "diffusive_b", "discriminator_diff_a", "discriminator_diff_b"):
                wake_up(getattr(model, name))
            model.train()
            seen = {}
            for role, optimizer in model.optimizers().items():

                def record(role=role, optimizer=optimizer):
                    seen[role] = [
                        p.grad.clone() if p.grad is not None else torch.zeros_like(p)
                        for group in optimizer.param_groups
                        for p in group["params"]
                    ]

                optimizer.register_step_pre_hook(lambda *args, record=record: record())
            torch.manual_seed(step)
            losses = training_step(model, unpaired_batch(seed=step + 3), step)
            grads.append((seen, losses))
        (ours, ours_losses), (joint, joint_losses) = grads
        for key in ("loss_d", "loss_g"):
            torch.testing.assert_close(ours_losses[key], joint_losses[key], rtol=1e-5, atol=1e-6)
        for role in ("discriminator", "generator"):
            assert any(g.abs().sum() > 0 for g in ours[role])
            for g, h in zip(ours[role], joint[role]):
                # Summation order differs between the two (and with the thread count): round-off scales with the
                # tensor's own size.
                torch.testing.assert_close(g, h, rtol=1e-4, atol=1e-5 + 1e-4 * float(h.abs().max()))


def our_training_step(model, batch, step):
    """The step under test."""
    return model.training_step(batch, step)


def test_lr_follows_a_cosine_to_the_floor():
    model = tiny_model(steps=4)
    lrs = []
    for step in range(4):
        lrs.append([group["lr"] for opt in model.optimizers().values() for group in opt.param_groups])
        model.training_step(unpaired_batch(), step)
    lrs.append([group["lr"] for opt in model.optimizers().values() for group in opt.param_groups])
    g = [row[0] for row in lrs]
    expected = [1e-5 + (1.6e-4 - 1e-5) * (1 + math.cos(math.pi * s / 4)) / 2 for s in range(5)]  # lr_g 1.6e-4
    assert g == pytest.approx(expected)
    assert lrs[0][1] == pytest.approx(1e-4) and lrs[-1][1] == pytest.approx(1e-5)
    assert set(model.schedulers()) == set(model.optimizers())


def test_translate_both_directions_is_seeded_and_stochastic():
    model = tiny_model()
    for network in (model.diffusive_a, model.diffusive_b):
        wake_up(network)
    x = unpaired_batch()["source"]

    def run(fn, seed):
        return fn(x, generator=torch.Generator().manual_seed(seed))

    for fn in (model.translate, model.translate_reverse):
        y = run(fn, 0)
        assert y.shape == x.shape and not y.requires_grad and y.abs().max() <= 1 and torch.isfinite(y).all()
        assert torch.equal(y, run(fn, 0))
        assert not torch.allclose(y, run(fn, 1), atol=1e-6)
    assert model.training  # translate switches to eval mode only while it runs
    # A -> B runs G_diff_B, B -> A runs G_diff_A.
    with torch.no_grad():
        model.diffusive_a.out_conv.weight.zero_()
        model.diffusive_a.out_conv.bias.zero_()
    assert torch.equal(run(model.translate_reverse, 0), torch.zeros_like(x))
    assert run(model.translate, 0).abs().max() > 0


def test_translation_starts_from_noise_and_conditions_on_the_source():
    model = tiny_model()
    wake_up(model.diffusive_b)
    x = unpaired_batch()["source"]
    a = model.translate(x, generator=torch.Generator().manual_seed(0))
    b = model.translate(-x, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(a, b, atol=1e-6)


def test_resume_continues_exactly_with_ema_and_schedules(tmp_path, unpaired_noise):
    def trainer(run, steps):
        torch.manual_seed(0)
        model = build_model("syndiff", "tiny", {"image_size": 16, "channel_mult": (1, 2), "steps": 4, "lazy_reg": 2})
        settings = TrainSettings(
            steps=steps,
            batch_size=2,
            seed=5,
            progress=False,
            log_every=1,
            val_every=2,
            checkpoint_every=2,
            sample_every=2,
        )
        return Trainer(
            model, unpaired_noise(6), unpaired_noise(2), run, settings, {"model": "syndiff", "preset": "small"}
        )

    straight = trainer(tmp_path / "straight", 4)
    straight.fit()
    trainer(tmp_path / "split", 2).fit()
    second = trainer(tmp_path / "split", 4)
    second.fit(resume=True)
    a, b = straight.model.state_dict(), second.model.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert straight.ema is not None
    for module, values in straight.ema.state_dict().items():
        for key, value in values.items():
            assert torch.equal(value, second.ema.state_dict()[module][key]), (module, key)
    header = (tmp_path / "split" / "log.csv").read_text().splitlines()[0]
    assert "adv_diff" in header and "r1" in header


def test_trains_and_translates_both_ways_end_to_end(prepared, phantoms, tmp_path):
    from synthmed.data.io import read_volume
    from synthmed.workflows.train import train
    from synthmed.workflows.translate import translate

    run = tmp_path / "run"
    summary = train(
        prepared,
        model="syndiff",
        preset="small",
        out=run,
        steps=2,
        batch_size=2,
        progress=False,
        overrides={k: v for k, v in TINY.items() if k not in ("batch_size", "steps", "image_size")},
        val_every=2,
        checkpoint_every=2,
        sample_every=2,
        log_every=1,
    )
    assert summary["steps"] == 2
    info = json.loads((run / "run.json").read_text())
    assert info["paired"] is False and info["config"]["image_size"] == 32
    subject = json.loads((run / "plan.json").read_text())["split"]["test"][0]
    t1, t2 = phantoms / subject / "T1.nii.gz", phantoms / subject / "T2.nii.gz"
    forward = translate(run, t1, tmp_path / "T2.nii.gz", samples=2, seed=3, progress=False)
    assert len(forward) == 2  # the mean and the standard deviation map
    backward = translate(run, t2, tmp_path / "T1.nii.gz", direction="B2A", progress=False)
    for written, source in ((forward[0], t1), (backward[0], t2)):
        out, src = read_volume(written), read_volume(source)
        assert out.data.shape == src.data.shape and np.allclose(out.affine, src.affine)
        assert np.isfinite(out.data).all()
    with pytest.raises(SynthmedError, match="no sampling option"):
        translate(run, t1, tmp_path / "again.nii.gz", sampler="ddim", progress=False)


# --- Learning test ------------------------------------------------------------------------------


@pytest.mark.slow
def test_syndiff_beats_identity_on_held_out_subjects(prepared, held_out_scores, tmp_path):
    from synthmed.workflows.train import train

    run = tmp_path / "run"
    train(
        prepared,
        model="syndiff",
        preset="small",
        out=run,
        steps=LEARN_STEPS,
        batch_size=LEARN_BATCH,
        progress=False,
        overrides={**LEARN, "steps": LEARN_STEPS},
        val_every=LEARN_STEPS,
    )
    model, identity = held_out_scores(run)
    # Measured (1 thread beside a busy core, ~90 s of training; train seeds 0-3): +2.9 to +4.7 dB PSNR
    # (14.9-16.8 vs 12.1 dB), SSIM 0.52-0.60 vs 0.015, MAE 68-79 vs 125.
    assert model["psnr"] > identity["psnr"] + 2.0, (model, identity)
    assert model["ssim"] > identity["ssim"], (model, identity)
    assert model["mae"] < identity["mae"], (model, identity)


# Tiny networks at 32 px, the paper's losses and learning rates, batch 2.
LEARN = {
    "generator_channels": 8,
    "channel_mult": (1, 2, 2),
    "num_res_blocks": 1,
    "nz": 8,
    "z_embedding": 16,
    "discriminator_channels": 8,
    "t_embedding": 16,
    "cycle_generator_channels": 16,
    "resnet_blocks": 2,
    "cycle_discriminator_channels": 16,
}
LEARN_STEPS = 600
LEARN_BATCH = 2
