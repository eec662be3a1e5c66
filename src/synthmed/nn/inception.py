"""Inception-v3 in plain torch, as the feature extractor of FID, with weights from a local file.

Nothing is downloaded: the user gives a state dict, either

- torchvision's ImageNet model, saved on a machine with torchvision with
  ``torch.save(torchvision.models.inception_v3(weights="IMAGENET1K_V1").state_dict(), "inception.pth")``
  (``fc`` has 1000 outputs; variant ``"torchvision"``), or
- the standard FID network of pytorch-fid, ``pt_inception-2015-12-05-6726825d.pth`` (a port of the TensorFlow FID
  graph of 2015-12-05; ``fc`` has 1008 outputs; variant ``"fid"``). FID values comparable with published ones need
  this file.

Module and parameter names are torchvision's (``Conv2d_1a_3x3.conv.weight``, ``Conv2d_1a_3x3.bn.running_mean``,
``Mixed_5b.branch1x1.conv.weight``, ..., ``Mixed_7c.branch_pool.conv.weight``, ``fc.weight``, ``fc.bias``), so both
files load as they are. ``AuxLogits.*`` keys (the auxiliary classifier, not needed here) and ``num_batches_tracked``
counters are ignored. :func:`load_inception` detects the variant from ``fc.weight.shape[0]`` (1008 -> ``"fid"``,
1000 -> ``"torchvision"``) unless the caller names one.

Architecture (Szegedy et al. 2016, "Rethinking the Inception architecture"). ``BasicConv2d`` is a convolution
without bias, BatchNorm (eps 0.001) and ReLU; ``cin->cout kxk`` below is one BasicConv2d.

- Stem: Conv2d_1a_3x3 3->32 3x3 stride 2; Conv2d_2a_3x3 32->32 3x3; Conv2d_2b_3x3 32->64 3x3 pad 1; max-pool 3x3
  stride 2; Conv2d_3b_1x1 64->80 1x1; Conv2d_4a_3x3 80->192 3x3; max-pool 3x3 stride 2 (299x299 -> 35x35x192).
- InceptionA (Mixed_5b/5c/5d, in 192/256/288, pool features 32/64/64; out 224 + pool features):
  branch1x1 in->64; branch5x5_1 in->48, branch5x5_2 48->64 5x5 pad 2; branch3x3dbl_1 in->64, branch3x3dbl_2
  64->96 3x3 pad 1, branch3x3dbl_3 96->96 3x3 pad 1; branch_pool avg-pool 3x3 stride 1 pad 1 then in->pool features.
- InceptionB (Mixed_6a, 288 -> 768, 35 -> 17): branch3x3 in->384 3x3 stride 2; branch3x3dbl_1 in->64,
  branch3x3dbl_2 64->96 3x3 pad 1, branch3x3dbl_3 96->96 3x3 stride 2; max-pool 3x3 stride 2.
- InceptionC (Mixed_6b/6c/6d/6e, 768 -> 768, c7 = 128/160/160/192): branch1x1 in->192; branch7x7_1 in->c7,
  branch7x7_2 c7->c7 1x7, branch7x7_3 c7->192 7x1; branch7x7dbl_1 in->c7, _2 c7->c7 7x1, _3 c7->c7 1x7,
  _4 c7->c7 7x1, _5 c7->192 1x7 (1x7 pads (0, 3), 7x1 pads (3, 0)); branch_pool avg-pool 3x3 stride 1 pad 1 then
  in->192.
- InceptionD (Mixed_7a, 768 -> 1280, 17 -> 8): branch3x3_1 in->192, branch3x3_2 192->320 3x3 stride 2;
  branch7x7x3_1 in->192, _2 192->192 1x7, _3 192->192 7x1, _4 192->192 3x3 stride 2; max-pool 3x3 stride 2.
- InceptionE (Mixed_7b 1280 -> 2048, Mixed_7c 2048 -> 2048): branch1x1 in->320; branch3x3_1 in->384 then
  branch3x3_2a 384->384 1x3 and branch3x3_2b 384->384 3x1 (concatenated); branch3x3dbl_1 in->448,
  branch3x3dbl_2 448->384 3x3 pad 1, then branch3x3dbl_3a 1x3 and branch3x3dbl_3b 3x1 (384->384 each,
  concatenated); branch_pool avg-pool 3x3 stride 1 pad 1 then in->192.
- Head: global average pool -> 2048 features (the FID feature, taken before dropout and ``fc``); ``fc`` 2048 ->
  1000 (torchvision) or 1008 (fid).

The FID variant (the TF graph) differs from torchvision's in its pooling: the average-pool branches of InceptionA,
InceptionC and InceptionE (Mixed_7b) use ``count_include_pad=False``, and the last block (Mixed_7c) uses a 3x3
max-pool (stride 1, pad 1) in its pool branch instead of the average pool.

Input (:meth:`InceptionV3Features.forward`): images in [-1, 1], shape (n, 1, H, W) or (n, H, W) (grey, repeated on
the three colour channels; 3-channel input is taken as is), resized bilinearly (``align_corners=False``, no
antialiasing, as pytorch-fid) to 299x299. Both weight files were trained on inputs scaled to [-1, 1]:

- ``"fid"``: pytorch-fid's ``normalize_input`` maps [0, 1] to [-1, 1], i.e. our images are fed unchanged.
- ``"torchvision"``: the IMAGENET1K_V1 weights are Google's TF weights too. ``torchvision.models.inception_v3``
  built with those weights sets ``transform_input=True``: the user gives ImageNet-normalised images
  ((x01 - mean) / std, mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225)) and the model first undoes that
  into (x01 - 0.5) / 0.5, so the convolutions again see [-1, 1]. We feed that directly (``input_scaling=
  "inception"``, the default), which gives the same features as torchvision's pretrained model on the same image.
  ``input_scaling="imagenet"`` instead feeds the ImageNet-normalised image to the convolutions, as a
  ``transform_input=False`` torchvision model expects (for a state dict trained that way, e.g. one fine-tuned in
  torchvision without ``transform_input``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from synthmed.errors import SynthmedError

log = logging.getLogger(__name__)

INPUT_SIZE = 299
FEATURE_DIM = 2048
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# fc outputs of each variant's weight file.
VARIANT_CLASSES: dict[str, int] = {"torchvision": 1000, "fid": 1008}
INPUT_SCALINGS = ("inception", "imagenet")


class BasicConv2d(nn.Module):
    """Convolution (no bias) + BatchNorm (eps 0.001) + ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _pool_3x3(x: torch.Tensor, kind: str) -> torch.Tensor:
    """The 3x3, stride 1, pad 1 pooling of a pool branch: "avg" (padding counted), "avg_exclude_pad" or "max"."""
    if kind == "avg":
        return F.avg_pool2d(x, 3, stride=1, padding=1)
    if kind == "avg_exclude_pad":
        return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    if kind == "max":
        return F.max_pool2d(x, 3, stride=1, padding=1)
    raise ValueError(f"unknown pool kind {kind!r}")


