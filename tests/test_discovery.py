"""File discovery: folder-per-subject, pattern and manifest layouts, aliases, errors, real sample data."""

from __future__ import annotations

import csv
import json
import os
from fnmatch import fnmatch
from glob import glob
from pathlib import Path

import pytest

from synthmed.data.discovery import (
    DEFAULT_ALIASES,
    FileRef,
    Subject,
    canonical_modality,
    discover,
    parse_aliases,
    patient_key,
    require_modalities,
    write_manifest,
)
from synthmed.data.recipes import ixi_manifest, lgg_manifest
from synthmed.errors import SynthmedError

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
needs_real = pytest.mark.skipif(not REAL.is_dir(), reason="../shared/data/real is absent")


def touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


def ids(subjects):
    return [s.id for s in subjects]


def mods(subject: Subject):
    return sorted(subject.files)


# ----------------------------------------------------------------------------- names


def test_canonical_modality_defaults_and_case():
    assert canonical_modality("T1n") == "t1"
    assert canonical_modality("T1w") == "t1"
    assert canonical_modality("t2W") == "t2"
    assert canonical_modality("T2F") == "flair"
    assert canonical_modality("fla") == "flair"
    assert canonical_modality("T1CE") == "t1c"
    assert canonical_modality("t1gd") == "t1c"
    assert canonical_modality("T1POST") == "t1c"
    assert canonical_modality("GOLD_STANDARD") == "gold_standard"
    assert canonical_modality(" PD ") == "pd"
    assert all(k == k.lower() and v == v.lower() for k, v in DEFAULT_ALIASES.items())


def test_parse_aliases_forms():
    assert parse_aliases(None) == {}
    assert parse_aliases("T2F=flair, t1n = T1") == {"t2f": "flair", "t1n": "t1"}
    assert parse_aliases(["seq1=T1", "seq2=t2,seq3=pd"]) == {"seq1": "t1", "seq2": "t2", "seq3": "pd"}
    assert parse_aliases({"SEQ1": "T1"}) == {"seq1": "t1"}
    with pytest.raises(SynthmedError, match="NAME=MODALITY"):
        parse_aliases("t2f")
    with pytest.raises(SynthmedError, match="NAME=MODALITY"):
        parse_aliases("t2f=")


def test_user_alias_overrides_default():
    assert canonical_modality("T2F", {"t2f": "t2"}) == "t2"
    assert canonical_modality("t2f", parse_aliases("T2F=T2")) == "t2"
    # the alias target goes through the defaults, unless it maps a name to itself
    assert canonical_modality("SEQ1", parse_aliases("seq1=T1w")) == "t1"
    assert canonical_modality("t1n", parse_aliases("t1n=t1n")) == "t1n"
    # other names keep the defaults
    assert canonical_modality("t1n", parse_aliases("t2f=t2")) == "t1"


def test_patient_key():
    assert patient_key("TCGA_DU_7294_19890104") == "TCGA-DU-7294"
    assert patient_key("TCGA-DU-7294") == "TCGA-DU-7294"
    assert patient_key("tcga_du_a5tp_19970614") == "TCGA-DU-A5TP"
    assert patient_key("BraTS-GLI-00001-000") == "BraTS-GLI-00001-000"
    assert patient_key("sub-01") == "sub-01"


# ----------------------------------------------------------------------------- folder per subject


