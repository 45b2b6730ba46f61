"""Fixtures of the browser tests: Debian's headless Chromium driven by Selenium, a real server.

Chromium and its driver are Debian's (``apt-get install chromium chromium-driver``,
``scripts/system-deps.sh``); the driver's path is given to Selenium, so Selenium Manager never
runs and nothing is downloaded. Without them the tests are skipped, except under ``CI=true``
where they fail saying what to install.

Screenshots of every page go to ``$JOBENERGY_ARTIFACTS/screenshots`` (default
``test-artifacts/screenshots`` under the repository, git-ignored); the directory is printed at
the end of the run.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("JOBENERGY_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("JOBENERGY_CHROMEDRIVER", "/usr/bin/chromedriver")
MISSING = ("the browser tests need Debian's chromium and chromium-driver (apt-get install "
           "chromium chromium-driver, or scripts/system-deps.sh) and selenium (pip install -e "
           "'.[test]')")
#: Longest wait for a page to settle (a cold Chromium on 2 busy cores takes a few seconds).
WAIT_S = 30


def _load(stem: str) -> ModuleType:
    name = f"jobenergy_tests_web_{stem}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{stem}.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="session")
def scenario() -> ModuleType:
    """The known workload (tests/web/scenario.py)."""
    return _load("scenario")


def artifacts_dir() -> Path:
    """Return where screenshots go (``$JOBENERGY_ARTIFACTS`` or test-artifacts/)."""
    base = os.environ.get("JOBENERGY_ARTIFACTS")
    return (Path(base) if base else ROOT / "test-artifacts") / "screenshots"


_saved: list[Path] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say where the screenshots are."""
    if _saved:
        terminalreporter.write_line(
            f"web page screenshots ({len(_saved)}): {artifacts_dir()}")


def _need_browser() -> None:
    found = Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()
    if found and importlib.util.find_spec("selenium") is not None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(MISSING)
    pytest.skip(MISSING)


