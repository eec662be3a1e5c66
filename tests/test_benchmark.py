"""``synthmed benchmark``: one protocol over several methods; a tiny budget here (the numbers are not a ranking)."""

import csv
import json

import pytest

from synthmed.cli import main
from synthmed.errors import SynthmedError
from synthmed.workflows.benchmark import benchmark, translation_models


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench"
    code = main(["benchmark", "--suite", "quick", "--out", str(out), "--models", "pix2pix,unit",
                 "--budget-steps", "2", "--batch-size", "2", "--threads", "1", "--quiet"])
    assert code == 0
    return out


def test_quick_suite_records_every_figure_for_every_method(bench):
    out = bench
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


def test_report_is_one_self_contained_page_with_every_image_and_a_row_per_method(bench, tmp_path):
    from html.parser import HTMLParser
    from io import BytesIO

    from PIL import Image

    class Page(HTMLParser):
        def __init__(self):
            super().__init__()
            self.images, self.rows, self.best, self.links = [], [], 0, []
            self._in_metrics = False

        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            if tag == "img":
                self.images.append(attrs.get("src", ""))
            if tag == "table" and attrs.get("id") == "metrics":
                self._in_metrics = True
            if tag == "tr" and self._in_metrics and attrs.get("class") == "method":
                self.rows.append(None)
            if tag == "td" and self._in_metrics and attrs.get("class") == "best":
                self.best += 1
            if tag in ("link", "script") and (attrs.get("href") or attrs.get("src")):
                self.links.append(attrs)

        def handle_endtag(self, tag):
            if tag == "table":
                self._in_metrics = False

    out = tmp_path / "report.html"
    assert main(["report", str(bench), "--out", str(out), "--quiet"]) == 0
    page = Page()
    page.feed(out.read_text())
    report = json.loads((bench / "benchmark.json").read_text())
    assert len(page.rows) == 1 + len(report["methods"])  # identity + each method
    assert page.best >= 6  # every metric column marks its best value
    assert not page.links  # nothing loaded from elsewhere
    # box plots + a slice grid per test subject + a training curve per run
    assert len(page.images) >= 1 + len(report["data"]["split"]["test"]) + len(report["methods"])
    for source in page.images:
        assert source.startswith("data:image/png;base64,")
        image = Image.open(BytesIO(__import__("base64").b64decode(source.split(",", 1)[1])))
        image.load()
        assert image.size[0] > 50 and image.size[1] > 50
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "x.html"), "--quiet"]) == 2  # no benchmark.json
