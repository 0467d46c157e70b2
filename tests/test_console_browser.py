"""The web console in a real browser (headless Debian Chromium driven by selenium) against a
whole cluster started by ``tusk up``: the DAG, a pipeline, a failed datum's error, a CSV
preview, a download compared byte for byte, a commit's origin and its set, a changed file's
lines, a new job appearing without a reload and its log lines pushed as they arrive, a 404,
and a file whose content is script that stays text. Screenshots go to docs/console/ when
asked (TUSK_CONSOLE_SHOTS=1).

Kept fast (issue #15): Chromium starts while ``tusk up`` does, one browser serves the module,
the cluster is asked over HTTP rather than through CLI processes, and pages are reached by
clicks more than by loads."""

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
from concurrent.futures import Future, ThreadPoolExecutor
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

DOC_SHOTS = Path(__file__).resolve().parent.parent / "docs" / "console"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCRIPT_ROW = "<script>alert(1)</script>"
WEATHER = f'city,temp\nOslo,3\nLima,19\n"{SCRIPT_ROW}",0\n'.encode()
WEATHER_2 = WEATHER + b"Rome,21\n"
T = TypeVar("T")
Chromium = tuple[WebDriver, Path, str]  # the driver, its downloads, its private profile
# A datum logs a line; bad* tables fail; slow* ones take a while (12 s: a loaded machine
# needs some to show the new job and open its page), so their job is still running when
# its page opens and the log line arrives while the page watches.
CHECK = {
    "pipeline": {"name": "check"},
    "description": "Counts the lines of each table; a table named bad* fails.",
    "input": {"pfs": {"repo": "tables", "glob": "/*"}},
    "transform": {
        "cmd": [
            "sh",
            "-c",
            'case "$tables" in *bad*) echo "bad table: $tables has no header" >&2; exit 3;; esac; '
            'case "$tables" in *slow*) sleep 12;; esac; '
            'echo "counted $tables"; '
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


def api(base: str, path: str) -> Any:
    with urllib.request.urlopen(base + path, timeout=30) as response:
        return json.loads(response.read())


def jobs(cluster: EmbeddedCluster, pipeline: str) -> list[dict[str, Any]]:
    """The pipeline's jobs, newest first, from PPS's API (no CLI process per poll)."""
    return list(api(cluster.config.pps_url, f"/v1/jobs?pipeline={pipeline}")["jobs"])


@pytest.fixture(scope="module")
def chromium_starting() -> Iterator[Future[Chromium]]:
    """Chromium starting in a thread while the cluster starts (asked for first)."""
    with ThreadPoolExecutor(1) as pool:
        started = pool.submit(_start_chromium)
        try:
            yield started
        finally:
            with contextlib.suppress(Exception):
                _stop_chromium(*started.result())


@pytest.fixture(scope="module")
def cluster(chromium_starting: Future[Chromium]) -> Iterator[EmbeddedCluster]:
    reason = bwrap_available()
    assert reason is None, f"the console test runs a pipeline and needs bubblewrap: {reason}"
    started = time.monotonic()
    for cluster in start_embedded_cluster("tusk-console-"):
        print(f"[console tour] tusk up: {time.monotonic() - started:.1f} s")
        yield cluster


@pytest.fixture(scope="module")
def data(cluster: EmbeddedCluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repo of two tables (one the pipeline fails on) and the pipeline's first job, done."""
    started = time.monotonic()
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
    print(f"[console tour] repo, files, pipeline, first job: {time.monotonic() - started:.1f} s")
    return folder


def _our_chromium(user_data_dir: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if user_data_dir.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
    return found


def _start_chromium() -> Chromium:
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
        "--disable-extensions",
        f"--user-data-dir={profile}",
        "--window-size=1280,900",
    ):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads)})
    try:
        driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    except BaseException:
        _kill_profile(profile)
        shutil.rmtree(downloads, ignore_errors=True)
        raise
    try:
        driver.execute_cdp_cmd(
            "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
        )
        driver.implicitly_wait(0)
    except BaseException:
        _stop_chromium(driver, downloads, profile)
        raise
    return driver, downloads, profile


def _kill_profile(profile: str) -> None:
    for pid in _our_chromium(profile):  # ours: they name our private profile
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(profile, ignore_errors=True)


def _stop_chromium(driver: WebDriver, downloads: Path, profile: str) -> None:
    try:
        driver.quit()
    finally:
        _kill_profile(profile)
        shutil.rmtree(downloads, ignore_errors=True)


@pytest.fixture(scope="module")
def browser(chromium_starting: Future[Chromium], data: Path) -> tuple[WebDriver, Path]:
    driver, downloads, _profile = chromium_starting.result(timeout=120)
    return driver, downloads


def find(driver: WebDriver, css: str, within: float = 15) -> WebElement:
    return until(lambda: driver.find_element(By.CSS_SELECTOR, css), within, f"element {css}")


def shot(driver: WebDriver, name: str) -> None:
    """The whole page (beyond the window) as a PNG in docs/console/, when asked
    (TUSK_CONSOLE_SHOTS=1): a test run leaves the tree as it was, and takes no time for it."""
    if os.environ.get("TUSK_CONSOLE_SHOTS") != "1":
        return
    DOC_SHOTS.mkdir(parents=True, exist_ok=True)
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": 1280, "height": min(size["height"], 2400), "scale": 1}
    picture = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
    )
    (DOC_SHOTS / f"{name}.png").write_bytes(base64.b64decode(picture["data"]))


