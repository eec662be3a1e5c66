"""FID: the Fréchet distance against closed forms, sample statistics converging to it, Inception-v3 (random weights)
loaded from a file in both variants, refusal of wrong files, and FID without weights reported as unavailable."""

import logging

import numpy as np
import pytest
import scipy.linalg
import torch

from synthmed.errors import SynthmedError
from synthmed.metrics.fid import (
    NO_WEIGHTS_MESSAGE,
    feature_statistics,
    fid,
    fid_or_unavailable,
    frechet_distance,
    frechet_distance_of_features,
    inception_features,
)
from synthmed.nn.inception import FEATURE_DIM, InceptionV3Features, _pool_3x3, load_inception


def random_orthogonal(d, rng):
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


# --- Fréchet distance -----------------------------------------------------------------------


def test_frechet_distance_diagonal_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.standard_normal(5), rng.standard_normal(5)
    s1, s2 = rng.uniform(0.1, 3, 5), rng.uniform(0.1, 3, 5)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-10)
    # Singular diagonal covariances (zeros on the diagonal) are fine too.
    s1[:2] = 0
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-10)
    # One dimension: (m1 - m2)^2 + (sd1 - sd2)^2.
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4 + 1)


def test_frechet_distance_commuting_full_covariances():
    rng = np.random.default_rng(1)
    d = 6
    q = random_orthogonal(d, rng)
    a, b = rng.uniform(0.05, 4, d), rng.uniform(0.05, 4, d)
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(a + b - 2 * np.sqrt(a * b))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_general_matches_sqrtm_zero_and_symmetric():
    rng = np.random.default_rng(2)
    d = 8
    x, y = rng.standard_normal((d, d)), rng.standard_normal((d, 3))  # s2 singular (rank 3)
    s1, s2 = x @ x.T + 0.1 * np.eye(d), y @ y.T
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    reference = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    value = frechet_distance(mu1, s1, mu2, s2)
    assert value == pytest.approx(reference, rel=1e-6)
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(value, rel=1e-9)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0, abs=1e-9 * np.trace(s1))
    assert frechet_distance(mu2, s2, mu2, s2) == pytest.approx(0, abs=1e-9 * np.trace(s2))
    # Shifting the mean adds exactly ||shift||^2.
    assert frechet_distance(mu1 + 2, s1, mu2, s2) - frechet_distance(mu1, s1, mu2, s2) == pytest.approx(
        np.sum((mu1 + 2 - mu2) ** 2) - np.sum((mu1 - mu2) ** 2), rel=1e-9
    )
    with pytest.raises(ValueError):
        frechet_distance(mu1, s1, mu2[:3], s2[:3, :3])


def test_sample_statistics_converge_to_closed_form():
    rng = np.random.default_rng(3)
    d, n = 4, 40000
    q = random_orthogonal(d, rng)
    a, b = np.array([0.5, 1.0, 2.0, 3.0]), np.array([1.5, 0.5, 2.0, 0.2])
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    mu1, mu2 = np.array([0.0, 1.0, -1.0, 0.5]), np.array([0.5, 0.0, -1.0, 1.5])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(a + b - 2 * np.sqrt(a * b))
    x = rng.multivariate_normal(mu1, s1, size=n)
    y = rng.multivariate_normal(mu2, s2, size=n)
    m1, c1 = feature_statistics(x)
    m2, c2 = feature_statistics(y)
    assert m1.shape == (d,) and c1.shape == (d, d)
    np.testing.assert_allclose(c1, np.cov(x, rowvar=False))
    assert frechet_distance(m1, c1, m2, c2) == pytest.approx(expected, rel=0.03)
    # Two samples of the same Gaussian: near zero.
    z = rng.multivariate_normal(mu1, s1, size=n)
    assert frechet_distance(m1, c1, *feature_statistics(z)) < 0.01
    with pytest.raises(SynthmedError, match="at least 2"):
        feature_statistics(x[:1])


def test_distance_of_features_equals_distance_of_statistics():
    rng = np.random.default_rng(4)
    d = 50
    for n1, n2 in ((5, 8), (3, 3), (60, 70), (10, 80)):  # rank-deficient (feature route) and full (covariance route)
        x = rng.standard_normal((n1, d)) @ rng.standard_normal((d, d)) + 1
        y = rng.standard_normal((n2, d)) * rng.uniform(0.5, 2, d)
        reference = frechet_distance(*feature_statistics(x), *feature_statistics(y))
        assert frechet_distance_of_features(x, y) == pytest.approx(reference, rel=1e-8)
        assert frechet_distance_of_features(y, x) == pytest.approx(reference, rel=1e-8)
    assert frechet_distance_of_features(x[:4], x[:4]) == pytest.approx(0, abs=1e-9 * np.sum(x[:4] ** 2))