class InceptionA(nn.Module):
    def __init__(self, in_channels: int, pool_features: int, pool: str = "avg"):
        super().__init__()
        self.pool = pool
        self.branch1x1 = BasicConv2d(in_channels, 64, 1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch5x5_2(self.branch5x5_1(x)),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                self.branch_pool(_pool_3x3(x, self.pool)),
            ],
            dim=1,
        )


class InceptionB(nn.Module):
    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self.branch3x3(x),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                F.max_pool2d(x, 3, stride=2),
            ],
            dim=1,
        )


class InceptionC(nn.Module):
    def __init__(self, in_channels: int, channels_7x7: int, pool: str = "avg"):
        super().__init__()
        c7 = channels_7x7
        self.pool = pool
        self.branch1x1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d7 = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            d7 = layer(d7)
        return torch.cat([self.branch1x1(x), b7, d7, self.branch_pool(_pool_3x3(x, self.pool))], dim=1)


class InceptionD(nn.Module):
    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = layer(b7)
        return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], dim=1)


class InceptionE(nn.Module):
    def __init__(self, in_channels: int, pool: str = "avg"):
        super().__init__()
        self.pool = pool
        self.branch1x1 = BasicConv2d(in_channels, 320, 1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        d3 = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch3x3_2a(b3),
                self.branch3x3_2b(b3),
                self.branch3x3dbl_3a(d3),
                self.branch3x3dbl_3b(d3),
                self.branch_pool(_pool_3x3(x, self.pool)),
            ],
            dim=1,
        )


