"""The web UI in a real browser: Debian's chromium, driven by Playwright, against `dagster dev`.

One shard is registered on a temporary instance; the test opens the asset graph, launches the
shard's materialization from the pipeline job's launchpad, follows the run page until the run
succeeds, and leaves screenshots of each step in $LPT_TEST_ARTIFACTS/ui (default
test-artifacts/ui) for CI to keep, with the `dagster dev` log beside them.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest
from dagster import AssetKey, DagsterInstance, DagsterRunStatus
from playwright.sync_api import Page, sync_playwright

from tests.small_config import SMALL_TOML

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CHROMIUM = Path(os.environ.get("LPT_CHROMIUM", "/usr/bin/chromium"))
# The system browser, never a Playwright download; a fresh profile per test.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1600, "height": 1000}
ARTIFACTS = Path(os.environ.get("LPT_TEST_ARTIFACTS", REPO / "test-artifacts")) / "ui"
SOURCE = "sample?limit=1&shard_size=1&name=ui"
SHARD = "ui-train-00000"
ASSETS = ["captions", "mcqs", "simple_cots", "long_cots", "verified", "sft_samples", "dpo_pairs"]
# Upper bounds, not expected durations: with 2 cores shared by other work, the run took 13.5 min.
SERVER_TIMEOUT_S = 240
RUN_TIMEOUT_S = 1200
# SmolLM2 with tiny budgets, one image; automation off so only the UI starts runs.
CONFIG = (
    SMALL_TOML
    + """
