"""Debian's chromium driven through chromedriver, for the dashboard's browser tests."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest


@contextmanager
def chromium(
    accept_language: str | None = None,
    arguments: Sequence[str] = (),
    network_log: bool = False,
) -> Iterator[Any]:
    """A headless chromium (a selenium ``WebDriver``); skipped where none is installed.

    ``accept_language``: the languages the browser asks for, as its user would set them
    (for example ``"vi-VN,vi"``); chromium's own default (English) when None.
    ``arguments``: more command-line switches. ``network_log``: keep the DevTools network
    events, read with ``driver.get_log("performance")``.
    """
    binary = shutil.which("chromium")
    driver_path = shutil.which("chromedriver")
    if not binary or not driver_path:
        if os.environ.get("CI"):
            pytest.fail("chromium and chromium-driver must be installed (see .ci/run)")
        pytest.skip(
            "chromium/chromedriver not installed (apt-get install chromium chromium-driver)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as ChromeService

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1800"):
        options.add_argument(flag)
    for flag in arguments:
        options.add_argument(flag)
    if network_log:
        options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    if accept_language:
        options.add_argument(f"--lang={accept_language.split(',')[0]}")
        options.add_experimental_option("prefs", {"intl.accept_languages": accept_language})
    driver = webdriver.Chrome(service=ChromeService(driver_path), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
