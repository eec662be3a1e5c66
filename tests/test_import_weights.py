"""``synthmed import``: checkpoints of the official pix2pix/CycleGAN code become run folders that translate exactly
as the original networks do.

The original networks are re-implemented below in the layout of junyanz/pytorch-CycleGAN-and-pix2pix's
``models/networks.py`` (their module nesting and numbering make the state-dict keys; their forward passes the
outputs): ``UnetSkipConnectionBlock`` nests the next level inside a ``Sequential`` named ``model`` and returns
``cat([input, output])``; ``ResnetGenerator`` is one ``Sequential`` ``model`` whose blocks hold a ``conv_block``.
Convolutions before a norm have a bias only with instance norm (their ``use_bias``); batch norm is affine with
running statistics, instance norm neither; dropout sits after a middle U-Net block's up norm and between the two
convolutions of a residual block. Random weights, so the comparison covers every key.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from synthmed.cli import main
from synthmed.errors import SynthmedError
from synthmed.workflows.import_weights import import_weights
from synthmed.workflows.translate import load_run


def their_norm(norm: str, channels: int) -> nn.Module:
    if norm == "batch":
        return nn.BatchNorm2d(channels, affine=True, track_running_stats=True)
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    return nn.Identity()


class TheirUnetBlock(nn.Module):
    def __init__(self, outer, inner, input_nc=None, submodule=None, outermost=False, innermost=False, norm="batch",
                 dropout=False):  # fmt: skip
        super().__init__()
        self.outermost = outermost
        bias = norm == "instance"
        down_conv = nn.Conv2d(input_nc or outer, inner, 4, 2, 1, bias=bias)
        if outermost:
            layers = [down_conv, submodule, nn.ReLU(True), nn.ConvTranspose2d(inner * 2, outer, 4, 2, 1), nn.Tanh()]
        elif innermost:
            layers = [nn.LeakyReLU(0.2, True), down_conv, nn.ReLU(True),
                      nn.ConvTranspose2d(inner, outer, 4, 2, 1, bias=bias), their_norm(norm, outer)]  # fmt: skip
        else:
            layers = [nn.LeakyReLU(0.2, True), down_conv, their_norm(norm, inner), submodule, nn.ReLU(True),
                      nn.ConvTranspose2d(inner * 2, outer, 4, 2, 1, bias=bias), their_norm(norm, outer)]  # fmt: skip
            if dropout:
                layers.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x) if self.outermost else torch.cat([x, self.model(x)], 1)


class TheirUnet(nn.Module):
    def __init__(self, input_nc, output_nc, num_downs, ngf, norm="batch", dropout=False):
        super().__init__()
        block = TheirUnetBlock(ngf * 8, ngf * 8, innermost=True, norm=norm)
        for _ in range(num_downs - 5):
            block = TheirUnetBlock(ngf * 8, ngf * 8, submodule=block, norm=norm, dropout=dropout)
        block = TheirUnetBlock(ngf * 4, ngf * 8, submodule=block, norm=norm)
        block = TheirUnetBlock(ngf * 2, ngf * 4, submodule=block, norm=norm)
        block = TheirUnetBlock(ngf, ngf * 2, submodule=block, norm=norm)
        self.model = TheirUnetBlock(output_nc, ngf, input_nc=input_nc, submodule=block, outermost=True, norm=norm)

    def forward(self, x):
        return self.model(x)


class TheirResnetBlock(nn.Module):
    def __init__(self, dim, norm, dropout, bias):
        super().__init__()
        layers = [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=bias), their_norm(norm, dim), nn.ReLU(True)]
        if dropout:
            layers.append(nn.Dropout(0.5))
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=bias), their_norm(norm, dim)]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv_block(x)


class TheirResnet(nn.Module):
    def __init__(self, input_nc, output_nc, ngf, n_blocks, norm="instance", dropout=False):
        super().__init__()
        bias = norm == "instance"
        layers = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, 7, bias=bias), their_norm(norm, ngf), nn.ReLU(True)]
        for mult in (1, 2):
            layers += [nn.Conv2d(ngf * mult, ngf * mult * 2, 3, 2, 1, bias=bias), their_norm(norm, ngf * mult * 2),
                       nn.ReLU(True)]  # fmt: skip
        layers += [TheirResnetBlock(ngf * 4, norm, dropout, bias) for _ in range(n_blocks)]
        for mult in (4, 2):
            layers += [nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 3, 2, 1, output_padding=1, bias=bias),
                       their_norm(norm, ngf * mult // 2), nn.ReLU(True)]  # fmt: skip
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


def randomised(network: nn.Module, seed: int) -> nn.Module:
    """Random weights everywhere, batch-norm statistics included, so that a key mapped wrongly changes the output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in network.state_dict().items():
            if name.endswith("num_batches_tracked"):
                tensor.fill_(1000)
            elif name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif name.endswith("running_mean") or tensor.dim() == 1:
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.2 + (name.endswith("weight")))
            else:
                fan_in = tensor[0].numel() if tensor.dim() > 1 else 1
                tensor.copy_(torch.randn(tensor.shape, generator=generator) / fan_in**0.5)
    return network.eval()


