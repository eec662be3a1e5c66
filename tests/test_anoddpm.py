"""AnoDDPM's pieces at the tiny preset: healthy-slice selection, training with simplex noise, the partial
noising and the two reconstructions (ancestral from t_star, DDIM inversion and decoding), the smoothed map."""

from pathlib import Path

import numpy as np
import pytest
import torch

from synthmed.data.datasets import PreparedData, SliceDataset
from synthmed.errors import SynthmedError
from synthmed.models.anoddpm import gaussian_smooth
from synthmed.models.registry import build_model


@pytest.fixture(scope="module")
def labelled_prep(tmp_path_factory):
    from synthmed.data.phantom import write_phantoms
    from synthmed.data.prepare import prepare

    root = tmp_path_factory.mktemp("anoddpm")
    write_phantoms(root / "data", subjects=4, size=32, seed=0)
    return prepare(
        root / "data",
        source="T1",
        label="lesion",
        out=root / "prep",
        size=32,
        split="0.5,0.25,0.25",
        seed=0,
        progress=False,
    )


def test_healthy_and_lesion_slices_split_the_training_slices(labelled_prep):
    data = PreparedData(labelled_prep)
    every = SliceDataset(data, "train")
    healthy = SliceDataset(data, "train", slices="healthy")
    lesion = SliceDataset(data, "train", slices="lesion")
    labels = data.arrays["label"]
    assert len(lesion.rows) > 0 and len(healthy.rows) > 0
    assert sorted([*healthy.rows, *lesion.rows]) == sorted(every.rows)
    assert not any(labels[row].any() for row in healthy.rows) and all(labels[row].any() for row in lesion.rows)
    with pytest.raises(SynthmedError, match="training slices"):
        SliceDataset(data, "train", slices="sick")


def test_the_model_learns_the_noise_it_is_given_and_refuses_bad_settings():
    torch.manual_seed(0)
    model = build_model("anoddpm", "tiny")
    assert model.config.training_slices == "healthy" and model.config.noise == "simplex"
    x = torch.zeros(4, 1, 16, 16)
    simplex, white = model.noise_like(x), model.noise_like(x, "gaussian")
    for noise in (simplex, white):
        assert (
            noise.shape == x.shape
            and abs(float(noise.mean())) < 0.1
            and float(noise.std()) == pytest.approx(1, abs=0.1)
        )

    def neighbours(noise):
        return float(torch.corrcoef(torch.stack([noise[..., :-1].reshape(-1), noise[..., 1:].reshape(-1)]))[0, 1])

    assert neighbours(simplex) > 0.2 > 0.1 > abs(neighbours(white))  # smooth against white
    assert torch.isfinite(model.training_step({"source": torch.rand(2, 1, 16, 16) * 2 - 1}, 0)["loss"])
    with pytest.raises(SynthmedError, match="noise"):
        build_model("anoddpm", "tiny", {"noise": "pink"})
    with pytest.raises(SynthmedError, match="t_star"):
        build_model("anoddpm", "tiny", {"t_star": 64})
    with pytest.raises(ValueError, match="t-star"):
        model.reconstruct(x, t_star=0)


def test_partial_noising_keeps_the_forward_process_marginal():
    """x_t* = sqrt(ab) x0 + sqrt(1 - ab) n with unit-variance noise of either kind: the signal shrinks by
    sqrt(ab) and the noise adds 1 - ab of variance, as the model was trained to undo."""
    model = build_model("anoddpm", "tiny")
    x0 = torch.full((64, 1, 16, 16), 0.5)
    t = torch.full((64,), 16, dtype=torch.long)
    ab = float(model.schedule.alpha_bar(t[:1]))
    for kind in ("simplex", "gaussian"):
        noisy = model.schedule.q_sample(x0, t, model.noise_like(x0, kind, torch.Generator().manual_seed(1)))
        assert float(noisy.mean()) == pytest.approx(0.5 * ab**0.5, abs=0.02)
        assert float(noisy.var()) == pytest.approx(1 - ab, rel=0.05)