[automation]
sensor_enabled = false
schedule_enabled = false
watch = []
"""
)
LOCATION_QUERY = "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }"

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class DagsterUI:
    url: str
    home: Path
    storage: Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _restore_sigint() -> None:
    """Started from a background shell, SIGINT is ignored and `dagster dev` then ignores SIGTERM too."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _graphql(url: str, query: str) -> dict:
    request = urllib.request.Request(
        f"{url}/graphql", data=json.dumps({"query": query}).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["data"]


def _wait_for_location(url: str, server: subprocess.Popen, log: Path) -> None:
    """Until the webserver answers and the `lpt` code location has loaded (or failed to)."""
    deadline = time.monotonic() + SERVER_TIMEOUT_S
    while time.monotonic() < deadline:
        assert server.poll() is None, f"dagster dev exited with {server.returncode}:\n{log.read_text()[-3000:]}"
        try:
            entries = _graphql(url, LOCATION_QUERY)["workspaceOrError"]["locationEntries"]
        except OSError:
            entries = []
        for entry in entries:
            loaded = entry["locationOrLoadError"] or {}
            assert loaded.get("__typename") != "PythonError", f"code location failed to load: {loaded['message']}"
            if entry["name"] == "lpt" and entry["loadStatus"] == "LOADED" and loaded:
                return
        time.sleep(1)
    pytest.fail(f"dagster dev did not load the lpt location in {SERVER_TIMEOUT_S}s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def dagster_ui(tmp_path):
    """`dagster dev` on a free port with a temporary DAGSTER_HOME holding one registered shard."""
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    # What the first visit's newsletter dialog writes on "Skip": otherwise it covers the page.
    (home / ".nux").mkdir()
    (home / ".nux" / "nux.yaml").write_text("seen: 1\n")
    config = tmp_path / "lpt.toml"
    config.write_text(CONFIG)
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "LPT_CONFIG": str(config),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    registered = subprocess.run(
        [BIN / "lpt", "register", SOURCE], env=env, cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert registered.returncode == 0, registered.stdout + registered.stderr
    assert f"{SHARD}  (new)" in registered.stdout

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for stale in ARTIFACTS.glob("*.png"):  # a failed run must not leave an earlier success behind
        stale.unlink()
    log_path = ARTIFACTS / "dagster-dev.log"
    url = f"http://127.0.0.1:{_free_port()}"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            [BIN / "dagster", "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", url.rsplit(":", 1)[1]],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the webserver, daemon, code server and runs
            preexec_fn=_restore_sigint,
        )
        try:
            _wait_for_location(url, server, log_path)
            yield DagsterUI(url=url, home=home, storage=tmp_path / "data")
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=30)


@pytest.fixture
def page(tmp_path):
    """A page in the system chromium with a fresh profile."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} not found: the browser test needs Debian's chromium "
            "(`apt-get install -y chromium`; .ci/run installs it), or set LPT_CHROMIUM to another build"
        )
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            tmp_path / "chromium-profile",
            executable_path=str(CHROMIUM),
            args=CHROMIUM_FLAGS,
            headless=True,
            viewport=VIEWPORT,
        )
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.set_default_timeout(120_000)
            yield page
        finally:
            context.close()


def _screenshot(page: Page, name: str) -> None:
    path = ARTIFACTS / name
    page.screenshot(path=path)
    print(f"screenshot: {path}")


def _open_asset_graph(page: Page, url: str) -> None:
    """The global lineage with every group expanded, so each stage shows as its own node."""
    page.goto(f"{url}/asset-groups")
    # "Materialize all (N)…": the catalog also lists tables Dagster does not materialize
    page.get_by_role("button", name=re.compile(r"Materialize all")).wait_for()
    # Icon buttons are named by their icon: hide the asset list, then open the graph's settings.
    page.get_by_role("button", name="panel_show_right", exact=True).click()
    page.get_by_role("button", name="settings", exact=True).click()
    page.get_by_role("menuitem", name="Expand all groups").click()
    page.keyboard.press("Escape")
    graph = page.locator("foreignObject")
    for name in ASSETS:
        graph.get_by_text(name, exact=True).wait_for()
    graph.get_by_text("hf_dataset_export", exact=True).wait_for()
    graph.get_by_text("mcqs_quarantine", exact=True).wait_for()  # quarantines are in the lineage too


def _launch_shard(page: Page, url: str) -> str:
    """The pipeline job's launchpad with the shard picked as its partition; returns the run id."""
    page.goto(f"{url}/locations/lpt/jobs/lpt_pipeline")
    page.get_by_role("button").filter(has=page.locator("[aria-label=arrow_drop_down]")).first.click()
    page.get_by_role("menuitem", name="Open launchpad").click()
    launchpad = page.get_by_role("dialog")
    partition = launchpad.get_by_placeholder("Partition")
    partition.click()
    partition.fill(SHARD)
    page.locator("[class*=menuItem]").get_by_text(SHARD, exact=True).click()
    launchpad.get_by_text(f"partition: {SHARD}").wait_for()
    launchpad.get_by_role("button", name=re.compile("Materialize$")).click()
    page.wait_for_url("**/runs/*")
    return page.url.rsplit("/", 1)[1].split("?")[0]


def _wait_for_run(page: Page) -> str:
    """The run page's status tag, followed live until it shows an end state."""
    ends = ["Success", "Failure", "Canceled"]
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        for status in ends:
            if page.get_by_text(status, exact=True).first.is_visible():
                return status
        page.wait_for_timeout(2000)
    return f"still running after {RUN_TIMEOUT_S}s"


def _open_partition(page: Page, url: str, asset: str) -> None:
    page.goto(f"{url}/assets/{asset}?view=partitions&partition={SHARD}")
    page.get_by_text("Materialized", exact=True).first.wait_for()


def _check_inline_metadata(page: Page, ui: DagsterUI) -> None:
    """The shard's figures, plots and sample rows show on its materialization page without a
    click: plain values, tables and small SVG images, no "[Show Markdown]" link."""
    _open_partition(page, ui.url, "long_cots")
    page.get_by_text("requests_sent", exact=True).wait_for()
    if pl.read_parquet(ui.storage / "long_cots" / f"{SHARD}.parquet").height:
        page.locator("img[alt='continuation tokens'][src^='data:image/svg+xml']").wait_for()
    assert page.get_by_text("[Show Markdown]").count() == 0
    _screenshot(page, "long-cots-materialization.png")
    _open_partition(page, ui.url, "verified")
    page.get_by_text("sample_rows", exact=True).wait_for()
    if pl.read_parquet(ui.storage / "verified" / f"{SHARD}.parquet").height:
        for column in ("question", "options", "gold", "answer", "label", "reasoning"):
            page.locator("th", has_text=re.compile(f"^{column}$")).first.wait_for()
    assert page.get_by_text("[Show Markdown]").count() == 0
    _screenshot(page, "verified-materialization.png")


def test_asset_graph_then_one_shard_materialized_from_the_ui(page, dagster_ui):
    try:
        _open_asset_graph(page, dagster_ui.url)
        _screenshot(page, "asset-graph.png")
        run_id = _launch_shard(page, dagster_ui.url)
        page.get_by_text(f"partition: {SHARD}").wait_for()
        status = _wait_for_run(page)
        _screenshot(page, "run-success.png" if status == "Success" else "run-end.png")
        assert status == "Success", f"run {run_id}: {status} (see {ARTIFACTS})"
        _check_inline_metadata(page, dagster_ui)
    except Exception:
        _screenshot(page, "failure.png")
        raise

    # The same facts from the instance the UI ran against, and the shard's files.
    with DagsterInstance.from_config(str(dagster_ui.home)) as instance:
        run = instance.get_run_by_id(run_id)
        assert run.status == DagsterRunStatus.SUCCESS
        assert run.tags["dagster/partition"] == SHARD
        for name in ASSETS:
            event = instance.get_latest_materialization_event(AssetKey(name))
            assert event is not None and event.run_id == run_id, name
            assert SHARD in instance.get_materialized_partitions(AssetKey(name)), name
            assert (dagster_ui.storage / name / f"{SHARD}.parquet").exists(), name
