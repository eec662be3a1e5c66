"""Bad input: one line naming the file and the fix, exit status 2, no traceback, nothing half-written."""

import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from synthmed.cli import main


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    err = capsys.readouterr().err.strip()
    return code, err


def assert_clean_error(code, err, *needles):
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("synthmed: error:"), err
    assert "Traceback" not in err
    for needle in needles:
        assert str(needle) in err, (needle, err)


@pytest.fixture
def dataset(phantoms, tmp_path) -> Path:
    """A writable copy of three phantom subjects (T1, T2 only)."""
    root = tmp_path / "data"
    for subject in sorted(p for p in phantoms.iterdir() if p.is_dir())[:3]:
        (root / subject.name).mkdir(parents=True)
        for name in ("T1.nii.gz", "T2.nii.gz"):
            shutil.copy(subject / name, root / subject.name / name)
    return root


def prepare_args(data, tmp_path):
    return ["prepare", data, "--source", "T1", "--target", "T2", "--out", tmp_path / "prep", "--size", "32", "--quiet"]


def replace_image(path: Path, data: np.ndarray, affine=None):
    like = nib.load(path)
    nib.save(nib.Nifti1Image(data.astype(np.float32), like.affine if affine is None else affine), path)


def test_missing_path(tmp_path, capsys):
    code, err = run_cli(prepare_args(tmp_path / "nowhere", tmp_path), capsys)
    assert_clean_error(code, err, "nowhere")
    assert not (tmp_path / "prep").exists()


def test_truncated_nifti(dataset, tmp_path, capsys):
    victim = dataset / "sub-002" / "T2.nii.gz"
    victim.write_bytes(victim.read_bytes()[:300])
    code, err = run_cli(prepare_args(dataset, tmp_path), capsys)
    assert_clean_error(code, err, "T2.nii.gz")
    assert not (tmp_path / "prep").exists()
    assert not list(tmp_path.glob(".prep.tmp*"))


def test_text_file_named_nii(dataset, tmp_path, capsys):
    fake = dataset / "sub-001" / "T1.nii.gz"
    fake.unlink()
    fake = dataset / "sub-001" / "T1.nii"
    fake.write_text("this is not an image\n")
    code, err = run_cli(prepare_args(dataset, tmp_path), capsys)
    assert_clean_error(code, err, "T1.nii")


def test_4d_volume_asks_for_a_channel(dataset, tmp_path, capsys):
    path = dataset / "sub-001" / "T1.nii.gz"
    data = nib.load(path).get_fdata()
    replace_image(path, np.stack([data, data], axis=-1))
    code, err = run_cli(prepare_args(dataset, tmp_path), capsys)
    assert_clean_error(code, err, "T1.nii.gz", "4D")


def test_nan_voxels(dataset, tmp_path, capsys):
    path = dataset / "sub-003" / "T2.nii.gz" if (dataset / "sub-003").exists() else next(dataset.glob("*/T2.nii.gz"))
    data = nib.load(path).get_fdata()
    data[3, 3, 3] = np.nan
    replace_image(path, data)
    code, err = run_cli(prepare_args(dataset, tmp_path), capsys)
    assert_clean_error(code, err, path.name)
    assert "NaN" in err or "nan" in err.lower()


def test_constant_image(dataset, tmp_path, capsys):
    path = dataset / "sub-001" / "T1.nii.gz"
    replace_image(path, np.full(nib.load(path).shape, 5.0))
    code, err = run_cli(prepare_args(dataset, tmp_path), capsys)
    assert_clean_error(code, err, "T1.nii.gz", "constant")


def test_modalities_with_different_shapes(dataset, tmp_path, capsys):
    path = dataset / "sub-001" / "T2.nii.gz"
    replace_image(path, nib.load(path).get_fdata()[:, :, :30])
    code, err = run_cli(prepare_args(dataset, tmp_path), capsys)
    assert_clean_error(code, err, "sub-001", "not co-registered", "--resample")


def test_modalities_with_different_affines_and_resample(dataset, tmp_path, capsys):
    path = dataset / "sub-001" / "T2.nii.gz"
    image = nib.load(path)
    shifted = image.affine.copy()
    shifted[0, 3] += 8.0
    replace_image(path, image.get_fdata(), affine=shifted)
    code, err = run_cli(prepare_args(dataset, tmp_path), capsys)
    assert_clean_error(code, err, "sub-001", "affine")
    assert main([str(a) for a in prepare_args(dataset, tmp_path) + ["--resample"]]) == 0


def test_subject_missing_a_modality(dataset, tmp_path, capsys):
    (dataset / "sub-002" / "T2.nii.gz").unlink()
    code, err = run_cli(prepare_args(dataset, tmp_path), capsys)
    assert_clean_error(code, err, "sub-002", "t2")


def test_unknown_modality(dataset, tmp_path, capsys):
    code, err = run_cli(["prepare", dataset, "--source", "T1", "--target", "PET", "--out", tmp_path / "p"], capsys)
    assert_clean_error(code, err, "pet")


def test_unknown_model(prepared, tmp_path, capsys):
    code, err = run_cli(["train", prepared, "--model", "pix3pix", "--out", tmp_path / "run"], capsys)
    assert_clean_error(code, err, "pix3pix", "pix2pix")
    assert not (tmp_path / "run").exists()


def test_empty_mask(phantoms, tmp_path, capsys):
    subject = next(p for p in phantoms.iterdir() if p.is_dir())
    mask = tmp_path / "empty.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(nib.load(subject / "T2.nii.gz").shape, np.uint8), np.eye(4)), mask)
    code, err = run_cli(["evaluate", subject / "T2.nii.gz", subject / "T2.nii.gz", "--mask", mask], capsys)
    assert_clean_error(code, err, "empty")


