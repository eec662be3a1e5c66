"""Declared suites through the one driver: a reversed direction scored with the forward runs, a restoration task
(degraded -> clean), methods at named presets, the ranking and a paper's claimed ordering, and the shared runner.
Tiny budgets: the numbers are plumbing, not a ranking."""

import json
import sys

import pytest

from synthmed.benchmarking import suites
from synthmed.benchmarking.layout import TaskFolder, translated_volumes
from synthmed.benchmarking.protocol import benchmark
from synthmed.benchmarking.runner import child_env, run_measured
from synthmed.benchmarking.scoring import rank_methods
from synthmed.benchmarking.suites import Method, Suite, Task
from synthmed.cli import main
from synthmed.errors import SynthmedError


def _register(monkeypatch, suite: Suite) -> str:
    monkeypatch.setitem(suites.SUITES, suite.name, suite)
    return suite.name


def test_a_reversed_task_scores_the_methods_trained_both_ways_with_the_forward_runs(monkeypatch, tmp_path):
    name = _register(
        monkeypatch,
        Suite(
            "test-reverse",
            "cyclegan and pix2pix, T1 -> T2 and back",
            tasks=(Task("T1", "T2", reverse=True),),
            methods=(Method("cyclegan", "tiny"), Method("pix2pix", "tiny")),
            subjects=6,
            size=32,
            steps=2,
            batch_size=2,
            claim=("cyclegan-tiny", "pix2pix-tiny"),
            claim_source="a test",
        ),
    )
    out = tmp_path / "bench"
    index = benchmark(out, suite=name, threads=1, progress=False)
    assert index["complete"] and list(index["tasks"]) == ["t1-to-t2", "t2-to-t1-reversed"]
    forward = json.loads((out / "t1-to-t2" / "benchmark.json").read_text())
    reverse = json.loads((out / "t2-to-t1-reversed" / "benchmark.json").read_text())
    assert list(forward["methods"]) == ["cyclegan-tiny", "pix2pix-tiny"]
    assert forward["ranking"]["claim"]["holds_psnr"] in (True, False)  # both were run: the claim is tested
    assert set(forward["ranking"]["psnr"]) == {"cyclegan-tiny", "pix2pix-tiny"}
    # the reverse: only the method trained both ways, its forward run reused (no second training run)
    assert list(reverse["methods"]) == ["cyclegan-tiny"] and "pix2pix-tiny" in reverse["skipped"]
    assert reverse["trained_in"] == "t1-to-t2" and not (out / "t2-to-t1-reversed" / "runs").exists()
    assert (reverse["data"]["source"], reverse["data"]["target"]) == ("t2", "t1")
    assert reverse["ranking"]["claim"]["holds_psnr"] is None  # pix2pix cannot go B -> A: not tested
    assert "--direction B2A" in (out / "t2-to-t1-reversed" / "logs" / "translate-cyclegan-tiny-seed0.log").read_text()
    # the references of the reverse are the source (T1) scans; its outputs are T1 volumes in the T1 geometry
    subject = reverse["data"]["split"]["test"][0]
    [link] = (out / "t2-to-t1-reversed" / "test" / "references" / subject).iterdir()
    assert link.name.startswith("t1")
    folder = TaskFolder(out / "t2-to-t1-reversed", runs_root=out / "t1-to-t2" / "runs")
    assert folder.output_volume("cyclegan-tiny", 0, subject).is_file()
    assert (folder.run("cyclegan-tiny", 0) / "run.json").is_file()
    page = tmp_path / "report.html"
    assert main(["report", str(out), "--out", str(page), "--quiet"]) == 0
    text = page.read_text(encoding="utf-8")
    assert "Claim: cyclegan-tiny &gt; pix2pix-tiny" in text and "not tested" in text
    assert text.count("cyclegan-tiny (seed 0)</summary>") == 2  # both tasks show the one run's config


