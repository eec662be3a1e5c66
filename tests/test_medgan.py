"""MedGAN: CasNet shapes, the feature losses against hand-computed values, VGG-19 weights from a file, one training
step, and a learning test on phantoms."""

import logging

import pytest
import torch

from synthmed.errors import SynthmedError
from synthmed.models.registry import available_models, build_model, make_config
from synthmed.nn.casnet import CasNet
from synthmed.nn.discriminators import patch_receptive_field
from synthmed.nn.feature_losses import content_loss, gram_matrix, perceptual_loss, style_loss
from synthmed.nn.unet import UNetGenerator
from synthmed.nn.vgg import VGG19Features, load_vgg19


def paired_batch(n=2, size=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    source = torch.rand(n, 1, size, size, generator=g) * 2 - 1
    return {"source": source, "target": -source, "mask": torch.ones(n, 1, size, size)}


def vgg_file(tmp_path, **changes):
    """A VGG-19 state dict with torchvision's names and random weights (plus classifier keys, which are ignored)."""
    torch.manual_seed(0)
    state = {f"features.{k}": v for k, v in VGG19Features().features.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(4, 4)
    for key, value in changes.items():
        if value is None:
            del state[key]
        else:
            state[key] = value
    path = tmp_path / "vgg19.pth"
    torch.save(state, path)
    return path, state


# --- CasNet ---------------------------------------------------------------------------------


@pytest.mark.parametrize("blocks", [1, 2, 4])
@pytest.mark.parametrize("size,depth", [(32, 5), (64, 6)])
def test_casnet_shapes_and_chain(blocks, size, depth):
    net = CasNet(blocks, 1, 1, 8, depth)
    x = torch.rand(2, 1, size, size) * 2 - 1
    net.eval()
    y = net(x)
    assert y.shape == x.shape and y.abs().max() <= 1
    assert len(net.blocks) == blocks
    single = sum(p.numel() for p in UNetGenerator(1, 1, 8, depth).parameters())
    assert sum(p.numel() for p in net.parameters()) == blocks * single
    # Block k refines block k-1's output.
    with torch.no_grad():
        z = x
        for block in net.blocks:
            z = block(z)
    torch.testing.assert_close(y, z)


def test_paper_presets_build_the_published_generator():
    with torch.device("meta"):
        paper = build_model("medgan", "paper")
        single = build_model("medgan", "single-ublock")
    assert len(paper.generator.blocks) == 6 and len(single.generator.blocks) == 1
    unet_256 = sum(p.numel() for p in UNetGenerator(1, 1, 64, 8).parameters())  # pix2pix's 54.4 M generator
    assert sum(p.numel() for p in paper.generator.parameters()) == 6 * unet_256
    # 16x16 patches: C64 (stride 2), C128 (stride 1), then the 1-channel logit convolution.
    convs = [m for m in paper.discriminator.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.stride[0]) for c in convs] == [(64, 2), (128, 1), (1, 1)]
    assert patch_receptive_field(1) == 16
    cfg = make_config("medgan", "paper")
    assert (cfg.lambda_adv, cfg.lambda_perceptual, cfg.lambda_style, cfg.lambda_content) == (1.0, 20.0, 1e-4, 1e-4)
    assert (cfg.lr, cfg.betas, cfg.d_every) == (2e-4, (0.5, 0.999), 3)
    assert available_models()["medgan"].paired


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"patch_size": 50}, "patch_size"),
        ({"image_size": 36}, "multiple of 8"),
        ({"n_ublocks": 0}, "n_ublocks"),
        ({"style_weights": (1.0, 2.0)}, "style_weights"),
    ],
)
def test_invalid_settings_are_refused(overrides, message):
    with pytest.raises(SynthmedError, match=message):
        build_model("medgan", "tiny", overrides)


# --- losses against hand-computed values --------------------------------------------------------


def test_gram_matrix_by_hand():
    # one image, 2 channels, 1x2 pixels: channel 0 = (1, 2), channel 1 = (3, 4)
    features = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])
    expected = torch.tensor([[[1 + 4, 3 + 8], [3 + 8, 9 + 16]]]) / (2 * 1 * 2)
    torch.testing.assert_close(gram_matrix(features), expected)


