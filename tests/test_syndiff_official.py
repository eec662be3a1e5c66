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
