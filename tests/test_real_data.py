"""Every layout in ../shared/data/real prepares with at most a pattern, aliases or a short manifest.

Skipped when the folder is absent. Slices are resized to 64 px to keep this quick.
"""

import json

import nibabel as nib
import numpy as np
import pytest

from synthmed.cli import main
from synthmed.data.discovery import write_manifest
from synthmed.data.plan import load_plan
from synthmed.data.prepare import prepare
from synthmed.data.recipes import ixi_manifest, lgg_manifest

pytestmark = pytest.mark.real


def test_brats_layouts_with_aliases(real_data, tmp_path):
    # BraTS 2023 names (t1n/t2w/t2f) are built-in aliases; the TCGA files need four user aliases.
    out = prepare(
        real_data / "brats",
        source="t1",
        target="t2",
        out=tmp_path / "prep",
        size=64,
        progress=False,
        aliases="t1_bet=t1,t1c_bet=t1c,t2_bet=t2,fla_bet=flair",
    )
    plan = load_plan(out)
    assert sorted(plan.subjects) == ["AURORA-MET-example", "BraTS-GLI-00001-000", "TCGA-DU-7294"]
    assert plan.fingerprint["t1"]["shapes"] == ["240x240x155"]
    for record in plan.volumes.values():
        assert record.geometry.axis == 2  # axial from the LPS/RAS orientation
        assert record.n_slices > 50


def test_tcga_with_a_pattern(real_data, tmp_path):
    out = prepare(
        real_data / "brats" / "TCGA-DU-7294",
        source="flair",
        target="t2",
        out=tmp_path / "prep",
        pattern="{subject}_{modality}_*.nii.gz",
        label="seg",
        size=64,
        progress=False,
    )
    plan = load_plan(out)
    assert plan.subjects == ("TCGA-DU-7294",)
    label = np.load(out / "slices" / "label.npy")
    assert label.max() >= 1  # the fused tumour labels came along


def test_ms_with_a_pattern(real_data, tmp_path):
    out = prepare(
        real_data / "ms",
        source="T1",
        target="T1POST",
        pattern="{subject}/{modality}_N4_*.nii.gz",
        label="gold_standard",
        out=tmp_path / "prep",
        size=64,
        progress=False,
    )
    plan = load_plan(out)
    assert plan.source == "t1" and plan.target == "t1c"
    assert plan.fingerprint["t1"]["shapes"] == ["182x218x182"]
    assert np.load(out / "slices" / "label.npy").max() == 1


def test_ixi_mat_slices_with_a_two_row_manifest(real_data, tmp_path):
    manifest = write_manifest(ixi_manifest(real_data / "ixi_slices", absolute=True), tmp_path / "ixi.csv")
    out = prepare(None, manifest=manifest, source="T1", target="T2", out=tmp_path / "prep", size=64, progress=False)
    plan = load_plan(out)
    assert plan.volumes["ixi"].n_slices >= 20  # 25 axial slices, a few near the skull base may be dropped


def test_lgg_tif_slices_with_a_manifest(real_data, tmp_path):
    manifest = write_manifest(lgg_manifest(real_data / "lgg", absolute=True), tmp_path / "lgg.json")
    out = prepare(
        None,
        manifest=manifest,
        source="flair",
        target="t1c",
        label="lesion",
        out=tmp_path / "prep",
        size=64,
        progress=False,
    )
    plan = load_plan(out)
    kept = set(plan.subjects)
    # patients whose post-contrast channel is a copy of FLAIR are skipped, and said so
    assert kept | set(plan.skipped) == {p.name for p in (real_data / "lgg").iterdir() if p.is_dir()}
    assert plan.skipped and len(kept) >= 7
    # TCGA_DU_7294 (also in brats/) is grouped by patient: it sits in exactly one split
    where = [name for name, ids in plan.split.items() if "TCGA_DU_7294_19890104" in ids]
    assert len(where) <= 1
    assert np.load(out / "slices" / "label.npy").max() >= 1


def test_translation_of_a_real_scan_overlays_its_source(real_data, trained_run, tmp_path):
    source = real_data / "brats" / "BraTS-GLI-00001-000" / "BraTS-GLI-00001-000-t1n.nii.gz"
    out = tmp_path / "t2_synth.nii.gz"
    assert main(["translate", str(trained_run), str(source), str(out), "--quiet"]) == 0
    src, pred = nib.load(source), nib.load(out)
    assert pred.shape == src.shape
    np.testing.assert_array_equal(pred.affine, src.affine)
    np.testing.assert_array_equal(pred.header.get_sform(), src.header.get_sform())
    np.testing.assert_array_equal(pred.header.get_qform(), src.header.get_qform())
    assert pred.header["sform_code"] == src.header["sform_code"]
    assert pred.header["qform_code"] == src.header["qform_code"]
    data = pred.get_fdata()
    assert np.isfinite(data).all() and data.std() > 0
    assert json.loads((trained_run / "plan.json").read_text())["target"] == "t2"
