#!/usr/bin/env python3
"""Drives a real headless Chromium (selenium + chromedriver) through the
admin page for tests/page.rs and prints what it saw as one JSON object.

usage: browser.py URL SCREENSHOT CHROMIUM CHROMEDRIVER JOB_JSON

JOB_JSON: {"explain": [{"host", "path", "method", "identity", "want"}...],
           "filter": "text to type into the routes filter"}
Assertions are made by the Rust test on the printed JSON; this script only
fails when the page does not load or an expected answer never appears.
"""
import json
import sys
import tempfile
import time

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait


def full_page(driver, width):
    """Resizes the window so the viewport holds the whole document."""
    driver.set_window_size(width, 900)
    time.sleep(0.2)
    chrome = driver.execute_script("return window.outerHeight - window.innerHeight")
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(width, min(height + chrome + 8, 8000))
    time.sleep(0.3)


def main():
    url, screenshot, chromium, chromedriver, job = sys.argv[1:6]
    job = json.loads(job)
    profile = tempfile.mkdtemp(prefix="isthmus-chromium-")
    opts = Options()
    opts.binary_location = chromium
    for arg in [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--window-size=1280,900",
        "--user-data-dir=" + profile,
    ]:
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=opts)
    out = {}
    try:
        wait = WebDriverWait(driver, 20)
        driver.get(url)
        wait.until(lambda d: d.execute_script("return document.body.dataset.loaded") == "1")
        # Let one more refresh land (peers are sampled as status.json is served).
        wait.until(lambda d: "spiffe://" in d.find_element(By.ID, "peers").text)
        out["title"] = driver.title
        out["sections"] = {
            s: driver.find_element(By.ID, s).text
            for s in ["routes", "peers", "remotes", "discovery", "tls", "errors"]
        }
        out["header"] = driver.find_element(By.TAG_NAME, "header").text
        out["refreshed"] = driver.execute_script(
            "return performance.getEntriesByType('resource').filter(e => e.name.includes('/status.json')).length"
        )

        out["explain"] = []
        for q in job["explain"]:
            for field in ["host", "path", "identity"]:
                el = driver.find_element(By.ID, "ex-" + field)
                el.clear()
                el.send_keys(q[field])
            Select(driver.find_element(By.ID, "ex-method")).select_by_visible_text(q["method"])
            driver.execute_script("document.getElementById('explain-out').dataset.status = ''")
            driver.find_element(By.ID, "ex-go").click()
            wait.until(
                lambda d: d.find_element(By.ID, "explain-out").get_attribute("data-status") == q["want"]
            )
            out["explain"].append(
                {
                    "status": driver.find_element(By.ID, "explain-out").get_attribute("data-status"),
                    "text": driver.find_element(By.ID, "explain-out").text,
                }
            )

        # The full page for the screenshot, with the first (served) explanation shown.
        first = job["explain"][0]
        for field in ["host", "path", "identity"]:
            el = driver.find_element(By.ID, "ex-" + field)
            el.clear()
            el.send_keys(first[field])
        Select(driver.find_element(By.ID, "ex-method")).select_by_visible_text(first["method"])
        driver.find_element(By.ID, "ex-go").click()
        wait.until(
            lambda d: d.find_element(By.ID, "explain-out").get_attribute("data-status") == first["want"]
        )
        full_page(driver, 1280)
        driver.save_screenshot(screenshot)

        # Filter the routes.
        box = driver.find_element(By.ID, "filter")
        box.send_keys(job["filter"])
        wait.until(lambda d: "matching" in d.find_element(By.ID, "routes-count").text)
        out["filtered_routes"] = driver.find_element(By.ID, "routes-body").text
        out["filtered_count"] = driver.find_element(By.ID, "routes-count").text

        # A phone-sized screen: nothing wider than the viewport.
        driver.set_window_size(390, 844)
        time.sleep(0.5)
        out["phone"] = driver.execute_script(
            "return {inner: window.innerWidth, scroll: document.documentElement.scrollWidth}"
        )
        if job.get("phone_screenshot"):
            full_page(driver, 390)
            driver.save_screenshot(job["phone_screenshot"])
    finally:
        driver.quit()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
