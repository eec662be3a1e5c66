"""The inference fast path of NCSN++ (``synthmed.nn.fused``) computes what the plain forward computes."""

from __future__ import annotations

import pytest
import torch

from synthmed.diffusion.few_step import FewStepSchedule
from synthmed.nn import fused
from synthmed.nn.ncsnpp import NCSNppGenerator

# float32 round-off of a reordered sum (Winograd convolutions, on one thread, differ most: ~1e-5 of the range).
ROUND_OFF = {"atol": 2e-4, "rtol": 1e-3}


def _network(seed: int = 0) -> NCSNppGenerator:
    torch.manual_seed(seed)
    net = NCSNppGenerator(
        in_channels=2,
        base_channels=16,
        channel_mult=(1, 2, 2),
        num_res_blocks=1,
        attention_resolutions=(8,),
        image_size=32,
        nz=8,
        z_embedding=16,
    )
    # Zero-initialised output convolutions would hide whatever the fast path does to the branches they close.
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.Conv2d) and not module.weight.any():
                module.weight.normal_(0, 0.05)
                if module.bias is not None:
                    module.bias.normal_(0, 0.05)
    return net.eval()


def _inputs(batch: int, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 2, 32, 32, generator=generator)
    t = torch.arange(batch) % 4
    z = torch.randn(batch, 8, generator=generator)
    return x, t, z


def _plain(net, x, t, z):
    with torch.inference_mode(), fused.plain():
        return net(x, t, z)


def _fast(net, x, t, z):
    with torch.inference_mode():
        return net(x, t, z)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fast_path_equals_plain_forward_in_float32(batch, channels_last):
    net = _network()
    x, t, z = _inputs(batch)
    reference = _plain(net, x, t, z)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    out = _fast(net, x, t, z)
    assert out.shape == reference.shape
    torch.testing.assert_close(out, reference, **ROUND_OFF)


def test_fast_path_is_not_a_no_op():
    """The comparison above would pass trivially if the fast path were never taken: count its calls."""
    net = _network()
    x, t, z = _inputs(1)
    calls = []
    original = fused.conv2d

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    fused.conv2d = counting
    try:
        _fast(net, x, t, z)
        taken = len(calls)
        _plain(net, x, t, z)
        with torch.no_grad():
            net.train()(x, t, z)  # training mode stays on the plain path, even without autograd
    finally:
        fused.conv2d = original
    assert taken > 10
    assert len(calls) == taken


