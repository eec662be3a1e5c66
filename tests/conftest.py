"""Shared fixtures: tiny phantoms, a prepared folder and a briefly trained run (session-scoped), the scoring of
learning tests on held-out subjects, and a tiny unpaired data set for engine-level tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


@pytest.fixture(scope="session")
def phantoms(tmp_path_factory) -> Path:
    from synthmed.data.phantom import write_phantoms

    root = tmp_path_factory.mktemp("phantoms")
    write_phantoms(root, subjects=6, size=32, seed=1, overwrite=True)
    return root


@pytest.fixture(scope="session")
def prepared(phantoms, tmp_path_factory) -> Path:
    from synthmed.data.prepare import prepare

    out = tmp_path_factory.mktemp("prep") / "prep"
    prepare(phantoms, source="T1", target="T2", out=out, size=32, split="0.5,0.25,0.25", seed=0, progress=False)
    return out


@pytest.fixture(scope="session")
def trained_run(prepared, tmp_path_factory) -> Path:
    from synthmed.workflows.train import train

    out = tmp_path_factory.mktemp("run") / "run"
    train(
        prepared,
        model="pix2pix",
        preset="small",
        out=out,
        steps=6,
        batch_size=4,
        progress=False,
        overrides={"generator_channels": 8, "discriminator_channels": 8},
        val_every=3,
        checkpoint_every=3,
        sample_every=3,
        log_every=2,
    )
    return out


@pytest.fixture(scope="session")
def tiny_benchmark(tmp_path_factory) -> Path:
    """``synthmed benchmark`` (quick suite) of pix2pix and ddpm (2 samples per slice: uncertainty maps) for 2 steps
    (and a time budget too long to matter), with FID from a randomly initialised Inception-v3 (the protocol's plumbing; such FIDs mean nothing): the
    benchmark and report tests' input."""
    from synthmed.cli import main
    from synthmed.nn.inception import InceptionV3Features

    root = tmp_path_factory.mktemp("bench")
    torch.manual_seed(0)
    weights = root / "random_inception.pth"
    torch.save(InceptionV3Features("torchvision", num_classes=1000).state_dict(), weights)
    out = root / "bench"
    code = main(
        [
            "benchmark",
            "--suite",
            "quick",
            "--out",
            str(out),
            "--models",
            "pix2pix,ddpm",
            "--budget-steps",
            "2",
            "--budget-minutes",
            "5",
            "--batch-size",
            "2",
            "--threads",
            "1",
            "--samples",
            "2",
            "--inception-weights",
            str(weights),
            "--quiet",
        ]
    )
    assert code == 0
    return out


@pytest.fixture
def real_data() -> Path:
    if not REAL_DATA.is_dir():
        pytest.skip("../shared/data/real is absent")
    return REAL_DATA


@pytest.fixture
def held_out_scores(phantoms, tmp_path):
    """``score(run, **translate_options) -> (model, identity)``: mean metrics of a T1 -> T2 run on its held-out
    phantom subjects, and of the identity baseline (the T1 scan mapped onto the T2 reference's scale)."""
    import json

    from synthmed.workflows.evaluate import evaluate_pairs
    from synthmed.workflows.translate import translate

    def score(run: Path, **options):
        plan = json.loads((run / "plan.json").read_text())
        model_pairs, identity_pairs = [], []
        for subject in plan["split"]["test"]:
            src, ref = phantoms / subject / "T1.nii.gz", phantoms / subject / "T2.nii.gz"
            out = tmp_path / "pred" / subject / "T2.nii.gz"
            translate(run, src, out, reference=ref, progress=False, **options)
            model_pairs.append((subject, out, ref))
            identity_pairs.append((subject, src, ref))
        return evaluate_pairs(model_pairs)["mean"], evaluate_pairs(identity_pairs, match=True)["mean"]

    return score


class UnpairedNoise(torch.utils.data.Dataset):
    """n random 16 px 'source' slices and a nonlinear function of other slices as 'target'."""

    def __init__(self, n: int = 8):
        generator = torch.Generator().manual_seed(3)
        self.source = torch.rand(n, 1, 16, 16, generator=generator) * 2 - 1
        self.target = torch.tanh(2 * self.source.flip(0))

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        return {"source": self.source[i], "target": self.target[i], "mask": torch.ones(1, 16, 16)}


@pytest.fixture
def unpaired_noise():
    return UnpairedNoise


@pytest.fixture
def one_torch_thread():
    """Iterative reconstructions are many small FFTs: on a busy machine a second torch thread only adds
    contention (measured 3x slower on two loaded cores), so these tests run on one and restore the setting."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