def test_perceptual_style_and_content_losses_by_hand():
    real = [torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])]
    fake = [torch.tensor([[[[1.0, 0.0]], [[3.0, 2.0]]]])]
    # perceptual: mean |r - f| = (0 + 2 + 0 + 2) / 4 = 1, times the layer weight
    assert perceptual_loss(real, fake).item() == pytest.approx(1.0)
    assert perceptual_loss(real + real, fake + real, weights=[3.0, 5.0]).item() == pytest.approx(3.0)
    # content: mean (r - f)^2 = (0 + 4 + 0 + 4) / 4 = 2
    assert content_loss(real, fake).item() == pytest.approx(2.0)
    # style: Gram(real) = [[5, 11], [11, 25]] / 4, Gram(fake) = [[1, 3], [3, 13]] / 4;
    # difference [[4, 8], [8, 12]] / 4 = [[1, 2], [2, 3]]; squared sum 1 + 4 + 4 + 9 = 18; / (4 * C^2 = 16)
    assert style_loss(real, fake).item() == pytest.approx(18 / 16)
    assert style_loss(real, real).item() == 0
    with pytest.raises(ValueError, match="layer weights"):
        perceptual_loss(real, fake, weights=[1.0, 2.0])


# --- VGG-19 from a local file --------------------------------------------------------------------


def test_vgg19_loads_torchvision_names_from_a_file(tmp_path):
    path, state = vgg_file(tmp_path)
    vgg = load_vgg19(path)
    loaded = vgg.features.state_dict()
    assert set(f"features.{k}" for k in loaded) == {k for k in state if k.startswith("features.")}
    for name, tensor in loaded.items():
        torch.testing.assert_close(tensor, state[f"features.{name}"])
    # conv layers at torchvision's indices, e.g. conv5_1 = features.28 (512 -> 512, 3x3)
    assert tuple(loaded["28.weight"].shape) == (512, 512, 3, 3) and tuple(loaded["0.weight"].shape) == (64, 3, 3, 3)
    outputs = vgg(torch.rand(1, 1, 32, 32) * 2 - 1)
    assert [o.shape[1] for o in outputs] == [64, 128, 256, 512, 512]
    assert [o.shape[-1] for o in outputs] == [32, 16, 8, 4, 2]
    assert all(not p.requires_grad for p in vgg.parameters()) and not vgg.train().training