def test_reconstructions_are_reproducible_and_ddim_is_deterministic():
    torch.manual_seed(0)
    model = build_model("anoddpm", "tiny").eval()
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    ddim = [model.reconstruct(x, method="ddim") for _ in range(2)]
    assert torch.equal(ddim[0], ddim[1]) and ddim[0].shape == x.shape
    a = model.reconstruct(x, method="ddpm", generator=torch.Generator().manual_seed(0))
    b = model.reconstruct(x, method="ddpm", generator=torch.Generator().manual_seed(0))
    c = model.reconstruct(x, method="ddpm", generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c) and float(a.abs().max()) <= 1
    # every step from t_star (the paper) and a respaced chain both end on a clean estimate
    assert model._chain(16, 0) == list(range(16, -1, -1)) and model._chain(16, 4) == [16, 11, 5, 0]
    anomaly, reconstruction = model.anomaly_map(x, samples=2, generator=torch.Generator().manual_seed(0))
    assert anomaly.shape == x.shape and float(anomaly.min()) >= 0 and reconstruction.shape == x.shape


def test_smoothing_keeps_constants_and_spreads_a_point():
    constant = torch.full((1, 1, 9, 9), 0.3)
    assert torch.allclose(gaussian_smooth(constant, 1.5), constant)
    point = torch.zeros(1, 1, 9, 9)
    point[..., 4, 4] = 1
    blurred = gaussian_smooth(point, 1.0)
    assert float(blurred.sum()) == pytest.approx(1.0, abs=1e-5) and float(blurred[..., 4, 4]) < 0.2
    assert torch.equal(gaussian_smooth(point, 0), point)
    assert np.isclose(float(blurred[..., 4, 3]), float(blurred[..., 3, 4]))


# --- synthmed anomaly: whole scans in, maps in the input's geometry out ----------------------------------------


@pytest.fixture(scope="module")
def anomaly_run(labelled_prep, tmp_path_factory):
    from synthmed.workflows.train import train

    out = tmp_path_factory.mktemp("anoddpm-run") / "run"
    train(labelled_prep, model="anoddpm", preset="tiny", out=out, steps=2, progress=False)
    return out


def test_anomaly_maps_keep_the_input_geometry_and_are_zero_outside_the_head(anomaly_run, labelled_prep, tmp_path):
    from synthmed.cli import main
    from synthmed.data.foreground import foreground_mask
    from synthmed.data.io import read_volume
    from synthmed.data.plan import load_plan

    plan = load_plan(labelled_prep)
    source = plan.file_of(plan.test_subjects[0], plan.source)
    out = tmp_path / "maps" / "map.nii.gz"
    assert main(["anomaly", str(anomaly_run), str(source), str(out), "--samples", "2", "--quiet"]) == 0
    volume, anomaly = read_volume(source), read_volume(out)
    reconstruction = read_volume(tmp_path / "maps" / "map_recon.nii.gz")
    for written in (anomaly, reconstruction):
        assert written.data.shape == volume.data.shape and np.allclose(written.affine, volume.affine)
        assert np.isfinite(written.data).all()
    head = foreground_mask(volume.data)
    assert anomaly.data.min() >= 0 and anomaly.data[head].max() > 0
    from scipy import ndimage

    far = ~ndimage.binary_dilation(head, np.ones((3, 3, 3), bool), iterations=3)  # beyond the margin around the head
    assert (anomaly.data[far] == 0).all() and np.array_equal(reconstruction.data[far], volume.data[far])
    # in the input's units: the map is at most the head's intensity range (|difference| of [-1, 1] images)
    assert anomaly.data.max() <= np.ptp(volume.data[head]) * 1.01
    # again without --overwrite is refused; with it, the same seed gives the same map
    assert main(["anomaly", str(anomaly_run), str(source), str(out), "--samples", "2", "--quiet"]) == 2
    assert main(["anomaly", str(anomaly_run), str(source), str(out), "--samples", "2", "--overwrite", "--quiet"]) == 0
    assert np.array_equal(read_volume(out).data, anomaly.data)


def test_anomaly_over_a_folder_of_subjects_and_clear_errors(anomaly_run, labelled_prep, trained_run, tmp_path):
    from synthmed.cli import main

    data = Path(load_plan_files(labelled_prep))
    out = tmp_path / "maps"
    assert main(["anomaly", str(anomaly_run), str(data), str(out), "--method", "ddim", "--t-star", "8", "--quiet"]) == 0
    subjects = sorted(p.name for p in data.iterdir() if p.is_dir())
    for subject in subjects:
        assert (out / subject / "anomaly.nii.gz").is_file() and (out / subject / "anomaly_recon.nii.gz").is_file()
    assert main(["anomaly", str(anomaly_run), str(data), str(tmp_path / "x"), "--t-star", "999", "--quiet"]) == 2
    assert main(["anomaly", str(trained_run), str(data), str(tmp_path / "y"), "--quiet"]) == 2  # a translator
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def load_plan_files(prep) -> str:
    """The folder of subject folders the prepared data came from."""
    from synthmed.data.plan import load_plan

    plan = load_plan(prep)
    return str(plan.file_of(plan.test_subjects[0], plan.source).parent.parent)


