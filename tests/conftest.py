"""Shared fixtures: tiny phantoms, a prepared folder and a briefly trained run (session-scoped)."""

from __future__ import annotations

from pathlib import Path

import pytest

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
    train(prepared, model="pix2pix", preset="small", out=out, steps=6, batch_size=4, progress=False,
          overrides={"generator_channels": 8, "discriminator_channels": 8}, val_every=3, checkpoint_every=3,
          sample_every=3, log_every=2)
    return out


@pytest.fixture
def real_data() -> Path:
    if not REAL_DATA.is_dir():
        pytest.skip("../shared/data/real is absent")
    return REAL_DATA