def test_folder_layout_prefixed_names(tmp_path):
    touch(
        tmp_path,
        "BraTS-X-001/BraTS-X-001-t1n.nii.gz",
        "BraTS-X-001/BraTS-X-001-t2w.nii.gz",
        "BraTS-X-001/BraTS-X-001-t2f.nii.gz",
        "BraTS-X-001/BraTS-X-001-seg.nii.gz",
        "BraTS-X-001/notes.txt",
        "sub-02/sub-02_T1w.nii",
        "sub-02/sub-02_T2w.NII.GZ",
        "sub-02/.hidden.nii.gz",
        "sub-01/T1.nrrd",
        "sub-01/PD.mha",
        "sub-01/t2.npy",
        "loose.nii.gz",
        "empty/readme.md",
    )
    subjects = discover(tmp_path)
    assert ids(subjects) == ["BraTS-X-001", "sub-01", "sub-02"]
    by_id = {s.id: s for s in subjects}
    assert mods(by_id["BraTS-X-001"]) == ["flair", "seg", "t1", "t2"]
    assert mods(by_id["sub-01"]) == ["pd", "t1", "t2"]
    assert mods(by_id["sub-02"]) == ["t1", "t2"]
    ref = by_id["BraTS-X-001"].files["t1"]
    assert ref == FileRef(str(tmp_path / "BraTS-X-001" / "BraTS-X-001-t1n.nii.gz"))
    assert os.path.isabs(ref.path) and ref.key is None and ref.channel is None
    assert all(s.split is None and s.mask is None and s.label is None for s in subjects)


def test_folder_layout_aliases_and_dicom_series(tmp_path):
    touch(
        tmp_path,
        "s1/SEQ_A.nii.gz",
        "s1/t2.nii.gz",
        "s1/dwi_series/IM0001.dcm",
        "s1/dwi_series/IM0002.dcm",
        "s1/not_dicom/readme",
    )
    (tmp_path / "s1" / "ct").mkdir()
    (tmp_path / "s1" / "ct" / "IM0001").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)
    [subject] = discover(tmp_path, aliases="seq_a=t1")
    assert mods(subject) == ["ct", "dwi_series", "t1", "t2"]
    assert subject.files["ct"].path == str(tmp_path / "s1" / "ct")
    [subject] = discover(str(tmp_path), aliases={"DWI_SERIES": "dwi"})
    assert "dwi" in subject.files


def test_folder_layout_errors(tmp_path):
    with pytest.raises(SynthmedError, match="not found"):
        discover(tmp_path / "nope")
    with pytest.raises(SynthmedError, match="manifest"):
        discover(None)
    touch(tmp_path, "flat/a_t1.nii.gz", "flat/a_t2.nii.gz")
    with pytest.raises(SynthmedError, match="--pattern") as info:
        discover(tmp_path / "flat")
    assert "\n" not in str(info.value) and "flat" in str(info.value)
    touch(tmp_path, "dup/s1/t1n.nii.gz", "dup/s1/T1.nii.gz")
    with pytest.raises(SynthmedError, match="two t1 files") as info:
        discover(tmp_path / "dup")
    assert "t1n.nii.gz" in str(info.value) and "T1.nii.gz" in str(info.value)
    touch(tmp_path, *[f"slices/P1/P1_{n}.tif" for n in range(1, 10)])
    with pytest.raises(SynthmedError, match="2D slices"):
        discover(tmp_path / "slices")
    touch(tmp_path, "nothing/s1/readme.txt")
    with pytest.raises(SynthmedError, match="no subject folders"):
        discover(tmp_path / "nothing")


# ----------------------------------------------------------------------------- pattern


def test_pattern_file_name_any_depth(tmp_path):
    touch(
        tmp_path,
        "site1/TCGA-AA-0001_t1_bet.nii.gz",
        "site1/TCGA-AA-0001_fla_bet.nii.gz",
        "site2/deep/TCGA-BB-0002_t1_bet.nii.gz",
        "site2/TCGA-BB-0002_seg_fused.nii.gz",
        "TCGA-CC-0003_t2_bet.nii.gz",
    )
    subjects = discover(tmp_path, pattern="{subject}_{modality}_bet.nii.gz")
    assert ids(subjects) == ["TCGA-AA-0001", "TCGA-BB-0002", "TCGA-CC-0003"]
    assert mods(subjects[0]) == ["flair", "t1"]
    assert mods(subjects[1]) == ["t1"]
    assert subjects[1].files["t1"].path == str(tmp_path / "site2" / "deep" / "TCGA-BB-0002_t1_bet.nii.gz")


