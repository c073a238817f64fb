"""report.html in a real browser: headless Chromium renders it with no console error and
loads nothing but the page itself (served from a local HTTP server that records every
request, since browsers keep no resource timing for file:// pages).

Needs no root, only Chromium; marked ``root`` so CI (which installs Chromium and sets
TWIN_REQUIRE_ROOT_TESTS=1) must run it rather than skip it.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from twin.experiment.report import build_report

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_report import SITES, write_run_dir  # noqa: E402  (the unit tests' synthetic run directory)

pytestmark = pytest.mark.root

CONSOLE = re.compile(r'CONSOLE[^\]]*\] "(.*)", source: ')
# Appended to a copy of the report only: after load, report every image that did not decode,
# every reference to something outside the page, and the map's size.
CHECK_SCRIPT = """<script>
window.addEventListener("load", () => {
  const broken = [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt || i.src);
  const outside = [...document.querySelectorAll("[src],[href]")]
    .map(e => e.getAttribute("src") ?? e.getAttribute("href"))
    .filter(v => !v.startsWith("data:") && !v.startsWith("#"));
  const map = document.getElementById("map");
  const box = map ? map.getBoundingClientRect() : {width: 0, height: 0};
  console.log("REPORT-CHECK " + JSON.stringify({images: document.images.length, broken, outside,
    map_width: box.width, map_height: box.height, circles: map ? map.querySelectorAll("circle").length : 0}));
});
</script>"""


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        message = "chromium not installed (apt-get install -y chromium)"
        if os.environ.get("TWIN_REQUIRE_ROOT_TESTS") == "1":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


class RecordingHandler(http.server.SimpleHTTPRequestHandler):
    requests: list[str]

    def do_GET(self):
        self.requests.append(self.path)
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def served(report):
    """Serves the run directory on 127.0.0.1; yields (base URL, list of paths requested)."""
    requests: list[str] = []
    handler = type("Handler", (RecordingHandler,), {"requests": requests})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(handler, directory=str(report.parent)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def open_in_chromium(url: str, profile: Path) -> tuple[str, list[str]]:
    """(DOM after load, console messages) of ``url`` in headless Chromium."""
    proc = subprocess.run(
        [chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
         "--no-first-run", "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000",
         "--dump-dom", url],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, CONSOLE.findall(proc.stderr)


def page_requests(requests: list[str]) -> list[str]:
    return [r for r in requests if r != "/favicon.ico"]     # the browser asks for it on its own


def check_result(console: list[str]) -> dict:
    lines = [m for m in console if m.startswith("REPORT-CHECK ")]
    assert len(lines) == 1, console
    return json.loads(lines[0].removeprefix("REPORT-CHECK "))


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    run_dir = write_run_dir(tmp_path_factory.mktemp("browser") / "run", mode="emulated", requests=True,
                            probes=True)
    return build_report(run_dir)


def test_report_renders_without_console_errors(report, tmp_path):
    dom, console = open_in_chromium(report.as_uri(), tmp_path / "profile")
    assert not console, console          # the report has no script: any console message is an error
    for service in ("drive-assist", "farm"):
        assert service in dom
    assert '<svg id="map"' in dom
    for site in SITES:
        assert f">{site['id']}</text>" in dom
    assert dom.count('<img src="data:image/png;base64,') == 5


def test_images_decode_and_nothing_is_fetched(report, served, tmp_path):
    base, requests = served
    page = report.with_name("checked.html")
    page.write_text(report.read_text().replace("</body>", CHECK_SCRIPT + "</body>"))
    _, console = open_in_chromium(f"{base}/checked.html", tmp_path / "profile")
    errors = [m for m in console if "Uncaught" in m or "Error" in m]
    assert not errors, errors
    result = check_result(console)
    assert result["images"] == 5 and result["broken"] == []
    assert result["outside"] == []
    assert page_requests(requests) == ["/checked.html"]
    assert result["map_width"] > 300 and result["map_height"] > 200
    assert result["circles"] >= 3 + 4      # 3 sites, drive-assist at 1 site, farm at 3


def test_the_check_catches_a_broken_page(report, served, tmp_path):
    """The browser checks above can fail: a missing image, a fetch and a script error all show."""
    base, requests = served
    page = report.with_name("broken.html")
    page.write_text(report.read_text().replace(
        "</body>", '<img src="missing.png" alt="missing"><script>undefinedFunction()</script>'
                   + CHECK_SCRIPT + "</body>"))
    _, console = open_in_chromium(f"{base}/broken.html", tmp_path / "profile")
    assert any("Uncaught ReferenceError" in m for m in console), console
    result = check_result(console)
    assert result["broken"] == ["missing"] and result["outside"] == ["missing.png"]
    assert page_requests(requests) == ["/broken.html", "/missing.png"]
