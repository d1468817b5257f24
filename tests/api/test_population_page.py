"""The planners' page in a real headless browser (Debian's chromium driven by playwright): sign in
with an API key, open a finished population job, read the table back against the JSON, download
the results, take a screenshot. The key is typed once and never appears in an address or the
audit log. Needs /usr/bin/chromium (.ci/run installs Debian's package); skips without it."""

from __future__ import annotations

import io
import json
import os
import shutil
import zipfile
from pathlib import Path

import pytest

from tests.inference import harness

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# No network here: without these Chromium keeps trying to reach Google's services at start.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
KEY = harness.API_KEYS["forecaster"][0]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "runs" / "screenshots"


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        why = "no chromium on this machine (apt-get install chromium; .ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(f"CI needs the browser test: {why}")
        pytest.skip(why)
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield b
        b.close()


def test_a_planner_signs_in_reads_the_forecast_and_downloads_it(browser, server, population_job, tmp_path):
    jid = population_job["id"]
    page = browser.new_context(accept_downloads=True).new_page()
    urls = []
    page.on("request", lambda req: urls.append(req.url))

    page.goto(f"{server.url}/population/{jid}")
    assert page.locator("#key").is_visible()  # not signed in: the sign-in form, not the numbers
    assert page.locator("table.cells").count() == 0
    page.fill("#key", "not-a-key")
    page.click("#sign-in")
    assert "Unknown API key" in page.locator("#message").inner_text()
    page.fill("#key", KEY)
    page.click("#sign-in")
    page.click(f"a[href='/population/{jid}']")
    assert page.locator("#status").inner_text() == "done" and page.locator("#gate").inner_text() == "passed"

    cookie = next(c for c in page.context.cookies() if c["name"] == "ng_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and KEY not in cookie["value"]

    shown = hidden = 0
    for c in population_job["results"]["cells"]:
        row = page.locator(f"tr[data-cell='{c['outcome']}|{c['horizon_days']:g}|{c['group']}|{c['value']}']")
        assert row.count() == 1, c
        if c["suppressed"]:
            assert row.locator("td.suppressed").inner_text() == f"suppressed ({c['suppressed']})"
            assert row.locator("[data-field=expected]").count() == 0
            hidden += 1
            continue
        shown += 1
        assert row.locator("[data-field=expected]").inner_text() == f"{c['expected']:.2f}"
        assert row.locator("[data-field=patients]").inner_text() == str(c["patients"])
        assert row.locator("[data-field=interval]").inner_text() == f"{c['lower']:.2f} – {c['upper']:.2f}"
        assert row.locator("[data-field=observed]").inner_text() == str(c["observed"])
    charted = {(c["outcome"], c["group"]) for c in population_job["results"]["cells"]
               if c["group"] != "all" and not c["suppressed"]}
    assert shown >= 1 and hidden >= 1 and page.locator("svg.chart").count() == len(charted)

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shot = page.screenshot(path=str(SCREENSHOTS / "population_page.png"), full_page=True)
    assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 20_000

    with page.expect_download() as dl:
        page.click("#download")
    z = zipfile.ZipFile(io.BytesIO(Path(dl.value.path()).read_bytes()))
    assert json.loads(z.read("aggregates.json"))["cells"] == population_job["results"]["cells"]

    page.click("text=Sign out")
    page.goto(f"{server.url}/population/{jid}")
    assert page.locator("#key").is_visible()
    assert urls and not any(KEY in u for u in urls)
    with open(server.cfg.audit_log) as f:
        text = f.read()
    assert KEY not in text
    pages = [json.loads(line) for line in text.splitlines() if json.loads(line)["endpoint"].startswith("/population")]
    assert any(p["endpoint"] == "/population/{job_id}" and p["key_id"] == "forecaster" and p["status"] == 200 for p in pages)
