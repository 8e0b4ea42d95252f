"""A real browser for tests: Debian's headless Chromium driven through its chromedriver by Selenium (``make
browser`` installs both; nothing is downloaded). Screenshots go to ``RLP_TEST_ARTIFACTS`` (default
``test-artifacts/`` in the checkout), kept for a person to look at."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ARTIFACTS = Path(os.environ.get("RLP_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts"))


def missing() -> str | None:
    """Why no browser can start here, or None."""
    absent = [name for name in ("chromium", "chromedriver") if shutil.which(name) is None]
    return f"{' and '.join(absent)} not installed (make browser)" if absent else None


@contextmanager
def chromium(width: int = 1400, height: int = 2000) -> Iterator:
    """A headless Chromium session, quit at the end even on failure. Under ``CI`` a missing browser fails the
    test; elsewhere the test is skipped, saying what is missing."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    why = missing()
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(f"browser: {why}")
        pytest.skip(f"browser: {why}")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument(f"--window-size={width},{height}")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=shutil.which("chromedriver")))
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver, name: str) -> Path:
    """The whole page as ``ARTIFACTS/name.png``."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(driver.get_window_size()["width"], max(height, 800))
    driver.save_screenshot(str(path))
    return path
