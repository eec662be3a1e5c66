"""SynDiff: unpaired translation with cycle-consistent adversarial diffusion (Özbey et al., IEEE TMI 2023).

Eight networks, two per role and direction (A = source modality, B = target modality):

- diffusive generators ``diffusive_a`` (G_diff_A, makes A) and ``diffusive_b`` (G_diff_B, makes B): NCSN++-style
  U-Nets (:class:`synthmed.nn.ncsnpp.NCSNppGenerator`) that predict ``x_0`` from ``x_{t+1}`` concatenated with
  the source image, conditioned on the step and on a latent ``z`` through adaptive group norm;
- time-conditional discriminators ``discriminator_diff_a`` and ``discriminator_diff_b``
  (:class:`synthmed.nn.time_discriminator.TimeConditionalDiscriminator`) judging ``(x_t, t, x_{t+1})``;
- non-diffusive generators ``generator_ab`` and ``generator_ba``: CycleGAN ResNet generators
  (:class:`synthmed.nn.resnet.ResnetGenerator`) that estimate the missing paired source of each target;
- cycle discriminators ``discriminator_a`` and ``discriminator_b``: PatchGANs (70x70) on single images.

The diffusion (:class:`synthmed.diffusion.few_step.FewStepSchedule`) has T = 4 steps of a VP schedule
(beta_min 0.1, beta_max 20); each reverse step is an adversarial projector: the generator predicts x_0,
the posterior q(x_t | x_{t+1}, x_0) carries it one level back, and the time-conditional discriminator
compares that sample with a real x_t.

One training step on an unpaired batch (``source`` = real A slices a, ``target`` = real B slices b):

1. a_hat = G_ba(b), b_hat = G_ab(a) (the estimated paired sources); random steps t, pairs (a_t, a_{t+1}) and
   (b_t, b_{t+1}); a0 = G_diff_A([a_{t+1}, b_hat], t, z), b0 = G_diff_B([b_{t+1}, a_hat], t, z); posterior
   samples a_t', b_t'.
2. Discriminators (generator outputs computed without a graph): non-saturating loss (softplus) for all four,
   D_diff_A(a_t, t, a_{t+1}) real vs D_diff_A(a_t', t, a_{t+1}) fake (same for B), D_A(a) vs D_A(a_hat),
   D_B(b) vs D_B(b_hat); R1 penalty gamma/2 |grad D_diff(x_t real)|^2 with gamma = 1 every ``lazy_reg`` = 10 steps.
3. Generators (fresh t, z and noise; discriminators frozen): the adversarial losses of all four
   discriminators (lambda_2 = 1), the diffusive reconstruction 0.5 (|a0 - a|_1 + |b0 - b|_1) and the
   non-diffusive cycle 0.5 (|G_ba(b_hat) - a|_1 + |G_ab(a_hat) - b|_1) (the seed's equations 1-3).

With ``context`` K > 1 (2.5D, ours) G_diff_B is guided by K neighbouring source slices; in training that guide is
G_ba run over the K neighbours of the target slice. The other networks, and translation B -> A, stay single-slice.

Translation A -> B: x_T ~ N(0, I); for t = T-1 .. 0: x0 = G_diff_B([x_{t+1}, source], t, z ~ N(0, I)),
x_t ~ q(x_t | x_{t+1}, x0) (no noise at t = 0); the result is the last x0. B -> A likewise with G_diff_A
(``translate_reverse``). The noise and the latents come from ``generator`` when given.

Paper / reference settings (the ``paper`` preset): 256 px; NCSN++ with 64 base channels, multipliers
1,1,2,2,4,4, 2 residual blocks per level, attention at 16 px, BigGAN blocks, FIR [1,3,3,1], nz 100,
z embedding 256 through a 4-layer mapping network, time embedding positional; discriminators with 64 base
channels and a 256-wide time embedding; ResNet generators with 64 channels and 6 blocks; PatchGANs with
64 channels, 3 layers; Adam betas (0.5, 0.9), lr 1.6e-4 (generators) and 1e-4 (discriminators), cosine
decay to 1e-5; EMA 0.999 of the diffusive generators (used for translation); batch 1 per GPU.
Parameter counts of this implementation at 256 px: NCSN++ 39,724,673 each (the reference's 39,725,250 less its
unused second output channel; the networks are weight-compatible, ``synthmed.weights.syndiff_official``), time-conditional
discriminators 27.7 M each (27.7 M), ResNet generators 7.8 M (7.8 M), PatchGANs 2.8 M (2.8 M).
The reference trains 500 epochs at batch 1; ``steps`` = 500,000 is 500 epochs of 1,000 slices (set
``--set steps=...`` to 500 x the number of training slices; the cosine decay follows the config's ``steps``,
stepped every training step rather than every epoch).

Deviations and choices:

- The lazy R1 penalty is multiplied by the interval (``lazy_reg``), as in StyleGAN2's lazy regularisation;
  the reference code applies gamma/2 without that factor every 10th step (``--set r1_lazy_scale=false``).
- The non-diffusive half uses instance norm in its generators and PatchGANs (as our CycleGAN) and the
  softplus (non-saturating) loss per patch, like the reference's other losses; no image pool, no identity loss.
- The diffusive generators predict one channel (the reference predicts two and keeps the first; an imported
  reference generator keeps only the weights of that first channel, which gives the same output).
- Level 0 of the diffusion is the clean image (the reference adds noise of standard deviation 1e-4).
- The EMA starts with the engine's warm-up (decay min(0.999, (1 + n) / (10 + n))); the reference has none.
- As in the reference, the non-diffusive generators also receive the gradients of the diffusive losses
  through the source estimates they provide.
- Generators' and discriminators' networks share one Adam optimiser per role (per-parameter Adam makes this
  the same as the reference's one optimiser per network).
- The ``small`` preset (CPU-sized) is ours: 64 px; NCSN++ with 16 base channels, levels 1,2,2,2 (attention at
  16 px), one block per level, nz 32, z embedding 64, 3-layer mapping; discriminators with 16 channels and a
  64-wide time embedding; ResNet generators with 16 channels and 3 blocks; PatchGANs with 16 channels;
  batch 4, 3000 steps; the paper's losses, learning rates and EMA (speed and quality: README and
  benchmarks/results/).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from synthmed.diffusion.few_step import FewStepSchedule
from synthmed.models.base import SynthesisModel, check_context
from synthmed.models.registry import register
from synthmed.nn.discriminators import PatchDiscriminator
from synthmed.nn.layers import evaluating, init_gan_weights
from synthmed.nn.ncsnpp import NCSNppGenerator
from synthmed.nn.resnet import ResnetGenerator
from synthmed.nn.time_discriminator import TimeConditionalDiscriminator


@dataclass
class SynDiffConfig:
    image_size: int = 256
    # few-step diffusion
    timesteps: int = 4
    beta_min: float = 0.1
    beta_max: float = 20.0
    # diffusive generators (NCSN++)
    generator_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4, 4)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (16,)
    nz: int = 100
    z_embedding: int = 256
    n_mlp: int = 3
    dropout: float = 0.0
    # time-conditional discriminators
    discriminator_channels: int = 64
    t_embedding: int = 256
    # non-diffusive half (CycleGAN networks)
    cycle_generator_channels: int = 64
    resnet_blocks: int = 6
    cycle_discriminator_channels: int = 64
    cycle_discriminator_layers: int = 3
    # losses
    lambda_l1: float = 0.5  # diffusive reconstruction
    lambda_cycle: float = 0.5  # non-diffusive cycle
    lambda_adv: float = 1.0  # lambda_2, all four adversarial terms
    r1_gamma: float = 1.0
    lazy_reg: int = 10
    r1_lazy_scale: bool = True
    # optimisation
    lr_g: float = 1.6e-4
    lr_d: float = 1e-4
    lr_min: float = 1e-5
    betas: tuple[float, float] = (0.5, 0.9)
    batch_size: int = 1
    steps: int = 500_000
    ema_decay: float = 0.999
    context: int = 1  # 2.5D: source slices guiding G_diff_B (ours; the paper is 2D)


@register
class SynDiff(SynthesisModel):
    name = "syndiff"
    paper = "Özbey et al., Unsupervised Medical Image Translation with Adversarial Diffusion Models, IEEE TMI 2023"
    paired = False
    task = "translate"
    channels_last_inference = True
    fused_winograd = True
    directions = ("A2B", "B2A")
    stochastic = True
    sampling_options = ()
    takes_context = True
    Config = SynDiffConfig
    PRESETS = {
        "paper": {},
        "small": {
            "image_size": 64,
            "generator_channels": 16,
            "channel_mult": (1, 2, 2, 2),
            "num_res_blocks": 1,
            "nz": 32,
            "z_embedding": 64,
            "n_mlp": 2,
            "discriminator_channels": 16,
            "t_embedding": 64,
            "cycle_generator_channels": 16,
            "resnet_blocks": 3,
            "cycle_discriminator_channels": 16,
            "batch_size": 4,
            "steps": 3000,
        },
        "tiny": {
            "image_size": 32,
            "generator_channels": 8,
            "channel_mult": (1, 2, 2),
            "num_res_blocks": 1,
            "nz": 8,
            "z_embedding": 16,
            "n_mlp": 1,
            "discriminator_channels": 8,
            "t_embedding": 16,
            "cycle_generator_channels": 8,
            "resnet_blocks": 1,
            "cycle_discriminator_channels": 8,
            "batch_size": 2,
            "steps": 10,
        },
    }
    ema_modules = ("diffusive_a", "diffusive_b")
    generator_names = ("diffusive_a", "diffusive_b", "generator_ab", "generator_ba")
    discriminator_names = ("discriminator_diff_a", "discriminator_diff_b", "discriminator_a", "discriminator_b")
    uncompiled_modules = ("discriminator_diff_a", "discriminator_diff_b")  # R1 differentiates through them twice

    def __init__(self, config: SynDiffConfig):
        super().__init__(config)
        size = config.image_size
        if size < 16 or size & (size - 1):
            raise ValueError(
                f"image size {size} must be a power of two, at least 16 (prepare with --size 64, 128 or 256)"
            )
        for key in (
            "timesteps",
            "generator_channels",
            "num_res_blocks",
            "nz",
            "z_embedding",
            "discriminator_channels",
            "t_embedding",
            "cycle_generator_channels",
            "cycle_discriminator_channels",
            "cycle_discriminator_layers",
            "lazy_reg",
            "batch_size",
            "steps",
        ):
            if getattr(config, key) < 1:
                raise ValueError(f"{key} must be at least 1")
        if config.resnet_blocks < 0 or config.n_mlp < 0 or not 0 <= config.dropout < 1:
            raise ValueError("resnet_blocks and n_mlp must be 0 or more, dropout in [0, 1)")
        if min(config.channel_mult) < 1:
            raise ValueError(f"channel_mult {list(config.channel_mult)} must be positive")
        if not (config.lr_g > 0 and config.lr_d > 0 and config.lr_min >= 0):
            raise ValueError("lr_g and lr_d must be positive and lr_min non-negative")
        if min(config.lambda_l1, config.lambda_cycle, config.lambda_adv, config.r1_gamma) < 0:
            raise ValueError("lambda_l1, lambda_cycle, lambda_adv and r1_gamma must be non-negative")
        if not all(0 <= beta < 1 for beta in config.betas):
            raise ValueError(f"betas must lie in [0, 1), got {list(config.betas)}")
        if not 0 <= config.ema_decay < 1:
            raise ValueError(f"ema_decay must lie in [0, 1), got {config.ema_decay}")
        check_context(config)
        self.schedule = FewStepSchedule(config.timesteps, config.beta_min, config.beta_max)

        def diffusive(guide_channels: int):
            return NCSNppGenerator(
                1 + guide_channels,
                1,
                config.generator_channels,
                tuple(config.channel_mult),
                config.num_res_blocks,
                tuple(config.attention_resolutions),
                size,
                config.nz,
                config.z_embedding,
                config.n_mlp,
                config.dropout,
            )

        def time_discriminator():
            return TimeConditionalDiscriminator(2, config.discriminator_channels, config.t_embedding, size)

        def cycle_discriminator():
            layers = min(config.cycle_discriminator_layers, max(1, int(math.log2(size)) - 2))
            return PatchDiscriminator(1, config.cycle_discriminator_channels, layers, norm="instance")

        self.diffusive_a, self.diffusive_b = diffusive(1), diffusive(config.context)
        self.discriminator_diff_a, self.discriminator_diff_b = time_discriminator(), time_discriminator()
        self.generator_ab = ResnetGenerator(1, 1, config.cycle_generator_channels, config.resnet_blocks)
        self.generator_ba = ResnetGenerator(1, 1, config.cycle_generator_channels, config.resnet_blocks)
        self.discriminator_a, self.discriminator_b = cycle_discriminator(), cycle_discriminator()
        for network in (self.generator_ab, self.generator_ba, self.discriminator_a, self.discriminator_b):
            init_gan_weights(network)
        generators = [p for name in self.generator_names for p in getattr(self, name).parameters()]
        discriminators = [p for name in self.discriminator_names for p in getattr(self, name).parameters()]
        self._optimizers = {
            "generator": torch.optim.Adam(generators, lr=config.lr_g, betas=config.betas),
            "discriminator": torch.optim.Adam(discriminators, lr=config.lr_d, betas=config.betas),
        }
        self._schedulers = {
            name: torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.steps, eta_min=min(config.lr_min, lr))
            for (name, optimizer), lr in zip(self._optimizers.items(), (config.lr_g, config.lr_d))
        }

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return self._optimizers

    def schedulers(self) -> dict[str, torch.optim.lr_scheduler.LRScheduler]:
        return self._schedulers

    # --- training -------------------------------------------------------------------------
    def _draw_diffusion(self, a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
        """Random steps t, diffusion pairs (x_t, x_{t+1}) and latents z for both directions."""
        n, T, device = a.shape[0], self.config.timesteps, a.device
        t_a = torch.randint(0, T, (n,), device=device)
        t_b = torch.randint(0, T, (n,), device=device)
        a_t, a_next = self.schedule.q_sample_pair(a, t_a)
        b_t, b_next = self.schedule.q_sample_pair(b, t_b)
        z_a = torch.randn(n, self.config.nz, device=device)
        z_b = torch.randn(n, self.config.nz, device=device)
        return {
            "t_a": t_a,
            "t_b": t_b,
            "a_t": a_t,
            "a_next": a_next,
            "b_t": b_t,
            "b_next": b_next,
            "z_a": z_a,
            "z_b": z_b,
        }

    def _reverse_step(
        self, network: NCSNppGenerator, x_next: torch.Tensor, guide: torch.Tensor, t: torch.Tensor, z: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x0 predicted from (x_{t+1}, guide) and the posterior sample x_t' ~ q(x_t | x_{t+1}, x0)."""
        x0 = network(torch.cat([x_next, guide.to(x_next.dtype)], 1), t, z)
        return x0, self.schedule.posterior_sample(x0.float(), x_next, t)

    def training_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        """One discriminator update, then one generator update (equations 1-3 of the seed).

        Memory: each direction's diffusive networks get their own backward pass, so only one NCSN++ graph (and one
        time-conditional discriminator graph) is alive at a time. The gradients are those of the summed losses:
        the generator step back-propagates the diffusive losses into a detached copy of each source estimate and
        hands the gradient collected there on to the non-diffusive generator that made it.
        """
        # Unpaired: b is a slice of another subject. With 2.5D context both come as stacks of neighbouring slices;
        # G_diff_B is guided by a stack, so G_ba (single-slice) estimates the source of each of b's neighbours.
        stack_a, stack_b = batch["source"], batch["target"]
        a, b = self.centre_slice(stack_a), self.centre_slice(stack_b)
        cfg = self.config
        opt_g, opt_d = self._optimizers["generator"], self._optimizers["discriminator"]
        d_a, d_b = self.discriminator_a, self.discriminator_b

        # --- discriminators: real vs fake, fakes made without a graph ---------------------------
        with torch.no_grad(), self.autocast():
            a_hat_stack, b_hat = self.slice_by_slice(self.generator_ba, stack_b), self.generator_ab(a)
            a_hat = self.centre_slice(a_hat_stack)
            draw = self._draw_diffusion(a, b)
            _, a_fake = self._reverse_step(self.diffusive_a, draw["a_next"], b_hat, draw["t_a"], draw["z_a"])
            _, b_fake = self._reverse_step(self.diffusive_b, draw["b_next"], a_hat_stack, draw["t_b"], draw["z_b"])
        regularise = cfg.r1_gamma > 0 and step % cfg.lazy_reg == 0
        r1_weight = cfg.r1_gamma / 2 * (cfg.lazy_reg if cfg.r1_lazy_scale else 1)
        opt_d.zero_grad(set_to_none=True)
        loss_d_diff = r1 = torch.zeros((), device=a.device)
        for d, x_t, x_fake, t, x_next in (
            (self.discriminator_diff_a, draw["a_t"], a_fake, draw["t_a"], draw["a_next"]),
            (self.discriminator_diff_b, draw["b_t"], b_fake, draw["t_b"], draw["b_next"]),
        ):
            x_real = x_t.detach().requires_grad_(regularise)
            with self.autocast():
                real = d(x_real, t, x_next).float()
                loss = F.softplus(-real).mean() + F.softplus(d(x_fake, t, x_next).float()).mean()
            total = cfg.lambda_adv * loss
            if regularise:
                grad = self.input_gradient(real.sum(), x_real)
                penalty = grad.float().flatten(1).pow(2).sum(1).mean()
                total = total + r1_weight * penalty
                r1 = r1 + penalty.detach()
            self.backward(total)
            loss_d_diff = loss_d_diff + loss.detach()
        with self.autocast():
            loss_d_cycle = (
                F.softplus(-d_a(a).float()).mean()
                + F.softplus(d_a(a_hat).float()).mean()
                + F.softplus(-d_b(b).float()).mean()
                + F.softplus(d_b(b_hat).float()).mean()
            )
        self.backward(cfg.lambda_adv * loss_d_cycle)
        self.step_optimizer(opt_d)
        loss_d = cfg.lambda_adv * (loss_d_diff + loss_d_cycle.detach()) + (r1_weight * r1 if regularise else 0)

        # --- generators: fresh steps and latents, discriminators frozen ------------------------
        discriminators = [getattr(self, name) for name in self.discriminator_names]
        for d in discriminators:
            d.requires_grad_(False)
        try:
            opt_g.zero_grad(set_to_none=True)
            with self.autocast():
                a_hat_stack, b_hat = self.slice_by_slice(self.generator_ba, stack_b), self.generator_ab(a)
                a_hat = self.centre_slice(a_hat_stack)
            draw = self._draw_diffusion(a, b)
            # Diffusive paths, one at a time; guide = detached source estimate collecting its gradient.
            adv_diff = l1 = torch.zeros((), device=a.device)
            guides = {}
            for name, network, d, real, estimate, t, x_next, z in (
                (
                    "b_hat",
                    self.diffusive_a,
                    self.discriminator_diff_a,
                    a,
                    b_hat,
                    draw["t_a"],
                    draw["a_next"],
                    draw["z_a"],
                ),
                (
                    "a_hat",
                    self.diffusive_b,
                    self.discriminator_diff_b,
                    b,
                    a_hat_stack,
                    draw["t_b"],
                    draw["b_next"],
                    draw["z_b"],
                ),
            ):
                guide = guides[name] = estimate.detach().requires_grad_(True)
                with self.autocast():
                    x0, x_fake = self._reverse_step(network, x_next, guide, t, z)
                    adv = F.softplus(-d(x_fake, t, x_next).float()).mean()
                    reconstruction = F.l1_loss(x0.float(), real)
                self.backward(cfg.lambda_adv * adv + cfg.lambda_l1 * reconstruction)
                adv_diff, l1 = adv_diff + adv.detach(), l1 + reconstruction.detach()
                del x0, x_fake, adv, reconstruction
            # Non-diffusive half, plus the diffusive losses' gradients w.r.t. the source estimates.
            with self.autocast():
                adv_cycle = F.softplus(-d_a(a_hat).float()).mean() + F.softplus(-d_b(b_hat).float()).mean()
                a_cycle, b_cycle = self.generator_ba(b_hat), self.generator_ab(a_hat)
                cycle = F.l1_loss(a_cycle.float(), a) + F.l1_loss(b_cycle.float(), b)
            handed_on = sum(
                (estimate * self.unscaled(guides[name].grad)).sum()
                for name, estimate in (("a_hat", a_hat_stack), ("b_hat", b_hat))
            )
            self.backward(cfg.lambda_adv * adv_cycle + cfg.lambda_cycle * cycle + handed_on)
            self.step_optimizer(opt_g)
        finally:
            for d in discriminators:
                d.requires_grad_(True)
        loss_g = (
            cfg.lambda_adv * (adv_diff + adv_cycle.detach()) + cfg.lambda_l1 * l1 + cfg.lambda_cycle * cycle.detach()
        )

        # The engine checkpoints the schedulers but does not step them: one scheduler step per training step.
        for scheduler in self._schedulers.values():
            scheduler.step()
        return {
            "loss_g": loss_g,
            "loss_d": loss_d.detach(),
            "adv_diff": adv_diff,
            "adv_cycle": adv_cycle.detach(),
            "l1": l1,
            "cycle": cycle.detach(),
            "d_diff": loss_d_diff,
            "d_cycle": loss_d_cycle.detach(),
            "r1": r1,
        }

    # --- translation ------------------------------------------------------------------------
    def _sample(
        self, network: NCSNppGenerator, source: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        n, device = source.shape[0], source.device
        shape = (n, 1, *source.shape[2:])  # one slice out, whatever the number of guiding slices
        x = torch.randn(shape, generator=generator, device=device, dtype=torch.float32)
        x0 = x
        for step in reversed(range(self.config.timesteps)):
            t = torch.full((n,), step, device=device, dtype=torch.long)
            z = torch.randn(n, self.config.nz, generator=generator, device=device, dtype=torch.float32)
            with self.autocast():
                x0 = network(torch.cat([x, source.to(x.dtype)], 1), t, z).float()
            noise = torch.randn(shape, generator=generator, device=device, dtype=torch.float32)
            x = self.schedule.posterior_sample_at(x0, x, step, noise)
        return x0

    @torch.inference_mode()
    def translate(self, source: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Source modality (A) -> target modality (B): T reverse steps of G_diff_B guided by ``source``."""
        with evaluating(self.diffusive_b):
            return self._sample(self.diffusive_b, source, generator)

    @torch.inference_mode()
    def translate_reverse(self, target: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Target modality (B) -> source modality (A) with G_diff_A."""
        with evaluating(self.diffusive_a):
            return self._sample(self.diffusive_a, target, generator)

    def validation_translate(self, source: torch.Tensor) -> torch.Tensor:
        """Seeded, so that validation scores of different steps compare the model and not the noise."""
        generator = torch.Generator(device=source.device).manual_seed(0)
        return self.translate(source, generator=generator)