# --- Inception-v3 -------------------------------------------------------------------------


def random_state(seed=0, classes=1000):
    """A state dict with torchvision's names and random weights, scaled so activations neither vanish nor explode
    through the ~20 layers (He init, BatchNorm running statistics perturbed so that loading is visible)."""
    torch.manual_seed(seed)
    net = InceptionV3Features("torchvision", num_classes=classes)
    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        elif isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.8, 1.2)
            module.weight.uniform_(0.8, 1.2)
            module.bias.uniform_(-0.1, 0.1)
    return {k: v.clone() for k, v in net.state_dict().items()}


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("inception")
    state = random_state()
    state["AuxLogits.conv0.conv.weight"] = torch.zeros(128, 768, 1, 1)  # torchvision files hold these: ignored
    torchvision_path = root / "inception_tv.pth"
    torch.save(state, torchvision_path)
    fid_state = dict(state)
    fid_state["fc.weight"] = torch.randn(1008, FEATURE_DIM) * 0.01
    fid_state["fc.bias"] = torch.zeros(1008)
    fid_path = root / "pt_inception.pth"
    torch.save({"state_dict": fid_state}, fid_path)  # wrapped under "state_dict"
    return {"torchvision": torchvision_path, "fid": fid_path, "state": state, "root": root}


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(5)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 64), torch.linspace(-1, 1, 64), indexing="ij")
    blobs = [torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.2) for cx, cy in torch.rand(4, 2, generator=g) - 0.5]
    noise = 0.1 * torch.randn(4, 64, 64, generator=g)
    return (torch.stack(blobs) * 1.6 - 0.8 + noise).clamp(-1, 1).numpy()


def test_inception_has_torchvision_names_and_size():
    net = InceptionV3Features()
    keys = net.state_dict().keys()
    for key in (
        "Conv2d_1a_3x3.conv.weight",
        "Conv2d_1a_3x3.bn.running_mean",
        "Mixed_5b.branch1x1.conv.weight",
        "Mixed_6e.branch7x7dbl_5.conv.weight",
        "Mixed_7c.branch3x3dbl_3b.bn.running_var",
        "Mixed_7c.branch_pool.conv.weight",
        "fc.weight",
        "fc.bias",
    ):
        assert key in keys
    assert not any(k.startswith("AuxLogits") or "conv.bias" in k for k in keys)
    # torchvision's inception_v3 has 27,161,264 parameters, 3,326,696 of them in AuxLogits.
    assert sum(p.numel() for p in net.parameters()) == 27_161_264 - 3_326_696
    assert net.Mixed_7c.branch_pool.conv.weight.shape == (192, 2048, 1, 1)
    assert net.Mixed_5b.branch_pool.conv.weight.shape == (32, 192, 1, 1)
    assert InceptionV3Features("fid").fc.out_features == 1008
    # Pool branches: torchvision averages counting the zero padding everywhere; the FID (TF) variant excludes the
    # padding in InceptionA/C/E and max-pools in Mixed_7c.
    fidnet = InceptionV3Features("fid")
    blocks = (
        "Mixed_5b",
        "Mixed_5c",
        "Mixed_5d",
        "Mixed_6b",
        "Mixed_6c",
        "Mixed_6d",
        "Mixed_6e",
        "Mixed_7b",
        "Mixed_7c",
    )
    assert [getattr(net, b).pool for b in blocks] == ["avg"] * 9
    assert [getattr(fidnet, b).pool for b in blocks] == ["avg_exclude_pad"] * 8 + ["max"]
    ones = torch.ones(1, 1, 4, 4)
    pooled = {kind: _pool_3x3(ones, kind)[0, 0] for kind in ("avg", "avg_exclude_pad", "max")}
    assert pooled["avg"][0, 0] == pytest.approx(4 / 9) and pooled["avg"][1, 1] == pytest.approx(1)
    assert torch.allclose(pooled["avg_exclude_pad"], ones[0, 0]) and torch.equal(pooled["max"], ones[0, 0])
    assert all(not p.requires_grad for p in net.parameters()) and not net.train().training


def test_load_inception_both_variants(weight_files, images):
    tv = load_inception(weight_files["torchvision"])
    assert tv.variant == "torchvision" and tv.fc.out_features == 1000
    loaded = tv.state_dict()
    for key, value in weight_files["state"].items():
        if not key.startswith("AuxLogits") and not key.endswith("num_batches_tracked"):
            torch.testing.assert_close(loaded[key], value, rtol=0, atol=0)
    fidnet = load_inception(weight_files["fid"])
    assert fidnet.variant == "fid" and fidnet.fc.out_features == 1008
    assert load_inception(weight_files["torchvision"], variant="fid").variant == "fid"  # forced

    x = images[:2]
    features = inception_features(x, tv, batch_size=2)
    assert features.shape == (2, FEATURE_DIM) and np.isfinite(features).all()
    assert features.std() > 1e-3  # random weights, but activations did not vanish
    again = inception_features(x[:, None], tv, batch_size=1)  # (n, 1, H, W), other batching: same features
    np.testing.assert_allclose(again, features, rtol=1e-4, atol=1e-5 * np.abs(features).max())
    # Same trunk weights, only the pooling differs: the FID variant gives other features.
    fid_features = inception_features(x, fidnet, batch_size=2)
    assert fid_features.shape == (2, FEATURE_DIM)
    assert np.abs(fid_features - features).max() > 1e-3 * np.abs(features).max()


