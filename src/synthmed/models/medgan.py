"""MedGAN (Armanious et al., Computerized Medical Imaging and Graphics 2020): CasNet generator, PatchGAN
discriminator used as a trainable feature extractor, and style/content losses from a pretrained VGG-19.

Generator: :class:`synthmed.nn.casnet.CasNet`, ``n_ublocks`` pix2pix U-Nets in a chain (paper: 6).
Discriminator: a conditional PatchGAN on (source, image) whose patch (receptive field) is a setting
(``patch_size`` 16, 34, 70, 142 or 286 px = 1..5 stride-2 layers; the paper's ablation uses 16x16 patches).

Generator loss, with y the target and y_hat = G(x) (:mod:`synthmed.nn.feature_losses`):

    lambda_adv * BCE(D(x, y_hat), real)
    + lambda_perceptual * sum_i mean |D_i(x, y) - D_i(x, y_hat)|   (i = 0: the images themselves, then every
                                                                   intermediate discriminator activation)
    + lambda_style * style(VGG(y), VGG(y_hat)) + lambda_content * content(VGG(y), VGG(y_hat))

with lambda_adv 1, lambda_perceptual 20, lambda_style = lambda_content = 1e-4 and equal layer weights (our reading
of the paper; the per-layer weights are settings). VGG-19 features are relu1_1 .. relu5_1 (:mod:`synthmed.nn.vgg`),
loaded from ``vgg19_weights`` (``synthmed train ... --vgg19-weights PATH``); without that file the style and content
terms are off, the run's config shows ``vgg19_weights: ""`` and the log says so once. Nothing is downloaded.

Discriminator: BCE real/fake on (source, target) vs (source, y_hat), updated once every ``d_every`` = 3 steps (the
paper's three CasNet updates per discriminator update). Adam lr 2e-4, betas (0.5, 0.999).

Presets: ``paper`` (256 px, 6 U-blocks of 64 base channels and depth 8, 16x16 patches, batch 1); ``single-ublock``
(the paper's ablation base: one U-block, i.e. pix2pix's generator with MedGAN's losses); ``small`` (CPU: 64 px,
3 U-blocks of 32 channels, batch 16, 1000 steps). The U-blocks keep pix2pix's dropout 0.5 in the decoder (our
choice; the paper gives no dropout setting).

``residual`` (ours, off by default): the output is ``clip(source + CasNet(source))``, so training starts from the
identity. For restoration (``synthmed degrade`` pairs), where the input is already close to the answer, the paper's
direct output has to relearn the whole image first: on noisy 64 px phantoms, after a short run it was still worse
than the noisy input itself, while the residual form was already better.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from synthmed.models.base import SynthesisModel, check_context
from synthmed.models.registry import register
from synthmed.nn.casnet import CasNet
from synthmed.nn.discriminators import PatchDiscriminator, patch_receptive_field
from synthmed.nn.feature_losses import content_loss, perceptual_loss, style_loss
from synthmed.nn.layers import init_gan_weights
from synthmed.nn.vgg import STYLE_LAYERS, VGG19Features, load_vgg19

log = logging.getLogger(__name__)

PATCH_SIZES = {patch_receptive_field(n): n for n in range(1, 6)}  # {16: 1, 34: 2, 70: 3, 142: 4, 286: 5}


@dataclass
class MedGANConfig:
    image_size: int = 256
    n_ublocks: int = 6
    generator_channels: int = 64
    generator_depth: int = 8  # capped at log2(image_size)
    dropout: float = 0.5
    norm: str = "batch"
    discriminator_channels: int = 64
    patch_size: int = 16
    lambda_adv: float = 1.0
    lambda_perceptual: float = 20.0
    lambda_style: float = 1e-4
    lambda_content: float = 1e-4
    perceptual_weights: tuple[float, ...] = ()  # one per discriminator layer incl. the image (layer 0); () = all 1
    style_weights: tuple[float, ...] = ()  # one per VGG layer (relu1_1 .. relu5_1); () = all 1
    content_weights: tuple[float, ...] = ()
    vgg19_weights: str = ""  # local state dict of VGG-19 (torchvision names); "" = style and content losses off
    residual: bool = False  # ours, for restoration: the CasNet output is a correction added to the input
    d_every: int = 3  # generator updates per discriminator update
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    batch_size: int = 1
    steps: int = 387_000  # 200 epochs of the paper's 1,935 PET/CT training pairs at batch 1
    ema_decay: float = 0.0
    context: int = 1  # 2.5D: source slices given to the networks (ours; the paper is 2D)


@register
class MedGAN(SynthesisModel):
    name = "medgan"
    paper = "Armanious et al., MedGAN: Medical Image Translation using GANs, Comput. Med. Imaging Graph. 2020"
    paired = True
    task = "translate"
    Config = MedGANConfig
    PRESETS = {
        "paper": {},
        "single-ublock": {"n_ublocks": 1},
        "small": {
            "image_size": 64,
            "n_ublocks": 3,
            "generator_channels": 32,
            "discriminator_channels": 32,
            "batch_size": 16,
            "steps": 1000,
        },
        "tiny": {
            "image_size": 32,
            "n_ublocks": 2,
            "generator_channels": 8,
            "discriminator_channels": 8,
            "batch_size": 2,
            "steps": 10,
        },
    }
    takes_context = True

    def __init__(self, config: MedGANConfig):
        super().__init__(config)
        depth = 0  # as deep as the paper's 8 levels allow, every level halving the image exactly
        while depth < config.generator_depth and config.image_size % 2 ** (depth + 1) == 0:
            depth += 1
        if depth < 3:
            raise ValueError(
                f"image size {config.image_size} must be a multiple of 8 (prepare with --size 64, 128 or 256)"
            )
        for key in ("n_ublocks", "generator_channels", "discriminator_channels", "d_every", "batch_size", "steps"):
            if getattr(config, key) < 1:
                raise ValueError(f"{key} must be at least 1")
        if config.patch_size not in PATCH_SIZES:
            raise ValueError(
                f"patch_size {config.patch_size}: choose one of {sorted(PATCH_SIZES)} (PatchGAN receptive fields)"
            )
        if (
            config.lr <= 0
            or min(config.lambda_adv, config.lambda_perceptual, config.lambda_style, config.lambda_content) < 0
        ):
            raise ValueError("lr must be positive and the loss weights non-negative")
        # Tiny images cannot host all stride-2 layers: keep at least a 4x4 map before the last two convolutions.
        layers = min(PATCH_SIZES[config.patch_size], max(1, int(math.log2(config.image_size)) - 2))
        check_context(config)
        self.generator = CasNet(
            config.n_ublocks, config.context, 1, config.generator_channels, depth, config.norm, config.dropout
        )
        self.discriminator = PatchDiscriminator(
            config.context + 1, config.discriminator_channels, layers, norm=config.norm
        )
        if config.perceptual_weights and len(config.perceptual_weights) != layers + 1:
            raise ValueError(
                f"perceptual_weights needs {layers + 1} values (the image and {layers} discriminator layers)"
            )
        for key in ("style_weights", "content_weights"):
            if getattr(config, key) and len(getattr(config, key)) != len(STYLE_LAYERS):
                raise ValueError(f"{key} needs {len(STYLE_LAYERS)} values ({', '.join(STYLE_LAYERS)})")
        init_gan_weights(self)
        self._optimizers = {
            "generator": torch.optim.Adam(self.generator.parameters(), lr=config.lr, betas=config.betas),
            "discriminator": torch.optim.Adam(self.discriminator.parameters(), lr=config.lr, betas=config.betas),
        }
        # The frozen VGG-19 is loaded on the first training step (translation never needs it) and kept out of the
        # module tree, so it is neither checkpointed nor trained.
        self._vgg: list[VGG19Features] = []
        self._last_loss_d = torch.zeros(())

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return self._optimizers

    @property
    def uses_style_losses(self) -> bool:
        return bool(self.config.vgg19_weights) and (self.config.lambda_style > 0 or self.config.lambda_content > 0)

    def feature_extractor(self, device: torch.device) -> VGG19Features | None:
        if not self.uses_style_losses:
            if not self._vgg:
                log.info("medgan: no VGG-19 weights given (--vgg19-weights PATH): style and content losses are off")
                self._vgg.append(None)
            return None
        if not self._vgg or self._vgg[0] is None:
            self._vgg[:] = [load_vgg19(self.config.vgg19_weights)]
        if self._vgg[0].mean.device != device:
            self._vgg[0].to(device)
        return self._vgg[0]

    def training_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        source, target = batch["source"], batch["target"]
        cfg = self.config
        opt_g, opt_d = self._optimizers["generator"], self._optimizers["discriminator"]
        vgg = self.feature_extractor(source.device)

        with self.autocast():
            fake = self.generate(source)
        if step % cfg.d_every == 0:
            with self.autocast():
                real_logits = self.discriminator(torch.cat([source, target], 1)).float()
                fake_logits = self.discriminator(torch.cat([source, fake.detach()], 1)).float()
                loss_d = 0.5 * (
                    F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
                    + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
                )
            opt_d.zero_grad(set_to_none=True)
            self.backward(loss_d)
            self.step_optimizer(opt_d)
            self._last_loss_d = loss_d.detach()

        self.discriminator.requires_grad_(False)
        try:
            with self.autocast():
                fake_logits, fake_features = self.discriminator(torch.cat([source, fake], 1), return_features=True)
                with torch.no_grad():
                    _, real_features = self.discriminator(torch.cat([source, target], 1), return_features=True)
                adversarial = F.binary_cross_entropy_with_logits(
                    fake_logits.float(), torch.ones_like(fake_logits.float())
                )
                perceptual = perceptual_loss(
                    [target, *real_features], [fake, *fake_features], cfg.perceptual_weights or None
                )
                loss_g = cfg.lambda_adv * adversarial + cfg.lambda_perceptual * perceptual
                style = content = torch.zeros((), device=source.device)
                if vgg is not None:
                    with torch.no_grad():
                        vgg_real = vgg(target)
                    vgg_fake = vgg(fake)
                    style = style_loss(vgg_real, vgg_fake, cfg.style_weights or None)
                    content = content_loss(vgg_real, vgg_fake, cfg.content_weights or None)
                    loss_g = loss_g + cfg.lambda_style * style + cfg.lambda_content * content
            opt_g.zero_grad(set_to_none=True)
            self.backward(loss_g)
            self.step_optimizer(opt_g)
        finally:
            self.discriminator.requires_grad_(True)
        return {
            "loss_g": loss_g.detach(),
            "loss_d": self._last_loss_d.to(source.device),
            "adv": adversarial.detach(),
            "perceptual": perceptual.detach(),
            "style": style.detach(),
            "content": content.detach(),
        }

    def generate(self, source: torch.Tensor) -> torch.Tensor:
        """CasNet(source), or with ``residual`` source + CasNet(source) clipped to [-1, 1]."""
        output = self.generator(source)
        return (self.centre_slice(source) + output).clamp(-1, 1) if self.config.residual else output

    @torch.inference_mode()
    def translate(self, source: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.generate(source).float()
