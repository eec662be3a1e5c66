"""Weight compatibility with the official SynDiff networks (reference outputs in ../shared/fixtures/syndiff-official).

The fixture holds the official NCSN++ generator and time-conditional discriminator with random weights, their inputs
and outputs at a tiny configuration, and the key -> shape tables at the README configuration; no code of theirs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from synthmed.errors import SynthmedError
from synthmed.models.syndiff import SynDiff, SynDiffConfig
from synthmed.nn.ncsnpp import NCSNppGenerator
from synthmed.nn.time_discriminator import TimeConditionalDiscriminator
from synthmed.weights.syndiff_official import convert_discriminator, convert_generator

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "syndiff-official"
pytestmark = pytest.mark.skipif(not (FIXTURES / "tiny.pt").is_file(), reason="../shared/fixtures absent")


@pytest.fixture(scope="module")
def tiny():
    return torch.load(FIXTURES / "tiny.pt", weights_only=True)


def _generator(state, image_size):
    kwargs, converted = convert_generator(state, image_size)
    net = NCSNppGenerator(**kwargs)
    net.load_state_dict(converted)
    return net.eval()


def test_generator_reproduces_the_official_output(tiny):
    net = _generator(tiny["generator"], tiny["config"]["image_size"])
    assert net.channel_mult == tuple(tiny["config"]["ch_mult"])
    with torch.no_grad():
        output = net(tiny["g_input"], tiny["t"], tiny["z"])
    assert output.shape == tiny["g_output"].shape
    assert torch.allclose(output, tiny["g_output"], atol=1e-5, rtol=0)
    assert tiny["g_output"].std() > 1e-3  # a real comparison, not of two constant maps


def test_discriminator_reproduces_the_official_output(tiny):
    kwargs, converted = convert_discriminator(tiny["discriminator"], tiny["config"]["image_size"])
    net = TimeConditionalDiscriminator(**kwargs)
    net.load_state_dict(converted)
    with torch.no_grad():
        output = net.eval()(tiny["d_x_t"], tiny["t"], tiny["d_x_tp1"])
    assert torch.allclose(output, tiny["d_output"], atol=1e-5, rtol=0)


def test_ddp_prefix_is_accepted(tiny):
    prefixed = {f"module.{key}": value for key, value in tiny["generator"].items()}
    net = _generator(prefixed, 64)
    with torch.no_grad():
        assert torch.allclose(net(tiny["g_input"], tiny["t"], tiny["z"]), tiny["g_output"], atol=1e-5, rtol=0)


def test_paper_configuration_has_the_official_shapes_and_counts():
    tables = json.loads((FIXTURES / "paper_shapes.json").read_text())
    generator = {key: torch.zeros(shape) for key, shape in tables["ncsnpp_state_dict_shapes"].items()}
    kwargs, converted = convert_generator(generator, 256)
    assert sum(v.numel() for v in converted.values()) == tables["ncsnpp_parameters"] == 39_725_250
    assert kwargs["channel_mult"] == (1, 1, 2, 2, 4, 4) and kwargs["num_res_blocks"] == 2
    assert kwargs["attention_resolutions"] == (16,)
    discriminator = {key: torch.zeros(shape) for key, shape in tables["discriminator_large_state_dict_shapes"].items()}
    _, converted = convert_discriminator(discriminator, 256)
    assert sum(v.numel() for v in converted.values()) == tables["discriminator_large_parameters"] == 27_736_705
    # our paper preset: the same network with one output channel (the reference's second channel is unused)
    model = SynDiff(SynDiffConfig())
    ours = sum(p.numel() for p in model.diffusive_b.parameters())
    assert ours == tables["ncsnpp_parameters"] - (64 * 9 + 1)


def test_unknown_key_and_wrong_shape_are_refused_by_name(tiny):
    state = dict(tiny["generator"])
    state["all_modules.3.Conv_9.weight"] = torch.zeros(1)
    with pytest.raises(SynthmedError, match=r"all_modules\.3\.Conv_9\.weight"):
        convert_generator(state, 64)
    state = dict(tiny["generator"])
    state["z_transform.3.weight"] = torch.zeros(256, 255)
    with pytest.raises(SynthmedError, match=r"z_transform\.3\.weight has shape \(256, 255\)"):
        convert_generator(state, 64)
    state = dict(tiny["discriminator"])
    state["conv1.extra.weight"] = torch.zeros(1)
    with pytest.raises(SynthmedError, match=r"conv1\.extra\.weight"):
        convert_discriminator(state, 64)
    with pytest.raises(SynthmedError, match="not an official SynDiff generator"):
        convert_generator(tiny["discriminator"], 64)


def _reference_translation(network, source: torch.Tensor, seed: int, steps: int = 4) -> torch.Tensor:
    """SynDiff's published sampler, written from its equations: x_T ~ N(0, I); per step t = T-1 .. 0 a latent z,
    x0 = G([x_{t+1}, source], t, z) (first channel), x_t = posterior mean + sigma_t noise (none at t = 0); the noise
    drawn in that order from one generator, as ``SynDiff.translate`` draws it."""
    import numpy as np

    s = np.arange(steps + 1, dtype=np.float64) / steps * (1 - 1e-3) + 1e-3
    alpha_bar_s = np.exp(-0.5 * s**2 * (20.0 - 0.1) - s * 0.1)
    betas = 1 - alpha_bar_s[1:] / alpha_bar_s[:-1]
    cumulative = np.cumprod(1 - betas)
    previous = np.concatenate([[1.0], cumulative[:-1]])
    coef_x0 = betas * np.sqrt(previous) / (1 - cumulative)
    coef_xt = (1 - previous) * np.sqrt(1 - betas) / (1 - cumulative)
    variance = betas * (1 - previous) / (1 - cumulative)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(source.shape, generator=generator)
    for t in reversed(range(steps)):
        z = torch.randn(source.shape[0], 100, generator=generator)
        with torch.no_grad():
            x0 = network(torch.cat([x, source], 1), torch.full((source.shape[0],), t), z)[:, :1]
        noise = torch.randn(source.shape, generator=generator)
        x = float(coef_x0[t]) * x0 + float(coef_xt[t]) * x + (float(variance[t]) ** 0.5 if t else 0.0) * noise
    return x


def test_imported_run_translates_like_the_official_sampler(tiny, tmp_path):
    """`synthmed import syndiff` keeps the first output channel and the sampler: the run's translation of a batch
    equals the published sampler over the official network; then a whole volume keeps its geometry."""
    import nibabel as nib
    import numpy as np

    from synthmed.cli import main
    from synthmed.data.phantom import write_phantoms
    from synthmed.workflows.translate import load_run

    torch.save({f"module.{k}": v for k, v in tiny["generator"].items()}, tmp_path / "gen_diffusive_2_50.pth")
    torch.save(tiny["generator"], tmp_path / "gen_diffusive_1_50.pth")
    run = tmp_path / "run"
    args = ["--source", "T1", "--target", "T2", "--size", "64", "--quiet"]
    assert main(["import", "syndiff", str(tmp_path / "gen_diffusive_2_50.pth"), str(run), *args]) == 0
    model = load_run(run).model
    official = _generator(tiny["generator"], 64)
    source = tiny["g_input"][:, 1:]
    ours = model.translate(source, generator=torch.Generator().manual_seed(3))
    reference = _reference_translation(official, source, seed=3)
    assert torch.allclose(ours, reference, atol=1e-5, rtol=0)
    assert reference.std() > 1e-3
    # only the diffusive generator is stored, and B2A needs the other one
    checkpoint = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert checkpoint["networks"] == ["diffusive_b"]
    assert {key.split(".")[0] for key in checkpoint["state"]} == {"diffusive_b"}
    write_phantoms(tmp_path / "data", subjects=1, size=48, seed=1, overwrite=True)
    t1 = next((tmp_path / "data").glob("*/T1.nii.gz"))
    assert main(["translate", str(run), str(t1), str(tmp_path / "b2a.nii.gz"), "--direction", "B2A"]) == 2
    out = tmp_path / "t2.nii.gz"
    assert main(["translate", str(run), str(t1), str(out), "--quiet"]) == 0
    source_image, prediction = nib.load(t1), nib.load(out)
    assert prediction.shape == source_image.shape
    np.testing.assert_allclose(prediction.affine, source_image.affine)
    assert np.isfinite(prediction.get_fdata()).all()
    both = tmp_path / "both"
    reverse = ["--reverse", str(tmp_path / "gen_diffusive_1_50.pth")]
    assert main(["import", "syndiff", str(tmp_path / "gen_diffusive_2_50.pth"), str(both), *args, *reverse]) == 0
    assert main(["translate", str(both), str(out), str(tmp_path / "back.nii.gz"), "--direction", "B2A"]) == 0


def test_import_refuses_sizes_the_generator_cannot_take(tiny, tmp_path):
    from synthmed.cli import main

    torch.save(tiny["generator"], tmp_path / "g.pth")
    assert main(["import", "syndiff", str(tmp_path / "g.pth"), str(tmp_path / "run"), "--size", "16"]) == 2
    assert not (tmp_path / "run").exists()
