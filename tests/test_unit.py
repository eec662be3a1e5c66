"""UNIT and the patch-based Gaussian-mixture UNIT: KL terms against closed forms and numeric integration, aligned
patches, seamless sliding-window stitching, shared weights, one training step, and learning tests."""

import math

import numpy as np
import pytest
import torch

from synthmed.errors import SynthmedError
from synthmed.models.registry import available_models, build_model
from synthmed.nn.latent_prior import GaussianMixturePrior, kl_to_standard_normal
from synthmed.nn.patches import aligned_patches, sliding_window, window_starts


def unpaired_batch(n=2, size=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {
        "source": torch.rand(n, 1, size, size, generator=g) * 2 - 1,
        "target": torch.rand(n, 1, size, size, generator=g) * 2 - 1,
        "mask": torch.ones(n, 1, size, size),
    }


# --- KL terms --------------------------------------------------------------------------------------


def test_kl_to_standard_normal_matches_torch_distributions():
    mu, log_var = torch.randn(3, 4, 2, 2), torch.randn(4).view(1, 4, 1, 1) * 0.5
    q = torch.distributions.Normal(mu, (0.5 * log_var).exp().expand_as(mu))
    expected = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).mean()
    torch.testing.assert_close(kl_to_standard_normal(mu, log_var), expected)
    torch.testing.assert_close(kl_to_standard_normal(mu), 0.5 * mu.pow(2).mean())  # unit variance (UNIT)