def test_pattern_prefers_longest_subject_and_folder_name(tmp_path):
    # flat: the modality is the shortest tail, the subject keeps its dashes
    touch(tmp_path, "flat/BraTS-GLI-00001-000-t1n.nii.gz", "flat/BraTS-GLI-00001-000-t2w.nii.gz")
    [subject] = discover(tmp_path / "flat", pattern="{subject}-{modality}.nii.gz")
    assert subject.id == "BraTS-GLI-00001-000" and mods(subject) == ["t1", "t2"]
    # in a folder named after the subject, the folder name wins
    touch(tmp_path, "nested/P-1/P-1_seg_fused_mav.nii.gz", "nested/P-1/P-1_t1.nii.gz")
    [subject] = discover(tmp_path / "nested", pattern="{subject}_{modality}.nii.gz")
    assert subject.id == "P-1" and mods(subject) == ["seg_fused_mav", "t1"]


def test_pattern_nested_folders_and_wildcards(tmp_path):
    touch(
        tmp_path,
        "p01/T1_N4_noneck_brain_N4_reg.nii.gz",
        "p01/T1POST_N4_x.nii.gz",
        "p01/FLAIR_N4_x.nii.gz",
        "p01/GOLD_STANDARD_N4_x.nii.gz",
        "p01/T2_raw.nii.gz",
        "p02/T2_N4_y.nii.gz",
        "p02/sub/T1_N4_z.nii.gz",
        "T1_N4_top.nii.gz",
    )
    subjects = discover(tmp_path, pattern="{subject}/{modality}_N4_*.nii.gz")
    assert ids(subjects) == ["p01", "p02"]
    assert mods(subjects[0]) == ["flair", "gold_standard", "t1", "t1c"]
    assert mods(subjects[1]) == ["t2"]
    # a wildcard next to a placeholder stops it at the first non-alphanumeric character
    subjects = discover(tmp_path, pattern="{subject}/{modality}*.nii.gz")
    assert mods(subjects[0]) == ["flair", "gold", "t1", "t1c", "t2"]
    # '**/' spans zero or more folders, '?' and '[...]' work as in glob
    subjects = discover(tmp_path, pattern="{subject}/**/{modality}_N4_?.nii.gz")
    assert [(s.id, mods(s)) for s in subjects] == [("p01", ["flair", "gold_standard", "t1c"]), ("p02", ["t1", "t2"])]
    subjects = discover(tmp_path, pattern="{subject}/*/{modality}_N4_?.nii.gz")
    assert [(s.id, mods(s)) for s in subjects] == [("p02", ["t1"])]
    subjects = discover(tmp_path, pattern="{subject}/{modality}_N4_[xy].nii.gz")
    assert [(s.id, mods(s)) for s in subjects] == [("p01", ["flair", "gold_standard", "t1c"]), ("p02", ["t2"])]


def test_pattern_repeated_subject_and_literals(tmp_path):
    touch(tmp_path, "s1/s1.t1.(v2).nii.gz", "s1/s2.t2.(v2).nii.gz", "s2/s2.t2.(v2).nii.gz", "s2/s2.t1.v2.nii.gz")
    subjects = discover(tmp_path, pattern="{subject}/{subject}.{modality}.(v2).nii.gz")
    assert [(s.id, mods(s)) for s in subjects] == [("s1", ["t1"]), ("s2", ["t2"])]


def test_pattern_absolute_without_data(tmp_path):
    touch(tmp_path, "a/x_t1.nii.gz", "a/x_t2.nii.gz")
    [subject] = discover(pattern=str(tmp_path / "a" / "{subject}_{modality}.nii.gz"))
    assert subject.id == "x" and mods(subject) == ["t1", "t2"]


