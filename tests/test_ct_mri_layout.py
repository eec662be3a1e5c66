"""The CT/MR slice-pair layout: PNG slices -> one volume per case and modality, a body mask, a split by case,
and a manifest that ``prepare`` reads.

The synthetic test writes a few PNG pairs to tmp_path (runs everywhere); the real one reads
../shared/data/real/ct_mri_2d and is skipped when it is absent.
"""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from synthmed.data.plan import load_plan
from synthmed.data.prepare import prepare
from synthmed.data.recipes.shared_real import CT_WINDOW_MODALITY, body_mask, ct_mri_layout
from synthmed.errors import SynthmedError


def _head(size: int, case: int, slice_number: int) -> tuple[np.ndarray, np.ndarray]:
    """(MR, CT window) of one synthetic slice: a disc with an air pocket inside and a stray blob outside; the slice
    number is written into pixel (0, 0) of the MR so the stacking order can be read back, the case into the CT's
    (below the air level), so no two cases are the same scan."""
    yy, xx = np.mgrid[:size, :size]
    radius = np.hypot(yy - size / 2, xx - size / 2)
    ct = np.where(radius < size / 3, 40, 0).astype(np.uint8)
    ct[radius > size / 3 - 3] = np.where(radius[radius > size / 3 - 3] < size / 3, 255, 0)  # skull
    ct[np.hypot(yy - size / 2, xx - size / 2 + 6) < 3] = 0  # air pocket (a sinus) inside the head
    ct[1:4, size - 4 : size - 1] = 200  # a small object outside the head
    mr = np.where(radius < size / 3 - 3, 120, 0).astype(np.uint8)
    mr[0, 0] = slice_number
    ct[0, 0] = case % 10
    return mr, ct


def _write_pairs(root: Path, cases: dict[int, list[int]], size: int = 48) -> Path:
    for modality in ("CT", "MRI"):
        (root / "ct_mri_2d" / modality).mkdir(parents=True)
    for case, slices in cases.items():
        for number in slices:
            mr, ct = _head(size, case, number)
            Image.fromarray(mr).save(root / "ct_mri_2d" / "MRI" / f"{case}{number:03d}.png")
            Image.fromarray(ct).save(root / "ct_mri_2d" / "CT" / f"{case}{number:03d}.png")
    return root


def test_layout_of_synthetic_pairs(tmp_path):
    # case 2's files (2004.png) and case 20's (20005.png) share their first two digits: they stay two cases
    cases = {2: [12, 4, 8], 20: [5, 6, 9], 16: [3, 4, 5], 33: [7, 8, 9], 47: [1, 2, 3]}
    root = _write_pairs(tmp_path / "real", cases)
    manifest, scans, masks, split = ct_mri_layout(root, tmp_path / "work")

    assert split == {"case02": "train", "case16": "train", "case20": "val", "case33": "test", "case47": "test"}
    mr = nib.load(scans / "case02" / "mr.nii.gz").get_fdata()
    assert mr.shape == (48, 48, 3)
    assert mr[0, 0].tolist() == [4, 8, 12]  # sorted by slice number, not by file name
    ct = nib.load(scans / "case02" / f"{CT_WINDOW_MODALITY}.nii.gz").get_fdata()
    mask = nib.load(masks / "case02.nii.gz").get_fdata()
    assert mask.shape == ct.shape and set(np.unique(mask)) == {0, 1}
    inside = np.zeros((48, 48), dtype=bool)
    yy, xx = np.mgrid[:48, :48]
    inside[np.hypot(yy - 24, xx - 24) < 16 - 0.5] = True
    assert mask[..., 0][inside].all()  # the air pocket is filled: it is inside the body
    assert not mask[1:4, 44:47].any()  # the object outside the head is not the largest component
    assert not mask[np.hypot(yy - 24, xx - 24) > 17].any()

    rows = manifest.read_text().splitlines()
    assert rows[0] == "subject,modality,path,split,mask"
    assert len(rows) == 1 + 2 * len(cases)
    # the manifest is what prepare reads; the CT window is normalised per volume, not with the HU window
    plan = load_plan(
        prepare(None, source="mr", target=CT_WINDOW_MODALITY, out=tmp_path / "prep", manifest=manifest, progress=False)
    )
    assert {k: list(v) for k, v in plan.split.items()} == {
        "train": ["case02", "case16"],
        "val": ["case20"],
        "test": ["case33", "case47"],
    }
    assert plan.normalization_kind[CT_WINDOW_MODALITY] == "mr"

    # again: the written volumes are kept, so prepare finds the same inputs
    before = (scans / "case02" / "mr.nii.gz").stat().st_mtime_ns
    assert ct_mri_layout(root, tmp_path / "work")[3] == split
    assert (scans / "case02" / "mr.nii.gz").stat().st_mtime_ns == before


def test_layout_refusals(tmp_path):
    root = _write_pairs(tmp_path / "few", {1: [1, 2], 2: [1, 2], 3: [1, 2]})
    with pytest.raises(SynthmedError, match="need more than 3"):
        ct_mri_layout(root, tmp_path / "work")
    (root / "ct_mri_2d" / "CT" / "1001.png").unlink()
    with pytest.raises(SynthmedError, match="without a partner"):
        ct_mri_layout(root, tmp_path / "work")
    with pytest.raises(SynthmedError, match="no CT/ and MRI/"):
        ct_mri_layout(tmp_path / "nothing", tmp_path / "work")


def test_body_mask_of_an_empty_slice():
    assert not body_mask(np.zeros((8, 8, 2), dtype=np.uint8)).any()


@pytest.mark.real
def test_layout_of_the_atlas_pairs(real_data, tmp_path):
    manifest, scans, masks, split = ct_mri_layout(real_data, tmp_path)
    assert len(split) == 10 and list(split.values()).count("test") == 2 and list(split.values()).count("val") == 1
    assert split["case02"] == "train" and split["case20"] == "train"  # 2004.png and 20005.png: two cases
    total = 0
    for case in split:
        ct = nib.load(scans / case / f"{CT_WINDOW_MODALITY}.nii.gz").get_fdata()
        mr = nib.load(scans / case / "mr.nii.gz").get_fdata()
        mask = nib.load(masks / f"{case}.nii.gz").get_fdata() > 0
        assert ct.shape == mr.shape and ct.shape[:2] == (256, 256)
        total += ct.shape[2]
        # the body holds nearly all non-air CT and is mostly not air
        assert (ct[mask] > 10).mean() > 0.85
        assert ((ct > 10) & ~mask).mean() < 0.02
    assert total == 184