class InceptionV3Features(nn.Module):
    """Inception-v3 up to its 2048-d global average pool; ``forward`` returns those features, shape (n, 2048).

    ``variant``: ``"torchvision"`` or ``"fid"`` (the pooling differences are in the module docstring);
    ``num_classes``: outputs of ``fc`` (kept only so that the weight files load with their names; the features are
    taken before it); ``input_scaling``: ``"inception"`` (images in [-1, 1] fed as they are, right for both
    published weight files) or ``"imagenet"`` (ImageNet mean/std normalisation). Frozen and always in eval mode."""

    def __init__(self, variant: str = "torchvision", num_classes: int | None = None, input_scaling: str = "inception"):
        super().__init__()
        if variant not in VARIANT_CLASSES:
            raise ValueError(f"unknown Inception-v3 variant {variant!r}; choose from {list(VARIANT_CLASSES)}")
        if input_scaling not in INPUT_SCALINGS:
            raise ValueError(f"unknown input scaling {input_scaling!r}; choose from {list(INPUT_SCALINGS)}")
        self.variant = variant
        self.input_scaling = input_scaling
        fid = variant == "fid"
        avg = "avg_exclude_pad" if fid else "avg"
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, 32, pool=avg)
        self.Mixed_5c = InceptionA(256, 64, pool=avg)
        self.Mixed_5d = InceptionA(288, 64, pool=avg)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, 128, pool=avg)
        self.Mixed_6c = InceptionC(768, 160, pool=avg)
        self.Mixed_6d = InceptionC(768, 160, pool=avg)
        self.Mixed_6e = InceptionC(768, 192, pool=avg)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool=avg)
        self.Mixed_7c = InceptionE(2048, pool="max" if fid else "avg")
        self.fc = nn.Linear(FEATURE_DIM, num_classes or VARIANT_CLASSES[variant])
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> InceptionV3Features:
        return super().train(False)  # frozen feature extractor: always in eval mode

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1], (n, H, W) or (n, 1 or 3, H, W) -> the network's input, (n, 3, 299, 299)."""
        if x.ndim == 3:
            x = x.unsqueeze(1)
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"expected images of shape (n, H, W) or (n, 1|3, H, W), got {tuple(x.shape)}")
        x = x.float().expand(-1, 3, -1, -1)
        if tuple(x.shape[-2:]) != (INPUT_SIZE, INPUT_SIZE):
            x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        if self.input_scaling == "imagenet":
            x = ((x + 1) / 2 - self.mean) / self.std
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(x)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for block in (
            self.Mixed_5b,
            self.Mixed_5c,
            self.Mixed_5d,
            self.Mixed_6a,
            self.Mixed_6b,
            self.Mixed_6c,
            self.Mixed_6d,
            self.Mixed_6e,
            self.Mixed_7a,
            self.Mixed_7b,
            self.Mixed_7c,
        ):
            x = block(x)
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


def _ignored(key: str) -> bool:
    return key.startswith("AuxLogits.") or key.endswith("num_batches_tracked")