def monte_carlo_kl(prior, mean, log_var, samples=200_000, seed=0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.full((samples, 1, 1, 1), mean)
    z = mu + torch.randn(samples, 1, 1, 1, generator=g) * math.exp(0.5 * log_var)
    with torch.no_grad():
        return float(prior.kl(mu, z, torch.tensor([log_var])))


def test_mixture_kl_estimator_against_numeric_integration():
    """1-D: q = N(0.3, 0.6^2), p = 0.3 N(-1, 0.5^2) + 0.7 N(1.5, 1.2^2); KL(q || p) by quadrature on a fine grid."""
    prior = GaussianMixturePrior(1, 2)
    with torch.no_grad():
        prior.means.copy_(torch.tensor([[-1.0], [1.5]]))
        prior.log_vars.copy_(torch.log(torch.tensor([[0.25], [1.44]])))
        prior.logits.copy_(torch.log(torch.tensor([0.3, 0.7])))
    mean, log_var = 0.3, math.log(0.36)
    grid = np.linspace(-12, 12, 400_001)
    q = np.exp(-0.5 * (grid - mean) ** 2 / 0.36) / math.sqrt(2 * math.pi * 0.36)
    p = 0.3 * np.exp(-0.5 * (grid + 1) ** 2 / 0.25) / math.sqrt(2 * math.pi * 0.25) + 0.7 * np.exp(
        -0.5 * (grid - 1.5) ** 2 / 1.44
    ) / math.sqrt(2 * math.pi * 1.44)
    numeric = float(np.trapezoid(q * np.log(q / p), grid))
    assert monte_carlo_kl(prior, mean, log_var) == pytest.approx(numeric, abs=0.01)
    assert numeric > 0.05  # the case is not trivial


def test_single_component_mixture_gives_the_gaussian_closed_form():
    prior = GaussianMixturePrior(1, 1)
    with torch.no_grad():
        prior.means.fill_(0.8)
        prior.log_vars.fill_(math.log(2.0))
    q = torch.distributions.Normal(-0.4, math.sqrt(0.5))
    p = torch.distributions.Normal(0.8, math.sqrt(2.0))
    closed = float(torch.distributions.kl_divergence(q, p))
    assert monte_carlo_kl(prior, -0.4, math.log(0.5)) == pytest.approx(closed, abs=0.01)


def test_mixture_kl_is_differentiable_in_the_prior_and_the_encoder():
    prior = GaussianMixturePrior(4, 3)
    mu = torch.randn(2, 4, 3, 3, requires_grad=True)
    z = mu + torch.randn_like(mu)
    prior.kl(mu, z).backward()
    assert mu.grad is not None and all(p.grad is not None and p.grad.abs().sum() > 0 for p in prior.parameters())


# --- patches ---------------------------------------------------------------------------------------


def test_aligned_patches_come_from_the_same_position_in_both_domains():
    rows, cols = torch.meshgrid(torch.arange(40.0), torch.arange(40.0), indexing="ij")
    coordinates = (rows * 100 + cols).expand(6, 1, 40, 40)
    a, b = aligned_patches([coordinates, coordinates + 0.5], 16, generator=torch.Generator().manual_seed(0))
    assert a.shape == b.shape == (6, 1, 16, 16)
    torch.testing.assert_close(b - a, torch.full_like(a, 0.5))  # same place in both
    corners = a[:, 0, 0, 0]
    assert len(set(corners.tolist())) > 1  # positions differ between samples
    for patch in a:  # each is a contiguous window of the image
        r, c = divmod(int(patch[0, 0, 0]), 100)
        torch.testing.assert_close(patch[0], coordinates[0, 0, r : r + 16, c : c + 16])
    with pytest.raises(ValueError, match="larger than the image"):
        aligned_patches([coordinates], 41)


@pytest.mark.parametrize("height,width,patch", [(40, 40, 16), (37, 45, 16), (16, 16, 16), (12, 12, 16)])
def test_sliding_window_reproduces_an_identity_mapping_exactly(height, width, patch):
    images = torch.rand(3, 1, height, width)
    stitched = sliding_window(lambda x: x, images, patch)
    torch.testing.assert_close(stitched, images, atol=1e-6, rtol=0)


def test_sliding_window_blends_without_seams():
    """A mapping that adds a different constant to every window (window k adds k; windows run row by row, 5 per
    row) must come out smooth: tiling would jump by the offset difference of neighbouring windows at their border
    (1 across columns, 5 across rows); the cross-fade spreads it over the overlap."""
    images = torch.zeros(1, 1, 48, 48)
    counter = iter(range(1000))
    stitched = sliding_window(
        lambda x: x + torch.tensor([float(next(counter)) for _ in range(x.shape[0])]).view(-1, 1, 1, 1),
        images,
        16,
        batch=1,
    )
    assert len(window_starts(48, 16, 8)) == 5
    assert stitched.diff(dim=-1).abs().max() < 1 / 3  # measured 0.22
    assert stitched.diff(dim=-2).abs().max() < 5 / 3  # measured 1.11
    assert stitched.min() == 0 and stitched.max() == 24  # corners are covered by one window each
    assert window_starts(40, 16, 8) == [0, 8, 16, 24] and window_starts(37, 16, 8) == [0, 8, 16, 21]


# --- models ------------------------------------------------------------------------------------------


def test_registered_as_unpaired_two_way_translators_with_paper_weights():
    for name in ("unit", "gmm-unit"):
        cls = available_models()[name]
        assert not cls.paired and cls.directions == ("A2B", "B2A")
        cfg = cls.Config()
        assert (cfg.lambda_gan, cfg.lambda_kl, cfg.lambda_recon, cfg.lambda_cycle_kl, cfg.lambda_cycle_recon) == (
            10,
            0.1,
            100,
            0.1,
            100,
        )
        assert (cfg.lr, cfg.betas, cfg.weight_decay) == (1e-4, (0.5, 0.999), 1e-4)
    assert available_models()["gmm-unit"].Config().patch_size == 64


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"patch_size": 18}, "patch_size"),
        ({"patch_size": 64}, "larger than"),
        ({"components": 0}, "components"),
        ({"image_size": 30}, "multiple of 4"),
    ],
)
def test_invalid_gmm_unit_settings_are_refused(overrides, message):
    with pytest.raises(SynthmedError, match=message):
        build_model("gmm-unit", "tiny", overrides)


def test_last_encoder_and_first_generator_blocks_are_shared():
    torch.manual_seed(0)
    model = build_model("unit", "tiny")
    assert model.encoder_a.shared is model.encoder_b.shared
    assert model.generator_a.shared is model.generator_b.shared
    assert model.encoder_a.private is not model.encoder_b.private
    shared = {id(p) for p in model.encoder_a.shared.parameters()}
    assert shared and shared <= {id(p) for p in model.optimizers()["generator"].param_groups[0]["params"]}
    # A checkpoint round trip keeps them one module.
    clone = build_model("unit", "tiny")
    clone.load_state_dict(model.state_dict())
    assert clone.encoder_a.shared is clone.encoder_b.shared
    for p, q in zip(clone.parameters(), model.parameters()):
        torch.testing.assert_close(p, q)