def test_pattern_errors(tmp_path):
    touch(tmp_path, "s1/t1.nii.gz", "s1/t1n.nii.gz", "s1/readme_t1.txt")
    with pytest.raises(SynthmedError, match=r"no \{subject\}"):
        discover(tmp_path, pattern="{modality}.nii.gz")
    with pytest.raises(SynthmedError, match=r"no \{modality\}"):
        discover(tmp_path, pattern="{subject}/*.nii.gz")
    with pytest.raises(SynthmedError, match="unknown placeholder"):
        discover(tmp_path, pattern="{subject}/{modality}_{session}.nii.gz")
    with pytest.raises(SynthmedError, match="matched no") as info:
        discover(tmp_path, pattern="{subject}/{modality}.nrrd")
    assert "s1/t1.nii.gz" in str(info.value)
    with pytest.raises(SynthmedError, match="non-image"):
        discover(tmp_path, pattern="{subject}/readme_{modality}.txt")
    with pytest.raises(SynthmedError, match="two t1 files") as info:
        discover(tmp_path, pattern="{subject}/{modality}.nii.gz")
    assert "t1.nii.gz" in str(info.value) and "t1n.nii.gz" in str(info.value)
    with pytest.raises(SynthmedError, match="not found"):
        discover(tmp_path / "missing", pattern="{subject}/{modality}.nii.gz")
    with pytest.raises(SynthmedError, match="data folder"):
        discover(pattern="{subject}/{modality}.nii.gz")
    with pytest.raises(SynthmedError, match="not both"):
        discover(tmp_path, pattern="{subject}/{modality}.nii.gz", manifest=tmp_path / "m.csv")


# ----------------------------------------------------------------------------- manifest


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_csv_manifest_relative_paths_split_glob_key_channel(tmp_path):
    touch(
        tmp_path,
        "imgs/a_t1.nii.gz",
        "imgs/a_t2.nii.gz",
        "imgs/a_mask.nii.gz",
        "imgs/b.mat",
        "P1/P1_1.tif",
        "P1/P1_2.tif",
        "P1/P1_10.tif",
        "P1/P1_1_mask.tif",
        "P1/P1_2_mask.tif",
    )
    manifest = write_csv(
        tmp_path / "m.csv",
        ["Subject", "modality", "path", "split", "mask", "key", "channel"],
        [
            ["a", "T1w", "imgs/a_t1.nii.gz", "train", "imgs/a_mask.nii.gz", "", ""],
            ["a", "t2", "imgs/a_t2.nii.gz", "train", "", "", ""],
            ["b", "T1", "imgs/b.mat", "Validation", "", "vol_t1", ""],
            ["b", "T2", str(tmp_path / "imgs" / "b.mat"), "val", "", "vol_t2", ""],
            ["P1", "t1", "P1/P1_*[0-9].tif", "test", "", "", "0"],
            ["P1", "flair", "P1/P1_*[0-9].tif", "test", "", "", "1"],
            ["P1", "lesion", "P1/P1_*_mask.tif", "", "", "", ""],
        ],
    )
    subjects = discover(manifest=manifest)
    assert ids(subjects) == ["P1", "a", "b"]
    p1, a, b = subjects
    assert a.split == "train" and b.split == "val" and p1.split == "test"
    assert a.files["t1"] == FileRef(str(tmp_path / "imgs" / "a_t1.nii.gz"))
    assert a.mask == FileRef(str(tmp_path / "imgs" / "a_mask.nii.gz")) and a.label is None
    assert b.files["t1"].key == "vol_t1" and b.files["t2"].key == "vol_t2"
    assert b.files["t2"].path == str(tmp_path / "imgs" / "b.mat")
    assert p1.files["t1"].channel == 0 and p1.files["flair"].channel == 1
    image_glob = p1.files["t1"].path
    assert os.path.isabs(image_glob) and sorted(glob(image_glob)) == sorted(
        str(tmp_path / "P1" / n) for n in ("P1_1.tif", "P1_2.tif", "P1_10.tif")
    )
    assert len(glob(p1.files["lesion"].path)) == 2


def test_manifest_paths_relative_to_data_when_given(tmp_path):
    touch(tmp_path, "data/s1/t1.nii.gz")
    (tmp_path / "elsewhere").mkdir()
    manifest = write_csv(
        tmp_path / "elsewhere" / "m.csv", ["subject", "modality", "path"], [["s1", "t1", "s1/t1.nii.gz"]]
    )
    [subject] = discover(tmp_path / "data", manifest=manifest)
    assert subject.files["t1"].path == str(tmp_path / "data" / "s1" / "t1.nii.gz")
    with pytest.raises(SynthmedError, match="line 2"):
        discover(manifest=manifest)  # relative to the manifest's folder: not there


