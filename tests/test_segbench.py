"""The downstream segmentation benchmark and the mask statistics (issue 7): metrics on hand-made masks, refusals,
a tiny end-to-end run, and a learning check on phantom FLAIR + lesion pairs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from synthmed.benchmarking.downstream import (
    compare_mask_statistics,
    image_mask_consistency,
    mask_statistics,
    segbench,
    segment,
    train_segmenter,
)
from synthmed.data.generated import write_pair
from synthmed.errors import SynthmedError
from synthmed.metrics import dice_iou


@pytest.fixture(scope="module")
def lesion_prep(phantoms, tmp_path_factory):
    """The session's 32 px phantoms prepared FLAIR + lesion, no target."""
    from synthmed.data.prepare import prepare

    out = tmp_path_factory.mktemp("segprep") / "prep"
    prepare(phantoms, source="FLAIR", label="lesion", out=out, size=32, split="0.5,0.25,0.25", seed=0, progress=False)
    return out


def _real_train_pairs(prep):
    from synthmed.data.datasets import PreparedData

    data = PreparedData(prep)
    rows = data.rows("train")
    return np.asarray(data.arrays["source"][rows]), (np.asarray(data.arrays["label"][rows]) > 0).astype(np.uint8)


def _write_folder(folder, images, masks, fmt="png"):
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        write_pair(folder, i + 1, image, None if masks is None else masks[i], fmt)
    return folder


# --------------------------------------------------------------------------- metrics


def test_dice_iou_known_values():
    ref = np.zeros((2, 4, 4), np.uint8)
    ref[0, :2, :2] = 1  # 4 voxels
    pred = np.zeros_like(ref)
    pred[0, :2, :1] = 1  # 2 voxels, both inside
    pred[1, 3, 3] = 1  # 1 false positive on another slice
    dice, iou = dice_iou(pred, ref)
    assert dice == pytest.approx(2 * 2 / (3 + 4))
    assert iou == pytest.approx(2 / 5)
    assert dice_iou(ref, ref) == (1.0, 1.0)
    assert dice_iou(np.zeros_like(ref), ref) == (0.0, 0.0)
    assert dice_iou(np.zeros_like(ref), np.zeros_like(ref)) == (1.0, 1.0)  # empty / empty: documented convention
    with pytest.raises(SynthmedError):
        dice_iou(ref[:1], ref)


def test_mask_statistics_counts_components_and_areas():
    masks = np.zeros((3, 10, 10), np.uint8)
    masks[0, 1:3, 1:3] = 1  # 4 px
    masks[0, 6:9, 6:9] = 1  # 9 px, separate
    masks[0, 4, 4] = 1  # 1 px, touches neither (diagonal neighbours of nothing)
    masks[1, 0:5, 0] = 1  # 5 px, one component
    masks[1, 5, 1] = 1  # diagonal to (4, 0): a separate component under 4-connectivity
    stats = mask_statistics(masks)
    assert stats["slices"] == 3
    assert stats["empty_fraction"] == pytest.approx(1 / 3)
    assert stats["total_components"] == 3 + 2
    assert stats["area"]["mean"] == pytest.approx((14 + 6 + 0) / 3)
    assert stats["area"]["max"] == 14 and stats["area"]["min"] == 0
    assert stats["components"]["max"] == 3
    assert stats["area_nonempty"]["mean"] == pytest.approx(10)
    assert sorted([stats["component_area"]["min"], stats["component_area"]["max"]]) == [1, 9]


def test_ks_statistic_zero_for_identical_and_large_for_different():
    rng = np.random.default_rng(0)
    small = np.zeros((40, 16, 16), np.uint8)
    large = np.zeros((40, 16, 16), np.uint8)
    for i in range(40):
        r, c = rng.integers(0, 12, 2)
        small[i, r : r + 2, c : c + 2] = 1  # one 4 px blob
        large[i, :10, :10] = 1  # one 100 px blob ...
        large[i, 13:15, 13:15] = 1  # ... and a second component
    same = compare_mask_statistics(small, small.copy())
    assert same["ks"]["area"]["statistic"] == 0.0
    assert same["ks"]["components"]["statistic"] == 0.0
    diff = compare_mask_statistics(small, large)
    assert diff["ks"]["area"]["statistic"] == pytest.approx(1.0)
    assert diff["ks"]["components"]["statistic"] == pytest.approx(1.0)
    assert diff["ks"]["area"]["pvalue"] < 1e-6
    json.dumps(diff, allow_nan=False)


# --------------------------------------------------------------------------- refusals


def test_segbench_gives_an_image_only_folder_no_arm_and_says_why(lesion_prep, tmp_path):
    images, _ = _real_train_pairs(lesion_prep)
    folder = _write_folder(tmp_path / "ddpm", images[:4], None)
    result = segbench(lesion_prep, {"ddpm": folder}, extra_counts=[2], seeds=[0], steps=1, batch_size=2, progress=False)
    assert [arm["arm"] for arm in result["arms"]] == ["real"]
    entry = result["generated"]["ddpm"]
    assert not entry["masks"] and "cannot supervise a segmenter" in entry["segmentation"]
    assert entry["mask_statistics"] is None and entry["consistency"] is None
    assert entry["fid"]["fid"] is None and "--inception-weights" in entry["fid"]["unavailable"]