def test_a_restoration_task_degrades_the_source_and_scores_identity_both_ways(monkeypatch, tmp_path):
    name = _register(
        monkeypatch,
        Suite(
            "test-motion",
            "motion correction",
            tasks=(Task("T1", "T1", degrade="motion"),),
            methods=(Method("pix2pix", "tiny"),),
            subjects=6,
            size=32,
            steps=2,
            batch_size=2,
        ),
    )
    out = tmp_path / "bench"
    record = benchmark(out, suite=name, threads=1, progress=False)
    assert record["complete"] and (record["data"]["source"], record["data"]["target"]) == ("t1_motion", "t1")
    assert record["settings"]["methods"] == {"pix2pix-tiny": {"model": "pix2pix", "preset": "tiny"}}
    assert "--kind motion" in (out / "logs" / "degrade.log").read_text()
    matched = record["identity"]["overall"]["mean"]["psnr"]
    unmatched = record["identity_unmatched"]["overall"]["mean"]["psnr"]
    assert matched != unmatched and 0 < unmatched < 60
    assert list(record["methods"]) == ["pix2pix-tiny"] and record["ranking"]["psnr"] == ["pix2pix-tiny"]


def test_models_name_presets_and_bad_ones_are_refused_before_any_work(tmp_path):
    with pytest.raises(SynthmedError, match="no such preset"):
        benchmark(tmp_path / "a", models=["medgan:huge"], progress=False)
    with pytest.raises(SynthmedError, match="names a method twice"):
        benchmark(tmp_path / "b", models=["pix2pix", "pix2pix:small"], progress=False)
    with pytest.raises(SynthmedError, match="--suite nope"):
        benchmark(tmp_path / "c", suite="nope", progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert Method.parse("medgan:single-ublock").label == "medgan-single-ublock"
    assert Method.parse("medgan").label == "medgan"


def test_every_declared_suite_names_known_methods_and_presets():
    from synthmed.models.registry import available_models

    for suite in suites.SUITES.values():
        for method in suite.methods or ():
            assert method.preset in available_models()[method.model].PRESETS, (suite.name, method)
        if suite.claim:
            assert set(suite.claim) <= {m.label for m in suite.methods}, suite.name


def test_ranking_orders_by_the_mean_and_tests_a_claim_only_when_complete():
    identity = {"overall": {"mean": {"psnr": 20.0, "ssim": 0.5}}}

    def method(psnr, ssim):
        return {"summary": {"overall_psnr": {"mean": psnr}, "overall_ssim": {"mean": ssim}}}

    methods = {"a": method(22.0, 0.6), "b": method(25.0, 0.55), "c": method(None, None)}
    ranking = rank_methods(identity, methods, claim=("a", "b"))
    assert ranking["psnr"] == ["b", "a", "c"] and ranking["ssim"] == ["a", "b", "c"]
    assert ranking["gain_over_identity_psnr_db"] == {"b": 5.0, "a": 2.0}
    assert ranking["claim"]["holds_psnr"] is False and ranking["claim"]["holds_ssim"] is True
    assert rank_methods(identity, methods, claim=("a", "z"))["claim"]["holds_psnr"] is None


def test_the_runner_measures_its_child_and_quotes_the_log_of_a_failure(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "3")
    env = child_env(threads=2)
    assert env["OMP_NUM_THREADS"] == "2" and "RANK" not in env  # a child never joins a process group
    grow = "import os; x = bytearray(200 * 2**20); print(os.environ['OMP_NUM_THREADS'])"
    usage = run_measured([sys.executable, "-c", grow], tmp_path / "ok.log", threads=2)
    assert usage.peak_rss_mb > 200 and usage.wall_seconds > 0
    assert (tmp_path / "ok.log").read_text().splitlines()[-1] == "2"
    with pytest.raises(SynthmedError, match="exit 3.*\n.*boom"):
        run_measured([sys.executable, "-c", "print('boom'); raise SystemExit(3)"], tmp_path / "bad.log")


def test_translated_volumes_leave_out_uncertainty_maps_by_their_owners_name(tmp_path):
    for name in ("T2.nii.gz", "T2_std.nii.gz", "my_std.nii.gz", ".T2.part.nii.gz", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    # my_std.nii.gz is a volume of its own (no my.nii.gz beside it), not a map found by a substring
    assert [p.name for p in translated_volumes(tmp_path)] == ["T2.nii.gz", "my_std.nii.gz"]
