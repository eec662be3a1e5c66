"""``synthmed benchmark``: one protocol over several methods; a tiny budget here (the numbers are not a ranking)."""

import csv
import json

import pytest

from synthmed.cli import main
from synthmed.errors import SynthmedError
from synthmed.workflows.benchmark import benchmark, translation_models


def test_quick_suite_records_every_figure_for_every_method(tmp_path, capsys):
    out = tmp_path / "bench"
    code = main(["benchmark", "--suite", "quick", "--out", str(out), "--models", "pix2pix,unit",
                 "--budget-steps", "2", "--batch-size", "2", "--threads", "1", "--quiet"])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "identity" in printed and "pix2pix" in printed and "unit" in printed
    report = json.loads((out / "benchmark.json").read_text())
    assert report["complete"] and list(report["methods"]) == ["pix2pix", "unit"]
    test_subjects = report["data"]["split"]["test"]
    assert report["identity"]["overall"]["n"] == len(test_subjects) == 2
    for model, entry in report["methods"].items():
        [repeat] = entry["repeats"]
        assert repeat["steps"] == 2 and repeat["parameters"] > 0
        assert repeat["train_peak_rss_mb"] > 100 and repeat["translate_peak_rss_mb"] > 100  # python + torch at least
        assert repeat["train_seconds"] > 0 and repeat["translate_seconds_per_volume"] > 0
        scores = repeat["scores"]["overall"]
        assert set(scores["per_subject"]) == set(test_subjects)
        assert 0 < scores["mean"]["psnr"] < 60 and -1 <= scores["mean"]["ssim"] <= 1
        assert report["data"]["lesion_subjects"]  # the seed-0 phantoms have a test subject with lesions
        lesion = repeat["scores"]["lesion"]
        assert set(lesion["per_subject"]) == set(report["data"]["lesion_subjects"])
        assert 0 < lesion["mean"]["psnr"] < 60  # on the head's data range, not the lesion's own
        assert entry["summary"]["overall_psnr"]["n"] == 1
    rows = list(csv.DictReader((out / "benchmark.csv").open()))
    assert [r["method"] for r in rows] == ["identity", "pix2pix", "unit"]
    assert float(rows[1]["psnr"]) == pytest.approx(report["methods"]["pix2pix"]["repeats"][0]["scores"]["overall"]["mean"]["psnr"])
    # the same folder again is refused without --overwrite
    assert main(["benchmark", "--out", str(out), "--models", "pix2pix", "--budget-steps", "2", "--quiet"]) == 2


def test_benchmark_refuses_unknown_models_and_generators(tmp_path):
    assert "pix2pix" in translation_models() and "pig" not in translation_models()
    with pytest.raises(SynthmedError, match="unknown nope"):
        benchmark(tmp_path / "a", models=["nope"])
    with pytest.raises(SynthmedError, match="generate"):
        benchmark(tmp_path / "b", models=["pig"])
    with pytest.raises(SynthmedError, match="--suite"):
        benchmark(tmp_path / "c", suite="huge")
