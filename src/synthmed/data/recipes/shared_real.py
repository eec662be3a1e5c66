"""The real scans of the benchmark's ``real`` suite, laid out as ``../shared/data/real``: the BraTS-layout and MS
brains that hold all four MR contrasts.

Subject -> (folder, files by modality, lesion label file or None, split). The two scans with a lesion label are the
test subjects, so every test subject is also scored inside its lesion. IXI's slices (one subject, T1/T2 only)
cannot be split by subject and are not part of it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

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


# The Harvard atlas CT/MR slice pairs (``ct_mri_2d/{CT,MRI}/<case><slice>.png``): the last three digits of a file
# name are the slice, the digits before them the case, so ``2004.png`` is case 2 and ``20005.png`` case 20 (reading
# the first two digits as the case would merge those two). The CT is an 8-bit display window, not Hounsfield units.
CT_MRI_FOLDER = "ct_mri_2d"
# Stored under this name, not ``ct``: a modality named ``ct`` gets the fixed [-1000, 2000] HU window in ``prepare``,
# which would squeeze the window's 0-255 into 8.5 % of the networks' range. Named otherwise, it is normalised per
# volume like an MR scan (background -> -1, the 99.5th foreground percentile -> 1), and outputs come back in 0-255.
CT_WINDOW_MODALITY = "ctwin"
# Window values at or below this are air: the window maps air to 0, and the scans' air holds no values above a few.
CT_AIR_LEVEL = 10
# Fixed split by case number: the highest two cases test, the third highest validates, the rest train (7/1/2 on the
# ten atlas cases). A rule rather than a seeded draw, so it reads the same wherever the benchmark is run.
CT_MRI_TEST_CASES = 2
CT_MRI_VALIDATION_CASES = 1


def ct_mri_cases(root: str | Path) -> dict[str, list[tuple[int, Path, Path]]]:
    """Case id -> [(slice number, MR png, CT png)] sorted by slice number, of ``root/ct_mri_2d`` (or ``root`` itself
    when it holds ``CT`` and ``MRI``); refuses a CT without its MR partner or the other way round."""
    root = Path(root)
    folder = root if (root / "CT").is_dir() else root / CT_MRI_FOLDER
    if not (folder / "CT").is_dir() or not (folder / "MRI").is_dir():
        raise SynthmedError(f"{folder}: no CT/ and MRI/ folders of paired slices (expected ct_mri_2d/{{CT,MRI}}/*.png)")
    ct_names = {p.name for p in (folder / "CT").glob("*.png")}
    mr_names = {p.name for p in (folder / "MRI").glob("*.png")}
    unpaired = sorted(ct_names ^ mr_names)
    if unpaired:
        raise SynthmedError(
            f"{folder}: {len(unpaired)} slice(s) without a partner in the other modality, e.g. {unpaired[0]}"
        )
    cases: dict[str, list[tuple[int, Path, Path]]] = {}
    for name in ct_names:
        stem = Path(name).stem
        if not stem.isdigit() or len(stem) < 4:
            raise SynthmedError(f"{folder}/CT/{name}: expected <case><3-digit slice>.png")
        case = f"case{int(stem[:-3]):02d}"
        cases.setdefault(case, []).append((int(stem[-3:]), folder / "MRI" / name, folder / "CT" / name))
    if not cases:
        raise SynthmedError(f"{folder}: no PNG slices in CT/ and MRI/")
    return {case: sorted(cases[case]) for case in sorted(cases, key=lambda c: int(c[4:]))}


def ct_mri_split(cases: list[str]) -> dict[str, str]:
    """Case -> train/val/test by :data:`CT_MRI_TEST_CASES` and :data:`CT_MRI_VALIDATION_CASES` (highest numbers
    held out); needs at least one training case besides them."""
    ordered = sorted(cases, key=lambda c: int(c[4:]))
    held = CT_MRI_TEST_CASES + CT_MRI_VALIDATION_CASES
    if len(ordered) <= held:
        raise SynthmedError(f"{len(ordered)} CT/MR case(s): need more than {held} to split train/val/test by case")
    split = {case: "train" for case in ordered[:-held]}
    split.update({case: "val" for case in ordered[-held:-CT_MRI_TEST_CASES]})
    split.update({case: "test" for case in ordered[-CT_MRI_TEST_CASES:]})
    return split


def body_mask(ct: np.ndarray) -> np.ndarray:
    """Body mask of one CT window slice stack (X, Y, Z): above :data:`CT_AIR_LEVEL`, holes filled (sinuses, airways
    inside the head are body), the largest connected component of each slice (drops the table, tubing, noise).

    Per slice, because the atlas's slice numbers have gaps: neighbouring slices need not touch in 3D.
    """
    from scipy import ndimage

    mask = np.zeros(ct.shape, dtype=bool)
    for z in range(ct.shape[2]):
        above = ct[..., z] > CT_AIR_LEVEL
        labels, count = ndimage.label(above)
        if count == 0:
            continue
        sizes = ndimage.sum_labels(above, labels, index=np.arange(1, count + 1))
        mask[..., z] = ndimage.binary_fill_holes(labels == 1 + int(np.argmax(sizes)))
    return mask


def ct_mri_layout(root: str | Path, work: str | Path) -> tuple[Path, Path, Path, dict[str, str]]:
    """(manifest, folder of subject folders, folder of body masks, split) of the CT/MR slice pairs under ``root``.

    Each case's slices, sorted by number, become one volume per modality: ``cases/<case>/mr.nii.gz`` and
    ``cases/<case>/ctwin.nii.gz`` (the CT window; see :data:`CT_WINDOW_MODALITY`), and its body mask
    ``masks/<case>.nii.gz`` (uint8 0/1; see :func:`body_mask`), the layout ``prepare``, ``translate`` and
    ``evaluate --mask`` read. The manifest (subject, modality, path, split, mask) pins the split of
    :func:`ct_mri_split`. The atlas gives no voxel size: the volumes say 1 mm (a nominal size, the same for all
    cases, so native-resolution preparation resamples nothing). Files already written are kept, so preparing again
    finds the same inputs.
    """
    import nibabel as nib
    from PIL import Image

    work = Path(work)
    cases = ct_mri_cases(root)
    split = ct_mri_split(list(cases))
    scans, masks = work / "cases", work / "masks"
    masks.mkdir(parents=True, exist_ok=True)
    lines = ["subject,modality,path,split,mask"]

    def save(path: Path, data: np.ndarray) -> None:
        if path.is_file():
            return
        partial = path.with_name(f".partial-{path.name}")
        nib.save(nib.Nifti1Image(data, np.eye(4)), partial)
        partial.replace(path)

    for case, slices in cases.items():
        (scans / case).mkdir(parents=True, exist_ok=True)
        paths = {"mr": scans / case / "mr.nii.gz", CT_WINDOW_MODALITY: scans / case / f"{CT_WINDOW_MODALITY}.nii.gz"}
        mask_path = masks / f"{case}.nii.gz"
        if not all(p.is_file() for p in (*paths.values(), mask_path)):
            stacks = {}
            for modality, column in (("mr", 1), (CT_WINDOW_MODALITY, 2)):
                images = [np.asarray(Image.open(item[column]).convert("L")) for item in slices]
                if len({image.shape for image in images}) != 1:
                    raise SynthmedError(f"{case} {modality}: slices of different sizes; cannot stack them")
                stacks[modality] = np.stack(images, axis=-1).astype(np.uint8)
            if stacks["mr"].shape != stacks[CT_WINDOW_MODALITY].shape:
                raise SynthmedError(f"{case}: MR and CT slices differ in size; they must be co-registered pairs")
            for modality, path in paths.items():
                save(path, stacks[modality])
            save(mask_path, body_mask(stacks[CT_WINDOW_MODALITY]).astype(np.uint8))
        for modality, path in paths.items():
            lines.append(f"{case},{modality},{path.resolve()},{split[case]},{mask_path.resolve()}")
    manifest = work / "manifest.csv"
    write_text_atomic(manifest, "\n".join(lines) + "\n")
    return manifest, scans, masks, split
