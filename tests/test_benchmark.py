"""``synthmed benchmark``: one protocol over several methods; a tiny budget here (the numbers are not a ranking)."""

import base64
import csv
import json
import shutil
from html.parser import HTMLParser
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthmed.benchmarking.protocol import benchmark, translation_models
from synthmed.cli import main
from synthmed.errors import SynthmedError


def test_quick_suite_records_every_figure_for_every_method(tiny_benchmark):
    out = tiny_benchmark
    report = json.loads((out / "benchmark.json").read_text())
    assert report["complete"] and list(report["methods"]) == ["pix2pix", "ddpm"]
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
        assert -1 <= scores["mean"]["ssim3d"] <= 1 and scores["mean"]["ssim3d"] != scores["mean"]["ssim"]
        assert scores["mean"]["mae"] > 0 and scores["mean"]["nmse"] > 0
        normalised = repeat["scores"]["max_normalised"]
        assert set(normalised["per_subject"]) == set(test_subjects)
        assert 0 < normalised["mean"]["psnr"] < 60 and -1 <= normalised["mean"]["ssim"] <= 1
        assert all(v["slices"] > 0 for v in normalised["per_subject"].values())
        assert repeat["scores"]["fid"] > 0  # random Inception weights: plumbing only
        assert repeat["samples"] == (2 if model == "ddpm" else 1)
        outputs = out / "outputs" / f"{model}-seed0" / test_subjects[0]
        assert bool(list(outputs.glob("*_std*"))) == (model == "ddpm")  # uncertainty maps of the stochastic one
        assert report["data"]["lesion_subjects"]  # the seed-0 phantoms have a test subject with lesions
        lesion = repeat["scores"]["lesion"]
        assert set(lesion["per_subject"]) == set(report["data"]["lesion_subjects"])
        assert 0 < lesion["mean"]["psnr"] < 60  # on the head's data range, not the lesion's own
        assert entry["summary"]["overall_psnr"]["n"] == 1
    assert report["fid"]["available"] and report["identity"]["fid"] > 0
    assert report["settings"]["samples"] == 2 and "max_normalised" in report["conventions"]
    assert report["settings"]["budget_minutes"] == 5 and report["settings"]["steps"] == 2
    assert "--max-minutes 5.0" in (out / "logs" / "train-pix2pix-seed0.log").read_text()
    rows = list(csv.DictReader((out / "benchmark.csv").open()))
    assert [r["method"] for r in rows] == ["identity", "pix2pix", "ddpm"]
    assert {"ssim3d", "nmse", "lesion_psnr", "max_normalised_psnr", "max_normalised_ssim", "fid", "samples"} <= set(
        rows[0]
    )
    assert float(rows[1]["psnr"]) == pytest.approx(
        report["methods"]["pix2pix"]["repeats"][0]["scores"]["overall"]["mean"]["psnr"]
    )
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


class ReportPage(HTMLParser):
    """What the report tests look at: images (with alt texts), metrics-table rows, headers and best cells, links."""

    def __init__(self):
        super().__init__()
        self.images, self.alts, self.rows, self.headers, self.best, self.links = [], [], [], [], 0, []
        self._in_metrics = False
        self._cell: str | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
            self.alts.append(attrs.get("alt", ""))
        if tag == "table" and attrs.get("id") == "metrics":
            self._in_metrics = True
        if tag == "tr" and self._in_metrics and attrs.get("class") == "method":
            self.rows.append([])
        if tag == "td" and self._in_metrics and attrs.get("class") == "best":
            self.best += 1
        if tag in ("th", "td") and self._in_metrics:
            self._cell = ""
        if tag in ("link", "script") and (attrs.get("href") or attrs.get("src")):
            self.links.append(attrs)

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag in ("th", "td") and self._cell is not None:
            (self.headers if tag == "th" else self.rows[-1]).append(self._cell.strip())
            self._cell = None
        if tag == "table":
            self._in_metrics = False


def read_report(path: Path) -> ReportPage:
    page = ReportPage()
    page.feed(path.read_text())
    return page