def save(network: nn.Module, path: Path, prefix: str = "") -> Path:
    torch.save({prefix + key: value for key, value in network.state_dict().items()}, path)
    return path


def grey_reference(network: nn.Module, x: torch.Tensor, channels: tuple[int, int]) -> torch.Tensor:
    """What the original computes on a grey slice saved as an RGB picture, its RGB output averaged to grey."""
    with torch.no_grad():
        out = network(x.repeat(1, channels[0], 1, 1))
    return out.mean(1, keepdim=True)


def imported_output(tmp_path: Path, kind: str, checkpoint: Path, x: torch.Tensor, **options) -> torch.Tensor:
    run = import_weights(kind, checkpoint, tmp_path / "run", source="T1", target="T2", **options)
    loaded = load_run(run, device="cpu")
    return loaded.model.translate(x)


CASES = {
    # name: (network, channels, image size)
    "unet_128 batch 1ch dropout": (lambda: TheirUnet(1, 1, 7, 8, "batch", dropout=True), (1, 1), 128),
    "unet_256 batch 3ch": (lambda: TheirUnet(3, 3, 8, 4, "batch"), (3, 3), 256),
    "unet_32 instance": (lambda: TheirUnet(1, 1, 5, 4, "instance"), (1, 1), 32),
    "unet_32 none 3->1": (lambda: TheirUnet(3, 1, 5, 4, "none"), (3, 1), 32),
    "resnet_9blocks instance 3ch": (lambda: TheirResnet(3, 3, 8, 9, "instance"), (3, 3), 32),
    "resnet_6blocks batch dropout": (lambda: TheirResnet(1, 1, 4, 6, "batch", dropout=True), (1, 1), 32),
    "resnet_6blocks none": (lambda: TheirResnet(1, 1, 4, 6, "none"), (1, 1), 32),
}


@pytest.mark.parametrize("case", list(CASES))
def test_imported_network_computes_the_original(tmp_path, case):
    make, channels, size = CASES[case]
    torch.manual_seed(0)
    original = randomised(make(), seed=1)
    # DataParallel's prefix on one of them: it is removed on reading.
    checkpoint = save(original, tmp_path / "latest_net_G.pth", prefix="module." if "3ch" in case else "")
    x = torch.rand(2, 1, size, size, generator=torch.Generator().manual_seed(2)) * 2 - 1
    ours = imported_output(tmp_path, "pix2pix" if case.startswith("unet") else "cyclegan", checkpoint, x)
    expected = grey_reference(original, x, channels)
    assert ours.shape == expected.shape == (2, 1, size, size)
    assert float(expected.std()) > 0.05  # a real function of the input, not a saturated constant
    assert torch.allclose(ours, expected, atol=1e-5), float((ours - expected).abs().max())


def test_run_record_names_the_origin(tmp_path):
    original = randomised(TheirUnet(1, 1, 5, 4, "batch"), seed=3)
    checkpoint = save(original, tmp_path / "latest_net_G.pth")
    run = import_weights("pix2pix", checkpoint, tmp_path / "run", source="t1w", target="T2")
    record = json.loads((run / "run.json").read_text())
    assert record["model"] == "pix2pix" and record["preset"] == "imported"
    assert (record["source"], record["target"]) == ("t1", "t2")
    origin = record["settings"]["imported"]
    assert origin["file"] == str(checkpoint.resolve()) and origin["architecture"] == "unet_32"
    import hashlib

    assert origin["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    plan = json.loads((run / "plan.json").read_text())
    assert plan["size"] == 32 and plan["normalization_kind"] == {"t1": "mr", "t2": "mr"}
    assert plan["resolution"]["mode"] == "resized" and plan["target_scale"]["model"] == "affine"
    assert (run / "checkpoints" / "best.pt").is_file()


def test_import_then_translate_a_volume(tmp_path):
    """The CLI end to end: a ResNet pair imported both ways, a tiny phantom translated each way with its geometry."""
    from synthmed.data.phantom import write_phantoms

    torch.manual_seed(0)
    save(randomised(TheirResnet(1, 1, 4, 6, "instance"), seed=4), tmp_path / "latest_net_G_A.pth")
    save(randomised(TheirResnet(1, 1, 4, 6, "instance"), seed=5), tmp_path / "latest_net_G_B.pth")
    write_phantoms(tmp_path / "data", subjects=1, size=32, seed=1, overwrite=True)
    t1 = next((tmp_path / "data").glob("*/T1.nii.gz"))
    one_way, both_ways = tmp_path / "run", tmp_path / "run2"
    args = ["--source", "T1", "--target", "T2", "--size", "32"]
    assert main(["import", "cyclegan", str(tmp_path / "latest_net_G_A.pth"), str(one_way), *args, "--quiet"]) == 0
    out = tmp_path / "pred.nii.gz"
    assert main(["translate", str(one_way), str(t1), str(out), "--quiet"]) == 0
    source, pred = nib.load(t1), nib.load(out)
    assert pred.shape == source.shape
    np.testing.assert_allclose(pred.affine, source.affine)
    data = pred.get_fdata()
    assert np.isfinite(data).all() and np.ptp(data) > 0
    # One generator translates one way only; the pair both ways.
    assert main(["translate", str(one_way), str(t1), str(tmp_path / "b.nii.gz"), "--direction", "B2A"]) == 2
    reverse = ["--reverse", str(tmp_path / "latest_net_G_B.pth")]
    assert main(["import", "cyclegan", str(tmp_path / "latest_net_G_A.pth"), str(both_ways), *args, *reverse]) == 0
    back = tmp_path / "back.nii.gz"
    assert main(["translate", str(both_ways), str(out), str(back), "--direction", "B2A", "--quiet"]) == 0
    assert nib.load(back).shape == source.shape


@pytest.fixture
def unet_state(tmp_path) -> dict[str, torch.Tensor]:
    return randomised(TheirUnet(1, 1, 5, 4, "batch"), seed=6).state_dict()


def test_unknown_key_is_refused(tmp_path, unet_state):
    unet_state["model.model.1.model.9.weight"] = torch.zeros(3)
    torch.save(unet_state, tmp_path / "g.pth")
    with pytest.raises(SynthmedError, match=r"g\.pth: unknown key 'model\.model\.1\.model\.9\.weight'") as error:
        import_weights("pix2pix", tmp_path / "g.pth", tmp_path / "run")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "run").exists()