def h1(driver: WebDriver) -> str:
    return driver.find_element(By.TAG_NAME, "h1").text


def click(driver: WebDriver, css: str, within: float = 15) -> None:
    """Click the element, found again if a live page swapped it out meanwhile."""

    def clicked() -> bool:
        driver.find_element(By.CSS_SELECTOR, css).click()
        return True

    until(clicked, within, f"click on {css}")


class Stages:
    """How long each part of the tour took (printed; shown with -s)."""

    def __init__(self, driver: WebDriver) -> None:
        self.driver = driver
        self.last = time.monotonic()

    def done(self, what: str) -> None:
        now = time.monotonic()
        # The last page's own time: the server's answer, then the browser's load.
        server, load = self.driver.execute_script(
            "var n = performance.getEntriesByType('navigation')[0];"
            "return n ? [n.responseStart - n.requestStart, n.loadEventEnd - n.responseEnd]"
            " : [0, 0];"
        )
        print(
            f"[console tour] {what}: {now - self.last:.1f} s "
            f"(last page: server {server / 1000:.1f} s, load {load / 1000:.1f} s)"
        )
        self.last = now


def test_console_tour(
    cluster: EmbeddedCluster, data: Path, browser: tuple[WebDriver, Path]
) -> None:
    driver, downloads = browser
    stages = Stages(driver)
    # The shared Host guard lets a browser in on localhost (and on 127.0.0.1: the next test).
    base = cluster.config.console_url.replace("127.0.0.1", "localhost")
    driver.get(base + "/")
    assert h1(driver) == "Overview"
    find(driver, "svg.dag")
    shot(driver, "overview")
    # Keyboard: Tab reaches the header link, then the DAG's nodes, each a real link.
    focused = []
    for _ in range(3):
        ActionChains(driver).send_keys(Keys.TAB).perform()
        focused.append(driver.execute_script("return document.activeElement.getAttribute('href')"))
    assert focused[0] == "/" and focused[1] == "/repos/tables", focused

    # DAG → pipeline → its failed job → the failed datum, listed first with its error.
    stages.done("overview")
    click(driver, 'svg.dag a[aria-label^="pipeline check"]')
    until(lambda: "Pipeline check" in h1(driver), 15, "pipeline page")
    shot(driver, "pipeline")
    click(driver, "#jobs a[href*='/jobs/']")
    until(lambda: h1(driver).startswith("Job "), 15, "job page")
    job_url = driver.current_url
    first = find(driver, "#failed-datums tbody tr")
    assert "failed" in first.text and "exited with code 3" in first.text, first.text
    assert "failed (1)" in find(driver, "nav.filters").text
    assert (find(driver, "svg.histogram").get_attribute("aria-label") or "").startswith(
        "Datum durations"
    )
    # The job's log: the line of the datum that worked (the failed one wrote to stderr too).
    assert "counted /pfs/tables/weather.csv" in find(driver, "#job-logs").text
    shot(driver, "job")
    click(driver, "#failed-datums tbody tr a")
    assert "exited with code 3" in find(driver, "pre.error").text
    # Its log says why; its input links into the commit view.
    assert "bad table: /pfs/tables/bad.csv" in find(driver, "#datum-logs").text
    shot(driver, "datum")
    click(driver, "#inputs a[href*='bad.csv']")
    # The input link leads to the file in the commit the datum read.
    until(lambda: h1(driver) == "/bad.csv", 15, "the datum's input file")

    # The repo: the commit's origin (a user's put) and its set; the CSV previewed as a table
    # (its script row stays text), then downloaded.
    stages.done("pipeline, job, datum")
    click(driver, "nav.crumbs a[href='/repos/tables']")
    row = find(driver, "#commits tbody tr")
    assert "user" in row.text, row.text
    assert row.find_element(By.CSS_SELECTOR, "a[href^='/commitsets/']")
    shot(driver, "repo")
    # Its set: the user's commit (the pipeline's first job was made by creating it, so its
    # output has a set of its own). Then back: the repo page again, from the browser's cache.
    click(driver, "#commits tbody tr a[href^='/commitsets/']")
    until(lambda: h1(driver).startswith("Commit set "), 15, "the commit set page")
    assert "user" in find(driver, "#set-commits").text
    shot(driver, "commit-set")
    driver.back()
    until(lambda: h1(driver) == "Repo tables", 15, "the repo page again")
    stages.done("repo page, commit set")
    click(driver, "#commits tbody tr a[href*='/commits/']")
    find(driver, "a[href*='weather.csv']")
    stages.done("commit page")
    shot(driver, "commit")
    click(driver, "a[href*='weather.csv']")
    cells = [td.text for td in find(driver, "main table").find_elements(By.TAG_NAME, "td")]
    assert cells[:2] == ["Oslo", "3"] and SCRIPT_ROW in cells, cells
    assert driver.execute_script("return document.querySelectorAll('main script').length") == 0
    shot(driver, "file-csv")
    stages.done("CSV page")
    driver.find_element(By.LINK_TEXT, "Download").click()
    saved = downloads / "weather.csv"
    until(lambda: saved.exists() and saved.read_bytes() == WEATHER, 15, "the download's bytes")
    stages.done("repo, commit, CSV, download")

    # Live: a changed table and a slow new one while the job page is open. The new job shows
    # up with no reload; on its page, the slow datum's log line arrives while it watches.
    driver.get(job_url)
    until(lambda: driver.find_element(By.ID, "live").text == "live", 10, "event stream open")
    driver.execute_script("window.tuskMarker = 'same page'")
    before = {j["id"] for j in jobs(cluster, "check")}
    (data / "weather.csv").write_bytes(WEATHER_2)
    (data / "slow.csv").write_text("a,b\n1,2\n")
    tusk(cluster, "put", "file", "tables@master", "-f", "weather.csv", "-f", "slow.csv", cwd=data)
    new_id = until(lambda: {j["id"] for j in jobs(cluster, "check")} - before, 30, "a new job")
    (new_id,) = new_id
    new_row = f"#recent-jobs a[href$='/jobs/{new_id}']"
    until(
        lambda: driver.find_elements(By.CSS_SELECTOR, new_row),
        30,
        "the new job listed on the open page",
    )
    assert driver.execute_script("return window.tuskMarker") == "same page"
    stages.done("a new job shown live")
    click(driver, new_row)
    until(lambda: new_id in h1(driver), 15, "the new job's page")
    panel = find(driver, "#job-logs")
    assert panel.get_attribute("data-follow"), "the job ended before its page opened"
    assert "slow.csv" not in panel.text
    driver.execute_script("window.tuskMarker = 'job page'")
    until(
        lambda: "counted /pfs/tables/slow.csv" in driver.find_element(By.ID, "job-logs").text,
        60,
        "the slow datum's log line, pushed to the open page",
    )
    assert driver.execute_script("return window.tuskMarker") == "job page"
    stages.done("its log line pushed")

    # The changed table's lines: its commit's diff against the parent, then the file's.
    commit = next(j for j in jobs(cluster, "check") if j["id"] == new_id)["input_commits"][0]
    driver.get(f"{base}/repos/tables/commits/{commit['id']}/diff")
    assert "modified" in find(driver, "#changes").text
    stages.done("diff page")
    click(driver, "#changes a[href*='path=%2Fweather.csv'][href*='/diff']")
    added = [r.text for r in find(driver, "#linediff").find_elements(By.CSS_SELECTOR, "tr.add")]
    assert added == ["5 +Rome,21"], added
    shot(driver, "diff-lines")
    stages.done("line diff page")

    # An unknown name is a 404 page saying what is missing.
    driver.get(base + "/repos/no-such-repo")
    assert h1(driver) == "Not found"
    assert "no-such-repo" in driver.find_element(By.CSS_SELECTOR, ".error-line").text
    shot(driver, "not-found")
    stages.done("404")


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