def test_vgg19_file_that_does_not_match_fails_clearly(tmp_path):
    path, _ = vgg_file(tmp_path, **{"features.16.weight": None})  # VGG-16 has a pooling layer at index 16
    with pytest.raises(SynthmedError, match="missing .* features.16.weight"):
        load_vgg19(path)
    path, _ = vgg_file(tmp_path, **{"features.0.weight": torch.zeros(64, 1, 3, 3)})
    with pytest.raises(SynthmedError, match=r"shapes do not match .*features.0.weight \(64, 1, 3, 3\)"):
        load_vgg19(path)
    with pytest.raises(SynthmedError, match="no such file"):
        load_vgg19(tmp_path / "absent.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(SynthmedError, match="cannot be read"):
        load_vgg19(tmp_path / "junk.pth")


# --- training step ------------------------------------------------------------------------------


def test_generator_every_step_discriminator_every_third(caplog):
    torch.manual_seed(0)
    model = build_model("medgan", "tiny")
    model.train()
    counts = {"generator": 0, "discriminator": 0}
    for role, optimizer in model.optimizers().items():
        optimizer.register_step_post_hook(lambda *args, role=role: counts.__setitem__(role, counts[role] + 1))
    before = [p.detach().clone() for p in model.generator.parameters()]
    with caplog.at_level(logging.INFO):
        losses = [model.training_step(paired_batch(seed=s), s) for s in range(6)]
    assert counts == {"generator": 6, "discriminator": 2}  # steps 0 and 3
    assert any(not torch.equal(a, b) for a, b in zip(before, model.generator.parameters()))
    assert all(step["style"] == 0 and step["content"] == 0 and step["perceptual"] > 0 for step in losses)
    assert sum("style and content losses are off" in r.message for r in caplog.records) == 1  # said once
    assert all(p.requires_grad for p in model.parameters())


def test_style_and_content_losses_with_vgg_weights(tmp_path):
    path, _ = vgg_file(tmp_path)
    torch.manual_seed(0)
    model = build_model("medgan", "tiny", {"vgg19_weights": str(path)})
    model.train()
    losses = model.training_step(paired_batch(), 0)
    assert losses["style"] > 0 and losses["content"] > 0
    assert not any("features." in k for k in model.state_dict())  # the frozen VGG is not checkpointed
    assert model.config_dict()["vgg19_weights"] == str(path)
    broken = build_model("medgan", "tiny", {"vgg19_weights": str(tmp_path / "gone.pth")})
    with pytest.raises(SynthmedError, match="no such file"):
        broken.training_step(paired_batch(), 0)
    broken.eval()
    assert broken.translate(paired_batch()["source"]).shape == (2, 1, 32, 32)  # translating never needs VGG


def test_medgan_beats_identity_on_held_out_subjects(prepared, held_out_scores, tmp_path):
    from synthmed.workflows.train import train

    run = tmp_path / "run"
    train(
        prepared,
        model="medgan",
        preset="small",
        out=run,
        steps=250,
        batch_size=4,
        progress=False,
        overrides={"n_ublocks": 2, "generator_channels": 8, "discriminator_channels": 8},
        val_every=125,
    )
    model, identity = held_out_scores(run)
    # Measured (1 thread, seeds 0-2): PSNR 16.4-16.9 dB vs identity 12.1, SSIM 0.30-0.47 vs 0.015, MAE 65-74 vs 125.
    assert model["psnr"] > identity["psnr"] + 3.0, (model, identity)
    assert model["ssim"] > identity["ssim"], (model, identity)
    assert model["mae"] < identity["mae"], (model, identity)


def restoration_scores(data, work, name, size, split, steps=400):
    """Degrade ``name`` with Rician noise (severity 3), train MedGAN (residual) degraded -> clean, and score
    its restorations of the test subjects and the noisy inputs themselves against the clean scans."""
    import json

    from synthmed.data.degrade import degrade
    from synthmed.data.prepare import prepare
    from synthmed.workflows.evaluate import evaluate_pairs
    from synthmed.workflows.train import train
    from synthmed.workflows.translate import translate

    written = degrade(data, work / "noisy", kind="noise", severity=3, seed=0, name=name, progress=False)
    noisy_name = written[0].name
    prepare(
        work / "noisy",
        source=noisy_name.split(".")[0],
        target=name,
        out=work / "prep",
        size=size,
        split=split,
        seed=0,
        progress=False,
    )
    run = work / "run"
    train(
        work / "prep",
        model="medgan",
        preset="small",
        out=run,
        steps=steps,
        batch_size=4,
        progress=False,
        overrides={"n_ublocks": 2, "generator_channels": 8, "discriminator_channels": 8, "residual": True},
        val_every=steps,
    )
    restored, noisy = [], []
    for subject in json.loads((run / "plan.json").read_text())["split"]["test"]:
        folder = work / "noisy" / subject
        source = folder / noisy_name
        clean = next(p for p in sorted(folder.iterdir()) if p.name != noisy_name and ".nii" in p.name)
        out = work / "restored" / subject / clean.name
        translate(run, source, out, reference=clean, progress=False)
        restored.append((subject, out, clean))
        noisy.append((subject, source, clean))
    return evaluate_pairs(restored)["mean"], evaluate_pairs(noisy)["mean"]


def test_restoration_beats_the_noisy_input_on_phantoms(tmp_path):
    """The paper's denoising task on phantoms: noisy T1 -> clean T1 must beat the noisy T1 itself."""
    from synthmed.data.phantom import write_phantoms

    write_phantoms(tmp_path / "phantoms", subjects=6, size=64, seed=1, overwrite=True)
    model, noisy = restoration_scores(tmp_path / "phantoms", tmp_path, "T1", 64, "0.5,0.17,0.33")
    # Measured (1 thread, seeds 0-1): PSNR 23.4-23.9 dB vs 21.8 for the noisy input, SSIM 0.80 vs 0.73.
    assert model["psnr"] > noisy["psnr"] + 0.8, (model, noisy)
    assert model["ssim"] > noisy["ssim"], (model, noisy)
    assert model["mae"] < noisy["mae"], (model, noisy)


def test_restoration_beats_the_noisy_input_on_real_scans(real_data, tmp_path):
    """The same on the BraTS-layout scans (t1n; 2 train / 1 test subjects)."""
    brats = real_data / "brats"
    if not brats.is_dir():
        pytest.skip("../shared/data/real/brats is absent")
    model, noisy = restoration_scores(brats, tmp_path, "t1n", 64, "0.67,0,0.33")
    # Measured: PSNR 28.6 dB vs 25.4 for the noisy input, SSIM 0.85 vs 0.50.
    assert model["psnr"] > noisy["psnr"] + 1.0, (model, noisy)
    assert model["ssim"] > noisy["ssim"], (model, noisy)
    assert model["mae"] < noisy["mae"], (model, noisy)


def test_residual_generator_starts_from_the_input():
    torch.manual_seed(0)
    model = build_model("medgan", "tiny", {"residual": True})
    with torch.no_grad():
        for p in model.generator.parameters():
            p.zero_()
    model.eval()
    source = paired_batch()["source"]
    torch.testing.assert_close(model.translate(source), source)  # CasNet output 0: the input itself
