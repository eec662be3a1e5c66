"""A VGG-19 feature trunk in plain torch, for style and content losses (MedGAN), with weights from a local file.

Nothing is downloaded: the user gives a state dict saved from an ImageNet-trained VGG-19 (for example
``torch.save(torchvision.models.vgg19(weights="IMAGENET1K_V1").state_dict(), "vgg19.pth")`` on a machine with
torchvision). The layer names are torchvision's (``features.<index>.weight`` / ``.bias``), so such a file loads as
it is; classifier weights in it are ignored. Only the convolutions up to ``conv5_1`` are built.

VGG-19 configuration "E": 64 64 M 128 128 M 256 256 256 256 M 512 512 512 512 M 512 ...; every 3x3 convolution is
followed by a ReLU, so ``features`` indices are conv1_1 = 0, conv2_1 = 5, conv3_1 = 10, conv4_1 = 19, conv5_1 = 28.
The style/content layers are taken after their ReLU (relu1_1 ... relu5_1).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from synthmed.errors import SynthmedError

# (out channels, or "M" for 2x2 max-pooling) up to conv5_1.
VGG19_LAYOUT: tuple[int | str, ...] = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    512,
    "M",
    512,
)
# Names of the conv layers that start each block and their index in ``features``.
STYLE_LAYERS: dict[str, int] = {"conv1_1": 0, "conv2_1": 5, "conv3_1": 10, "conv4_1": 19, "conv5_1": 28}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class VGG19Features(nn.Module):
    """``features`` of VGG-19 up to relu5_1; ``forward`` returns the activations after relu{1..5}_1.

    Input: one-channel images in [-1, 1] (our normalised slices); they are mapped to [0, 1], repeated on the three
    colour channels and normalised with the ImageNet mean and std, as the network was trained."""

    def __init__(self, layers: tuple[str, ...] = tuple(STYLE_LAYERS)):
        super().__init__()
        unknown = [name for name in layers if name not in STYLE_LAYERS]
        if unknown:
            raise ValueError(f"unknown VGG-19 layers {unknown}; choose from {list(STYLE_LAYERS)}")
        modules: list[nn.Module] = []
        channels = 3
        for item in VGG19_LAYOUT:
            if item == "M":
                modules.append(nn.MaxPool2d(2, 2))
            else:
                modules += [nn.Conv2d(channels, int(item), 3, padding=1), nn.ReLU(inplace=False)]
                channels = int(item)
        self.features = nn.Sequential(*modules)
        # Output after the ReLU that follows each chosen conv.
        self.taps = sorted(STYLE_LAYERS[name] + 1 for name in layers)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VGG19Features:
        return super().train(False)  # frozen feature extractor: always in eval mode

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = ((x.float() + 1) / 2).expand(-1, 3, -1, -1)
        x = (x - self.mean) / self.std
        outputs = []
        last = self.taps[-1]
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.taps:
                outputs.append(x)
            if index == last:
                break
        return outputs


def load_vgg19(path: str | Path, layers: tuple[str, ...] = tuple(STYLE_LAYERS)) -> VGG19Features:
    """Build the trunk and load its weights from ``path`` (a state dict with torchvision's names)."""
    path = Path(path)
    if not path.is_file():
        raise SynthmedError(
            f"VGG-19 weights {path}: no such file (give a local state dict saved from torchvision's vgg19)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a pickle that is not plain tensors, a truncated file, ...
        raise SynthmedError(f"VGG-19 weights {path}: cannot be read as a torch state dict ({error})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise SynthmedError(
            f"VGG-19 weights {path}: expected a state dict (name -> tensor), got {type(state).__name__}"
        )
    model = VGG19Features(layers)
    expected = model.features.state_dict()
    missing = [name for name in expected if f"features.{name}" not in state]
    if missing:
        found = sorted(k for k in state if k.startswith("features."))[:4]
        raise SynthmedError(
            f"VGG-19 weights {path}: missing {len(missing)} layer(s) such as features.{missing[0]} "
            f"(found {found or sorted(state)[:4]}); is this a VGG-19 state dict with torchvision's names?"
        )
    wrong = [
        f"features.{name} {tuple(state[f'features.{name}'].shape)} != {tuple(tensor.shape)}"
        for name, tensor in expected.items()
        if tuple(state[f"features.{name}"].shape) != tuple(tensor.shape)
    ]
    if wrong:
        raise SynthmedError(f"VGG-19 weights {path}: shapes do not match VGG-19 ({'; '.join(wrong[:3])})")
    model.features.load_state_dict({name: state[f"features.{name}"].float() for name in expected})
    return model