# --- learning: a model of healthy slices finds a lesion that is not simply bright ------------------------------


def _paint_lesions(data: Path, radius: float, seed: int = 0) -> None:
    """Give every phantom a ball of grey-matter-like T1 inside its white matter (darker than the white matter,
    brighter than CSF: a lesion no intensity threshold separates), added to its lesion label."""
    import nibabel as nib
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    for folder in sorted(p for p in data.iterdir() if p.is_dir()):
        t1 = nib.load(folder / "T1.nii.gz")
        image = np.asarray(t1.dataobj, dtype=np.float32)
        labels = np.asarray(nib.load(folder / "labels.nii.gz").dataobj)
        lesion = np.asarray(nib.load(folder / "lesion.nii.gz").dataobj).astype(np.uint8)
        white = ndimage.binary_erosion(labels == 5, iterations=2)
        centre = np.argwhere(white)[rng.integers(white.sum())]
        ball = np.linalg.norm(np.indices(image.shape).transpose(1, 2, 3, 0) - centre, axis=-1) <= radius
        grey = float(np.median(image[labels == 4]))
        image[ball] = grey * (1 + 0.03 * rng.standard_normal(int(ball.sum())))
        nib.save(nib.Nifti1Image(image, t1.affine), folder / "T1.nii.gz")
        nib.save(nib.Nifti1Image(np.maximum(lesion, ball).astype(np.uint8), t1.affine), folder / "lesion.nii.gz")


@pytest.mark.slow
def test_a_model_of_healthy_slices_finds_lesions_an_intensity_threshold_cannot(tmp_path):
    from synthmed.data.foreground import foreground_mask
    from synthmed.data.io import read_volume
    from synthmed.data.phantom import write_phantoms
    from synthmed.data.prepare import prepare
    from synthmed.metrics.anomaly import auroc
    from synthmed.workflows.anomaly import Detection, detect_volume
    from synthmed.workflows.train import train
    from synthmed.workflows.translate import load_run

    write_phantoms(tmp_path / "data", subjects=6, size=32, seed=0)
    _paint_lesions(tmp_path / "data", radius=2.5)
    prep = prepare(
        tmp_path / "data",
        source="T1",
        label="lesion",
        out=tmp_path / "prep",
        size=32,
        split="0.67,0,0.33",
        seed=0,
        progress=False,
    )
    torch.manual_seed(0)
    overrides = {
        "image_size": 32,
        "channels": (16, 32),
        "attention_levels": (False, True),
        "num_head_channels": 16,
        "norm_num_groups": 8,
        "timesteps": 100,
        "t_star": 30,
        "reconstruction_steps": 10,
        "batch_size": 16,
        "simplex_frequency": 2.0**-3,
        "simplex_octaves": 3,
    }
    run = tmp_path / "run"
    train(prep, model="anoddpm", preset="small", out=run, steps=100, progress=False, overrides=overrides)
    loaded = load_run(run, device="cpu", checkpoint="last")
    from synthmed.data.plan import load_plan

    plan = load_plan(prep)
    maps, intensities, labels = [], [], []
    for subject in plan.test_subjects:  # held out: never seen in training
        volume = read_volume(plan.file_of(subject, plan.source))
        head = foreground_mask(volume.data)
        lesion = read_volume(tmp_path / "data" / subject / "lesion.nii.gz").data > 0
        maps.append(detect_volume(loaded, volume, Detection(method="ddim"))[0][head])
        intensities.append(volume.data[head])
        labels.append(lesion[head])
    maps, intensities, labels = np.concatenate(maps), np.concatenate(intensities), np.concatenate(labels)
    found = auroc(maps, labels)
    bright, dark = auroc(intensities, labels), auroc(-intensities, labels)
    assert max(bright, dark) < 0.65  # the lesions' intensity is no giveaway
    assert found > 0.75 and found > max(bright, dark) + 0.15, (found, bright, dark)