class Browser:
    """A headless Chromium on one server, with the checks every page gets."""

    def __init__(self, driver: Any, base_url: str, downloads: Path) -> None:
        self.driver = driver
        self.base_url = base_url
        self.downloads = downloads

    # -- navigation --------------------------------------------------------------------------

    def open(self, path: str, state: str = "ready") -> None:
        """Load ``path`` and wait until the page has settled in ``state``."""
        self.drain()
        self.driver.get(self.base_url + path)
        self.settle(state)

    def settle(self, state: str = "ready", renders: int | None = None) -> None:
        """Wait until ``<body data-state>`` is final (and ``data-renders`` > ``renders``)."""
        from selenium.webdriver.support.ui import WebDriverWait

        def settled(driver: Any) -> bool:
            got = driver.execute_script(
                "return [document.body.dataset.state, Number(document.body.dataset.renders)]")
            if got[0] not in ("ready", "error", "signin"):
                return False
            return renders is None or got[0] != "ready" or got[1] > renders
        WebDriverWait(self.driver, WAIT_S).until(settled)
        got = self.js("return document.body.dataset.state")
        error = self.js("const e = document.getElementById('error'); return e && e.textContent")
        assert got == state, f"page state {got!r}, expected {state!r}: {error}"

    def renders(self) -> int:
        return int(self.js("return Number(document.body.dataset.renders)"))

    def change(self, field: str, value: str) -> None:
        """Set a filter field and wait for the page to draw again."""
        before = self.renders()
        self.js("const f = document.querySelector(`#filters [name='${arguments[0]}']`);"
                "f.value = arguments[1]; f.dispatchEvent(new Event('change', {bubbles: true}));",
                field, value)
        self.settle(renders=before)

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    # -- reading the page --------------------------------------------------------------------

    def text(self, selector: str) -> str:
        return self.js("const e = document.querySelector(arguments[0]); "
                       "return e ? e.textContent : null", selector)

    def table(self, selector: str) -> list[dict[str, Any]]:
        """Return a table's rows: column -> (text, data-value or None)."""
        return self.js("""
            return [...document.querySelectorAll(arguments[0] + ' tbody tr')].map(tr =>
              Object.fromEntries([...tr.children].map(td => [td.dataset.col,
                [td.textContent, td.dataset.value === undefined ? null
                  : Number(td.dataset.value)]])));""", selector)

    def chart(self, name: str) -> dict[str, Any]:
        """Return what a chart holds: series labels, data, axis labels, drawn values."""
        return self.js("""
            const u = JE.charts[arguments[0]];
            if (!u) return null;
            return {labels: u.series.slice(1).map(s => s.label), data: u.data,
                    axes: u.axes.map(a => a.label || null), counts: JE.counts(arguments[0]),
                    title: u.root.querySelector('.u-title') ?
                      u.root.querySelector('.u-title').textContent : null,
                    categories: u.jeCategories || null, stride: u.jeStride || null,
                    bands: (u.jeBands || []).map(b => b.label)};""", name)

    def legend_at(self, name: str, index: int) -> list[str]:
        """Move the chart's cursor to data index ``index``; return the legend's values."""
        return self.js("""
            const u = JE.charts[arguments[0]];
            const x = u.data[0][arguments[1]];
            u.setCursor({left: u.valToPos(x, 'x'), top: u.bbox.height / 4 / devicePixelRatio});
            return [...u.root.querySelectorAll('.u-legend .u-series')]
              .map(tr => tr.querySelector('.u-value') ? tr.querySelector('.u-value').textContent
                : null);""", name, index)

    # -- checks every page gets -------------------------------------------------------------

    def drain(self) -> tuple[list[str], list[dict[str, Any]]]:
        """Return (and forget) the URLs requested and the console entries since last time."""
        urls = []
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message["method"] == "Network.requestWillBeSent":
                urls.append(message["params"]["request"]["url"])
            elif message["method"] == "Network.webSocketCreated":
                urls.append(message["params"]["url"])
        return urls, self.driver.get_log("browser")

    def check_requests(self, allow_console: tuple[str, ...] = ()) -> list[str]:
        """Assert that every request went to the server and the console has no error."""
        urls, console = self.drain()
        assert urls, "no request seen: is the performance log on?"
        local = (self.base_url + "/", "data:", f"blob:{self.base_url}/")
        outside = [u for u in urls if not u.startswith(local)]
        assert not outside, f"requests off {self.base_url}: {outside}"
        bad = [e["message"] for e in console
               if (e["level"] == "SEVERE" or "Content Security Policy" in e["message"])
               and not any(a in e["message"] for a in allow_console)]
        assert not bad, f"console errors: {bad}"
        return urls

    def screenshot(self, name: str) -> Path:
        """Save a full-page PNG under the artifacts directory."""
        shot = self.driver.execute_cdp_cmd(
            "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        out = artifacts_dir()
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{name}.png"
        path.write_bytes(base64.b64decode(shot["data"]))
        _saved.append(path)
        return path


@pytest.fixture(scope="module")
def make_browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Browser]]:
    """Return ``make_browser(base_url) -> Browser`` (quit at the end of the module)."""
    _need_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    drivers = []
    work = tmp_path_factory.mktemp("chromium")

    def factory(base_url: str) -> Browser:
        options = Options()
        options.binary_location = CHROMIUM
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu",
                    "--disable-dev-shm-usage", "--window-size=1400,1000",
                    "--no-first-run", "--no-default-browser-check",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-extensions", "--disable-sync", "--lang=en-US",
                    f"--user-data-dir={work / f'profile{len(drivers)}'}"):
            options.add_argument(arg)
        options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
        service = Service(executable_path=CHROMEDRIVER,
                          log_output=str(work / f"chromedriver{len(drivers)}.log"))
        driver = webdriver.Chrome(options=options, service=service)
        drivers.append(driver)
        downloads = work / f"downloads{len(drivers)}"
        downloads.mkdir()
        driver.execute_cdp_cmd("Browser.setDownloadBehavior",
                               {"behavior": "allow", "downloadPath": str(downloads)})
        return Browser(driver, base_url, downloads)

    yield factory
    for driver in drivers:
        driver.quit()
    shutil.rmtree(work, ignore_errors=True)
