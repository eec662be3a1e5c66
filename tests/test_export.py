"""``synthmed export``: TorchScript, ONNX and MONAI bundles of trained runs, each run against the model itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from synthmed.cli import main
from synthmed.errors import SynthmedError
from synthmed.models.registry import build_model
from synthmed.nn.patches import padded_to_multiple
from synthmed.workflows.export import TOLERANCE, draw_noise, export, exportable
from synthmed.workflows.train import train
from synthmed.workflows.translate import load_run

SRC = Path(__file__).resolve().parents[1] / "src"


def _test_scan(run: Path, phantoms: Path) -> Path:
    subject = json.loads((run / "plan.json").read_text())["split"]["test"][0]
    return phantoms / subject / "T1.nii.gz"


@pytest.fixture(scope="module")
def ddpm_run(prepared, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddpm-export") / "run"
    train(
        prepared,
        model="ddpm",
        preset="tiny",
        out=out,
        steps=2,
        batch_size=2,
        progress=False,
        overrides={"validation_steps": 2, "sampling_steps": 4},
        val_every=100,
        checkpoint_every=100,
        sample_every=100,
        log_every=1,
    )
    return out


def test_pix2pix_torchscript_reproduces_the_model_and_translate(trained_run, phantoms, tmp_path, capsys):
    out = tmp_path / "ts"
    scan = _test_scan(trained_run, phantoms)
    assert main(["export", str(trained_run), str(out), "--check-volume", str(scan), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "max difference" in printed and "volume" in printed
    record = json.loads((out / "export.json").read_text())
    assert record["max_difference"] <= TOLERANCE and record["format"] == "torchscript"
    assert sorted(record["files"]) == ["export.json", "plan.json", "translator.ts"]

    # any slice size (padded inside the module), another batch size
    module = torch.jit.load(str(out / "translator.ts"))
    model = load_run(trained_run, device="cpu").model
    source = torch.rand(3, 1, 40, 52) * 2 - 1
    expected = padded_to_multiple(model.translate, source, model.size_multiple)
    with torch.no_grad():
        assert (module(source) - expected).abs().max() <= TOLERANCE


def test_pix2pix_onnx_runs_in_onnxruntime(trained_run, tmp_path, capsys):
    onnxruntime = pytest.importorskip("onnxruntime")
    out = tmp_path / "onnx"
    assert main(["export", str(trained_run), str(out), "--format", "onnx", "--quiet"]) == 0
    assert "max difference" in capsys.readouterr().out
    record = json.loads((out / "export.json").read_text())
    assert record["onnx"]["shapes"] == "dynamic" and record["max_difference"] <= TOLERANCE
    session = onnxruntime.InferenceSession(str(out / "translator.onnx"), providers=["CPUExecutionProvider"])
    model = load_run(trained_run, device="cpu").model
    source = torch.rand(2, 1, 64, 96) * 2 - 1  # sides: multiples of the network's (the graph does not pad)
    ours = session.run(None, {"source": source.numpy()})[0]
    np.testing.assert_allclose(ours, model.translate(source).numpy(), atol=TOLERANCE)


@pytest.mark.slow
def test_ddpm_sampler_loop_and_onnx_denoiser(ddpm_run, tmp_path):
    out = tmp_path / "ts"
    record = export(ddpm_run, out)
    assert sorted(record["files"]) == ["denoiser.ts", "export.json", "plan.json", "sampler.ts"]
    assert record["sampling"]["sampler"] == "ddim" and record["sampling"]["steps"] == 4
    sampler = torch.jit.load(str(out / "sampler.ts"))
    loaded = load_run(ddpm_run, device="cpu")
    source = torch.rand(2, 1, 64, 64) * 2 - 1
    noise = draw_noise(record, 2, (64, 64), torch.Generator().manual_seed(3), "cpu")
    expected = loaded.model.translate(source, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (sampler(source, *noise) - expected).abs().max() <= TOLERANCE

    onnxruntime = pytest.importorskip("onnxruntime")
    record = export(ddpm_run, tmp_path / "onnx", format="onnx")
    assert record["files"] == ["denoiser.onnx", "export.json", "plan.json"]
    session = onnxruntime.InferenceSession(str(tmp_path / "onnx" / "denoiser.onnx"), providers=["CPUExecutionProvider"])
    x, t = torch.randn(3, 2, 32, 32), torch.tensor([999.0, 500.0, 3.0])
    with torch.no_grad():
        expected = loaded.model.network(x, t).numpy()
    np.testing.assert_allclose(session.run(None, {"x": x.numpy(), "t": t.numpy()})[0], expected, atol=TOLERANCE)


@pytest.mark.slow
def test_syndiff_sampler_loop(prepared, tmp_path):
    run = tmp_path / "syndiff"
    train(prepared, model="syndiff", preset="tiny", out=run, steps=1, batch_size=2, progress=False, val_every=100)
    record = export(run, tmp_path / "ts")
    sampler = torch.jit.load(str(tmp_path / "ts" / "sampler.ts"))
    model = load_run(run, device="cpu").model
    source = torch.rand(2, 1, 32, 32) * 2 - 1
    noise, latents = draw_noise(record, 2, (32, 32), torch.Generator().manual_seed(1), "cpu")
    assert noise.shape == (5, 2, 1, 32, 32) and latents.shape == (4, 2, model.config.nz)
    expected = model.translate(source, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (sampler(source, noise, latents) - expected).abs().max() <= TOLERANCE


def test_bundle_runs_with_monai_and_equals_translate(trained_run, phantoms, tmp_path):
    pytest.importorskip("fire")  # monai.bundle's command line
    bundle = tmp_path / "bundle"
    assert main(["export", str(trained_run), str(bundle), "--format", "bundle", "--quiet"]) == 0
    for name in ("configs/metadata.json", "configs/inference.json", "models/model.pt", "models/model.ts"):
        assert (bundle / name).is_file(), name
    assert (bundle / "docs" / "README.md").read_text().count("monai.bundle run") >= 1
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert set(metadata["network_data_format"]) == {"inputs", "outputs"}
    assert {"version", "authors", "description", "intended_use"} <= set(metadata)

    scan = _test_scan(trained_run, phantoms)
    expected = tmp_path / "translated.nii.gz"
    assert main(["translate", str(trained_run), str(scan), str(expected), "--quiet"]) == 0
    output = tmp_path / "bundle_out.nii.gz"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "inference.json")]
    command += ["--bundle_root", str(bundle), "--input_file", str(scan), "--output_file", str(output)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    source, ours, theirs = nib.load(scan), nib.load(output), nib.load(expected)
    assert ours.shape == source.shape
    np.testing.assert_array_equal(ours.affine, source.affine)
    scale = 0.5 * np.ptp(theirs.get_fdata())
    np.testing.assert_allclose(ours.get_fdata(), theirs.get_fdata(), atol=TOLERANCE * scale)


def test_refuses_unknown_runs_existing_outputs_and_foreign_files(trained_run, tmp_path, capsys):
    assert main(["export", str(tmp_path / "nowhere"), str(tmp_path / "out"), "--quiet"]) == 2
    assert "no such run folder" in capsys.readouterr().err

    out = tmp_path / "out"
    assert main(["export", str(trained_run), str(out), "--quiet"]) == 0
    assert main(["export", str(trained_run), str(out), "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    # --overwrite replaces export's own files and removes those the new format does not write
    assert main(["export", str(trained_run), str(out), "--format", "bundle", "--overwrite", "--quiet"]) == 0
    assert not (out / "translator.ts").exists() and (out / "models" / "model.ts").is_file()
    # ... but never a file of the user's
    (out / "models" / "notes.txt").write_text("mine")
    assert main(["export", str(trained_run), str(out), "--overwrite", "--quiet"]) == 2
    assert "notes.txt" in capsys.readouterr().err
    assert (out / "models" / "notes.txt").read_text() == "mine" and (out / "models" / "model.ts").is_file()
    # a folder of the user's is not an earlier export
    data = tmp_path / "data"
    data.mkdir()
    (data / "scan.nii.gz").write_bytes(b"")
    assert main(["export", str(trained_run), str(data), "--overwrite", "--quiet"]) == 2
    assert "not made by synthmed export" in capsys.readouterr().err
    assert (data / "scan.nii.gz").exists()
    # nor the run folder
    assert main(["export", str(trained_run), str(trained_run / "exported"), "--quiet"]) == 2
    # options that do not apply
    assert main(["export", str(trained_run), str(tmp_path / "o2"), "--steps", "4", "--quiet"]) == 2
    assert "deterministically" in capsys.readouterr().err


def test_refuses_generators_and_names_a_missing_onnx_package(trained_run, tmp_path, monkeypatch):
    with pytest.raises(SynthmedError, match="cannot be exported"):
        exportable(build_model("pig", "tiny"))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(SynthmedError, match="onnxruntime"):
        export(trained_run, tmp_path / "onnx", format="onnx")
    assert not (tmp_path / "onnx").exists()