def test_fast_path_in_bfloat16_is_as_close_as_plain_bfloat16():
    net = _network()
    x, t, z = _inputs(2)
    reference = _plain(net, x, t, z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain_bf16 = _plain(net, x, t, z).float()
        fast_bf16 = _fast(net, x, t, z).float()
    plain_error = (plain_bf16 - reference).abs().max().item()
    fast_error = (fast_bf16 - reference).abs().max().item()
    assert plain_error > 0  # bfloat16 did run
    assert fast_error < max(2 * plain_error, 0.05), (fast_error, plain_error)


def test_cached_weights_follow_parameter_updates():
    net = _network()
    x, t, z = _inputs(1)
    before = _fast(net, x, t, z)
    # An optimiser step changes the parameters in place (same storage, new version): the cache must notice.
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    net.train()
    net(x, t, z).square().mean().backward()
    optimizer.step()
    net.eval()
    after_step = _fast(net, x, t, z)
    assert not torch.allclose(after_step, before)
    torch.testing.assert_close(after_step, _plain(net, x, t, z), **ROUND_OFF)
    # load_state_dict copies into the same storage, too.
    net.load_state_dict(_network(seed=5).state_dict())
    torch.testing.assert_close(_fast(net, x, t, z), _plain(net, x, t, z), **ROUND_OFF)
    torch.testing.assert_close(_fast(net, x, t, z), _plain(_network(seed=5), x, t, z), **ROUND_OFF)
    # The cache is not state: checkpoints never carry it.
    assert not any("inference" in key for key in net.state_dict())


def test_posterior_sample_at_equals_posterior_sample():
    schedule = FewStepSchedule(timesteps=4)
    generator = torch.Generator().manual_seed(0)
    x0, x_next, noise = (torch.randn(3, 1, 8, 8, generator=generator) for _ in range(3))
    for step in range(4):
        t = torch.full((3,), step, dtype=torch.long)
        expected = schedule.posterior_sample(x0, x_next, t, noise=noise)
        torch.testing.assert_close(schedule.posterior_sample_at(x0, x_next, step, noise), expected)
    with pytest.raises(ValueError):
        schedule.posterior_sample_at(x0, x_next, 4, noise)


@pytest.mark.parametrize("name", ["ddpm", "syndiff"])
def test_inference_preparation_keeps_translations(name):
    """channels_last (what translate uses on a CPU) changes the translation by round-off only; --compile wraps the
    networks lazily (nothing compiles before a call)."""
    from synthmed.models.registry import build_model
    from synthmed.workflows.translate import prepare_for_inference

    torch.manual_seed(0)
    model = build_model(name, "tiny", {}).eval()
    size = model.config.image_size
    assert model.channels_last_inference
    source = torch.rand(2, 1, size, size, generator=torch.Generator().manual_seed(3)) * 2 - 1

    def translate():
        return model.translate(source, generator=torch.Generator().manual_seed(4))

    before = translate()
    prepare_for_inference(model)
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in model.parameters() if p.dim() == 4), (
        "networks not channels_last"
    )
    torch.testing.assert_close(translate(), before, atol=1e-4, rtol=1e-4)
    prepare_for_inference(model, compile=True)
    networks = [child for child in model.children() if any(True for _ in child.parameters())]
    assert networks and all(child._compiled_call_impl is not None for child in networks)


def test_traced_network_takes_the_plain_path():
    """A trace (TorchScript and ONNX export) must record the plain graph: a fast-path trace at batch 1 would bake in
    sample 0's scale and shift and the folded weights as constants."""
    net = _network()
    with torch.no_grad():
        traced = torch.jit.trace(net, _inputs(1), check_trace=False)
        x, t, z = _inputs(3, seed=7)
        torch.testing.assert_close(traced(x, t, z), _plain(net, x, t, z), **ROUND_OFF)


@pytest.mark.skipif(not fused._nnpack_ready(), reason="this PyTorch build has no NNPACK")
def test_one_thread_float32_uses_winograd_within_round_off(monkeypatch):
    """On one CPU thread the 3x3 convolutions of maps >= WINOGRAD_MIN_SIZE go through NNPACK's Winograd algorithm;
    the result stays within float32 round-off of the plain forward (bfloat16 is ~1000x further off)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        net = _network()
        x, t, z = _inputs(1)
        reference = _plain(net, x, t, z)
        calls = []
        original = torch._nnpack_spatial_convolution

        def counting(*args, **kwargs):
            calls.append(args[0].shape)
            return original(*args, **kwargs)

        monkeypatch.setattr(torch, "_nnpack_spatial_convolution", counting)
        out = _fast(net, x, t, z)
        assert calls and all(min(shape[-2:]) >= fused.WINOGRAD_MIN_SIZE for shape in calls)
        torch.testing.assert_close(out, reference, **ROUND_OFF)
        calls.clear()
        _fast(net, *_inputs(2))  # batches take oneDNN's direct convolution
        assert not calls
    finally:
        torch.set_num_threads(threads)


def test_default_batch_size_keeps_a_cpu_batch_within_one_256px_slice():
    from synthmed.workflows.translate import GPU_BATCH_SIZE, default_batch_size

    cpu = torch.device("cpu")
    assert default_batch_size(cpu, (155, 256, 256)) == 1
    assert default_batch_size(cpu, (155, 240, 240)) == 1
    assert default_batch_size(cpu, (155, 512, 512)) == 1
    assert default_batch_size(cpu, (155, 64, 64)) == 16
    assert default_batch_size(cpu, (155, 16, 16)) == GPU_BATCH_SIZE  # never more than a GPU's default
    assert default_batch_size(torch.device("meta"), (155, 256, 256)) == GPU_BATCH_SIZE
