"""Headless Chromium for the report tests (Selenium driving the system's Chromium).

`make test` installs Debian's `chromium` and `chromium-driver` when they are missing.
Elsewhere the browser tests skip with the reason, except where ALIGNKIT_REQUIRE_BROWSER=1
(CI sets it): there a missing browser is a failure, never a skip.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def _missing_browser(reason: str):
    if os.environ.get("ALIGNKIT_REQUIRE_BROWSER") == "1":
        pytest.fail(f"ALIGNKIT_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(f"{reason} (install Debian's chromium and chromium-driver, or run make test)")


def start_chromium():
    """A headless Chromium WebDriver that records the browser console."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing_browser("selenium is not installed")
    binary = next((shutil.which(n) for n in CHROMIUM_NAMES if shutil.which(n)), None)
    driver_path = shutil.which("chromedriver")
    if binary is None or driver_path is None:
        _missing_browser("no chromium/chromedriver on PATH")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    options.add_argument("--window-size=1400,1000")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=driver_path), options=options)


@dataclass
class PageCheck:
    plots: int  # div.plot elements
    drawn: list[dict]  # per plot: width, height, traces drawn
    console_errors: list[str]
    resources: list[str]  # every URL the page fetched beyond itself


# Per plot div: the size of Plotly's SVG and how many traces it drew.
_PLOT_STATE = """
return Array.from(document.querySelectorAll('div.plot')).map(function (div) {
  var svg = div.querySelector('svg.main-svg');
  var box = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
  return {id: div.id, width: box.width, height: box.height,
          traces: div.querySelectorAll('g.trace, g.point').length};
});
"""


def open_offline(driver, page: Path) -> PageCheck:
    """Load `page` from a file:// URL with the network switched off; what rendered."""
    driver.set_network_conditions(
        offline=True, latency=0, download_throughput=0, upload_throughput=0
    )
    driver.get_log("browser")  # drop anything logged before this page
    driver.get(page.resolve().as_uri())
    drawn = driver.execute_script(_PLOT_STATE)
    resources = driver.execute_script(
        "return performance.getEntriesByType('resource').map(function (e) { return e.name; });"
    )
    errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    return PageCheck(len(drawn), drawn, errors, resources)
