"""The trigger form in a real browser: log in, fill pythia_pretrain's form (a dry run), submit, and see
the run in the UI. Headless Debian chromium driven by Playwright (no browser download)."""

from __future__ import annotations

import time

import pytest

from tests.e2e.conftest import DAG_ID, SHOTS, task_states

pytestmark = [pytest.mark.e2e]

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
def page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.set_default_timeout(30_000)
            yield page
        finally:
            browser.close()


def test_trigger_form_dry_run_shows_in_ui(api, page, run_name):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect

    SHOTS.mkdir(parents=True, exist_ok=True)
    run_id = f"{run_name}-form"
    page.goto(api.url + "/")
    page.locator("input[name=username]").fill(api.user)
    page.locator("input[name=password]").fill(api.password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(lambda url: "/auth/login" not in url)

    page.goto(f"{api.url}/dags/{DAG_ID}")
    page.get_by_role("button", name="Trigger").click()
    form = page.get_by_role("dialog")
    expect(form.get_by_text("Trigger Dag - pythia_pretrain")).to_be_visible()
    form.locator("input[name=element_run_name]").fill(run_name)
    form.locator("label:has(input[name=element_dry_run])").click()
    expect(form.locator("input[name=element_dry_run]")).to_be_checked()
    form.get_by_text("Advanced Options").click()
    form.locator("input[name=dagRunId]").fill(run_id)
    page.screenshot(path=str(SHOTS / "trigger-form.png"), full_page=True)
    form.get_by_role("button", name="Trigger").click()
    expect(page.get_by_text("Dag run has been successfully triggered").first).to_be_visible()

    # the submitted form reached Airflow as the run's conf, typed
    run = api.dag_run(DAG_ID, run_id)
    assert run["conf"]["run_name"] == run_name and run["conf"]["dry_run"] is True
    assert run["conf"]["profile"] == "local"
    final = api.wait_run(DAG_ID, run_id, timeout=240)
    states = task_states(api, run_id)
    assert final["state"] == "success", states
    assert states["prepare.plan"] == "success" and states["train.train_slice"] == "skipped", states
    rendered = "\n".join(api.task_log(DAG_ID, run_id, "prepare.plan", 1))
    assert f"DRY RUN of {run_name}" in rendered

    # and the UI lists it, finished (the list is fetched after the page loads: reload until it shows)
    page.goto(f"{api.url}/dags/{DAG_ID}/runs")
    row = page.get_by_role("row").filter(has_text=run_id)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            row.wait_for(timeout=10_000)
            if "success" in row.inner_text().lower():
                break
        except PlaywrightTimeout:
            pass
        page.reload()
    page.screenshot(path=str(SHOTS / "runs-list.png"), full_page=True)
    expect(row).to_be_visible()
    assert "success" in row.inner_text().lower(), row.inner_text()
