"""Native-resolution slices, patch training, whole-slice translation of any size, and the scale-free and
through-plane scores."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from synthmed.data.datasets import PreparedData, SliceDataset
from synthmed.data.foreground import foreground_mask
from synthmed.data.geometry import box_overlap, crop_slices, fit_native_geometry, native_size, uncrop_slices
from synthmed.data.io import read_volume
from synthmed.data.normalize import Normalization
from synthmed.data.prepare import prepare
from synthmed.errors import SynthmedError
from synthmed.metrics import image_metrics, linear_fit, through_plane_psnr
from synthmed.nn.patches import padded_to_multiple
from synthmed.workflows.train import train
from synthmed.workflows.translate import load_run, translate_volume


def test_native_geometry_keeps_voxels_at_the_target_spacing():
    foreground = np.zeros((40, 50, 6), dtype=bool)
    foreground[5:30, 10:45, :] = True
    assert native_size(36.4, 1.0) == 48 and native_size(33.0, 2.0) == 32 and native_size(3.0, 1.0) == 16
    same = fit_native_geometry(foreground, 2, 48, 1.0, 1.0)
    assert same.side == same.size == 48
    volume = np.random.default_rng(0).normal(size=foreground.shape).astype(np.float32)
    stack = crop_slices(volume, same, fill=-1.0)
    # No resampling: every slice pixel is a voxel (or the fill outside the image).
    rows, cols, box_rows, box_cols = box_overlap(same)
    assert np.array_equal(stack[:, box_rows, box_cols], np.moveaxis(volume, 2, 0)[:, rows, cols])
    assert (box_rows.stop - box_rows.start, box_cols.stop - box_cols.start) == (40, 47)
    back = np.moveaxis(uncrop_slices(stack, same, fill=-1.0), 2, 0)
    assert np.array_equal(back[:, rows, cols], np.moveaxis(volume, 2, 0)[:, rows, cols])
    # Twice the spacing: half the pixels cover the same box, centred on the same place.
    coarse = fit_native_geometry(foreground, 2, 24, 1.0, 2.0)
    assert coarse.side == 48 and coarse.size == 24
    assert coarse.row0 + coarse.side // 2 == same.row0 + same.side // 2


def test_prepare_keeps_native_resolution_by_default(phantoms, tmp_path):
    out = prepare(phantoms, source="T1", target="T2", out=tmp_path / "prep", split="0.5,0.25,0.25", progress=False)
    plan = json.loads((out / "plan.json").read_text())
    volume = read_volume(phantoms / plan["subjects"][0] / "T1.nii.gz")
    spacing = float(volume.spacing[0])
    assert plan["resolution"] == {"mode": "native", "spacing_mm": spacing}
    assert plan["size"] % 16 == 0 and plan["size"] >= 16
    record = plan["volumes"][plan["subjects"][0]]
    geometry = record["geometry"]
    assert geometry["side"] == geometry["size"] == plan["size"]
    # The stored slices are the normalised voxels themselves, not resampled.
    data = PreparedData(out)
    rows = np.flatnonzero(data.arrays["index"][:, 0] == record["number"])
    slice_number = int(data.arrays["index"][rows[0], 1])
    normalization = Normalization.from_dict(record["normalization"]["t1"])
    expected = normalization.apply(volume.data[:, :, slice_number])
    stored = np.asarray(data.arrays["source"][rows[0]])
    r0, c0 = geometry["row0"], geometry["col0"]
    rows_in = slice(max(r0, 0), min(r0 + geometry["side"], volume.data.shape[0]))
    cols_in = slice(max(c0, 0), min(c0 + geometry["side"], volume.data.shape[1]))
    assert np.allclose(
        stored[rows_in.start - r0 : rows_in.stop - r0, cols_in.start - c0 : cols_in.stop - c0],
        expected[rows_in, cols_in],
        atol=1e-6,
    )

    coarse = prepare(
        phantoms,
        source="T1",
        target="T2",
        out=tmp_path / "coarse",
        spacing=2 * spacing,
        split="0.5,0.25,0.25",
        progress=False,
    )
    coarse_plan = json.loads((coarse / "plan.json").read_text())
    assert coarse_plan["resolution"]["spacing_mm"] == 2 * spacing and coarse_plan["size"] <= plan["size"] // 2 + 16
    with pytest.raises(SynthmedError, match="exclude each other"):
        prepare(phantoms, source="T1", target="T2", out=tmp_path / "both", size=32, spacing=1.0, progress=False)
    with pytest.raises(SynthmedError, match="--spacing"):
        prepare(phantoms, source="T1", target="T2", out=tmp_path / "bad", spacing=-1.0, progress=False)


def test_patches_are_cut_at_one_place_and_hold_anatomy(phantoms, tmp_path):
    out = prepare(phantoms, source="T1", target="T2", out=tmp_path / "prep", split="0.5,0.25,0.25", progress=False)
    data = PreparedData(out)
    side = data.arrays["source"].shape[-1]
    patch = 16
    torch.manual_seed(0)
    dataset = SliceDataset(data, "train", patch=patch)
    for item in range(0, len(dataset), 7):
        sample = dataset[item]
        assert sample["source"].shape == sample["target"].shape == sample["mask"].shape == (1, patch, patch)
        assert sample["mask"].sum() > 0  # centred on a foreground pixel
        row = dataset.rows[item]
        whole_source = np.asarray(data.arrays["source"][row])
        whole_target = np.asarray(data.arrays["target"][row])
        # Find the window in the whole slice: source, target and mask come from the same place.
        found = [
            (r, c)
            for r in range(side - patch + 1)
            for c in range(side - patch + 1)
            if np.array_equal(whole_source[r : r + patch, c : c + patch], sample["source"][0].numpy())
        ]
        assert any(
            np.array_equal(whole_target[r : r + patch, c : c + patch], sample["target"][0].numpy()) for r, c in found
        )
    padded = SliceDataset(data, "train", patch=side + 16)[0]
    assert padded["source"].shape == (1, side + 16, side + 16)
    assert float(padded["source"][0, 0, 0]) == -1.0 and float(padded["mask"][0, 0, 0]) == 0.0


def test_padding_to_a_multiple_is_undone():
    images = torch.randn(2, 1, 37, 50)
    seen = []

    def net(x):
        seen.append(tuple(x.shape[-2:]))
        assert x.shape[-1] % 16 == 0 and x.shape[-2] % 16 == 0
        return x * 2

    out = padded_to_multiple(net, images, 16)
    assert seen == [(48, 64)] and torch.equal(out, images * 2)
    assert torch.equal(padded_to_multiple(lambda x: x, images[..., :32, :48], 16), images[..., :32, :48])


@pytest.mark.parametrize("model", ["pix2pix", "syndiff"])
def test_a_patch_trained_model_translates_whole_slices(phantoms, tmp_path, model):
    """Trained on 16 px patches, the model translates whole native slices of a volume it never saw, of another
    spacing too (resampled onto the plan's pixel size and back): output on the input's grid, clean background."""
    prep = prepare(phantoms, source="T1", target="T2", out=tmp_path / "prep", split="0.5,0.25,0.25", progress=False)
    overrides = {"generator_channels": 8, "discriminator_channels": 8}
    if model == "syndiff":
        overrides.update(
            {
                "channel_mult": (1, 2),
                "num_res_blocks": 1,
                "nz": 8,
                "z_embedding": 16,
                "n_mlp": 1,
                "t_embedding": 16,
                "cycle_generator_channels": 8,
                "resnet_blocks": 1,
                "cycle_discriminator_channels": 8,
            }
        )
    run = tmp_path / "run"
    train(prep, model=model, out=run, steps=2, batch_size=2, patch=16, progress=False, overrides=overrides, val_every=2)
    info = json.loads((run / "run.json").read_text())
    assert info["patch"] == 16 and info["config"]["image_size"] == 16
    loaded = load_run(run, checkpoint="last")
    plan = loaded.plan
    subject = plan.test_subjects[0]
    volume = read_volume(phantoms / subject / "T1.nii.gz")
    for zoom in (1.0, 1.5):
        affine = volume.affine.copy()
        affine[:3, :3] *= zoom
        scaled = dataclasses.replace(volume, affine=affine)
        image = translate_volume(loaded, scaled, Normalization("mr", 0.0, 1.0)).image
        assert image.shape == volume.data.shape and np.isfinite(image).all()
        from scipy import ndimage

        outside = ~ndimage.binary_dilation(foreground_mask(volume.data), np.ones((3, 3, 3), bool), iterations=2)
        assert np.all(image[outside] == 0.0)


def test_generators_refuse_patches(tmp_path, phantoms):
    prep = prepare(
        phantoms, source="FLAIR", label="lesion", out=tmp_path / "prep", split="0.5,0.25,0.25", progress=False
    )
    with pytest.raises(SynthmedError, match="whole slices"):
        train(prep, model="pig", out=tmp_path / "run", steps=1, patch=16, progress=False)
    paired = prepare(phantoms, source="T1", target="T2", out=tmp_path / "paired", split="0.5,0.25,0.25", progress=False)
    with pytest.raises(SynthmedError, match="--patch 24"):
        train(paired, model="pix2pix", out=tmp_path / "run2", steps=1, patch=24, progress=False)


def test_scale_free_scores_ignore_the_scale_and_through_plane_scores_see_flicker():
    rng = np.random.default_rng(0)
    reference = np.cumsum(rng.normal(size=(24, 24, 12)), axis=2).astype(np.float32)
    mask = np.ones_like(reference, dtype=bool)
    rescaled = 3 * reference + 7
    scores = image_metrics(rescaled, reference, mask)
    assert scores["psnr"] < 20 and scores["psnr_fit"] > 80 and scores["ssim_fit"] > 0.999
    assert np.allclose(linear_fit(rescaled, reference, mask), reference, atol=1e-3)
    assert np.allclose(linear_fit(np.zeros_like(reference), reference), reference.mean())
    # The same error per slice, once steady and once flickering from slice to slice.
    offset = np.float32(0.5)
    steady = reference + offset
    flicker = reference + offset * np.where(np.arange(12) % 2 == 0, 1, -1).astype(np.float32)
    steady_scores, flicker_scores = image_metrics(steady, reference, mask), image_metrics(flicker, reference, mask)
    assert abs(steady_scores["psnr"] - flicker_scores["psnr"]) < 1e-6
    assert steady_scores["psnr_dz"] > 80 > flicker_scores["psnr_dz"] + 40
    assert through_plane_psnr(reference[:, :, :1], reference[:, :, :1]) is None
    assert "psnr_dz" not in image_metrics(reference[:, :, 0], reference[:, :, 0])


def test_context_gives_neighbouring_slices_in_training_and_translation(phantoms, tmp_path):
    from synthmed.workflows.translate import stacked_context

    prep = prepare(phantoms, source="T1", target="T2", out=tmp_path / "prep", split="0.5,0.25,0.25", progress=False)
    data = PreparedData(prep)
    dataset = SliceDataset(data, "train", context=3)
    index = np.asarray(data.arrays["index"])
    for item in (0, len(dataset) // 2, len(dataset) - 1):
        row = dataset.rows[item]
        subject, number = index[row]
        source = dataset[item]["source"].numpy()
        assert source.shape[0] == 3
        assert np.array_equal(source[1], data.arrays["source"][row])  # the slice itself in the middle
        for channel, offset in ((0, -1), (2, 1)):
            match = np.flatnonzero((index[:, 0] == subject) & (index[:, 1] == number + offset))
            expected = data.arrays["source"][match[0]] if len(match) else np.full(source.shape[1:], -1.0)
            assert np.array_equal(source[channel], expected)
    with pytest.raises(SynthmedError, match="odd"):
        SliceDataset(data, "train", context=2)

    stack = np.arange(5 * 2 * 2, dtype=np.float32).reshape(5, 2, 2)
    inputs = stacked_context(stack, 1, 5, 3)
    assert inputs.shape == (4, 3, 2, 2)
    assert np.array_equal(inputs[0], stack[0:3]) and np.array_equal(inputs[-1, :2], stack[3:5])
    assert np.all(inputs[-1, 2] == -1.0)
    assert np.array_equal(stacked_context(stack, 0, 2, 1)[:, 0], stack[:2])

    run = tmp_path / "run"
    train(
        prep,
        model="pix2pix",
        out=run,
        steps=2,
        batch_size=2,
        context=3,
        progress=False,
        val_every=2,
        overrides={"generator_channels": 8, "discriminator_channels": 8},
    )
    assert json.loads((run / "run.json").read_text())["config"]["context"] == 3
    loaded = load_run(run, checkpoint="last")
    first_convolution = next(m for m in loaded.model.generator.modules() if isinstance(m, torch.nn.Conv2d))
    assert first_convolution.in_channels == 3
    volume = read_volume(phantoms / loaded.plan.test_subjects[0] / "T1.nii.gz")
    image = translate_volume(loaded, volume, Normalization("mr", 0.0, 1.0)).image
    assert image.shape == volume.data.shape and np.isfinite(image).all()
    with pytest.raises(SynthmedError, match="--context"):
        train(prep, model="ddpm-gen", out=tmp_path / "run2", steps=1, context=3, progress=False)


def test_unpaired_context_stacks_the_targets_neighbours_and_translates_both_ways(phantoms, tmp_path):
    """Unpaired, the target comes as a stack around its partner slice (another subject's); a UNIT trained with
    context translates A -> B from neighbouring slices and B -> A from single slices."""
    prep = prepare(phantoms, source="T1", target="T2", out=tmp_path / "prep", split="0.5,0.25,0.25", progress=False)
    data = PreparedData(prep)
    dataset = SliceDataset(data, "train", unpaired=True, context=3)
    index = np.asarray(data.arrays["index"])
    for item in (0, len(dataset) // 2, len(dataset) - 1):
        partner = dataset.partner[item]
        target = dataset[item]["target"].numpy()
        assert target.shape[0] == 3 and np.array_equal(target[1], data.arrays["target"][partner])
        subject, number = index[partner]
        assert subject != index[dataset.rows[item]][0]
        for channel, offset in ((0, -1), (2, 1)):
            match = np.flatnonzero((index[:, 0] == subject) & (index[:, 1] == number + offset))
            expected = data.arrays["target"][match[0]] if len(match) else np.full(target.shape[1:], -1.0)
            assert np.array_equal(target[channel], expected)
    assert SliceDataset(data, "train", context=3)[0]["target"].shape[0] == 1  # paired: the slice itself

    run = tmp_path / "run"
    train(
        prep,
        model="unit",
        out=run,
        steps=2,
        batch_size=2,
        context=3,
        progress=False,
        val_every=2,
        overrides={"base_channels": 4, "n_res": 0, "discriminator_channels": 4},
    )
    volume = read_volume(phantoms / data.plan.test_subjects[0] / "T1.nii.gz")
    for direction in ("A2B", "B2A"):
        loaded = load_run(run, checkpoint="last", direction=direction)
        image = translate_volume(loaded, volume, Normalization("mr", 0.0, 1.0)).image
        assert image.shape == volume.data.shape and np.isfinite(image).all()


@pytest.mark.parametrize(
    "name, overrides",
    [
        (
            "ddpm",
            {
                "image_size": 16,
                "channels": [16, 16],
                "attention_levels": [False, False],
                "num_head_channels": 16,
                "norm_num_groups": 8,
            },
        ),
        (
            "medgan",
            {"image_size": 16, "n_ublocks": 2, "generator_channels": 8, "discriminator_channels": 8, "residual": True},
        ),
        ("pix2pix", {"image_size": 16, "generator_channels": 8, "discriminator_channels": 8}),
        ("cyclegan", {"image_size": 16, "generator_channels": 8, "resnet_blocks": 1, "discriminator_channels": 8}),
        ("unit", {"image_size": 16, "base_channels": 4, "n_res": 0, "discriminator_channels": 4}),
        ("gmm-unit", {"image_size": 16, "patch_size": 16, "base_channels": 4, "n_res": 0, "discriminator_channels": 4}),
        (
            "syndiff",
            {
                "image_size": 16,
                "generator_channels": 8,
                "channel_mult": (1, 2),
                "num_res_blocks": 1,
                "nz": 8,
                "z_embedding": 16,
                "n_mlp": 1,
                "discriminator_channels": 8,
                "t_embedding": 16,
                "cycle_generator_channels": 8,
                "resnet_blocks": 1,
                "cycle_discriminator_channels": 8,
            },
        ),
    ],
)
def test_context_models_take_neighbours_and_make_one_slice(name, overrides):
    from synthmed.models.registry import build_model

    torch.manual_seed(0)
    model = build_model(name, "small", {**overrides, "context": 3})
    # Unpaired models get the target as a stack of neighbouring slices too (see SliceDataset).
    source = torch.rand(2, 3, 16, 16) * 2 - 1
    target = torch.rand(2, 1 if model.paired else 3, 16, 16) * 2 - 1
    losses = model.training_step({"source": source, "target": target, "mask": torch.ones(2, 1, 16, 16)}, 0)
    assert all(torch.isfinite(torch.as_tensor(v)) for v in losses.values())
    model.eval()

    def translated(images):
        if name == "ddpm":
            return model.translate(images, steps=2, generator=torch.Generator().manual_seed(0))
        if model.stochastic:
            return model.translate(images, generator=torch.Generator().manual_seed(0))
        return model.translate(images)

    out = translated(source)
    assert out.shape == (2, 1, 16, 16)
    # The neighbours reach the output: changing one of them changes it.
    changed = source.clone()
    changed[:, 0] = -changed[:, 0]
    assert not torch.allclose(out, translated(changed))
    if "B2A" in model.directions:  # the reverse direction stays single-slice
        assert model.translate_reverse(target[:, :1]).shape == (2, 1, 16, 16)
    with pytest.raises(SynthmedError, match="odd"):
        build_model(name, "small", {**overrides, "context": 2})
