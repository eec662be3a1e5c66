"""Synthetic heads: determinism, geometry, anatomy and the contrasts that define each modality."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from synthmed.data.phantom import LABELS, MODALITIES, TISSUES, make_phantom, subject_seed, write_phantoms
from synthmed.errors import SynthmedError

AIR, FAT, SKULL, CSF, GM, WM, LESION = range(7)
SEEDS = range(10)


@pytest.fixture(scope="module")
def heads() -> dict[int, dict[str, np.ndarray]]:
    """Ten subjects at 64^3 (the default size), shared by the anatomy and contrast tests."""
    return {seed: make_phantom(64, seed) for seed in SEEDS}


def median(volume: np.ndarray, labels: np.ndarray, label: int) -> float:
    return float(np.median(volume[labels == label]))


def test_deterministic_for_a_seed():
    a, b = make_phantom(32, seed=7), make_phantom(32, seed=7)
    assert set(a) == set(b) == {*MODALITIES, "labels", "lesion", "affine"}
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_different_seeds_differ():
    a, b = make_phantom(32, seed=1), make_phantom(32, seed=2)
    assert not np.array_equal(a["labels"], b["labels"])
    for modality in MODALITIES:
        assert not np.allclose(a[modality], b[modality]), modality


@pytest.mark.parametrize("size", [16, 33, 64])
def test_shapes_dtypes_and_affine(size):
    head = make_phantom(size, seed=3)
    for modality in MODALITIES:
        assert head[modality].shape == (size,) * 3 and head[modality].dtype == np.float32, modality
        assert np.isfinite(head[modality]).all(), modality
    for key in ("labels", "lesion"):
        assert head[key].shape == (size,) * 3 and head[key].dtype == np.uint8, key
    assert head["labels"].max() <= LESION
    np.testing.assert_array_equal(head["lesion"], head["labels"] == LESION)
    affine = head["affine"]
    assert affine.shape == (4, 4)
    assert nib.aff2axcodes(affine) == ("R", "A", "S")
    np.testing.assert_allclose(np.diag(affine)[:3], 256.0 / size)
    centre = affine @ np.array([(size - 1) / 2] * 3 + [1.0])
    np.testing.assert_allclose(centre[:3], 0.0, atol=1e-9)  # origin at the centre of the volume
    for modality in MODALITIES[:-1]:
        assert head[modality].min() >= 0, modality  # MR magnitudes


def test_anatomy_does_not_depend_on_size():
    """Same seed, same head: tissue volumes in ml agree between 32^3 and 64^3."""
    small, large = make_phantom(32, seed=5), make_phantom(64, seed=5)
    for label in (FAT, SKULL, GM, WM):
        ml_small = np.count_nonzero(small["labels"] == label) * 8.0**3 / 1000
        ml_large = np.count_nonzero(large["labels"] == label) * 4.0**3 / 1000
        assert ml_small == pytest.approx(ml_large, rel=0.25), LABELS[label]
    brain = [
        np.count_nonzero(np.isin(h["labels"], (CSF, GM, WM, LESION))) * (256.0 / h["labels"].shape[0]) ** 3
        for h in (small, large)
    ]
    assert brain[0] == pytest.approx(brain[1], rel=0.05)


def test_head_size_is_realistic(heads):
    for head in heads.values():
        inside = head["labels"] > AIR
        voxel = head["affine"][0, 0]
        extent = [
            np.ptp(np.flatnonzero(inside.any(axis=tuple(a for a in range(3) if a != ax)))) * voxel for ax in range(3)
        ]
        assert 120 < extent[0] < 180 and 160 < extent[1] < 225 and 140 < extent[2] < 210, extent
        brain_ml = np.count_nonzero(np.isin(head["labels"], (GM, WM, LESION))) * voxel**3 / 1000
        assert 900 < brain_ml < 1900, brain_ml


def test_every_tissue_present_and_nested(heads):
    for seed, head in heads.items():
        labels = head["labels"]
        present = set(np.unique(labels).tolist())
        assert {AIR, FAT, SKULL, CSF, GM, WM} <= present, (seed, present)
        assert labels[0, 0, 0] == AIR and labels[32, 32, 32] != AIR
        # scalp outside skull outside brain: along a ray from the centre to the top of the head
        ray = labels[32, 32, 32:]
        order = [label for i, label in enumerate(ray) if i == 0 or label != ray[i - 1]]
        outer = [label for label in order if label in (AIR, FAT, SKULL)]
        assert outer[-3:] == [SKULL, FAT, AIR], (seed, order)


def test_ventricles_are_csf_near_the_centre(heads):
    for seed, head in heads.items():
        csf = head["labels"] == CSF
        core = csf[20:44, 20:44, 20:44]  # the central 96 mm cube
        pieces, count = ndimage.label(core)
        sizes = np.bincount(pieces.ravel())[1:]
        assert count >= 1 and sizes.max() >= 4, (seed, sizes)


def test_lesions_vary_between_subjects(heads):
    counts = [ndimage.label(head["lesion"])[1] for head in heads.values()]
    assert all(0 <= c <= 5 for c in counts), counts
    assert 0 in counts, counts
    assert any(c >= 2 for c in counts), counts
    assert len(set(counts)) >= 3, counts
    for head in heads.values():  # lesions lie in white matter: their neighbourhood is mostly WM
        if head["lesion"].any():
            rim = ndimage.binary_dilation(head["lesion"]) & ~head["lesion"].astype(bool)
            share = np.isin(head["labels"][rim], (WM, LESION, GM)).mean()
            assert share > 0.8, share


def test_t1_contrast(heads):
    for seed, head in heads.items():
        t1, labels = head["T1"], head["labels"]
        wm, gm, csf = (median(t1, labels, k) for k in (WM, GM, CSF))
        assert wm > gm > csf, (seed, wm, gm, csf)
        assert median(t1, labels, FAT) > wm  # bright scalp fat
        assert median(t1, labels, SKULL) < csf  # dark bone


def test_t2_contrast(heads):
    for seed, head in heads.items():
        t2, labels = head["T2"], head["labels"]
        wm, gm, csf = (median(t2, labels, k) for k in (WM, GM, CSF))
        assert csf > gm > wm, (seed, wm, gm, csf)
        if head["lesion"].any():
            assert median(t2, labels, LESION) > 1.3 * wm


def test_flair_nulls_csf_and_shows_lesions(heads):
    lesions = 0
    for seed, head in heads.items():
        flair, labels = head["FLAIR"], head["labels"]
        gm, wm = median(flair, labels, GM), median(flair, labels, WM)
        assert median(flair, labels, CSF) < 0.8 * gm, seed
        # the purest CSF is nulled: much darker than white matter (most CSF voxels are partial volume at 4 mm)
        assert np.percentile(flair[labels == CSF], 10) < 0.5 * wm, seed
        if head["lesion"].any():
            lesions += 1
            assert median(flair, labels, LESION) > 1.3 * wm, seed
    assert lesions >= 3


def test_t1c_enhances_some_lesions(heads):
    enhancing = 0
    for seed, head in heads.items():
        if not head["lesion"].any():
            continue
        labels = head["labels"]
        t1_wm, t1c_wm = median(head["T1"], labels, WM), median(head["T1c"], labels, WM)
        pieces, count = ndimage.label(head["lesion"])
        gains = []
        for i in range(1, count + 1):
            inside = pieces == i
            gains.append((np.median(head["T1c"][inside]) / t1c_wm) / (np.median(head["T1"][inside]) / t1_wm))
        # at least one lesion clearly enhances (brighter than WM after contrast, darker or equal before)
        assert max(gains) > 1.4, (seed, gains)
        enhancing += 1
        # outside lesions the two T1 images agree up to bias, noise and mild vascular uptake
        for label in (CSF, GM):
            before = median(head["T1"], labels, label) / t1_wm
            after = median(head["T1c"], labels, label) / t1c_wm
            assert after == pytest.approx(before, rel=0.25), (seed, LABELS[label])
    assert enhancing >= 3


def test_ct_hounsfield_units(heads):
    for seed, head in heads.items():
        ct, labels = head["CT"], head["labels"]
        assert median(ct, labels, SKULL) > 500, seed
        assert median(ct, labels, AIR) < -900, seed
        assert -150 < median(ct, labels, FAT) < -50, seed
        for label in (GM, WM):
            assert 15 < median(ct, labels, label) < 55, (seed, LABELS[label])
        assert median(ct, labels, GM) > median(ct, labels, WM), seed
        # no bias field or gain: the same tissue reads the same HU in every subject
    wm = [median(h["CT"], h["labels"], WM) for h in heads.values()]
    assert np.ptp(wm) < 10, wm


def test_mr_intensity_scales_differ_between_subjects(heads):
    for modality in MODALITIES[:-1]:
        wm = [median(h[modality], h["labels"], WM) for h in heads.values()]
        assert max(wm) / min(wm) > 2.0, (modality, wm)


def test_mr_has_rician_noise_and_a_bias_field():
    head = make_phantom(64, seed=4)
    labels = head["labels"]
    for modality in MODALITIES[:-1]:
        image = head[modality]
        wm = median(image, labels, WM)
        background = image[labels == AIR]
        # magnitude noise: positive background, a few percent of the white-matter signal
        assert background.min() >= 0 and 0.005 * wm < background.mean() < 0.1 * wm, modality
        # bias: a smooth intensity trend across the white matter, beyond the noise
        deep_wm = ndimage.binary_erosion(labels == WM, iterations=2)
        idx = np.argwhere(deep_wm)
        values = image[deep_wm] / wm
        design = np.column_stack([np.ones(len(idx)), idx - idx.mean(axis=0)])
        slope = np.linalg.lstsq(design, values, rcond=None)[0][1:]
        assert np.abs(slope).max() * 20 > 0.01, (modality, slope)  # > 1 % over 20 voxels (80 mm)


def test_tissue_table():
    assert list(TISSUES) == ["air", "fat", "skull", "csf", "gm", "wm", "lesion"]
    assert [t.label for t in TISSUES.values()] == list(range(7))
    assert (TISSUES["wm"].pd, TISSUES["wm"].t1, TISSUES["wm"].t2) == (0.7, 650.0, 75.0)
    assert TISSUES["csf"].t1 > TISSUES["gm"].t1 > TISSUES["wm"].t1


def test_write_phantoms_nifti(tmp_path):
    folders = write_phantoms(tmp_path / "out", subjects=2, size=24, seed=4)
    assert [f.name for f in folders] == ["sub-001", "sub-002"]
    expected = {f"{name}.nii.gz" for name in (*MODALITIES, "labels", "lesion")}
    for i, folder in enumerate(folders, start=1):
        assert {p.name for p in folder.iterdir()} == expected
        head = make_phantom(24, subject_seed(4, i))
        for name in (*MODALITIES, "labels", "lesion"):
            img = nib.load(folder / f"{name}.nii.gz")
            np.testing.assert_allclose(img.affine, head["affine"])
            assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
            assert img.get_data_dtype() == (np.uint8 if name in ("labels", "lesion") else np.float32), name
            np.testing.assert_array_equal(np.asanyarray(img.dataobj), head[name], err_msg=name)
            assert img.header.get_zooms() == pytest.approx((256 / 24,) * 3)


def test_subject_independent_of_count(tmp_path):
    few = write_phantoms(tmp_path / "few", subjects=2, size=16, seed=9)
    many = write_phantoms(tmp_path / "many", subjects=4, size=16, seed=9)
    for a, b in zip(few, many):
        for name in ("T1", "CT", "labels"):
            np.testing.assert_array_equal(
                nib.load(a / f"{name}.nii.gz").get_fdata(), nib.load(b / f"{name}.nii.gz").get_fdata()
            )
    other_seed = write_phantoms(tmp_path / "other", subjects=1, size=16, seed=10)
    assert not np.array_equal(
        nib.load(other_seed[0] / "labels.nii.gz").get_fdata(), nib.load(few[0] / "labels.nii.gz").get_fdata()
    )
    different = nib.load(many[2] / "labels.nii.gz").get_fdata()
    assert not np.array_equal(different, nib.load(many[0] / "labels.nii.gz").get_fdata())


def test_refuses_a_non_empty_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(SynthmedError, match=r"is not empty; pass --overwrite"):
        write_phantoms(out, subjects=1, size=16)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    write_phantoms(out, subjects=3, size=16, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "sub-001", "sub-002", "sub-003"]
    # overwriting with fewer subjects removes the stale phantom folders, and nothing else
    (out / "sub-009").mkdir()
    (out / "sub-009" / "keep.txt").write_text("not a phantom")
    write_phantoms(out, subjects=1, size=16, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "sub-001", "sub-009"]
    assert (out / "sub-009" / "keep.txt").exists()


def test_empty_folder_is_fine(tmp_path):
    (tmp_path / "empty").mkdir()
    assert len(write_phantoms(tmp_path / "empty", subjects=1, size=16)) == 1


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(subjects=0), "--subjects"),
        (dict(subjects=1, size=4), "size"),
        (dict(subjects=1, seed=-1), "seed"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, needle):
    with pytest.raises(SynthmedError, match=needle):
        write_phantoms(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_output_path_is_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SynthmedError, match="not a folder"):
        write_phantoms(tmp_path / "file", subjects=1, size=16, overwrite=True)
