"""The typed plan (``Plan``) and run folder (``RunFolder``): lossless records, one-line errors, a trained run."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest

from synthmed.data.geometry import SliceGeometry
from synthmed.data.normalize import Normalization
from synthmed.data.plan import Plan, load_plan, plan_digest
from synthmed.engine.checkpoint import load_checkpoint
from synthmed.engine.run_folder import RunFolder, RunRecord
from synthmed.errors import SynthmedError


def raw_plan(folder: Path) -> dict:
    return json.loads((folder / "plan.json").read_text())


def test_a_loaded_plan_gives_back_its_exact_record_and_digest(prepared):
    raw = raw_plan(prepared)
    plan = load_plan(prepared)
    assert plan.to_record() == raw
    assert plan.digest() == plan_digest(raw) == plan_digest(plan)
    record = plan.to_record()
    record["size"] = 64  # a copy: the plan itself does not change
    assert plan.size == 32 and plan.to_record() == raw


def test_unknown_and_missing_optional_fields_survive_the_round_trip(prepared, tmp_path):
    raw = raw_plan(prepared)
    old = copy.deepcopy(raw)
    for key in ("interpolation", "resolution", "input_profile", "target_scale", "aliases", "skipped", "fingerprint"):
        old.pop(key)  # a plan made by an earlier version
    old["written_by_a_newer_version"] = {"nested": [1, 2.5, None]}
    plan = Plan.from_record(old, tmp_path / "plan.json")
    assert plan.to_record() == old
    assert plan.digest() == plan_digest(old)
    assert plan.interpolation == "bilinear" and not plan.resolution.native and plan.target_scale is None
    assert plan.input_profile is None and plan.aliases == {} and plan.skipped == {}


def test_typed_fields_and_helpers(prepared):
    plan = load_plan(prepared)
    raw = raw_plan(prepared)
    assert (plan.source, plan.target, plan.label, plan.size) == ("t1", "t2", None, 32)
    assert plan.roles == ("t1", "t2")
    assert plan.test_subjects == tuple(raw["split"]["test"]) == plan.subjects_in("test")
    assert set(plan.train_subjects) | set(plan.val_subjects) | set(plan.test_subjects) == set(plan.subjects)
    subject = plan.test_subjects[0]
    assert (
        plan.file_of(subject, "t2") == Path(raw["volumes"][subject]["files"]["t2"])
        and plan.file_of(subject, "t2").is_file()
    )
    volume = plan.volumes[subject]
    assert isinstance(volume.geometry, SliceGeometry) and volume.number == raw["volumes"][subject]["number"]
    assert volume.normalization["t1"] == Normalization.from_dict(raw["volumes"][subject]["normalization"]["t1"])
    assert plan.reference("t2") == Normalization.from_dict(raw["reference_normalization"]["t2"])
    assert plan.n_slices == raw["n_slices"] and plan.normalization_kind == {"t1": "mr", "t2": "mr"}
    assert plan.target_scale is not None and plan.target_scale.to_dict() == raw["target_scale"]
    with pytest.raises(SynthmedError, match="unknown split 'holdout'"):
        plan.subjects_in("holdout")
    with pytest.raises(SynthmedError, match="no flair file of subject"):
        plan.file_of(subject, "flair")
    swapped = plan.swapped()
    assert (swapped.source, swapped.target) == ("t2", "t1") and swapped.to_record()["source"] == "t2"
    assert (plan.source, plan.target) == ("t1", "t2")


@pytest.mark.parametrize(
    "damage, needle",
    [
        (lambda plan: plan.update(size="32"), "field size is '32', expected a whole number"),
        (lambda plan: plan.update(source=7), "field source is 7, expected text"),
        (lambda plan: plan["volumes"][next(iter(plan["volumes"]))].update(n_slices="many"), ".n_slices is 'many'"),
        (lambda plan: plan["resolution"].update(mode="sideways"), "field resolution.mode"),
        (lambda plan: plan.update(fingerprint=[1]), "field fingerprint is [1], expected an object"),
    ],
)
def test_a_crafted_plan_with_a_wrong_typed_field_names_it(prepared, tmp_path, damage, needle):
    prep = tmp_path / "prep"
    shutil.copytree(prepared, prep)
    raw = raw_plan(prep)
    damage(raw)
    (prep / "plan.json").write_text(json.dumps(raw))
    with pytest.raises(SynthmedError) as error:
        load_plan(prep)
    message = str(error.value)
    assert "plan.json" in message and needle in message and "\n" not in message
    with pytest.raises(SynthmedError, match="field size"):
        Plan.from_record({**raw_plan(prepared), "size": 33}, "crafted.json")


def test_run_folder_loads_a_trained_run(trained_run, prepared):
    folder = RunFolder(trained_run)
    record, plan = folder.load()
    assert isinstance(record, RunRecord) and isinstance(plan, Plan)
    assert (record.model, record.preset, record.task, record.paired) == ("pix2pix", "small", "translate", True)
    assert (record.source, record.target, record.label) == ("t1", "t2", None)
    assert record.config["generator_channels"] == 8 and record.settings["steps"] == 6
    assert record.prepared == str(Path(prepared).resolve()) and record.processes == 1 and record.patch is None
    assert record.training_slice_count > 0 and record.versions
    assert record.to_record() == json.loads(folder.run_json.read_text())
    # the digest checkpoints hold is the digest of the copied plan, read back
    assert record.plan_digest == plan.digest() == load_plan(prepared).digest()
    assert load_checkpoint(folder.checkpoint("best"))["plan_digest"] == plan.digest()
    for path in (folder.checkpoint("best"), folder.checkpoint("last.pt"), folder.log_csv, folder.train_summary):
        assert path.is_file() and path.parent in (folder.root, folder.checkpoints)
    assert folder.samples.is_dir() and any(folder.samples.iterdir())
    assert folder.find_checkpoint() == folder.checkpoint("best")
    assert folder.load_summary()["steps"] == 6


def test_run_folder_write_record_and_its_errors(trained_run, tmp_path):
    record, plan = RunFolder(trained_run).load()
    folder = RunFolder(tmp_path / "copy")
    with pytest.raises(SynthmedError, match="not a synthmed run folder"):
        folder.load()
    folder.root.mkdir()
    written = folder.write_record(record.to_record(), plan)
    again, plan_again = folder.load()
    assert written == again == record and plan_again.to_record() == plan.to_record()
    with pytest.raises(SynthmedError, match="no checkpoint"):
        folder.find_checkpoint()
    folder.checkpoints.mkdir()
    shutil.copy(RunFolder(trained_run).checkpoint("last"), folder.checkpoint("last"))
    assert folder.find_checkpoint("best") == folder.checkpoint("last")  # best falls back to last
    with pytest.raises(SynthmedError, match="no train_summary.json"):
        folder.load_summary()

    with pytest.raises(SynthmedError, match="field patch"):
        folder.write_record({**record.to_record(), "patch": "big"}, plan)
    assert folder.load()[0] == record  # the refused record was not written
    folder.run_json.write_text(json.dumps({**record.to_record(), "task": "paint"}))
    with pytest.raises(SynthmedError) as error:
        folder.load()
    assert "run.json: field task is 'paint'" in str(error.value) and "\n" not in str(error.value)
    folder.run_json.write_text(json.dumps({**record.to_record(), "model": "no-such-model"}))
    with pytest.raises(SynthmedError, match="no-such-model"):
        folder.load()
