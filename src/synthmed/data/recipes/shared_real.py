"""The real scans of the benchmark's ``real`` suite, laid out as ``../shared/data/real``: the BraTS-layout and MS
brains that hold all four MR contrasts.

Subject -> (folder, files by modality, lesion label file or None, split). The two scans with a lesion label are the
test subjects, so every test subject is also scored inside its lesion. IXI's slices (one subject, T1/T2 only)
cannot be split by subject and are not part of it.
"""

from __future__ import annotations

from pathlib import Path

from synthmed.errors import SynthmedError
from synthmed.files import write_text_atomic

REAL_SUBJECTS: dict[str, tuple[str, dict[str, str], str | None, str]] = {
    "BraTS-GLI-00001-000": (
        "brats/BraTS-GLI-00001-000",
        {
            "t1": "BraTS-GLI-00001-000-t1n.nii.gz",
            "t1c": "BraTS-GLI-00001-000-t1c.nii.gz",
            "t2": "BraTS-GLI-00001-000-t2w.nii.gz",
            "flair": "BraTS-GLI-00001-000-t2f.nii.gz",
        },
        None,
        "train",
    ),
    "AURORA-MET-example": (
        "brats/AURORA-MET-example",
        {"t1": "t1.nii.gz", "t1c": "t1c.nii.gz", "t2": "t2.nii.gz", "flair": "flair.nii.gz"},
        None,
        "train",
    ),
    "TCGA-DU-7294": (
        "brats/TCGA-DU-7294",
        {
            "t1": "TCGA-DU-7294_t1_bet.nii.gz",
            "t1c": "TCGA-DU-7294_t1c_bet.nii.gz",
            "t2": "TCGA-DU-7294_t2_bet.nii.gz",
            "flair": "TCGA-DU-7294_fla_bet.nii.gz",
        },
        "TCGA-DU-7294_seg_fused_mav.nii.gz",
        "test",
    ),
    "patient07": (
        "ms/patient07",
        {
            modality: f"{name}_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz"
            for modality, name in (("t1", "T1"), ("t1c", "T1POST"), ("t2", "T2"), ("flair", "FLAIR"))
        },
        "GOLD_STANDARD_N4_noneck_reduced_winsor_regtoFLAIR_regtoMNI.nii.gz",
        "test",
    ),
}


def real_suite_manifest(root: str | Path, out: str | Path) -> Path:
    """Write the manifest (CSV: subject, modality, path, split, label) of :data:`REAL_SUBJECTS` under ``root``;
    refuses a folder that lacks any of them."""
    root = Path(root)
    if not root.is_dir():
        raise SynthmedError(
            f"--suite real: {root} is not a folder; pass --data with the folder that holds brats/ "
            "and ms/ (as ../shared/data/real)"
        )
    lines, missing = ["subject,modality,path,split,label"], []
    for subject, (folder, files, label, split) in REAL_SUBJECTS.items():
        label_path = root / folder / label if label else None
        for modality, name in files.items():
            path = root / folder / name
            missing += [str(p) for p in (path, label_path) if p is not None and not p.is_file()]
            lines.append(f"{subject},{modality},{path.resolve()},{split},{label_path.resolve() if label_path else ''}")
    if missing:
        raise SynthmedError(
            f"--suite real: {len(set(missing))} file(s) missing under {root}, e.g. {sorted(missing)[0]}"
        )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, "\n".join(lines) + "\n")
    return out


# The labelled FLAIR scans, for lesion detection by models of healthy anatomy: subject -> (folder, FLAIR, label,
# split). BraTS 2013's expert tumour labels (0-4) and the MS expert lesion mask; TCGA-DU-7294's label is fused from
# five algorithms, so it only trains (it decides which of its slices count as healthy). The MS scan, from another
# site and with small lesions, tests how far the model carries.
LESION_FLAIR: dict[str, tuple[str, str, str, str]] = {
    **{
        f"brats_2013_pat000{case}_1": (
            f"brats2013/brats_2013_pat000{case}_1",
            "Flair_subtrMeanDivStd.nii.gz",
            "OTMultiClass.nii.gz",
            {5: "val", 6: "test"}.get(case, "train"),
        )
        for case in range(1, 7)
    },
    "TCGA-DU-7294": (
        "brats/TCGA-DU-7294",
        "TCGA-DU-7294_fla_bet.nii.gz",
        "TCGA-DU-7294_seg_fused_mav.nii.gz",
        "train",
    ),
    "patient07": (
        "ms/patient07",
        "FLAIR_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz",
        "GOLD_STANDARD_N4_noneck_reduced_winsor_regtoFLAIR_regtoMNI.nii.gz",
        "test",
    ),
}


def lesion_flair_layout(root: str | Path, work: str | Path) -> tuple[Path, Path]:
    """(manifest for ``prepare``, folder of subject folders) of :data:`LESION_FLAIR` under ``root``.

    The folder holds the validation and test subjects only, each as ``flair`` and ``lesion`` links to the
    original files, which is the layout ``synthmed anomaly`` and ``evaluate-anomaly`` read.
    """
    root, work = Path(root), Path(work)
    missing = [
        str(root / folder / name)
        for folder, flair, label, _ in LESION_FLAIR.values()
        for name in (flair, label)
        if not (root / folder / name).is_file()
    ]
    if missing:
        raise SynthmedError(f"{len(missing)} labelled FLAIR file(s) missing under {root}, e.g. {missing[0]}")
    lines = ["subject,modality,path,split,label"]
    scans = work / "scans"
    for subject, (folder, flair, label, split) in LESION_FLAIR.items():
        flair_path, label_path = (root / folder / flair).resolve(), (root / folder / label).resolve()
        lines.append(f"{subject},flair,{flair_path},{split},{label_path}")
        if split == "train":
            continue
        (scans / subject).mkdir(parents=True, exist_ok=True)
        for name, target in (("flair.nii.gz", flair_path), ("lesion.nii.gz", label_path)):
            link = scans / subject / name
            if not link.is_symlink():
                link.symlink_to(target)
    manifest = work / "manifest.csv"
    write_text_atomic(manifest, "\n".join(lines) + "\n")
    return manifest, scans
