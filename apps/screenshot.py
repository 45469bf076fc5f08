"""Drive headless Chromium (selenium) over a running dashboard: wait for a view to finish drawing, save a PNG."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any


def chromium_paths() -> tuple[str, str] | None:
    """(chromium binary, chromedriver) found on PATH (Debian's `chromium` and `chromium-driver`), or None."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def make_driver(width: int = 1500, height: int = 1500) -> Any:
    """A headless Chromium webdriver (selenium), sandbox off for containers; RuntimeError if Chromium is missing."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    found = chromium_paths()
    if found is None:
        raise RuntimeError("headless test needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = found[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", f"--window-size={width},{height}"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(found[1]), options=opts)


def wait_for_view(driver: Any, texts: list[str], timeout: float = 90.0, plots: int = 0) -> str:
    """Wait until the page shows every string in ``texts``, ``plots`` drawn plotly charts, and Streamlit has stopped running.

    Returns the page text.
    """
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout
    body = ""
    while time.monotonic() < deadline:
        body = driver.find_element(By.TAG_NAME, "body").text
        running = driver.find_elements(By.CSS_SELECTOR, "[data-testid='stStatusWidget']")
        drawn = len(driver.find_elements(By.CSS_SELECTOR, ".js-plotly-plot .main-svg"))
        if all(t in body for t in texts) and not running and drawn >= plots:
            time.sleep(1.5)  # let plotly finish its first draw
            return driver.find_element(By.TAG_NAME, "body").text
        time.sleep(0.5)
    missing = [t for t in texts if t not in body]
    raise TimeoutError(f"dashboard view did not show {missing} within {timeout:.0f} s; page text: {body[:300]!r}")


def capture(driver: Any, url: str, texts: list[str], out: str | Path, timeout: float = 90.0, plots: int = 0) -> str:
    """Open ``url``, wait for ``texts`` and ``plots`` drawn charts, save a PNG at ``out``; return the page text."""
    driver.get(url)
    body = wait_for_view(driver, texts, timeout, plots)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(out))
    return body
