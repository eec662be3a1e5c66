"""``synthmed report`` checked in a real browser: headless Chromium loads the page and we read back what it saw.

Chromium comes from Debian's ``chromium`` package (setup.sh installs it where it can); SYNTHMED_CHROMIUM names
another binary. The tests skip when no Chromium is found or when it cannot render even a trivial page; once it
can, anything wrong with the report is a failure, not a skip.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest

from synthmed.cli import main

# No network here (and none needed: the page is self-contained), no GPU, no profile left behind.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ATTRIBUTE = "data-browser-check"
# Runs on `load` (after every image has loaded or failed) and leaves its findings on <body>, which --dump-dom prints.
PROBE = (
    """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images, (img) => ({
    loaded: img.complete && img.naturalWidth > 0, width: img.naturalWidth, height: img.naturalHeight}));
  const rows = Array.from(document.querySelectorAll("#metrics tr.method"),
                          (tr) => tr.cells.length ? tr.cells[0].textContent.trim() : "");
  document.body.setAttribute("%s", JSON.stringify({images, rows}));
});
</script>"""
    % ATTRIBUTE
)


class RenderError(Exception):
    """Chromium did not give back the probe's findings."""


def render(chromium: str, page: str, timeout: float = 60) -> dict:
    """Load the HTML text ``page`` in headless Chromium; returns ``{"images": [{loaded, width, height}, ...],
    "rows": [first cell of each #metrics tr.method, ...]}`` as the browser saw them. Raises RenderError when
    Chromium fails, hangs or the probe's result is missing."""
    with tempfile.TemporaryDirectory(prefix="synthmed-chromium-") as work:
        path = Path(work) / "page.html"
        at = page.rfind("</body>")
        path.write_text(page[:at] + PROBE + page[at:] if at >= 0 else page + PROBE, encoding="utf-8")
        command = [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={Path(work) / 'profile'}",
            "--virtual-time-budget=10000",
            "--dump-dom",
            path.as_uri(),
        ]
        try:
            # Own process group, so that a hung browser is ended with all of its helper processes.
            process = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as error:
            raise RenderError(f"cannot run {chromium}: {error}") from error
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise RenderError(f"{chromium} did not finish within {timeout:.0f} s") from None
    found = _body_attribute(out.decode("utf-8", "replace"))
    if process.returncode != 0 or found is None:
        tail = "\n".join(err.decode("utf-8", "replace").strip().splitlines()[-5:])
        raise RenderError(
            f"{chromium} exited with status {process.returncode} and "
            f"{'its' if found is not None else 'no'} probe result"
            + (f"; stderr ends:\n{tail}" if tail else " (no stderr)")
        )
    return json.loads(found)


def _body_attribute(dom: str) -> str | None:
    class Body(HTMLParser):
        value = None

        def handle_starttag(self, tag, attrs):
            if tag == "body" and self.value is None:
                self.value = dict(attrs).get(ATTRIBUTE)

    parser = Body()
    parser.feed(dom)
    return parser.value


def _find_chromium() -> str:
    named = os.environ.get("SYNTHMED_CHROMIUM")
    if named:  # explicit: use it or skip, never fall back to another browser
        found = shutil.which(named)
        if not found:
            pytest.skip(f"SYNTHMED_CHROMIUM={named} is not an executable")
        return found
    for name in ("chromium", "chromium-browser"):
        if found := shutil.which(name):
            return found
    pytest.skip(
        "no Chromium on PATH (chromium, chromium-browser) and SYNTHMED_CHROMIUM unset; "
        "setup.sh installs Debian's chromium where it runs as root with apt-get"
    )


@pytest.fixture(scope="session")  # session, like tiny_benchmark, so that a skip comes before that fixture's 20 s
def chromium() -> str:
    """A Chromium that renders a trivial page; skips otherwise (with the reason)."""
    binary = _find_chromium()
    try:
        seen = render(binary, "<!DOCTYPE html><html><body><p>probe</p></body></html>")
    except RenderError as error:
        pytest.skip(f"Chromium cannot start here: {error}")
    assert seen == {"images": [], "rows": []}
    return binary


class _ImgTags(HTMLParser):
    count = 0

    def handle_starttag(self, tag, attrs):
        self.count += tag == "img"


def test_report_renders_in_chromium_with_every_image_and_a_row_per_method(chromium, tiny_benchmark, tmp_path):
    out = tmp_path / "report.html"
    assert main(["report", str(tiny_benchmark), "--out", str(out), "--quiet"]) == 0
    page = out.read_text(encoding="utf-8")
    seen = render(chromium, page)

    tags = _ImgTags()
    tags.feed(page)
    assert tags.count > 0 and len(seen["images"]) == tags.count
    broken = [
        i
        for i, image in enumerate(seen["images"])
        if not (image["loaded"] and image["width"] > 0 and image["height"] > 0)
    ]
    assert not broken, f"images that did not load in Chromium (by position): {broken}"

    methods = list(json.loads((tiny_benchmark / "benchmark.json").read_text())["methods"])
    assert seen["rows"] == ["identity", *methods]


def test_browser_check_sees_a_broken_image(chromium):
    """The check is not vacuous: a corrupt data URI is reported as not loaded, a good one as loaded."""
    good = (
        "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8"
        "AAAAASUVORK5CYII="
    )  # 1 x 1 PNG
    page = (
        f"<!DOCTYPE html><html><body><img src='{good}'><img src='data:image/png;base64,iVBORw0KGgoAAAA'>"
        "<table id='metrics'><tr class='method'><td>identity</td></tr></table></body></html>"
    )
    seen = render(chromium, page)
    assert [image["loaded"] for image in seen["images"]] == [True, False]
    assert seen["images"][0]["width"] == 1 and seen["images"][1]["width"] == 0
    assert seen["rows"] == ["identity"]