def page_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:
        return str(response.read().decode())


def test_datums_are_paged_and_logs_streamed(cluster: EmbeddedCluster, data: Path) -> None:
    """A job's datums come a page at a time (never all of them), filter by state; its log
    lines come as server-sent events ending once the job is done; a commit set shows the
    user's commit and the pipeline's output of it, each with its origin."""
    base = cluster.config.console_url
    job = [j for j in jobs(cluster, "check") if j["state"] == "JOB_FAILURE"][-1]
    at = f"{base}/pipelines/check/jobs/{job['id']}"
    ids = []
    href = f"{at}?limit=1"
    for _ in range(4):
        text = page_text(href)
        table = text.split('id="datums"', 1)[1].split("</table>", 1)[0]
        ids += [part.split('"', 1)[0] for part in table.split("/datums/")[1:]]
        if "Next datums" not in text:
            break
        href = base + text.split('class="button"', 1)[0].rsplit('href="', 1)[1].split('"')[0]
        href = href.replace("&amp;", "&")
    assert len(ids) == 2 and len(set(ids)) == 2, ids  # one a page, each once
    failed = page_text(f"{at}?state=failed").split('id="datums"', 1)[1].split("</table>")[0]
    assert failed.count("/datums/") == 1 and "exited with code 3" in failed
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{at}?limit=0")
    assert refused.value.code == 400

    with urllib.request.urlopen(f"{at}/logs", timeout=30) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        stream = response.read().decode()  # the job is done: the stream ends by itself
    lines = [json.loads(x[6:]) for x in stream.splitlines() if x.startswith("data: {")]
    messages = [line["message"] for line in lines]
    assert "bad table: /pfs/tables/bad.csv has no header" in messages, stream
    assert "counted /pfs/tables/weather.csv" in messages
    assert stream.rstrip().endswith("event: end\ndata: done")
    # Resuming past the last line sends nothing more.
    last = stream.split("id: ")[-1].split("\n")[0]
    with urllib.request.urlopen(f"{at}/logs?after={last}", timeout=30) as response:
        assert "event: line" not in response.read().decode()

    # Commit sets with each commit's origin: the user's put; the job's output (the job was
    # made by creating the pipeline, so its output starts a set of its own).
    for commit, repo, origin in (
        (job["input_commits"][0]["id"], "tables", "user"),
        (job["output_commit"], "check", "pipeline job"),
    ):
        rows = page_text(f"{base}/commitsets/{commit}").split('id="set-commits"', 1)[1]
        assert f'href="/repos/{repo}"' in rows and f"<td>{origin}</td>" in rows, rows
