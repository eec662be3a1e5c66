"""PIG (paired image + mask generation) and the unconditional ddpm-gen baseline: the joint sampler's order, shapes,
determinism, training steps, the prepare -> train -> generate path, and a learning test."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from synthmed.cli import main
from synthmed.data.generated import read_generated, write_pair
from synthmed.diffusion.joint import joint_sample
from synthmed.diffusion.schedule import NoiseSchedule
from synthmed.errors import SynthmedError
from synthmed.models.registry import available_models, build_model


def write_blob_subjects(root, subjects=6, size=32, slices=24, seed=0):
    """Synthetic FLAIR-like volumes: a grey disc per slice, and in three slices of four one bright ellipse (the
    lesion, 700 against 300) whose mask is written as ``lesion.nii.gz``. Lesion areas ~25-100 pixels at 32 px."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    centre = (size - 1) / 2
    brain = ((yy - centre) ** 2 + (xx - centre) ** 2) < (0.42 * size) ** 2
    for s in range(subjects):
        image = np.zeros((size, size, slices), np.float32)
        mask = np.zeros((size, size, slices), np.uint8)
        for z in range(slices):
            plane = np.where(brain, 300.0, 0.0) + rng.normal(0, 10, (size, size)) * brain
            if z % 4 != 3:
                radii = rng.uniform(0.08, 0.16, 2) * size
                angle = rng.uniform(0, np.pi)
                while True:
                    cy, cx = rng.uniform(0.25, 0.75, 2) * size
                    if (cy - centre) ** 2 + (cx - centre) ** 2 < (0.25 * size) ** 2:
                        break
                u = (yy - cy) * np.cos(angle) + (xx - cx) * np.sin(angle)
                v = -(yy - cy) * np.sin(angle) + (xx - cx) * np.cos(angle)
                lesion = (u / radii[0]) ** 2 + (v / radii[1]) ** 2 < 1
                plane = np.where(lesion, 700.0, plane)
                mask[:, :, z] = lesion
            image[:, :, z] = plane
        folder = root / f"sub-{s + 1:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(image, np.eye(4)), folder / "FLAIR.nii.gz")
        nib.save(nib.Nifti1Image(mask, np.eye(4)), folder / "lesion.nii.gz")
    return root


# --- the joint sampler ----------------------------------------------------------------------------------


class RecordingDenoiser:
    """A stub network: records its inputs, predicts a fixed fraction of its state as noise."""

    def __init__(self, name, log, schedule, scale):
        self.name, self.log, self.schedule, self.scale = name, log, schedule, scale

    def __call__(self, state, guide, s):
        eps = self.scale * state
        ab = self.schedule.alpha_bar_at(s)
        x0 = (state - (1 - ab) ** 0.5 * eps) / ab**0.5
        self.log.append((self.name, s, state.clone(), guide.clone(), x0.clone()))
        return x0, eps


def test_joint_sampler_updates_the_mask_first_and_guides_the_image_with_the_mask_estimate():
    schedule = NoiseSchedule(50)
    log = []
    denoise_x = RecordingDenoiser("x", log, schedule, 0.3)

    def denoise_y(x0_hat, y, s):
        return RecordingDenoiser("y", log, schedule, 0.2)(y, x0_hat, s)

    generator = torch.Generator().manual_seed(3)
    x0, y0 = joint_sample(denoise_x, denoise_y, schedule, (2, 1, 4, 4), steps=5, generator=generator)
    assert [entry[0] for entry in log] == ["x", "y"] * 5  # x before y at every step
    start = torch.Generator().manual_seed(3)
    x_T, y_T = torch.randn(2, 1, 4, 4, generator=start), torch.randn(2, 1, 4, 4, generator=start)
    assert torch.equal(log[0][2], x_T) and torch.equal(log[0][3], y_T)  # model_x(x_T, y_T): x drawn first
    grid = [entry[1] for entry in log[::2]]
    assert grid[0] == 49 and grid[-1] == 0 and grid == sorted(grid, reverse=True)
    for k in range(5):
        x_entry, y_entry = log[2 * k], log[2 * k + 1]
        assert x_entry[1] == y_entry[1]  # the same step
        assert torch.equal(y_entry[3], x_entry[4])  # model_y's guide is model_x's clean estimate of this step
        assert torch.equal(y_entry[2], x_entry[3])  # model_y denoises the y state that guided model_x
        if k + 1 < 5:  # the next step's x is the DDIM update of this one's (eta 0)
            ab_prev = schedule.alpha_bar_at(grid[k + 1])
            eps = 0.3 * x_entry[2]
            expected = ab_prev**0.5 * x_entry[4] + (1 - ab_prev) ** 0.5 * eps
            torch.testing.assert_close(log[2 * k + 2][2], expected)
    assert torch.equal(x0, log[-2][4]) and torch.equal(y0, log[-1][4])