def test_report_is_one_self_contained_page_with_every_image_and_a_row_per_method(tiny_benchmark, tmp_path):
    out = tmp_path / "report.html"
    assert main(["report", str(tiny_benchmark), "--out", str(out), "--quiet"]) == 0
    page = read_report(out)
    report = json.loads((tiny_benchmark / "benchmark.json").read_text())
    assert [row[0] for row in page.rows] == ["identity", *report["methods"]]  # identity + each method
    assert {"PSNR (dB) ↑", "SSIM 3D ↑", "lesion MAE ↓", "FID ↓", "steps"} <= set(page.headers)
    assert page.best >= 8  # every ranked column marks its best value
    assert not page.links  # nothing loaded from elsewhere
    test_subjects = report["data"]["split"]["test"]
    # box plots + a slice grid and an uncertainty map (ddpm drew 2 samples) per test subject + a training curve per run
    assert sum("uncertainty" in alt for alt in page.alts) == len(test_subjects)
    assert len(page.images) >= 1 + 2 * len(test_subjects) + len(report["methods"])
    for source in page.images:
        assert source.startswith("data:image/png;base64,")
        image = Image.open(BytesIO(base64.b64decode(source.split(",", 1)[1])))
        image.load()
        assert image.size[0] > 50 and image.size[1] > 50
    text = out.read_text()
    assert "Metrics shown: toolkit" in text and "Inception-v3 (torchvision)" in text
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "x.html"), "--quiet"]) == 2  # no benchmark.json


def test_report_in_the_max_normalised_convention_says_so_and_shows_those_scores(tiny_benchmark, tmp_path):
    out = tmp_path / "published.html"
    assert main(["report", str(tiny_benchmark), "--out", str(out), "--convention", "max-normalised", "--quiet"]) == 0
    page = read_report(out)
    assert "PSNR (dB), max-normalised ↑" in page.headers and "SSIM 3D ↑" not in page.headers
    report = json.loads((tiny_benchmark / "benchmark.json").read_text())
    expected = report["methods"]["pix2pix"]["repeats"][0]["scores"]["max_normalised"]["mean"]["psnr"]
    pix2pix = next(row for row in page.rows if row[0] == "pix2pix")
    assert pix2pix[1].startswith(f"{expected:.2f}")
    assert "Metrics shown: max-normalised" in out.read_text()


def test_max_normalised_scores_ignore_scale_but_not_structure():
    from synthmed.benchmarking.scoring import max_normalised_scores
    from synthmed.metrics import PSNR_CAP_DB, image_metrics

    rng = np.random.default_rng(0)
    reference = np.zeros((24, 24, 6), np.float32)
    reference[4:20, 4:20, 1:5] = rng.uniform(100, 400, (16, 16, 4))
    head = reference > 0
    scaled = max_normalised_scores(3 * reference, reference, head)  # same image on another scale
    assert scaled["psnr"] == PSNR_CAP_DB and scaled["ssim"] == pytest.approx(1.0) and scaled["slices"] == 4
    assert image_metrics(3 * reference, reference, head)["psnr"] < 0  # the toolkit's convention sees the scale
    noisy = max_normalised_scores(reference + rng.normal(0, 40, reference.shape), reference, head)
    assert 5 < noisy["psnr"] < 40 and noisy["ssim"] < 0.9
    with pytest.raises(SynthmedError, match="no foreground"):
        max_normalised_scores(reference, reference, np.zeros_like(head))


def test_a_time_budget_stops_training_like_a_last_step(prepared, tmp_path):
    from synthmed.workflows.train import train

    run = tmp_path / "run"
    summary = train(
        prepared,
        model="pix2pix",
        out=run,
        steps=100_000,
        batch_size=2,
        progress=False,
        overrides={"generator_channels": 8, "discriminator_channels": 8},
        max_minutes=0.03,
    )
    assert 1 <= summary["steps"] < 100_000 and "time budget of 0.03 min" in summary["stopped"]
    assert json.loads((run / "train_summary.json").read_text())["steps"] == summary["steps"]
    assert (run / "checkpoints" / "last.pt").is_file()  # saved as after the last step
    with pytest.raises(SynthmedError, match="--max-minutes"):
        train(prepared, model="pix2pix", out=tmp_path / "bad", steps=2, max_minutes=0, progress=False)