@pytest.mark.parametrize("name", ["unit", "gmm-unit"])
def test_one_training_step_updates_every_network(name):
    torch.manual_seed(0)
    model = build_model(name, "tiny")
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = model.training_step(unpaired_batch(), 0)
    assert {"loss_g", "loss_d", "gan", "kl", "recon", "cycle", "cycle_kl"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    changed = {n.split(".")[0] for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    expected = {"encoder_a", "encoder_b", "generator_a", "generator_b", "discriminator_a", "discriminator_b"}
    if name == "gmm-unit":
        expected |= {"prior", "log_var_a", "log_var_b"}
        assert {"prior_weight_max", "prior_log_var", "posterior_log_var_a", "posterior_log_var_b"} <= set(losses)
        assert 1 / model.config.components <= float(losses["prior_weight_max"]) <= 1
    assert expected <= changed, expected - changed
    model.eval()
    source = unpaired_batch()["source"]
    out = model.translate(source)
    assert out.shape == source.shape and torch.equal(out, model.translate(source))  # the mean: deterministic
    assert model.translate_reverse(source).shape == source.shape


def test_gmm_unit_translates_whole_slices_by_patches():
    torch.manual_seed(0)
    model = build_model("gmm-unit", "tiny")
    model.eval()
    source = unpaired_batch()["source"]
    expected = sliding_window(lambda x: model.map_images(x, "a"), source, 16)
    torch.testing.assert_close(model.translate(source), expected)


# Measured (1 thread, seed 0) on the 32 px phantoms: unit 16.1 dB PSNR / SSIM 0.53 against identity 12.1 / 0.015;
# gmm-unit (16 px patches) 15.2 dB / 0.23. At batch 4, unit had not got there in 600 steps (9.4 dB).
@pytest.mark.parametrize(
    "name,overrides,batch_size",
    [
        ("unit", {"base_channels": 8, "discriminator_channels": 8}, 1),
        ("gmm-unit", {"base_channels": 8, "discriminator_channels": 8, "patch_size": 16}, 4),
    ],
)
def test_beats_identity_on_held_out_subjects(name, overrides, batch_size, prepared, held_out_scores, tmp_path):
    from synthmed.workflows.train import train

    run = tmp_path / "run"
    train(
        prepared,
        model=name,
        preset="small",
        out=run,
        steps=1500,
        batch_size=batch_size,
        progress=False,
        overrides=overrides,
        val_every=1500,
    )
    model, identity = held_out_scores(run, checkpoint="last")
    assert model["psnr"] > identity["psnr"] + 2.0, (model, identity)
    assert model["ssim"] > identity["ssim"], (model, identity)
    assert model["mae"] < identity["mae"], (model, identity)


def test_gmm_unit_non_contrast_to_contrast_ct_comes_back_in_hounsfield_units(phantoms, tmp_path):
    """The seed's task on CT: NCCT -> CECT, both normalised with the fixed HU window, output written in HU."""
    import json

    import nibabel as nib

    from synthmed.data.prepare import prepare
    from synthmed.workflows.train import train
    from synthmed.workflows.translate import translate

    data = tmp_path / "data"
    for subject in sorted(p for p in phantoms.iterdir() if p.is_dir()):
        ct = nib.load(subject / "CT.nii.gz")
        lesion = nib.load(subject / "lesion.nii.gz").get_fdata() > 0
        enhanced = ct.get_fdata() + 150.0 * lesion  # an enhancing lesion: +150 HU after contrast
        (data / subject.name).mkdir(parents=True)
        nib.save(ct, data / subject.name / "NCCT.nii.gz")
        nib.save(nib.Nifti1Image(enhanced.astype(np.float32), ct.affine), data / subject.name / "CECT.nii.gz")
    prep = prepare(
        data, source="NCCT", target="CECT", out=tmp_path / "prep", size=32, split="0.5,0.25,0.25", progress=False
    )
    plan = json.loads((prep / "plan.json").read_text())
    assert plan["reference_normalization"]["cect"] == {"kind": "ct", "lo": -1000.0, "hi": 2000.0}
    run = tmp_path / "run"
    train(
        prep,
        model="gmm-unit",
        out=run,
        steps=3,
        batch_size=2,
        progress=False,
        overrides={"base_channels": 8, "discriminator_channels": 8, "n_res": 1, "patch_size": 16},
    )
    subject = plan["split"]["test"][0]
    source = nib.load(data / subject / "NCCT.nii.gz")
    out = nib.load(translate(run, data / subject / "NCCT.nii.gz", tmp_path / "cect.nii.gz", progress=False)[0])
    assert out.shape == source.shape and np.allclose(out.affine, source.affine)
    hu = out.get_fdata()
    assert -1000.0 - 1e-3 <= hu.min() and hu.max() <= 2000.0 + 1e-3
    assert hu[0, 0, 0] == pytest.approx(-1000.0, abs=1e-3)  # air outside the head
