"""The loop's HTML report renders in headless Chromium with no console errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from selfimprove.report import render_run_report


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:  # .ci/run installs Debian's chromium; a missing browser is a failure
        pytest.fail("Chromium not found: install it with `apt-get install -y chromium`.")
    return exe


def test_report_renders_in_headless_chromium(full_run, tmp_path):
    from playwright.sync_api import sync_playwright

    _store, res = full_run
    report = render_run_report(res.run_dir)
    text = report.read_text()
    assert "<script" not in text and "http://" not in text and "https://" not in text
    errors: list[str] = []
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=_chromium(),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: requests.append(r.url))
        page.goto(Path(report).as_uri())
        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot), full_page=True)
        n_svg = page.locator("svg").count()
        rows = page.locator("table tr").count()
        title = page.title()
        browser.close()
    assert not errors, errors
    assert all(u.startswith("file://") for u in requests), requests
    assert shot.stat().st_size > 10_000
    assert n_svg >= 1 and rows == 1 + len(res.rounds)
    assert res.run_id in title