def test_json_manifests(tmp_path):
    touch(tmp_path, "x/t1.nii.gz", "x/t2.nii.gz", "x/lab.nii.gz", "y/T1.mat")
    rows = [
        {"subject": "x", "modality": "t1", "path": "x/t1.nii.gz", "split": "test", "label": "x/lab.nii.gz"},
        {"subject": "x", "modality": "T2W", "path": "x/t2.nii.gz"},
        {"subject": "y", "modality": "t1", "path": "y/T1.mat", "key": "data_fs", "channel": 2},
    ]
    (tmp_path / "list.json").write_text(json.dumps(rows))
    (tmp_path / "obj.json").write_text(json.dumps({"subjects": rows}))
    for name in ("list.json", "obj.json"):
        x, y = discover(manifest=tmp_path / name)
        assert (x.id, mods(x), x.split) == ("x", ["t1", "t2"], "test")
        assert x.label == FileRef(str(tmp_path / "x" / "lab.nii.gz"))
        assert y.files["t1"] == FileRef(str(tmp_path / "y" / "T1.mat"), key="data_fs", channel=2)
    # nested form: one object per subject with a files mapping
    nested = [{"subject": "x", "split": "train", "files": {"t1": "x/t1.nii.gz", "t2": {"path": "x/t2.nii.gz"}}}]
    (tmp_path / "nested.json").write_text(json.dumps(nested))
    [x] = discover(manifest=tmp_path / "nested.json")
    assert mods(x) == ["t1", "t2"] and x.split == "train"
    # rows in memory, relative to DATA
    [x, y] = discover(tmp_path, manifest=rows)
    assert x.files["t2"].path == str(tmp_path / "x" / "t2.nii.gz")


def test_manifest_errors(tmp_path):
    touch(tmp_path, "s1/t1.nii.gz", "s1/t2.nii.gz")
    with pytest.raises(SynthmedError, match="manifest not found"):
        discover(manifest=tmp_path / "none.csv")
    bad = write_csv(tmp_path / "nocol.csv", ["subject", "path"], [["s1", "s1/t1.nii.gz"]])
    with pytest.raises(SynthmedError, match=r"line 2 has no column modality"):
        discover(manifest=bad)
    empty = write_csv(
        tmp_path / "empty.csv",
        ["subject", "modality", "path"],
        [["s1", "t1", "s1/t1.nii.gz"], ["s1", "", "s1/t2.nii.gz"]],
    )
    with pytest.raises(SynthmedError, match=r"line 3 has an empty modality"):
        discover(manifest=empty)
    missing = write_csv(
        tmp_path / "missing.csv",
        ["subject", "modality", "path"],
        [["s1", "t1", "s1/t1.nii.gz"], ["s1", "t2", "s1/t2.nii.gz"], ["s2", "t1", "s2/t1.nii.gz"]],
    )
    with pytest.raises(SynthmedError, match=r"missing.csv line 4: path file 's2/t1.nii.gz' not found") as info:
        discover(manifest=missing)
    assert "\n" not in str(info.value)
    noglob = write_csv(tmp_path / "noglob.csv", ["subject", "modality", "path"], [["s1", "t1", "s1/*.png"]])
    with pytest.raises(SynthmedError, match=r"line 2: path glob 's1/\*.png' matches no file"):
        discover(manifest=noglob)
    dup = write_csv(
        tmp_path / "dup.csv",
        ["subject", "modality", "path"],
        [["s1", "t1", "s1/t1.nii.gz"], ["s1", "T1n", "s1/t2.nii.gz"]],
    )
    with pytest.raises(SynthmedError, match=r"line 3: subject s1 already has t1 at line 2"):
        discover(manifest=dup)
    split = write_csv(
        tmp_path / "split.csv", ["subject", "modality", "path", "split"], [["s1", "t1", "s1/t1.nii.gz", "holdout"]]
    )
    with pytest.raises(SynthmedError, match="not train, val or test"):
        discover(manifest=split)
    clash = write_csv(
        tmp_path / "clash.csv",
        ["subject", "modality", "path", "split"],
        [["s1", "t1", "s1/t1.nii.gz", "train"], ["s1", "t2", "s1/t2.nii.gz", "test"]],
    )
    with pytest.raises(SynthmedError, match="one split"):
        discover(manifest=clash)
    channel = write_csv(
        tmp_path / "channel.csv", ["subject", "modality", "path", "channel"], [["s1", "t1", "s1/t1.nii.gz", "red"]]
    )
    with pytest.raises(SynthmedError, match="channel 'red'"):
        discover(manifest=channel)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(SynthmedError, match="not valid JSON"):
        discover(manifest=tmp_path / "bad.json")
    (tmp_path / "m.xlsx").write_bytes(b"")
    with pytest.raises(SynthmedError, match="unknown manifest type"):
        discover(manifest=tmp_path / "m.xlsx")
    (tmp_path / "j.json").write_text(json.dumps([{"subject": "s1", "path": "s1/t1.nii.gz"}]))
    with pytest.raises(SynthmedError, match="entry 1 has no column modality"):
        discover(manifest=tmp_path / "j.json")


