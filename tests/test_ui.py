"""The Prefect UI in headless Debian Chromium (driven by playwright; never `playwright install`): the build run,
its progress and table artifacts, and the chaining automations. Screenshots go to the test's tmp dir and to
``test-outputs/ui/`` (override with TEST_OUTPUTS_DIR)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import deploy_stack as ds
import pytest

from facelift.stack.local import REPO

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]
pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed (/usr/bin/chromium): "
                                                     "run infra/ci/install-system.sh"),
]


@pytest.fixture(scope="module")
def build_run(deploy_stack):
    """The completed build run of tests/test_prefect_server.py, or a fresh one with the chain paused."""
    if "chain" in deploy_stack.build_runs:
        return deploy_stack.build_runs["chain"]
    with ds.client(deploy_stack.api_url) as c:
        autos = c.read_automations()
        for auto in autos:
            c.pause_automation(auto.id)
    try:
        return ds.run_build(deploy_stack, "ui", profile="tiny", count=8, root=deploy_stack.root)
    finally:
        with ds.client(deploy_stack.api_url) as c:
            for auto in autos:
                c.resume_automation(auto.id)


@pytest.fixture(scope="module")
def browser(tmp_path_factory, deploy_stack):
    """A Chromium profile logged in to the stack's UI (the server asks for its basic-auth string)."""
    from playwright.sync_api import expect, sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(str(profile), executable_path=str(CHROMIUM), headless=True,
                                                   args=CHROMIUM_ARGS, viewport={"width": 1400, "height": 1000})
        try:
            page = ctx.new_page()
            page.set_default_timeout(60_000)
            page.goto(f"{deploy_stack.server.ui_url}/runs", wait_until="networkidle")
            page.wait_for_url(re.compile(r".*/login.*"))  # no credentials yet: the login page
            expect(page.get_by_text("Login").first).to_be_visible()
            password = page.get_by_placeholder("admin:pass")
            password.fill(deploy_stack.server.auth_string)
            password.press("Enter")
            page.wait_for_url(lambda url: "/login" not in url)  # back to /runs, logged in
            page.close()
            yield ctx
        finally:
            ctx.close()


def _save(page, tmp_path: Path, name: str) -> Path:
    shot = tmp_path / f"{name}.png"
    page.screenshot(path=str(shot), full_page=True)
    outputs = Path(os.environ.get("TEST_OUTPUTS_DIR", REPO / "test-outputs")) / "ui"
    outputs.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, outputs / shot.name)
    assert shot.stat().st_size > 10_000  # a rendered page, not a blank one
    return shot


def _click_tab(page, name: str, attempts: int = 4) -> None:
    """Open a run page's tab (the UI does not open one from ``?tab=`` in the URL). The page re-renders as it
    polls the run's state and logs, so a click that lands mid-render is tried again until the URL shows it."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect

    for attempt in range(attempts):
        tab = page.get_by_role("tab", name=name).or_(page.get_by_text(name, exact=True)).first
        expect(tab).to_be_visible()
        tab.click()
        try:
            page.wait_for_url(re.compile(rf".*tab={name}.*"), timeout=15_000)
            return
        except PlaywrightTimeout:
            if attempt == attempts - 1:
                raise


def _artifacts(api_url: str, flow_run_id) -> dict[str, list]:
    """The flow run's artifacts by type, read from the API (ids to navigate to, not rows to click)."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with ds.client(api_url) as c:
        arts = c.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    by_type: dict[str, list] = {}
    for art in arts:
        by_type.setdefault(art.type, []).append(art)
    return by_type


def test_ui_shows_build_run_with_progress_and_table_artifacts(deploy_stack, build_run, browser, tmp_path):
    from playwright.sync_api import expect

    assert build_run.state_name == "Completed", deploy_stack.worker_log()
    ui = deploy_stack.server.ui_url
    page = browser.new_page()
    page.set_default_timeout(60_000)

    # ids come from the API; the test navigates to them. It never clicks a row of a list: the UI re-renders
    # its lists as it polls, and a click on a row being replaced navigates nowhere (CI, a loaded machine).
    arts = _artifacts(deploy_stack.api_url, build_run.id)
    assert arts.get("progress") and arts.get("table"), arts

    # the runs list shows the build run by name, linked to its page
    page.goto(f"{ui}/runs", wait_until="networkidle")
    link = page.locator(f'a[href*="/runs/flow-run/{build_run.id}"]').filter(has_text=build_run.name)
    expect(link.first).to_be_visible(timeout=60_000)
    _save(page, tmp_path, "runs")

    # the run page: state, flow, and its artifacts tab (progress + the dataset summary table)
    page.goto(f"{ui}/runs/flow-run/{build_run.id}", wait_until="networkidle")
    expect(page.get_by_text("Completed").first).to_be_visible()
    expect(page.get_by_text("build-dataset").first).to_be_visible()
    _click_tab(page, "Artifacts")
    progress = page.get_by_role("link", name=re.compile(r"^progress "))
    expect(progress.first).to_be_visible(timeout=60_000)
    expect(progress.first).to_contain_text("shards committed for ")
    table = page.get_by_role("link", name=re.compile(r"^table build-"))
    expect(table.first).to_contain_text(deploy_stack.root)  # "Dataset s3://.../datasets/<id>"
    _save(page, tmp_path, "build-run-artifacts")

    # the table artifact's own page (its id from the API) renders the rows the flow published
    summary = next(a for a in arts["table"] if (a.key or "").startswith("build-"))
    page.goto(f"{ui}/artifacts/artifact/{summary.id}", wait_until="networkidle")
    expect(page.get_by_text("pairs generated (this run)").first).to_be_visible(timeout=60_000)
    _save(page, tmp_path, "build-table-artifact")


def test_ui_lists_chaining_automations(deploy_stack, browser, tmp_path):
    from playwright.sync_api import expect

    page = browser.new_page()
    page.set_default_timeout(60_000)
    page.goto(f"{deploy_stack.server.ui_url}/automations", wait_until="networkidle")
    for name in ("curate-new-dataset", "train-on-new-curation", "audit-new-dataset", "evaluate-new-head"):
        expect(page.get_by_text(name).first).to_be_visible(timeout=60_000)
    _save(page, tmp_path, "automations")
