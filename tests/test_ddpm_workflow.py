"""Conditional diffusion end to end: train a tiny ddpm, translate with every sampler, uncertainty maps."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from synthmed.cli import main
from synthmed.models.base import SynthesisModel
from synthmed.workflows.train import train
from synthmed.workflows.translate import Sampling, std_path, translate, translate_slices

TINY = {
    "channels": [16, 16, 32],
    "attention_levels": [False, False, True],
    "num_head_channels": 16,
    "norm_num_groups": 8,
    "validation_steps": 2,
}


@pytest.fixture(scope="module")
def ddpm_run(prepared, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddpm") / "run"
    train(
        prepared,
        model="ddpm",
        preset="small",
        out=out,
        steps=4,
        batch_size=4,
        progress=False,
        overrides=TINY,
        val_every=2,
        checkpoint_every=2,
        sample_every=2,
        log_every=1,
    )
    return out


@pytest.fixture(scope="module")
def test_subject(ddpm_run, phantoms):
    subject = json.loads((ddpm_run / "plan.json").read_text())["split"]["test"][0]
    return phantoms / subject


def test_run_records_schedule_and_samplers(ddpm_run):
    info = json.loads((ddpm_run / "run.json").read_text())
    assert info["model"] == "ddpm"
    assert info["config"]["timesteps"] == 1000 and info["config"]["schedule"] == "linear"
    assert info["config"]["prediction"] == "v" and info["config"]["sampler"] == "ddim"
    assert info["config"]["steps"] == 4  # --steps reaches the config (schedules that follow the run length)
    rows = (ddpm_run / "log.csv").read_text().splitlines()
    assert "val_psnr" in rows[0] and len(rows) >= 5


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "em", "pc", "ode"])
def test_every_sampler_writes_a_volume_in_the_source_geometry(ddpm_run, test_subject, tmp_path, sampler):
    source = test_subject / "T1.nii.gz"
    out = tmp_path / f"{sampler}.nii.gz"
    translate(ddpm_run, source, out, sampler=sampler, steps=3, progress=False)
    src, pred = nib.load(source), nib.load(out)
    assert pred.shape == src.shape
    np.testing.assert_array_equal(pred.affine, src.affine)
    assert np.isfinite(pred.get_fdata()).all()


class _StubTranslator(SynthesisModel):
    """A 'stochastic' translator whose noise can be switched off: isolates the workflow's mean/std."""

    name = "stub"
    stochastic = True
    sampling_options = ("noise",)

    def __init__(self):
        super().__init__(None)
        self.weight = torch.nn.Parameter(torch.ones(()))

    def translate(self, source, *, noise=0.0, generator=None):
        return source * self.weight + noise * torch.randn(source.shape, generator=generator, device=source.device)


def test_std_is_zero_for_a_deterministic_sampler_and_positive_for_a_stochastic_one():
    slices = np.linspace(-1, 1, 3 * 8 * 8, dtype=np.float32).reshape(3, 8, 8)
    model = _StubTranslator()
    mean, std = translate_slices(model, slices, batch_size=2, sampling=Sampling({"noise": 0.0}, samples=4))
    np.testing.assert_array_equal(mean, slices)
    np.testing.assert_array_equal(std, np.zeros_like(slices))
    mean, std = translate_slices(model, slices, batch_size=2, sampling=Sampling({"noise": 0.5}, samples=64))
    assert 0.35 < float(std.mean()) < 0.65  # population std of N(0, 0.5^2) draws
    assert float(np.abs(mean - slices).max()) < 0.5  # mean of 64 draws: sd 0.0625
    again, _ = translate_slices(model, slices, batch_size=2, sampling=Sampling({"noise": 0.5}, samples=64))
    np.testing.assert_array_equal(mean, again)  # seeded


def test_uncertainty_maps_of_a_trained_ddpm(ddpm_run, test_subject, tmp_path):
    source = test_subject / "T1.nii.gz"
    written = translate(ddpm_run, source, tmp_path / "anc.nii.gz", sampler="ddpm", steps=3, samples=3, progress=False)
    assert [p.name for p in written] == ["anc.nii.gz", "anc_std.nii.gz"]
    std = nib.load(tmp_path / "anc_std.nii.gz")
    assert std.shape == nib.load(source).shape
    np.testing.assert_array_equal(std.affine, nib.load(source).affine)
    values = std.get_fdata()
    assert (values >= 0).all() and values.max() > 0
    assert (values == 0).any()  # outside the crop box nothing is sampled


def test_same_seed_same_output_and_new_seed_new_output(ddpm_run, test_subject, tmp_path):
    source = test_subject / "T1.nii.gz"
    paths = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        translate(ddpm_run, source, tmp_path / f"{name}.nii.gz", sampler="pc", steps=3, seed=seed, progress=False)
        paths.append(nib.load(tmp_path / f"{name}.nii.gz").get_fdata())
    np.testing.assert_array_equal(paths[0], paths[1])
    assert not np.array_equal(paths[0], paths[2])


def test_std_path_names():
    from pathlib import Path

    assert std_path(Path("out/T2.nii.gz")) == Path("out/T2_std.nii.gz")
    assert std_path(Path("x.mha")) == Path("x_std.mha")


def test_cli_sampling_options(ddpm_run, test_subject, tmp_path, capsys):
    source = str(test_subject / "T1.nii.gz")
    out = tmp_path / "cli.nii.gz"
    assert (
        main(
            [
                "translate",
                str(ddpm_run),
                source,
                str(out),
                "--sampler",
                "ode",
                "--steps",
                "3",
                "--samples",
                "2",
                "--seed",
                "1",
                "--quiet",
            ]
        )
        == 0
    )
    assert out.is_file() and (tmp_path / "cli_std.nii.gz").is_file()
    assert main(["translate", str(ddpm_run), source, str(tmp_path / "x.nii.gz"), "--sampler", "heun", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "unknown sampler 'heun'" in err and "ddim" in err
    assert not (tmp_path / "x.nii.gz").exists()
    assert main(["translate", str(ddpm_run), source, str(tmp_path / "x.nii.gz"), "--eta", "-1", "--quiet"]) == 2
    assert "eta" in capsys.readouterr().err


def test_deterministic_models_refuse_sampling_options(trained_run, test_subject, tmp_path, capsys):
    source = str(test_subject / "T1.nii.gz")
    assert main(["translate", str(trained_run), source, str(tmp_path / "p.nii.gz"), "--samples", "4", "--quiet"]) == 2
    assert "pix2pix translates deterministically; --samples" in capsys.readouterr().err


def test_resume_continues_a_ddpm_run(prepared, tmp_path):
    out = tmp_path / "run"
    train(
        prepared,
        model="ddpm",
        preset="small",
        out=out,
        steps=2,
        batch_size=2,
        progress=False,
        overrides=TINY,
        val_every=2,
    )
    summary = train(
        prepared,
        model="ddpm",
        preset="small",
        out=out,
        steps=3,
        batch_size=2,
        progress=False,
        overrides=TINY,
        val_every=2,
        resume=True,
    )
    assert summary["steps"] == 3 and summary["trained_steps"] == 1
