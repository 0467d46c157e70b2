"""The web console in a real browser (headless Debian Chromium driven by selenium) against a
whole cluster started by ``tusk up``: the DAG, a pipeline, a failed datum's error, a CSV
preview, a download compared byte for byte, a new job appearing without a reload, a 404,
and a file whose content is script that stays text. Screenshots go to docs/console/."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement

from services.scheduler.sandbox import bwrap_available
from tests.fixtures.embedded_cluster import TUSK, EmbeddedCluster, start_embedded_cluster

pytestmark = pytest.mark.timeout(240)

# Screenshots are taken on every run (a page that cannot render fails here) and kept in
# docs/console/ only when asked (TUSK_CONSOLE_SHOTS=1), so a test run leaves the tree as it was.
DOC_SHOTS = Path(__file__).resolve().parent.parent / "docs" / "console"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCRIPT_ROW = "<script>alert(1)</script>"
WEATHER = f'city,temp\nOslo,3\nLima,19\n"{SCRIPT_ROW}",0\n'.encode()
T = TypeVar("T")
CHECK = {
    "pipeline": {"name": "check"},
    "description": "Counts the lines of each table; a table named bad* fails.",
    "input": {"pfs": {"repo": "tables", "glob": "/*"}},
    "transform": {
        "cmd": [
            "sh",
            "-c",
            'case "$tables" in *bad*) echo "bad table: $tables has no header" >&2; exit 3;; esac; '
            'wc -l < "$tables" > "/pfs/out/$(basename "$tables").lines"',
        ]
    },
}


def until(check: Callable[[], T | None], within: float, what: str) -> T:
    deadline = time.monotonic() + within
    while True:
        with contextlib.suppress(Exception):
            value = check()
            if value:
                return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {within:g} s: {what}")
        time.sleep(0.1)


def tusk(cluster: EmbeddedCluster, *args: str, cwd: Path | None = None) -> str:
    done = subprocess.run(
        [str(TUSK), *args],
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        check=False,
    )
    assert done.returncode == 0, f"tusk {' '.join(args)}: {done.stderr}"
    return done.stdout


def jobs(cluster: EmbeddedCluster, pipeline: str) -> list[dict[str, Any]]:
    return list(json.loads(tusk(cluster, "list", "job", "-p", pipeline, "-o", "json")))


@pytest.fixture(scope="module")
def cluster() -> Iterator[EmbeddedCluster]:
    reason = bwrap_available()
    assert reason is None, f"the console test runs a pipeline and needs bubblewrap: {reason}"
    yield from start_embedded_cluster("tusk-console-")


@pytest.fixture(scope="module")
def data(cluster: EmbeddedCluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repo of two tables (one the pipeline fails on) and the pipeline's first job, done."""
    folder = tmp_path_factory.mktemp("tables")
    (folder / "weather.csv").write_bytes(WEATHER)
    (folder / "bad.csv").write_text("no header here\n")
    (folder / "check.json").write_text(json.dumps(CHECK))
    tusk(cluster, "create", "repo", "tables")
    tusk(cluster, "put", "file", "tables@master", "-f", "weather.csv", "-f", "bad.csv", cwd=folder)
    tusk(cluster, "create", "pipeline", "-f", "check.json", cwd=folder)
    until(
        lambda: [j for j in jobs(cluster, "check") if j["state"] == "JOB_FAILURE"],
        90,
        "the check pipeline's first job failed on bad.csv",
    )
    return folder


def _our_chromium(user_data_dir: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if user_data_dir.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[tuple[WebDriver, Path]]:
    for binary in (CHROMIUM, CHROMEDRIVER):
        assert Path(binary).exists(), (
            f"{binary} is missing: scripts/install-system-packages.sh installs it"
        )
    profile = tempfile.mkdtemp(prefix="tusk-console-chromium-")
    downloads = Path(tempfile.mkdtemp(prefix="tusk-console-downloads-"))
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1280,900",
    ):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads)})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        driver.execute_cdp_cmd(
            "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
        )
        driver.implicitly_wait(0)
        yield driver, downloads
    finally:
        driver.quit()
        for pid in _our_chromium(profile):  # ours: they name our private profile
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(profile, ignore_errors=True)
        shutil.rmtree(downloads, ignore_errors=True)


def find(driver: WebDriver, css: str, within: float = 15) -> WebElement:
    return until(lambda: driver.find_element(By.CSS_SELECTOR, css), within, f"element {css}")


def shot(driver: WebDriver, name: str) -> None:
    """The whole page (beyond the window) as a PNG: in docs/console/ with TUSK_CONSOLE_SHOTS=1."""
    keep = os.environ.get("TUSK_CONSOLE_SHOTS") == "1"
    shots = DOC_SHOTS if keep else Path(tempfile.gettempdir()) / "tusk-console-shots"
    shots.mkdir(parents=True, exist_ok=True)
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": 1280, "height": min(size["height"], 2400), "scale": 1}
    picture = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
    )
    (shots / f"{name}.png").write_bytes(base64.b64decode(picture["data"]))