def test_real_suite_needs_its_folder(tmp_path):
    with pytest.raises(SynthmedError, match="pass --data"):
        benchmark(tmp_path / "a", suite="real", models=["pix2pix"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SynthmedError, match="missing under"):
        benchmark(tmp_path / "b", suite="real", models=["pix2pix"], data=tmp_path / "empty")
    with pytest.raises(SynthmedError, match="both --source and --target"):
        benchmark(tmp_path / "c", suite="real", models=["pix2pix"], data=tmp_path / "empty", source="t1")


def test_real_suite_manifest_on_the_shared_scans(real_data, tmp_path):
    from synthmed.data.discovery import discover
    from synthmed.data.recipes.shared_real import REAL_SUBJECTS, real_suite_manifest

    subjects = {s.id: s for s in discover(real_data, manifest=real_suite_manifest(real_data, tmp_path / "m.csv"))}
    assert set(subjects) == set(REAL_SUBJECTS)
    for subject in subjects.values():
        assert sorted(subject.files) == ["flair", "t1", "t1c", "t2"]
        assert (subject.split == "test") == (subject.label is not None)  # every test scan has a lesion label
    assert sorted(s for s, v in subjects.items() if v.split == "test") == ["TCGA-DU-7294", "patient07"]


def test_report_of_a_suite_of_tasks_has_a_section_and_a_table_per_task(tiny_benchmark, tmp_path):
    suite = tmp_path / "suite"
    suite.mkdir()
    tasks = {}
    for source, target in (("t1", "t2"), ("t2", "t1")):
        name = f"{source}-to-{target}"
        (suite / name).symlink_to(tiny_benchmark, target_is_directory=True)
        tasks[name] = {"folder": name, "source": source, "target": target}
    (suite / "benchmark.json").write_text(json.dumps({"suite": "real", "tasks": tasks}))
    out = tmp_path / "suite.html"
    assert main(["report", str(suite), "--out", str(out), "--quiet"]) == 0
    text = out.read_text()
    assert "2 task(s)" in text
    methods = json.loads((tiny_benchmark / "benchmark.json").read_text())["methods"]
    for name in tasks:
        assert text.count(f"<table id='metrics-{name}'") == 1
        table = text.split(f"<table id='metrics-{name}'", 1)[1].split("</table>", 1)[0]
        assert table.count("<tr class='method'>") == 1 + len(methods)


def test_real_suite_runs_one_task_end_to_end(real_data, tmp_path):
    """The real scans' own file names and geometries through the whole protocol (one method, one step)."""
    out = tmp_path / "real"
    index = benchmark(
        out,
        suite="real",
        data=real_data,
        models=["pix2pix"],
        source="t2",
        target="flair",
        budget_steps=1,
        batch_size=2,
        threads=1,
        progress=False,
    )
    assert index["complete"] and list(index["tasks"]) == ["t2-to-flair"]
    task = json.loads((out / "t2-to-flair" / "benchmark.json").read_text())
    assert task["data"]["split"]["test"] == ["TCGA-DU-7294", "patient07"]
    assert task["data"]["lesion_subjects"] == ["TCGA-DU-7294", "patient07"]  # from the manifest's label column
    scores = task["methods"]["pix2pix"]["repeats"][0]["scores"]
    assert (
        set(scores["overall"]["per_subject"]) == set(scores["lesion"]["per_subject"]) == {"TCGA-DU-7294", "patient07"}
    )
    assert main(["report", str(out), "--out", str(tmp_path / "real.html"), "--quiet"]) == 0


def test_a_benchmark_folder_prepared_for_another_task_is_refused(prepared, tmp_path):
    out = tmp_path / "bench"
    out.mkdir()
    shutil.copytree(prepared, out / "prep")  # T1 -> T2 at 32 px
    with pytest.raises(SynthmedError, match="holds t1 -> t2 at 32 px, not t2 -> t1"):
        benchmark(out, models=["pix2pix"], data=tmp_path / "data", source="T2", target="T1", progress=False)