def test_segbench_refuses_size_mismatch_and_too_few(lesion_prep, tmp_path):
    folder = _write_folder(tmp_path / "big", np.zeros((3, 48, 48), np.float32), np.zeros((3, 48, 48), np.uint8))
    with pytest.raises(SynthmedError, match="48x48 slices but the prepared folder's slices are 32x32"):
        segbench(lesion_prep, {"big": folder}, extra_counts=[2], seeds=[0], steps=1, batch_size=2, progress=False)
    images, masks = _real_train_pairs(lesion_prep)
    few = _write_folder(tmp_path / "few", images[:3], masks[:3])
    with pytest.raises(SynthmedError, match="holds 3 pairs, fewer than the 5"):
        segbench(lesion_prep, {"few": few}, extra_counts=[0, 5], seeds=[0], steps=1, batch_size=2, progress=False)


# --------------------------------------------------------------------------- end to end


def test_segbench_end_to_end_structure(lesion_prep, tmp_path):
    images, masks = _real_train_pairs(lesion_prep)
    order = np.argsort(-masks.reshape(len(masks), -1).sum(axis=1), kind="stable")  # lesion slices first
    folder = _write_folder(tmp_path / "copy", images[order[:8]], masks[order[:8]])
    result = segbench(
        lesion_prep,
        {"copy": folder},
        extra_counts=[0, 6],
        seeds=[0, 1],
        steps=4,
        batch_size=4,
        channels=(8, 16),
        progress=False,
    )
    json.dumps(result, allow_nan=False)  # JSON-able, no NaN
    assert [arm["arm"] for arm in result["arms"]] == ["real", "copy+6"]
    real, extra = result["arms"]
    assert real["n_generated"] == 0 and extra["n_generated"] == 6
    assert extra["n_train"] == real["n_train"] + 6 == len(images) + 6
    test_subjects = result["data"]["test_subjects"]
    assert len(test_subjects) == 2
    for arm in result["arms"]:
        assert [s["seed"] for s in arm["seeds"]] == [0, 1]
        for entry in arm["seeds"]:
            assert set(entry["subjects"]) == set(test_subjects)
            for scores in entry["subjects"].values():
                assert scores["n_lesion_slices"] <= scores["n_slices"]
                assert set(scores["lesion_slices"]) == set(scores["all_slices"]) == {"dice", "iou"}
            assert entry["dice"] is not None and 0.0 <= entry["dice"] <= 1.0 and math.isfinite(entry["dice"])
            assert 0.0 <= entry["iou"] <= entry["dice"] + 1e-12
        assert arm["dice"]["n"] == 2 and arm["dice"]["sd"] is not None
        assert arm["dice"]["mean"] == pytest.approx(np.mean([s["dice"] for s in arm["seeds"]]))
    assert result["summary"]["copy+6"]["dice_minus_real"]["n"] == 2
    assert result["settings"]["lesion_slices_only"] is True and result["settings"]["headline_slices"] == "lesion_slices"
    generated = result["generated"]["copy"]
    assert generated["available"] == 8
    assert generated["mask_statistics"]["generated"]["slices"] == 8
    assert [c["seed"] for c in generated["consistency"]] == [0, 1]
    # the same seed gives the same result (deterministic training on CPU)
    again = segbench(
        lesion_prep, None, extra_counts=[0], seeds=[1], steps=4, batch_size=4, channels=(8, 16), progress=False
    )
    assert again["arms"][0]["seeds"][0]["subjects"] == real["seeds"][1]["subjects"]


# --------------------------------------------------------------------------- learning


@pytest.fixture(scope="module")
def lesion_prep_64(tmp_path_factory):
    """6 phantoms at 64 px (lesions of 1-2 px radius at 32 px are too few voxels to learn from), FLAIR + lesion."""
    from synthmed.data.phantom import write_phantoms
    from synthmed.data.prepare import prepare

    root = tmp_path_factory.mktemp("seg64")
    write_phantoms(root / "phantoms", subjects=6, size=64, seed=1, overwrite=True)
    return prepare(
        root / "phantoms",
        source="FLAIR",
        label="lesion",
        out=root / "prep",
        size=64,
        split="0.5,0.25,0.25",
        seed=0,
        progress=False,
    )


def test_segmenter_learns_phantom_lesions(lesion_prep_64):
    from synthmed.data.datasets import PreparedData

    data = PreparedData(lesion_prep_64)
    train, test = data.rows("train"), data.rows("test")
    images, masks = np.asarray(data.arrays["source"][train]), np.asarray(data.arrays["label"][train]) > 0
    test_images, test_masks = np.asarray(data.arrays["source"][test]), np.asarray(data.arrays["label"][test]) > 0
    assert masks.sum() > 20 and test_masks.sum() > 20  # the fixture holds lesions to learn and to find
    network = train_segmenter(images, masks, steps=800, batch_size=8, lr=1e-2, seed=0, channels=(8, 16, 32))
    pred = segment(network, test_images)
    dice, _ = dice_iou(pred, test_masks)
    everything, _ = dice_iou(np.asarray(data.arrays["mask"][test]), test_masks)  # all foreground called lesion
    nothing, _ = dice_iou(np.zeros_like(test_masks), test_masks)
    assert nothing == 0.0 and everything < 0.01
    assert dice > 0.08, f"test Dice {dice:.3f}: training did not learn the lesions"
    assert dice > 10 * everything
    # a segmenter trained on real pairs finds the lesions of those pairs (image-mask consistency)
    consistency = image_mask_consistency(network, images, masks)
    assert consistency["pooled_dice"] > 0.2 and consistency["nonempty_slices"] == int(masks.any(axis=(1, 2)).sum())
