"""``synthmed reconstruct`` and the diffusion prior with data consistency (``score-mri``): exact consistency with the
measurements, geometry and units of the outputs, k-space inputs, the baselines, and refusals."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from synthmed.cli import main
from synthmed.errors import SynthmedError
from synthmed.models.registry import build_model
from synthmed.models.score_mri import Acquisition
from synthmed.mri import (
    estimate_sensitivities,
    fft2c,
    gaussian_coil_sensitivities,
    shepp_logan,
    undersampling_mask,
    write_cfl,
)
from synthmed.workflows.reconstruct import Sampling, reconstruct

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("sampler", ["ddim", "pc", "ode"])
def test_the_prior_reconstruction_keeps_the_measured_kspace_exactly(sampler):
    model = build_model("score-mri", "tiny").eval()
    image = shepp_logan(24) * 300  # scanner-like units: the reconstruction finds its own scale
    mask = undersampling_mask((24, 24), "random", 4, seed=1)
    measured = fft2c(image.to(torch.complex64)) * mask
    generator = torch.Generator().manual_seed(0)
    result = model.reconstruct(Acquisition(measured, mask), sampler=sampler, steps=4, samples=2, generator=generator)
    assert result.shape == (2, 24, 24) and result.is_complex()
    error = (fft2c(result) - measured).abs()[:, mask].max() / measured.abs().max()
    assert float(error) < 1e-5
    # the two samples differ where nothing was measured (the prior fills it in), not where it was
    assert float((fft2c(result[0]) - fft2c(result[1])).abs()[~mask].max()) > 0


def test_a_soft_data_consistency_step_moves_towards_the_measurements_without_reaching_them():
    model = build_model("score-mri", "tiny").eval()
    image = shepp_logan(24).to(torch.complex64)
    mask = undersampling_mask((24, 24), "equispaced", 4)
    measured = fft2c(image) * mask
    soft = model.reconstruct(Acquisition(measured, mask), steps=4, dc_weight=0.5, generator=torch.Generator())
    residual = float((fft2c(soft[0]) - measured).abs()[mask].max() / measured.abs().max())
    assert 1e-4 < residual < 1
    with pytest.raises(SynthmedError, match="dc-weight"):
        model.reconstruct(Acquisition(measured, mask), steps=4, dc_weight=1.5)


def test_multi_coil_prior_reconstruction_runs_with_estimated_sensitivities():
    model = build_model("score-mri", "tiny").eval()
    image = shepp_logan(32).to(torch.complex64)
    sens = gaussian_coil_sensitivities((32, 32), coils=4)
    mask = undersampling_mask((32, 32), "random", 4, center=0.2, seed=0)
    kspace = fft2c(sens * image) * mask
    acquisition = Acquisition(kspace, mask, estimate_sensitivities(kspace, mask))
    result = model.reconstruct(acquisition, steps=3, generator=torch.Generator())
    assert result.shape == (1, 32, 32) and torch.isfinite(result.abs()).all()
    with pytest.raises(SynthmedError, match="sensitivities"):
        Acquisition(kspace, mask)


def _phantom_volume(path, slices: int = 2) -> np.ndarray:
    data = np.stack([shepp_logan(40).numpy() * (200 + 50 * z) for z in range(slices)], axis=-1)
    affine = np.diag([0.9, 0.9, 3.0, 1.0])
    affine[:3, 3] = (-10, 5, 20)
    nib.save(nib.Nifti1Image(data.astype(np.float32), affine), str(path))
    return data


def test_baselines_on_an_image_keep_its_geometry_and_cs_beats_zero_filled(tmp_path):
    data = _phantom_volume(tmp_path / "scan.nii.gz")
    scores = {}
    for method in ("zero-filled", "cs"):
        out = tmp_path / f"{method}.nii.gz"
        result = reconstruct(method, tmp_path / "scan.nii.gz", out, sampling=Sampling("poisson", 4), progress=False)
        written = nib.load(str(out))
        assert written.shape == data.shape
        np.testing.assert_allclose(written.affine, nib.load(str(tmp_path / "scan.nii.gz")).affine)
        scores[method] = result["metrics"]["psnr"]
        # the output is in the input's units, not the model's
        assert 0.5 < float(np.asarray(written.dataobj).max()) / data.max() < 1.5
    assert scores["cs"] > scores["zero-filled"] + 3


def test_kspace_inputs_npy_and_bart_and_their_refusals(tmp_path, capsys):
    image = shepp_logan(32).to(torch.complex64)
    sens = gaussian_coil_sensitivities((32, 32), coils=3)
    full = fft2c(sens * image).numpy()
    np.save(tmp_path / "full.npy", full)
    out = tmp_path / "zf.nii.gz"
    code = main(["reconstruct", "zero-filled", str(tmp_path / "full.npy"), str(out), "--mask", "random", "--quiet"])
    assert code == 0 and "PSNR" in capsys.readouterr().out and nib.load(str(out)).shape == (32, 32, 1)
    # BART keeps coils in its fourth dimension: (1, H, W, coils) for one 2D acquisition
    mask = undersampling_mask((32, 32), "poisson", 4, seed=0).numpy()
    write_cfl(tmp_path / "ksp", np.moveaxis(full * mask, 0, -1)[None])
    result = reconstruct(
        "cs", tmp_path / "ksp.cfl", tmp_path / "cs.nii.gz", sampling=Sampling("measured"), progress=False
    )
    assert "metrics" not in result and result["notes"][0].startswith("acceleration 3.")
    with pytest.raises(SynthmedError, match="--mask measured"):
        reconstruct("cs", tmp_path / "ksp.cfl", tmp_path / "x.nii.gz", progress=False)
    with pytest.raises(SynthmedError, match="exists"):
        reconstruct("cs", tmp_path / "ksp.cfl", tmp_path / "cs.nii.gz", sampling=Sampling("measured"), progress=False)
    np.save(tmp_path / "real.npy", np.abs(full))
    with pytest.raises(SynthmedError, match="complex"):
        reconstruct("zero-filled", tmp_path / "real.npy", tmp_path / "y.nii.gz", progress=False)
    with pytest.raises(SynthmedError, match="is the input"):
        reconstruct("zero-filled", tmp_path / "zf.nii.gz", tmp_path / "zf.nii.gz", overwrite=True, progress=False)
    with pytest.raises(SynthmedError, match="neither a run folder"):
        reconstruct("nonsense", tmp_path / "full.npy", tmp_path / "y.nii.gz", progress=False)
    with pytest.raises(SynthmedError, match="deterministic"):
        reconstruct("cs", tmp_path / "full.npy", tmp_path / "y.nii.gz", samples=2, progress=False)
    with pytest.raises(SynthmedError, match="measured is for k-space"):
        _phantom_volume(tmp_path / "scan.nii.gz")
        reconstruct("cs", tmp_path / "scan.nii.gz", tmp_path / "y.nii.gz", sampling=Sampling("measured"))


@pytest.mark.slow
def test_a_prior_trained_on_phantom_slices_beats_zero_filling_on_a_held_out_head(tmp_path):
    from synthmed.data.phantom import write_phantoms
    from synthmed.data.plan import load_plan
    from synthmed.data.prepare import prepare
    from synthmed.workflows.train import train

    write_phantoms(tmp_path / "data", subjects=6, size=32, seed=0, overwrite=True)
    prepare(tmp_path / "data", source="T1", out=tmp_path / "prep", split="0.67,0,0.33", seed=0, progress=False)
    # whole 32 px slices (the preset's 64 px patches would pad them with background)
    train(
        tmp_path / "prep", model="score-mri", preset="small", out=tmp_path / "run", steps=300, patch=32, progress=False
    )
    plan = load_plan(tmp_path / "prep")
    scan = nib.load(str(plan.file_of(plan.test_subjects[0], plan.source)))
    # the middle of the head: slices with anatomy in them
    middle = scan.slicer[:, :, 12:20]
    nib.save(middle, str(tmp_path / "held_out.nii.gz"))
    scores = {}
    for method in ("zero-filled", str(tmp_path / "run")):
        result = reconstruct(
            method,
            tmp_path / "held_out.nii.gz",
            tmp_path / f"{len(scores)}.nii.gz",
            sampling=Sampling("random", 4, seed=0),
            steps=20 if method != "zero-filled" else None,
            progress=False,
        )
        scores[method] = result["metrics"]
    prior, zero_filled = scores[str(tmp_path / "run")], scores["zero-filled"]
    # measured here: 19.79 dB / 0.671 against 18.21 dB / 0.583 (whole volume, 150 steps: +0.8 dB; 400: +1.8 dB)
    assert prior["psnr"] > zero_filled["psnr"] + 0.8
    assert prior["ssim"] > zero_filled["ssim"]


def test_the_prior_trains_on_patches_of_native_resolution_slices(tmp_path):
    from synthmed.data.phantom import write_phantoms
    from synthmed.data.prepare import prepare
    from synthmed.engine.run_folder import RunFolder
    from synthmed.workflows.train import train

    write_phantoms(tmp_path / "data", subjects=2, size=32, seed=0, overwrite=True)
    prepare(tmp_path / "data", source="T1", out=tmp_path / "prep", split="1,0,0", seed=0, progress=False)
    train(tmp_path / "prep", model="score-mri", preset="tiny", out=tmp_path / "run", steps=1, progress=False)
    record, _ = RunFolder(tmp_path / "run").load()
    # the tiny preset's 16 px windows of the 32 px slices, unlike an image generator's whole slices
    assert record.config["image_size"] == 16