def test_input_scaling():
    net = InceptionV3Features()
    x = torch.rand(2, 1, 40, 50) * 2 - 1
    prepared = net.preprocess(x)
    assert prepared.shape == (2, 3, 299, 299)
    assert torch.equal(prepared[:, 0], prepared[:, 2])
    assert prepared.min() >= -1 and prepared.max() <= 1
    # The [-1, 1] input equals torchvision's ImageNet normalisation followed by its transform_input.
    imagenet = InceptionV3Features(input_scaling="imagenet").preprocess(x)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(imagenet, ((prepared + 1) / 2 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1))
    undone = imagenet * (std / 0.5).view(1, 3, 1, 1) + ((mean - 0.5) / 0.5).view(1, 3, 1, 1)
    torch.testing.assert_close(undone, prepared, rtol=1e-5, atol=1e-5)


def save(tmp_path, state, name="bad.pth"):
    path = tmp_path / name
    torch.save(state, path)
    return path


def test_wrong_files_are_refused(weight_files, tmp_path):
    state = weight_files["state"]
    missing = {k: v for k, v in state.items() if k != "Mixed_7c.branch_pool.conv.weight"}
    with pytest.raises(SynthmedError, match=r"missing Mixed_7c\.branch_pool\.conv\.weight") as info:
        load_inception(save(tmp_path, missing))
    assert "\n" not in str(info.value)
    wrong = dict(state, **{"Mixed_5b.branch1x1.conv.weight": torch.zeros(64, 192, 3, 3)})
    with pytest.raises(SynthmedError, match=r"Mixed_5b\.branch1x1\.conv\.weight has shape \(64, 192, 3, 3\)"):
        load_inception(save(tmp_path, wrong))
    vgg_like = {"features.0.weight": torch.zeros(64, 3, 3, 3), "features.0.bias": torch.zeros(64)}
    with pytest.raises(SynthmedError, match=r"missing Conv2d_1a_3x3\.conv\.weight"):
        load_inception(save(tmp_path, vgg_like))
    no_fc = {k: v for k, v in state.items() if not k.startswith("fc.")}
    with pytest.raises(SynthmedError, match=r"missing fc\.weight"):
        load_inception(save(tmp_path, no_fc))
    odd_fc = dict(state, **{"fc.weight": torch.zeros(10, FEATURE_DIM), "fc.bias": torch.zeros(10)})
    with pytest.raises(SynthmedError, match="10 outputs"):
        load_inception(save(tmp_path, odd_fc))
    assert load_inception(save(tmp_path, odd_fc), variant="torchvision").fc.out_features == 10
    with pytest.raises(SynthmedError, match="not a tensor"):
        load_inception(save(tmp_path, {"Conv2d_1a_3x3.conv.weight": [1, 2]}))
    with pytest.raises(SynthmedError, match="no such file"):
        load_inception(tmp_path / "absent.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(SynthmedError, match="cannot be read"):
        load_inception(tmp_path / "junk.pth")


# --- FID -------------------------------------------------------------------------------------


def test_fid_or_unavailable_without_weights():
    result = fid_or_unavailable(np.zeros((2, 8, 8)), np.zeros((2, 8, 8)), None)
    assert result == {"fid": None, "unavailable": NO_WEIGHTS_MESSAGE}
    assert "--inception-weights" in result["unavailable"]


def test_fid_self_is_zero_and_shift_increases_it(weight_files, images, caplog):
    real = images[:3]
    shifted = np.clip(real + 0.5, -1, 1)
    with caplog.at_level(logging.WARNING, logger="synthmed.metrics.fid"):
        result = fid_or_unavailable(real, real, weight_files["fid"], batch_size=3)
    assert "bias" in caplog.text
    assert result["variant"] == "fid" and result["weights"] == str(weight_files["fid"])
    network = load_inception(weight_files["fid"])
    far = fid(real, shifted, network=network, batch_size=3)
    assert far > 0 and 0 <= result["fid"] < 1e-6 * far
    with pytest.raises(ValueError):
        fid(real, shifted)
    with pytest.raises(SynthmedError, match="images must be"):
        fid(real[0], shifted, network=network)
