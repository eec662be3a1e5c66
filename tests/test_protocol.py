"""Every registered method keeps the protocol of ``synthmed.models.base`` at its ``tiny`` preset.

The list of methods comes from the registry, so a method added as a new file in ``models/`` is tested here without
touching this file: it trains one step (finite losses, weights move), translates or generates tensors of the right
shape in [-1, 1], is reproducible from a seed, and its ``state_dict`` rebuilds the same model.
"""

from __future__ import annotations

import math

import pytest
import torch

from synthmed.models.registry import available_models, build_model

METHODS = sorted(available_models())


def _batch(model, n: int = 2) -> dict[str, torch.Tensor]:
    size = model.config.image_size
    context = int(getattr(model.config, "context", 1))
    generator = torch.Generator().manual_seed(0)
    source = torch.rand(n, context, size, size, generator=generator) * 2 - 1
    target = torch.rand(n, context if not model.paired else 1, size, size, generator=generator) * 2 - 1
    batch = {"source": source, "target": target}
    if model.makes_masks:
        batch["label"] = (torch.rand(n, 1, size, size, generator=generator) > 0.8).float()
    return batch


def _outputs(model, batch: dict[str, torch.Tensor], seed: int = 1) -> dict[str, torch.Tensor]:
    """What a user gets from the model: its translation(s) or a generated sample."""
    model.eval()
    options = {"generator": torch.Generator().manual_seed(seed)} if model.stochastic or model.task == "generate" else {}
    with torch.no_grad():
        if model.task == "generate":
            return model.sample(2, **options)
        outputs = {"A2B": model.translate(batch["source"], **options)}
        if "B2A" in model.directions:
            outputs["B2A"] = model.translate_reverse(
                batch["target"][:, :1],
                **({} if not model.stochastic else {"generator": torch.Generator().manual_seed(seed)}),
            )
        return outputs


@pytest.mark.parametrize("name", METHODS)
def test_method_declares_what_the_engine_and_cli_rely_on(name):
    cls = available_models()[name]
    assert {"paper", "small", "tiny"} <= set(cls.PRESETS)
    assert cls.paper and cls.task in ("translate", "generate")
    assert set(cls.directions) <= {"A2B", "B2A"} and "A2B" in cls.directions
    assert set(cls.ema_modules) <= {n for n, _ in build_model(name, "tiny").named_children()}
    if cls.task == "translate" and not cls.stochastic:
        assert not cls.sampling_options  # translators have sampling options only when they draw noise


@pytest.mark.parametrize("name", METHODS)
def test_method_trains_one_step(name):
    torch.manual_seed(0)
    model = build_model(name, "tiny")
    assert sum(p.numel() for p in model.parameters()) < 1_000_000  # tiny means tiny: this file runs every method
    before = {k: v.clone() for k, v in model.state_dict().items() if v.is_floating_point()}
    model.train()
    losses = model.training_step(_batch(model), 0)
    assert losses and all(math.isfinite(float(v)) for v in losses.values()), losses
    moved = [k for k, v in model.state_dict().items() if k in before and not torch.equal(v, before[k])]
    assert moved, "no weight changed after a training step"


@pytest.mark.parametrize("name", METHODS)
def test_method_output_shape_range_and_seed(name):
    torch.manual_seed(0)
    model = build_model(name, "tiny")
    batch = _batch(model)
    first, again = _outputs(model, batch), _outputs(model, batch)
    size = model.config.image_size
    for key, value in first.items():
        if key == "mask_estimate":
            continue
        assert value.shape == (2, 1, size, size), (key, value.shape)
        assert torch.isfinite(value).all() and value.min() >= -1 - 1e-5 and value.max() <= 1 + 1e-5, key
        torch.testing.assert_close(value, again[key], msg=f"{key}: the same seed gave another output")
    if model.makes_masks:
        assert set(first["mask"].unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("name", METHODS)
def test_state_dict_rebuilds_the_same_model(name):
    torch.manual_seed(0)
    model = build_model(name, "tiny")
    model.train()
    model.training_step(_batch(model), 0)  # weights (and norm statistics) away from their initial values
    torch.manual_seed(123)
    copy = build_model(name, "tiny")
    copy.load_state_dict(model.state_dict())
    batch = _batch(model)
    expected, got = _outputs(model, batch), _outputs(copy, batch)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], msg=key)


@pytest.mark.parametrize("name", [n for n in METHODS if "sampler" in available_models()[n].sampling_options])
def test_sampling_options_are_checked_before_any_work(name):
    model = build_model(name, "tiny")
    model.check_sampling(sampler=model.config.sampler, steps=2)
    with pytest.raises(ValueError, match="unknown sampler 'heun'"):
        model.check_sampling(sampler="heun")
    with pytest.raises(ValueError, match="whole number"):
        model.check_sampling(steps=0)