def test_write_manifest_roundtrip(tmp_path):
    touch(tmp_path, "s1/a.mat", "s1/b.nii.gz")
    rows = [
        {"subject": "s1", "modality": "t1", "path": "s1/a.mat", "key": "data_fs"},
        {"subject": "s1", "modality": "t2", "path": "s1/b.nii.gz", "channel": 1, "split": "train"},
    ]
    for name in ("m.csv", "m.json", "m.tsv"):
        path = write_manifest(rows, tmp_path / name)
        [subject] = discover(manifest=path)
        assert subject.files["t1"].key == "data_fs" and subject.files["t2"].channel == 1 and subject.split == "train"
    header = (tmp_path / "m.csv").read_text().splitlines()[0]
    assert header == "subject,modality,path,split,key,channel"
    with pytest.raises(SynthmedError, match="unknown manifest type"):
        write_manifest(rows, tmp_path / "m.txt")


def test_lgg_and_ixi_manifests_synthetic(tmp_path):
    touch(
        tmp_path,
        "lgg/TCGA_AA_0001_20000101/TCGA_AA_0001_20000101_1.tif",
        "lgg/TCGA_AA_0001_20000101/TCGA_AA_0001_20000101_12.tif",
        "lgg/TCGA_AA_0001_20000101/TCGA_AA_0001_20000101_1_mask.tif",
        "lgg/TCGA_AA_0001_20000101/TCGA_AA_0001_20000101_12_mask.tif",
        "lgg/other/readme.txt",
        "ixi/T1.mat",
        "ixi/T2.mat",
    )
    rows = lgg_manifest(tmp_path / "lgg")
    assert [(r["modality"], r.get("channel")) for r in rows] == [("t1", 0), ("flair", 1), ("t1c", 2), ("lesion", None)]
    [subject] = discover(tmp_path / "lgg", manifest=write_manifest(rows, tmp_path / "lgg.csv"))
    assert len(glob(subject.files["t1"].path)) == 2 and len(glob(subject.files["lesion"].path)) == 2
    assert patient_key(subject.id) == "TCGA-AA-0001"
    # the layout is recognised without a manifest
    assert discover(tmp_path / "lgg") == [subject]
    [ixi] = discover(manifest=write_manifest(ixi_manifest(tmp_path / "ixi", absolute=True), tmp_path / "ixi.json"))
    assert ixi.id == "ixi" and ixi.files["t2"] == FileRef(str(tmp_path / "ixi" / "T2.mat"), key="data_fs")
    with pytest.raises(SynthmedError, match="not found"):
        ixi_manifest(tmp_path / "lgg")


# ----------------------------------------------------------------------------- require_modalities


