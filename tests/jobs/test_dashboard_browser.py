"""The dashboard in a real browser: Playwright driving Debian's Chromium (never a browser
download) against a real server over a real local run: the run list shows the run, its curve
gains points while the job runs, and the finished run's report appears. Screenshots go to
/tmp/ui-shots/ (1366x900 and 800 px wide) for a person to look at."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # pytest's importlib mode: no sys.path magic
from runhelp import SELFTEST, cli, cloud, run_ids, settings  # noqa: E402,F401

SHOTS = Path(os.environ.get("FERRY_UI_SHOTS", "/tmp/ui-shots"))


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


@pytest.fixture
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
    exe = chromium()
    if exe is None:
        pytest.skip("no Chromium on this machine (Debian: apt-get install chromium); the browser test needs it")
    args = ["--no-sandbox"] if os.geteuid() == 0 else []  # Chromium refuses root without it
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=args)
        try:
            yield b
        finally:
            b.close()


def points(page, chart: str) -> int:
    return int(page.get_attribute(f"#{chart}", "data-points") or 0)


def test_run_list_live_curve_and_report_in_chromium(cloud, browser, tmp_path):
    from jobs.dashboard import make_server

    SHOTS.mkdir(parents=True, exist_ok=True)
    server = make_server(settings(), port=0, cache=tmp_path / "cache").start()
    try:
            # (page functions below are arrow functions: a string expression is eval()ed, which the
        # dashboard's Content-Security-Policy rightly forbids)
        page = browser.new_page(viewport={"width": 1366, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.goto(server.url)
        assert page.locator("#no-runs").is_visible()  # the empty state first

        # a slow real job on the local backend; `--detach` returns while it runs
        r = cli(cloud, "run", SELFTEST, "--detach", "--set", "epochs=16", "--set", "sleep=0.6", "--set", "message=<b>hi</b>")
        assert r.returncode == 0, r.stderr
        run_id = run_ids(cloud.bucket)[0]
        row = page.locator(f'tr[data-run="{run_id}"]')
        row.wait_for(timeout=15000)  # the list refreshes itself
        assert row.locator("td").nth(1).inner_text() == "selftest"
        assert row.locator(".badge").inner_text() in ("running", "syncing", "provisioning", "succeeded")
        row.locator("a").click()
        page.wait_for_url(f"**/runs/{run_id}")

        # the curve gets new points while the job runs
        page.wait_for_function("() => document.querySelector('#chart-loss').dataset.points > 0", timeout=30000)
        seen = points(page, "chart-loss")
        page.wait_for_function(f"() => document.querySelector('#chart-loss').dataset.points > {seen}", timeout=30000)
        grown = page.evaluate("""() => ({n: +document.querySelector('#chart-loss').dataset.points,
                                        state: document.querySelector('#state').textContent})""")
        assert grown["n"] > seen and grown["state"] == "running", grown  # new points, and the run still live
        assert points(page, "chart-acc") >= 2 * grown["n"] - 2  # test and train accuracy
        assert "epoch 1 loss" in page.inner_text("#log")
        assert page.locator("#log b").count() == 0  # the log is text
        page.screenshot(path=str(SHOTS / "run-live-1366.png"), full_page=True)
        page.set_viewport_size({"width": 800, "height": 900})
        page.screenshot(path=str(SHOTS / "run-live-800.png"), full_page=True)
        page.set_viewport_size({"width": 1366, "height": 900})

        # the run ends: the badge says so, every epoch is drawn, the report appears below
        page.wait_for_function("() => document.querySelector('#state').textContent === 'succeeded'", timeout=60000)
        assert points(page, "chart-loss") == 16
        report = page.frame_locator("#report-frame")
        report.locator("h1").wait_for(timeout=30000)
        assert run_id in report.locator("h1").inner_text()
        assert "Best test accuracy" in report.locator("body").inner_text()
        page.wait_for_function("""() => { const d = document.querySelector('#report-frame').contentDocument;
            const imgs = d ? [...d.images] : [];
            return imgs.length >= 2 && imgs.every(i => i.complete && i.naturalWidth > 0); }""", timeout=20000)
        assert "selftest end: exit 0" in page.inner_text("#log")
        page.screenshot(path=str(SHOTS / "run-done-1366.png"), full_page=True)
        page.set_viewport_size({"width": 800, "height": 900})
        page.screenshot(path=str(SHOTS / "run-done-800.png"), full_page=True)

        page.goto(server.url)
        page.locator(f'tr[data-run="{run_id}"] .badge').wait_for()
        assert page.locator(f'tr[data-run="{run_id}"] .badge').inner_text() == "succeeded"
        page.screenshot(path=str(SHOTS / "runs-800.png"), full_page=True)
        page.set_viewport_size({"width": 1366, "height": 900})
        page.screenshot(path=str(SHOTS / "runs-1366.png"), full_page=True)
        assert errors == [], errors  # no script errors, no CSP violations
        page.goto(server.url + "runs/mnist-nn-20990101-000000-none")
        assert "404" in page.locator("h1").inner_text()
    finally:
        server.shutdown()