def test_wrong_shape_is_refused(tmp_path, unet_state):
    key = "model.model.1.model.3.model.5.weight"
    unet_state[key] = torch.zeros(7, *unet_state[key].shape[1:])
    torch.save(unet_state, tmp_path / "g.pth")
    with pytest.raises(
        SynthmedError,
        match=rf"key '{key}' has shape \[7, 8, 4, 4\], but a unet_32 generator .* has \[32, 8, 4, 4\] there",
    ):
        import_weights("pix2pix", tmp_path / "g.pth", tmp_path / "run")


def test_missing_key_is_refused(tmp_path, unet_state):
    del unet_state["model.model.1.model.2.running_var"]
    torch.save(unet_state, tmp_path / "g.pth")
    with pytest.raises(SynthmedError, match=r"lacks key 'model\.model\.1\.model\.2\.running_var'"):
        import_weights("pix2pix", tmp_path / "g.pth", tmp_path / "run")


def test_files_that_are_not_generator_checkpoints_are_refused(tmp_path, unet_state):
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    with pytest.raises(SynthmedError, match="not a PyTorch checkpoint"):
        import_weights("pix2pix", tmp_path / "notes.pth", tmp_path / "run")
    torch.save({"epoch": 3, "state": unet_state}, tmp_path / "wrapped.pth")
    with pytest.raises(SynthmedError, match="entry 'epoch' is a int, not a tensor"):
        import_weights("pix2pix", tmp_path / "wrapped.pth", tmp_path / "run")
    discriminator = nn.Sequential(nn.Conv2d(2, 4, 4, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(4, 1, 4, 1, 1))
    torch.save({f"model.{k}": v for k, v in discriminator.state_dict().items()}, tmp_path / "latest_net_D.pth")
    with pytest.raises(SynthmedError, match="not a pix2pix/CycleGAN generator"):
        import_weights("pix2pix", tmp_path / "latest_net_D.pth", tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_existing_output_is_refused(tmp_path, unet_state, capsys):
    torch.save(unet_state, tmp_path / "g.pth")
    theirs = tmp_path / "mine"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("keep me")
    assert main(["import", "pix2pix", str(tmp_path / "g.pth"), str(theirs)]) == 2
    assert "exists" in capsys.readouterr().err
    with pytest.raises(SynthmedError, match="was not made by synthmed import"):
        import_weights("pix2pix", tmp_path / "g.pth", theirs, overwrite=True)
    assert (theirs / "notes.txt").read_text() == "keep me"
    run = import_weights("pix2pix", tmp_path / "g.pth", tmp_path / "run")
    with pytest.raises(SynthmedError, match="exists"):
        import_weights("pix2pix", tmp_path / "g.pth", run)
    import_weights("pix2pix", tmp_path / "g.pth", run, overwrite=True, source="T1", target="T2")
    assert json.loads((run / "run.json").read_text())["source"] == "t1"


@pytest.mark.parametrize("model", ["pix2pix", "cyclegan"])
def test_colour_networks_train_on_grey_slices(model):
    """An imported RGB generator can be trained further: grey in, grey out, whatever its channel counts."""
    from synthmed.models.registry import build_model

    torch.manual_seed(0)
    net = build_model(model, "tiny", {"network_channels": [3, 3]})
    batch = {"source": torch.rand(2, 1, 32, 32) * 2 - 1, "target": torch.rand(2, 1, 32, 32) * 2 - 1}
    losses = net.training_step(batch, 0)
    assert all(np.isfinite(float(v)) for v in losses.values())
    assert net.translate(batch["source"]).shape == (2, 1, 32, 32)
    with pytest.raises(SynthmedError, match="takes single slices"):
        build_model(model, "tiny", {"network_channels": [3, 3], "context": 3})