def test_require_modalities_message():
    subjects = [
        Subject("sub-001", {"t1": FileRef("/a"), "t2": FileRef("/b")}),
        Subject("sub-004", {"t1": FileRef("/c"), "pd": FileRef("/d")}),
        Subject("sub-005", {"t1": FileRef("/e")}),
    ]
    require_modalities(subjects, ["t1"])
    require_modalities(subjects, ["T1n"])
    with pytest.raises(SynthmedError) as info:
        require_modalities(subjects, ["t1", "T2"])
    message = str(info.value)
    assert message.startswith("subject sub-004 has no T2 (found: pd, t1)")
    assert "2 of 3" in message and "--alias" in message and "\n" not in message


# ----------------------------------------------------------------------------- real data


@needs_real
def test_real_brats_folder_layout():
    subjects = {s.id: s for s in discover(REAL / "brats")}
    assert mods(subjects["BraTS-GLI-00001-000"]) == ["flair", "t1", "t1c", "t2"]
    assert subjects["BraTS-GLI-00001-000"].files["flair"].path.endswith("BraTS-GLI-00001-000-t2f.nii.gz")
    assert mods(subjects["AURORA-MET-example"]) == ["flair", "t1", "t1c", "t2"]
    for subject in subjects.values():
        assert all(os.path.isfile(ref.path) for ref in subject.files.values())


@needs_real
def test_real_brats_pattern():
    [subject] = discover(REAL / "brats" / "BraTS-GLI-00001-000", pattern="{subject}-{modality}.nii.gz")
    assert subject.id == "BraTS-GLI-00001-000" and mods(subject) == ["flair", "t1", "t1c", "t2"]


@needs_real
def test_real_tcga_pattern():
    [subject] = discover(REAL / "brats", pattern="{subject}_{modality}_bet.nii.gz")
    assert subject.id == "TCGA-DU-7294" and mods(subject) == ["flair", "t1", "t1c", "t2"]
    [subject] = discover(
        REAL / "brats" / "TCGA-DU-7294", pattern="{subject}_{modality}.nii.gz", aliases="fla_bet=flair"
    )
    assert subject.id == "TCGA-DU-7294" and "seg_fused_mav" in subject.files and "flair" in subject.files
    assert patient_key(subject.id) == "TCGA-DU-7294"


@needs_real
def test_real_ms_pattern():
    [subject] = discover(REAL / "ms", pattern="{subject}/{modality}_N4_*.nii.gz")
    assert subject.id == "patient07"
    assert mods(subject) == ["flair", "gold_standard", "t1", "t1c", "t2"]
    assert os.path.basename(subject.files["t1c"].path).startswith("T1POST_")
    require_modalities([subject], ["T1", "T1POST", "FLAIR"])


@needs_real
def test_real_ixi_manifest(tmp_path):
    rows = ixi_manifest(REAL / "ixi_slices")
    assert len(rows) == 2
    [subject] = discover(REAL / "ixi_slices", manifest=write_manifest(rows, tmp_path / "ixi.csv"))
    assert subject.id == "ixi" and mods(subject) == ["t1", "t2"]
    assert subject.files["t1"] == FileRef(str(REAL / "ixi_slices" / "T1.mat"), key="data_fs")


@needs_real
def test_real_lgg_manifest(tmp_path):
    rows = lgg_manifest(REAL / "lgg")
    subjects = discover(REAL / "lgg", manifest=write_manifest(rows, tmp_path / "lgg.json"))
    assert len(subjects) == 10
    for subject in subjects:
        assert mods(subject) == ["flair", "lesion", "t1", "t1c"]
        assert [subject.files[m].channel for m in ("t1", "flair", "t1c", "lesion")] == [0, 1, 2, None]
        images = glob(subject.files["t1"].path)
        masks = glob(subject.files["lesion"].path)
        assert images and len(images) == len(masks)
        assert not any(fnmatch(p, "*_mask.tif") for p in images)
        assert {p[: -len(".tif")] + "_mask.tif" for p in images} == set(masks)
    assert "TCGA-DU-7294" in {patient_key(s.id) for s in subjects}
    assert discover(REAL / "lgg") == subjects  # recognised without a manifest