def test_empty_foreground_in_translate(trained_run, tmp_path, capsys):
    blank = tmp_path / "blank.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((32, 32, 32), np.float32), np.eye(4)), blank)
    code, err = run_cli(["translate", trained_run, blank, tmp_path / "out.nii.gz"], capsys)
    assert_clean_error(code, err, "blank.nii.gz")
    assert not (tmp_path / "out.nii.gz").exists()


def test_one_way_model_refuses_the_reverse_direction(trained_run, phantoms, tmp_path, capsys):
    source = next(phantoms.glob("*/T2.nii.gz"))
    code, err = run_cli(["translate", trained_run, source, tmp_path / "t1.nii.gz", "--direction", "B2A"], capsys)
    assert_clean_error(code, err, "pix2pix translates t1 -> t2 only")
    assert not (tmp_path / "t1.nii.gz").exists()


def test_output_exists(trained_run, phantoms, tmp_path, capsys):
    source = next(phantoms.glob("*/T1.nii.gz"))
    out = tmp_path / "exists.nii.gz"
    out.write_bytes(b"keep me")
    code, err = run_cli(["translate", trained_run, source, out], capsys)
    assert_clean_error(code, err, "exists.nii.gz", "--overwrite")
    assert out.read_bytes() == b"keep me"


def test_unwritable_output_folder(trained_run, phantoms, tmp_path, capsys):
    source = next(phantoms.glob("*/T1.nii.gz"))
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    code, err = run_cli(["translate", trained_run, source, blocker / "sub" / "out.nii.gz"], capsys)
    assert_clean_error(code, err, "file")


def _run_copy(trained_run, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    for name in ("best.pt",):
        (run / "checkpoints" / name).unlink(missing_ok=True)
    return run


def test_truncated_checkpoint(trained_run, phantoms, tmp_path, capsys):
    run = _run_copy(trained_run, tmp_path)
    last = run / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    code, err = run_cli(["translate", run, next(phantoms.glob("*/T1.nii.gz")), tmp_path / "o.nii.gz"], capsys)
    assert_clean_error(code, err, "last.pt")


def test_foreign_checkpoint(trained_run, phantoms, tmp_path, capsys):
    run = _run_copy(trained_run, tmp_path)
    torch.save({"state_dict": {"w": torch.zeros(3)}}, run / "checkpoints" / "last.pt")
    code, err = run_cli(["translate", run, next(phantoms.glob("*/T1.nii.gz")), tmp_path / "o.nii.gz"], capsys)
    assert_clean_error(code, err, "last.pt", "not a synthmed checkpoint")


class Exploit:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_checkpoint_with_code_is_not_executed(trained_run, phantoms, tmp_path, capsys):
    run = _run_copy(trained_run, tmp_path)
    marker = tmp_path / "executed"
    torch.save(
        {"format": "synthmed-checkpoint", "version": 1, "model": "pix2pix", "payload": Exploit(marker)},
        run / "checkpoints" / "last.pt",
    )
    code, err = run_cli(["translate", run, next(phantoms.glob("*/T1.nii.gz")), tmp_path / "o.nii.gz"], capsys)
    assert_clean_error(code, err, "last.pt")
    assert not marker.exists()


def test_console_script_prints_no_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "synthmed", "translate", str(tmp_path / "norun"), "in.nii.gz", "out.nii.gz"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "norun" in result.stderr


@pytest.mark.parametrize(
    "setting", ["generator_channels=abc", "norm=foo", "lr=-1", "betas=0.5", "generator_channels=0"]
)
def test_bad_settings(prepared, tmp_path, capsys, setting):
    code, err = run_cli(
        ["train", prepared, "--model", "pix2pix", "--out", tmp_path / "run", "--set", setting, "--quiet"], capsys
    )
    assert_clean_error(code, err, setting.split("=")[0] if "channels=0" not in setting else "generator_channels")
    assert not (tmp_path / "run").exists()


def test_size_must_suit_the_networks(dataset, tmp_path, capsys):
    code, err = run_cli(
        ["prepare", dataset, "--source", "T1", "--target", "T2", "--out", tmp_path / "p", "--size", "40"], capsys
    )
    assert_clean_error(code, err, "--size 40", "multiple of 16")


def test_missing_cuda_device(prepared, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, err = run_cli(
        ["train", prepared, "--model", "pix2pix", "--out", tmp_path / "run", "--device", "cuda"], capsys
    )
    assert_clean_error(code, err, "--device cuda")
    assert not (tmp_path / "run").exists()


def test_a_failing_volume_in_a_folder_leaves_no_outputs(trained_run, phantoms, tmp_path, capsys):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i, subject in enumerate(sorted(p for p in phantoms.iterdir() if p.is_dir())[:2]):
        shutil.copy(subject / "T1.nii.gz", flat / f"case{i}.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((32, 32, 32), np.float32), np.eye(4)), flat / "case9.nii.gz")
    code, err = run_cli(["translate", trained_run, flat, tmp_path / "out", "--quiet"], capsys)
    assert_clean_error(code, err, "case9.nii.gz")
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]


def test_set_takes_json_or_plain_comma_lists():
    from synthmed.cli import _parse_overrides

    parsed = _parse_overrides(
        ["channels=16,32", "attention_levels=false,true", "betas=[0.5, 0.9]", "sampler=ddim", "lr=0.5", "name=a,b"]
    )
    assert parsed == {
        "channels": [16, 32],
        "attention_levels": [False, True],
        "betas": [0.5, 0.9],
        "sampler": "ddim",
        "lr": 0.5,
        "name": ["a", "b"],
    }