def load_inception(path: str | Path, variant: str = "auto", input_scaling: str = "inception") -> InceptionV3Features:
    """Build Inception-v3 and load its weights from ``path`` (a state dict with torchvision's names, directly or
    under a ``"state_dict"`` key). ``variant``: ``"auto"`` (from ``fc.weight.shape[0]``: 1008 -> ``"fid"``,
    1000 -> ``"torchvision"``), ``"fid"`` or ``"torchvision"``. Raises :class:`SynthmedError` for a file that is not
    an Inception-v3 state dict, naming the first missing or mismatched key."""
    if variant != "auto" and variant not in VARIANT_CLASSES:
        raise SynthmedError(f"Inception-v3 variant {variant!r}: choose auto, {', '.join(VARIANT_CLASSES)}")
    path = Path(path)
    if not path.is_file():
        raise SynthmedError(
            f"Inception-v3 weights {path}: no such file (give a local state dict: torchvision's inception_v3 "
            "or pytorch-fid's pt_inception-2015-12-05-6726825d.pth)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a pickle that is not plain tensors, a truncated file, ...
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SynthmedError(f"Inception-v3 weights {path}: cannot be read as a torch state dict ({message})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise SynthmedError(
            f"Inception-v3 weights {path}: expected a state dict (name -> tensor), got {type(state).__name__}"
        )
    bad = [key for key, value in state.items() if not isinstance(value, torch.Tensor)]
    if bad:
        raise SynthmedError(f"Inception-v3 weights {path}: {bad[0]!r} is not a tensor; expected a state dict")

    # Trunk keys and shapes are the same in both variants: check them first, then fc (which decides the variant).
    with torch.device("meta"):  # shapes only, no allocation or initialisation
        reference = {k: v for k, v in InceptionV3Features("torchvision").state_dict().items() if not _ignored(k)}
    trunk = [key for key in reference if not key.startswith("fc.")]
    missing = [key for key in trunk if key not in state]
    if missing:
        raise SynthmedError(
            f"Inception-v3 weights {path}: missing {missing[0]} ({len(missing)} of {len(trunk)} trunk keys missing, "
            f"found e.g. {sorted(map(str, state))[:3]}); is this an Inception-v3 state dict with torchvision's names?"
        )
    for key in trunk:
        if tuple(state[key].shape) != tuple(reference[key].shape):
            raise SynthmedError(
                f"Inception-v3 weights {path}: {key} has shape {tuple(state[key].shape)}, "
                f"Inception-v3 has {tuple(reference[key].shape)}"
            )
    for key in ("fc.weight", "fc.bias"):
        if key not in state:
            raise SynthmedError(f"Inception-v3 weights {path}: missing {key} (needed to tell the variant)")
    classes = int(state["fc.weight"].shape[0])
    if tuple(state["fc.weight"].shape) != (classes, FEATURE_DIM) or tuple(state["fc.bias"].shape) != (classes,):
        raise SynthmedError(
            f"Inception-v3 weights {path}: fc.weight {tuple(state['fc.weight'].shape)} / fc.bias "
            f"{tuple(state['fc.bias'].shape)} do not fit a {FEATURE_DIM}-feature classifier"
        )
    if variant == "auto":
        detected = {n: v for v, n in VARIANT_CLASSES.items()}.get(classes)
        if detected is None:
            raise SynthmedError(
                f"Inception-v3 weights {path}: fc.weight has {classes} outputs, neither 1000 (torchvision) nor 1008 "
                "(pytorch-fid); give the variant explicitly"
            )
        variant = detected
    model = InceptionV3Features(variant, num_classes=classes, input_scaling=input_scaling)
    wanted = [key for key in model.state_dict() if not _ignored(key)]
    extra = [key for key in state if key not in wanted and not _ignored(key)]
    if extra:
        log.warning("Inception-v3 weights %s: ignoring %d unexpected key(s) such as %s", path, len(extra), extra[0])
    model.load_state_dict({key: state[key].float() for key in wanted}, strict=False)
    log.info("loaded Inception-v3 (%s variant, fc %d) from %s", variant, classes, path)
    return model
