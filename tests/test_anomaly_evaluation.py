"""``synthmed evaluate-anomaly``: voxel scores of anomaly maps, thresholds carried from validation to test
subjects in the input's normalised units, and the intensity baselines."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from synthmed.cli import main
from synthmed.data.io import read_volume
from synthmed.errors import SynthmedError
from synthmed.metrics.anomaly import auroc, best_dice
from synthmed.workflows.anomaly_evaluation import evaluate_anomaly


def _save(path: Path, data: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data.astype(np.float32), np.eye(4)), str(path))


def _subject(seed: int, scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scan, lesion, map): a head of tissue ~100 * scale with a bright ball lesion, and a map in the scan's units
    that is high in the lesion and noisy elsewhere."""
    rng = np.random.default_rng(seed)
    grid = np.indices((24, 24, 12)).astype(float)
    head = ((grid[0] - 12) ** 2 + (grid[1] - 12) ** 2) < 10**2
    lesion = ((grid[0] - 9 - seed) ** 2 + (grid[1] - 13) ** 2 + (grid[2] - 6) ** 2) < 3**2
    scan = np.where(head, 100 + 5 * rng.standard_normal(head.shape), 0) + 30 * lesion
    anomaly = np.where(head, 0.2 + 0.1 * rng.random(head.shape) + 0.25 * lesion, 0)
    # the map is written in the scan's units, like synthmed anomaly's maps
    return scan * scale, lesion, anomaly * scale


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    maps, data = tmp_path / "maps", tmp_path / "data"
    for seed, (name, scale) in enumerate((("a", 1.0), ("b", 1.0), ("c", 50.0))):
        scan, lesion, anomaly = _subject(seed, scale)
        _save(data / name / "flair.nii.gz", scan)
        _save(data / name / "lesion.nii.gz", lesion * 2)  # a multi-class label: every class is lesion
        _save(maps / name / "anomaly.nii.gz", anomaly)
    return maps, data


def test_scores_match_the_metrics_and_thresholds_carry_over_in_normalised_units(folders):
    maps, data = folders
    result = evaluate_anomaly(maps, data, input_name="flair", validation=["a"])
    assert result["test"] == ["b", "c"]
    scan, lesion, anomaly = _subject(2, 50.0)
    head = scan > 0
    c = result["per_subject"]["c"]["methods"]
    assert c["map"]["auroc"] == pytest.approx(auroc(anomaly[head], lesion[head]))
    assert c["map"]["best_dice"] == pytest.approx(best_dice(anomaly[head], lesion[head])[0])
    # subject c's scan and map are 50x subject a's: in the scans' own units a's threshold would mark nothing of c;
    # divided by half the scan's robust range, it finds c's lesion almost as well as c's own best threshold
    assert c["map"]["dice_at_validation_threshold"] > 0.8 * c["map"]["best_dice"] > 0.5
    # the bright lesion makes the bright baseline strong and the dark one useless
    assert c["bright"]["auroc"] > 0.9 > 0.1 > c["dark"]["auroc"]
    summary = result["summary"]["map"]
    assert summary["validation"]["auroc"] == pytest.approx(result["per_subject"]["a"]["methods"]["map"]["auroc"])
    assert summary["mean_test"]["auroc"] == pytest.approx(
        np.mean([result["per_subject"][s]["methods"]["map"]["auroc"] for s in ("b", "c")])
    )
    assert "dice_at_validation_threshold" not in result["per_subject"]["a"]["methods"]["map"]


def test_without_the_scans_maps_are_scored_as_written_inside_their_non_zero_voxels(folders):
    maps, data = folders
    result = evaluate_anomaly(maps / "b" / "anomaly.nii.gz", data / "b" / "lesion.nii.gz")
    _, lesion, anomaly = _subject(1, 1.0)
    assert list(result["summary"]) == ["map"]
    assert result["per_subject"]["anomaly"]["voxels"] == int((anomaly > 0).sum())
    assert result["summary"]["map"]["mean_test"]["auroc"] == pytest.approx(
        auroc(anomaly[anomaly > 0], lesion[anomaly > 0])
    )


def test_cli_writes_json_and_csv_refuses_to_replace_them_and_names_unknown_subjects(folders, tmp_path, capsys):
    maps, data = folders
    out = tmp_path / "scores" / "anomaly.json"
    arguments = ["evaluate-anomaly", str(maps), str(data), "--input-name", "flair", "--validation", "a"]
    assert main([*arguments, "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "bright" in printed and "Dice@val" in printed
    record = json.loads(out.read_text())
    assert record["validation"] == ["a"] and set(record["summary"]) == {"map", "bright", "dark"}
    rows = out.with_suffix(".csv").read_text().splitlines()
    assert rows[0].startswith("subject,split,method,auroc") and len(rows) == 1 + 3 * 3 + 2 * 3
    assert main([*arguments, "--out", str(out), "--quiet"]) != 0
    assert "exists" in capsys.readouterr().err
    with pytest.raises(SynthmedError, match="--validation z"):
        evaluate_anomaly(maps, data, validation=["z"])
    with pytest.raises(SynthmedError, match="every subject"):
        evaluate_anomaly(maps, data, validation=["a", "b", "c"])


@pytest.mark.real
def test_the_real_lesion_flair_layout_links_validation_and_test_scans_and_lists_every_subject(real_data, tmp_path):
    from synthmed.data.recipes.shared_real import LESION_FLAIR, lesion_flair_layout

    manifest, scans = lesion_flair_layout(real_data, tmp_path)
    rows = manifest.read_text().splitlines()
    assert rows[0] == "subject,modality,path,split,label" and len(rows) == 1 + len(LESION_FLAIR)
    held_out = sorted(s for s, (_, _, _, split) in LESION_FLAIR.items() if split != "train")
    assert sorted(p.name for p in scans.iterdir()) == held_out
    for subject in held_out:
        flair, lesion = scans / subject / "flair.nii.gz", scans / subject / "lesion.nii.gz"
        assert flair.is_symlink() and lesion.is_symlink()
        assert read_volume(flair).data.shape == read_volume(lesion).data.shape
        assert (read_volume(lesion).data > 0).any()
    assert lesion_flair_layout(real_data, tmp_path) == (manifest, scans)  # a second call keeps the links