def test_console_tour(
    cluster: EmbeddedCluster, data: Path, browser: tuple[WebDriver, Path]
) -> None:
    driver, downloads = browser
    base = cluster.config.console_url
    # The shared Host guard lets a browser in on 127.0.0.1 and on localhost.
    driver.get(base.replace("127.0.0.1", "localhost") + "/")
    assert driver.find_element(By.TAG_NAME, "h1").text == "Overview"
    driver.get(base + "/")
    find(driver, "svg.dag")
    shot(driver, "overview")
    # Keyboard: Tab reaches the header link, then the DAG's nodes, each a real link.
    focused = []
    for _ in range(3):
        ActionChains(driver).send_keys(Keys.TAB).perform()
        focused.append(driver.execute_script("return document.activeElement.getAttribute('href')"))
    assert focused[0] == "/" and focused[1] == "/repos/tables", focused

    # DAG → pipeline → its failed job → the failed datum, first in the table, and its error.
    find(driver, 'svg.dag a[aria-label^="pipeline check"]').click()
    until(
        lambda: "Pipeline check" in driver.find_element(By.TAG_NAME, "h1").text, 15, "pipeline page"
    )
    shot(driver, "pipeline")
    find(driver, "#jobs a[href*='/jobs/']").click()
    until(lambda: driver.find_element(By.TAG_NAME, "h1").text.startswith("Job "), 15, "job page")
    job_url = driver.current_url
    first = find(driver, "#datums tbody tr")
    assert "failed" in first.text and "exited with code 3" in first.text, first.text
    assert (find(driver, "svg.histogram").get_attribute("aria-label") or "").startswith(
        "Datum durations"
    )
    shot(driver, "job")
    first.find_element(By.CSS_SELECTOR, "a").click()
    assert "exited with code 3" in find(driver, "pre.error").text
    # Its log says why; its input links into the commit view.
    assert "bad table: /pfs/tables/bad.csv" in find(driver, "pre.logs").text
    assert find(driver, "#inputs a[href*='bad.csv']")
    shot(driver, "datum")

    # A commit of tables: the CSV previewed as a table (its script row stays text), downloaded.
    driver.get(base + "/repos/tables")
    shot(driver, "repo")
    find(driver, "#commits a[href*='/commits/']").click()
    find(driver, "a[href*='weather.csv']")
    shot(driver, "commit")
    driver.find_element(By.CSS_SELECTOR, "a[href*='weather.csv']").click()
    cells = [td.text for td in find(driver, "main table").find_elements(By.TAG_NAME, "td")]
    assert cells[:2] == ["Oslo", "3"] and SCRIPT_ROW in cells, cells
    assert driver.execute_script("return document.querySelectorAll('main script').length") == 0
    shot(driver, "file-csv")
    driver.find_element(By.LINK_TEXT, "Download").click()
    saved = downloads / "weather.csv"
    until(lambda: saved.exists() and saved.read_bytes() == WEATHER, 15, "the download's bytes")

    # An unknown name is a 404 page saying what is missing.
    driver.get(base + "/repos/no-such-repo")
    assert driver.find_element(By.TAG_NAME, "h1").text == "Not found"
    assert "no-such-repo" in driver.find_element(By.CSS_SELECTOR, ".error-line").text
    shot(driver, "not-found")

    # Live: a new file while the job page is open; its job shows up with no reload.
    driver.get(job_url)
    find(driver, "main h1")
    until(lambda: driver.find_element(By.ID, "live").text == "live", 10, "event stream open")
    driver.execute_script("window.tuskMarker = 'same page'")
    before = {j["id"] for j in jobs(cluster, "check")}
    (data / "more.csv").write_text("a,b\n1,2\n")
    tusk(cluster, "put", "file", "tables@master", "-f", "more.csv", cwd=data)
    new = until(lambda: {j["id"] for j in jobs(cluster, "check")} - before, 30, "a new job")
    (new_id,) = new
    until(
        lambda: driver.find_elements(By.CSS_SELECTOR, f"#recent-jobs a[href$='/jobs/{new_id}']"),
        30,
        "the new job listed on the open page",
    )
    assert driver.execute_script("return window.tuskMarker") == "same page"


def test_pages_are_served_safely(cluster: EmbeddedCluster, data: Path) -> None:
    """A strict Content-Security-Policy on every page; a download is an attachment of
    opaque bytes; a non-image is never served inline; unknown names are 404 pages."""
    base = cluster.config.console_url
    with urllib.request.urlopen(base + "/repos/tables") as response:
        assert "script-src 'self'" in response.headers["Content-Security-Policy"]
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    commit = jobs(cluster, "check")[-1]["input_commits"][0]["id"]
    with urllib.request.urlopen(
        f"{base}/repos/tables/commits/{commit}/download?path=/weather.csv"
    ) as response:
        assert response.headers["Content-Type"] == "application/octet-stream"
        assert response.headers["Content-Disposition"].startswith("attachment;")
        assert response.read() == WEATHER
    for path, status in (
        (f"/repos/tables/commits/{commit}/raw?path=/weather.csv", 400),
        ("/repos/tables/commits/0123456789abcdef0123456789abcdef", 404),
        ("/pipelines/check/jobs/0123456789abcdef0123456789abcdef", 404),
        ("/pipelines/nope", 404),
        ("/no/such/page", 404),
    ):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(base + path)
        assert refused.value.code == status, path
        assert refused.value.headers["Content-Type"].startswith("text/html")
    # A foreign Host (DNS rebinding) is refused by the shared guard.
    request = urllib.request.Request(base + "/", headers={"Host": "evil.example"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request)
    assert refused.value.code == 421