def test_joint_sampler_refuses_bad_options():
    schedule = NoiseSchedule(10)
    stub = RecordingDenoiser("x", [], schedule, 0.1)
    for options, message in (({"sampler": "pc"}, "sampler"), ({"steps": 0}, "steps"), ({"eta": -1.0}, "eta")):
        with pytest.raises(ValueError, match=message):
            joint_sample(stub, stub, schedule, (1, 1, 2, 2), **options)


# --- the models -----------------------------------------------------------------------------------------


def test_registered_as_generators_with_paper_settings():
    models = available_models()
    pig, gen = models["pig"], models["ddpm-gen"]
    assert pig.task == gen.task == "generate" and pig.makes_masks and not gen.makes_masks
    config = pig.Config()
    assert (config.timesteps, config.beta_start, config.beta_end, config.schedule) == (1024, 1e-4, 0.02, "linear")
    assert (config.sampler, config.sampling_steps, config.eta, config.prediction) == ("ddim", 256, 0.0, "epsilon")
    assert tuple(config.channels) == (32, 32, 64, 64, 128, 128) and config.num_res_blocks == 2 and config.lr == 2e-4
    levels = len(config.channels)
    attention_sizes = [config.image_size // 2**i for i in range(levels) if config.attention_levels[i]]
    assert attention_sizes == [16]
    assert config.training_slices == "lesion"
    small = pig.Config(**pig.PRESETS["small"])
    assert [small.image_size // 2**i for i in range(len(small.channels)) if small.attention_levels[i]] == [16]


def pair_batch(n=2, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "source": torch.rand(n, 1, size, size, generator=g) * 2 - 1,
        "label": (torch.rand(n, 1, size, size, generator=g) > 0.8).to(torch.uint8),
        "mask": torch.ones(n, 1, size, size),
    }


@pytest.mark.parametrize("guide", ["clean", "estimate"])
def test_pig_training_step_updates_both_networks(guide):
    torch.manual_seed(0)
    model = build_model("pig", "tiny", {"image_guide": guide})
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = model.training_step(pair_batch(), 0)
    assert set(losses) == {"loss", "loss_mask", "loss_image"} and all(torch.isfinite(v) for v in losses.values())
    changed = {n.split(".")[0] for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert changed == {"network_x", "network_y"}
    with pytest.raises(ValueError, match="label"):
        model.training_step({"source": pair_batch()["source"]}, 1)


def test_pig_samples_pairs_deterministically_under_a_seed():
    torch.manual_seed(0)
    model = build_model("pig", "tiny").eval()
    first = model.sample(3, generator=torch.Generator().manual_seed(7))
    again = model.sample(3, generator=torch.Generator().manual_seed(7))
    other = model.sample(3, generator=torch.Generator().manual_seed(8))
    assert set(first) == {"image", "mask", "mask_estimate"}
    for key in first:
        assert first[key].shape == (3, 1, 16, 16)
        assert torch.equal(first[key], again[key])
    assert not torch.equal(first["image"], other["image"])
    assert set(first["mask"].unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(first["mask"], (first["mask_estimate"] > 0).float())
    assert first["image"].abs().max() <= 1 and first["mask_estimate"].abs().max() <= 1


def test_ddpm_gen_trains_and_samples_images_only():
    torch.manual_seed(0)
    model = build_model("ddpm-gen", "tiny")
    before = [p.detach().clone() for p in model.parameters()]
    losses = model.training_step(pair_batch(), 0)
    assert torch.isfinite(losses["loss"]) and any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    model.eval()
    for sampler, steps in (("ddim", 3), ("ddpm", 3), ("ode", 3)):
        out = model.sample(2, sampler=sampler, steps=steps, generator=torch.Generator().manual_seed(0))
        assert set(out) == {"image"} and out["image"].shape == (2, 1, 16, 16)
    with pytest.raises(ValueError, match="sampler"):
        model.check_sampling(sampler="nope")


@pytest.mark.parametrize(
    "name,overrides,message",
    [
        ("pig", {"image_guide": "noisy"}, "image_guide"),
        ("pig", {"mask_threshold": 1.0}, "mask_threshold"),
        ("pig", {"sampler": "ode"}, "sampler"),
        ("ddpm-gen", {"training_slices": "some"}, "training_slices"),
        ("ddpm-gen", {"channels": (8, 12)}, "norm_num_groups"),
    ],
)
def test_invalid_generator_settings_are_refused(name, overrides, message):
    with pytest.raises(SynthmedError, match=message):
        build_model(name, "tiny", overrides)


# --- prepare -> train -> generate -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    return write_blob_subjects(tmp_path_factory.mktemp("blobs") / "data")


@pytest.fixture(scope="module")
def blob_prep(blobs, tmp_path_factory):
    from synthmed.data.prepare import prepare

    return prepare(
        blobs,
        source="FLAIR",
        label="lesion",
        out=tmp_path_factory.mktemp("blobprep") / "prep",
        size=32,
        split="0.5,0.17,0.33",
        progress=False,
    )


GEN_TINY = {
    "channels": (8, 16),
    "attention_levels": (False, True),
    "norm_num_groups": 8,
    "num_head_channels": 8,
    "timesteps": 64,
    "sampling_steps": 3,
    "preview_steps": 2,
}


def test_generate_writes_pairs_a_contact_sheet_and_a_record(blob_prep, tmp_path, capsys):
    from synthmed.workflows.train import train

    run = tmp_path / "run"
    train(blob_prep, model="pig", out=run, steps=2, batch_size=4, progress=False, overrides=GEN_TINY)
    info = json.loads((run / "run.json").read_text())
    plan = json.loads((blob_prep / "plan.json").read_text())
    assert info["target"] is None and info["label"] == "lesion"
    # only slices with a lesion: three in four of the training subjects' slices
    assert 0.6 * plan["n_slices"]["train"] < info["training_slice_count"] < 0.8 * plan["n_slices"]["train"]
    assert sorted(p.name for p in (run / "samples").iterdir())  # a preview grid was written

    out = tmp_path / "gen"
    assert (
        main(["generate", str(run), "--n", "5", "--out", str(out), "--batch-size", "2", "--steps", "2", "--quiet"]) == 0
    )
    assert "5 image + mask pairs" in capsys.readouterr().out
    images, masks, record = read_generated(out)
    assert images.shape == masks.shape == (5, 32, 32)
    assert record["n"] == 5 and record["masks"] and record["mask_threshold"] == 0.0 and record["steps"] == 2
    assert (out / "contact_sheet.png").is_file()
    # same seed and batch size: the same files; refusing to overwrite without --overwrite
    assert (
        main(["generate", str(run), "--n", "5", "--out", str(out), "--batch-size", "2", "--steps", "2", "--quiet"]) == 2
    )
    assert "--overwrite" in capsys.readouterr().err
    assert (
        main(
            [
                "generate",
                str(run),
                "--n",
                "3",
                "--out",
                str(out),
                "--batch-size",
                "2",
                "--steps",
                "2",
                "--quiet",
                "--overwrite",
                "--format",
                "nii",
            ]
        )
        == 0
    )
    again, again_masks, record = read_generated(out)
    assert again.shape == (3, 32, 32) and record["format"] == "nii"  # the 5 PNG pairs are gone
    # the first chunk of 2 drew the same noise (the third slice's chunk is smaller now, so its noise differs)
    np.testing.assert_allclose(again[:2], images[:2], atol=1 / 255)
    np.testing.assert_array_equal(again_masks[:2], masks[:2])
    # a generator run cannot translate, and sampler options are checked first
    assert main(["translate", str(run), str(tmp_path), str(tmp_path / "t.nii.gz"), "--quiet"]) == 2
    assert "synthmed generate" in capsys.readouterr().err
    assert main(["generate", str(run), "--n", "1", "--out", str(tmp_path / "g2"), "--sampler", "pc", "--quiet"]) == 2
    assert "sampler" in capsys.readouterr().err


def test_pig_needs_a_label_and_ddpm_gen_does_not(blobs, tmp_path):
    from synthmed.data.prepare import prepare
    from synthmed.workflows.train import train

    prep = prepare(blobs, source="FLAIR", out=tmp_path / "prep", size=32, split="0.5,0.17,0.33", progress=False)
    with pytest.raises(SynthmedError, match="--label"):
        train(prep, model="pig", out=tmp_path / "pig", steps=1, batch_size=2, progress=False, overrides=GEN_TINY)
    with pytest.raises(SynthmedError, match="--label"):
        train(
            prep,
            model="ddpm-gen",
            out=tmp_path / "lesion",
            steps=1,
            batch_size=2,
            progress=False,
            overrides={**GEN_TINY, "training_slices": "lesion"},
        )
    train(prep, model="ddpm-gen", out=tmp_path / "gen", steps=1, batch_size=2, progress=False, overrides=GEN_TINY)
    out = tmp_path / "out"
    from synthmed.workflows.generate import generate

    info = generate(tmp_path / "gen", 2, out, steps=2, progress=False)
    images, masks, _ = read_generated(out)
    assert images.shape == (2, 32, 32) and masks is None and not info["masks"]


def test_read_generated_refuses_incomplete_folders(tmp_path):
    with pytest.raises(SynthmedError, match="no such folder"):
        read_generated(tmp_path / "missing")
    with pytest.raises(SynthmedError, match="NNNNNN_image"):
        read_generated(tmp_path)
    write_pair(tmp_path, 1, np.zeros((4, 4)), np.ones((4, 4)), "png")
    write_pair(tmp_path, 2, np.zeros((4, 4)), None, "png")
    with pytest.raises(SynthmedError, match="without a mask"):
        read_generated(tmp_path)


# --- learning ---------------------------------------------------------------------------------------------

LEARN = {
    "channels": (16, 32, 32),
    "attention_levels": (False, True, False),
    "norm_num_groups": 8,
    "num_head_channels": 16,
}


def lesion_areas(masks):
    return masks.reshape(len(masks), -1).sum(1)


# Measured on these phantoms with 4 training subjects (split 0.67/0/0.33; 1 thread, seed 0, lr 1e-3 = the small
# preset's): after 300 steps at batch 16 the 32 generated masks had areas 18-83 px (real lesion slices 26-99), none
# empty, 1-2 connected components each, and the generated image averaged 0.72 inside its mask against -0.17 in the
# rest of the disc (real: 1.0 vs about -0.14). At lr 2e-4 the same budget gave 38-60 fragments per mask.
def test_pig_learns_lesion_like_masks_that_match_their_images(blob_prep, tmp_path):
    from scipy import ndimage

    from synthmed.data.datasets import PreparedData
    from synthmed.workflows.train import train
    from synthmed.workflows.translate import load_run

    data = PreparedData(blob_prep)
    real = np.asarray(data.arrays["label"])[data.rows("train")] > 0
    real_areas = lesion_areas(real)[lesion_areas(real) > 0]
    run = tmp_path / "run"
    train(blob_prep, model="pig", out=run, steps=300, batch_size=16, progress=False, overrides=LEARN)
    model = load_run(run, device="cpu").model
    out = model.sample(32, generator=torch.Generator().manual_seed(0))
    masks, images = out["mask"][:, 0].numpy() > 0.5, out["image"][:, 0].numpy()
    areas = lesion_areas(masks)
    assert (areas == 0).mean() <= 0.1, areas
    low, high = np.percentile(real_areas, [10, 90])
    assert low <= np.median(areas) <= high, (areas, real_areas)
    components = [ndimage.label(m)[1] for m in masks if m.any()]
    assert np.median(components) <= 3, components
    disc = images > -0.8  # the generated head (background is -1)
    inside = np.mean([images[i][masks[i]].mean() for i in range(32) if masks[i].any()])
    outside = np.mean([images[i][disc[i] & ~masks[i]].mean() for i in range(32) if masks[i].any()])
    assert inside > outside + 0.4, (inside, outside)  # the image shows a bright lesion where its mask is


def test_ddpm_gen_learns_the_look_of_the_training_slices(blob_prep, tmp_path):
    from synthmed.workflows.generate import generate
    from synthmed.workflows.train import train

    run = tmp_path / "run"
    train(blob_prep, model="ddpm-gen", out=run, steps=300, batch_size=16, progress=False, overrides=LEARN)
    generate(run, 16, tmp_path / "gen", progress=False, device="cpu")
    images, masks, info = read_generated(tmp_path / "gen")
    assert masks is None and images.shape == (16, 32, 32)
    size = 32
    yy, xx = np.mgrid[:size, :size]
    radius = np.hypot(yy - (size - 1) / 2, xx - (size - 1) / 2) / size
    # real slices: background -1 outside a disc of radius 0.42, brain around -0.2, lesions near +1
    assert images[:, radius > 0.48].mean() < -0.85
    assert -0.6 < np.median(images[:, radius < 0.3]) < 0.2
    assert (images[:, radius < 0.3] > 0.6).mean() > 0.02  # bright lesions appear
