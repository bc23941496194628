"""The Training view (issue 20 items 1, 6) as a person sees it: Debian's chromium, driven by Playwright,
logs in and opens the "Training" tab of a demo-like run's page while the run trains and after it ended,
and what the page shows (loss points, Slurm job ids, checkpoints and their S3 state) is checked against
the run's own records: the training XComs, the job logs on FSx and the report's summary.json in S3. A dry
run's tab shows its rendered scripts. Screenshots go to SHOTS. An anonymous request to the plugin's
routes, or one with a forged token, is refused by Airflow's own auth dependencies.

One short run of its own (60 iterations, a checkpoint every 20): the suite's other runs are removed with
their FSx and S3 records when their test ends, so none is left to look at afterwards.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request

import pytest

from neoxflow.neox.logparse import parse_text
from neoxflow.neox.logstate import LogState
from tests.e2e.conftest import DAG_ID, SHOTS, demo_run, task_states
from tests.e2e.monitor import logged_job_ids
from tests.e2e.test_trigger_form import ARGS, CHROMIUM

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

TRAIN = "train.train_slice"
TAB = "neoxflow-training-run"  # the external view's url_route (plugins/neoxflow_ui_plugin.py)


@pytest.fixture
def browser_page(api):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.set_default_timeout(30_000)
            page.goto(api.url + "/")
            page.locator("input[name=username]").fill(api.user)
            page.locator("input[name=password]").fill(api.password)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(lambda url: "/auth/login" not in url)
            yield page
        finally:
            browser.close()


def open_tab(page, api, run_id: str):
    """The run's page, then its Training tab (a link of the run's tabs); the view's frame."""
    page.goto(f"{api.url}/dags/{DAG_ID}/runs/{run_id}")
    page.locator(f"a[href$='/runs/{run_id}/plugin/{TAB}']").first.click()
    page.wait_for_url(f"**/plugin/{TAB}")
    frame = page.frame_locator("iframe").first
    frame.locator("#run-id").wait_for()
    return frame


def shown(frame) -> dict:
    return {
        "loss_count": int(frame.locator("#loss-count").inner_text()),
        "iterations": [
            int(x)
            for x in frame.locator("circle.pt").evaluate_all(
                "els => els.map(e => e.getAttribute('data-iteration'))"
            )
        ],
        "jobs": frame.locator("tr[data-job-id]").evaluate_all("els => els.map(e => e.dataset.jobId)"),
        "checkpoints": {
            row.get_attribute("data-tag"): row.inner_text() for row in frame.locator("tr[data-tag]").all()
        },
        "text": frame.locator("body").inner_text(),
    }


def http_status(url: str, headers: dict | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as err:
        return err.code


def test_training_view_shows_the_runs_story(api, browser_page, fsx, run_name, cluster_env):
    page = browser_page
    SHOTS.mkdir(parents=True, exist_ok=True)
    conf = {"profile": "local", "run_name": run_name, "train_iters": 60, "checkpoint_interval": 20}
    run_id = api.trigger(DAG_ID, conf)["dag_run_id"]
    dry_id = api.trigger(DAG_ID, {"profile": "local", "run_name": f"{run_name}-dry", "dry_run": True})[
        "dag_run_id"
    ]

    # anonymous and forged callers are refused by every route, before anything is read
    base = f"{api.url}/neoxflow"
    for path in (f"/runs?dag_id={DAG_ID}", f"/runs/{DAG_ID}/{run_id}", f"/api/runs/{DAG_ID}/{run_id}"):
        assert http_status(base + path) == 401, path
        assert http_status(base + path, {"Authorization": "Bearer forged.token.x"}) in (401, 403), path
    assert (
        http_status(f"{base}/api/runs/{DAG_ID}/{run_id}", {"Authorization": f"Bearer {api.token()}"}) == 200
    )

    # during: the tab shows the running slice's job (and what loss the job has logged so far)
    during = None
    deadline = time.monotonic() + 420
    while time.monotonic() < deadline:
        states = task_states(api, run_id)
        if api.dag_run(DAG_ID, run_id)["state"] in ("success", "failed"):
            break
        job_id = api.xcom(DAG_ID, run_id, TRAIN, "job_id") if states.get(TRAIN) == "deferred" else None
        if job_id:
            frame = open_tab(page, api, run_id)
            seen = shown(frame)
            row = frame.locator(f"tr[data-job-id='{job_id}']")
            if row.count() and "running" in row.inner_text().lower():
                during = seen
                page.screenshot(path=str(SHOTS / "training-view-during.png"), full_page=True)
                if seen["loss_count"] > 0:
                    break
        time.sleep(3)
    assert during is not None, "the Training tab never showed the running slice's job"
    assert during["loss_count"] > 0, "the Training tab never showed the running job's logged loss"

    final = api.wait_run(DAG_ID, run_id, timeout=480)
    assert final["state"] == "success", task_states(api, run_id)

    # after: everything shown matches the run's records
    frame = open_tab(page, api, run_id)
    after = shown(frame)
    page.screenshot(path=str(SHOTS / "training-view.png"), full_page=True)

    slices = api.xcom(DAG_ID, run_id, TRAIN, "slices")
    assert after["jobs"] == [str(s["job_id"]) for s in slices]
    assert set(after["jobs"]) == logged_job_ids(fsx, run_name)

    files = demo_run.RunFiles(fsx, run_name)
    for log in files.train_logs():  # the nodes shown are the ones the job's batch script stamped
        job = log.stem.rsplit("-", 1)[-1]
        stamped = re.search(r"nodes=(\S+)", log.read_text().splitlines()[0]).group(1)
        assert stamped in frame.locator(f"tr[data-job-id='{job}']").inner_text(), (job, stamped)
    state = LogState.from_events(ev for log in files.train_logs() for ev in parse_text(log.read_text()))
    logged = [i for i, _ in state.loss_curve()]
    assert logged and logged[-1] == 60
    assert after["iterations"] == logged and after["loss_count"] == len(logged)
    summary = api.xcom(DAG_ID, run_id, TRAIN, "summary")
    assert [int(i) for i, _ in summary["loss_curve"]] == logged  # the XCom curve agrees (under 1000 points)
    assert set(during["iterations"]) <= set(logged)  # what was shown while training was a prefix

    plan = api.xcom(DAG_ID, run_id, "prepare.plan")
    bucket, prefix = plan["s3"]["bucket"], plan["s3"]["prefix"].strip("/")
    s3 = demo_run.aws_client(cluster_env)
    key = f"{prefix}/runs/{run_name}/report/summary.json"
    report = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    assert (
        set(after["checkpoints"])
        == set(report["checkpoints"])
        == {"global_step20", "global_step40", "global_step60"}
    )
    for tag, row in after["checkpoints"].items():
        assert "complete" in row, row
        assert ("verified" in row) == (tag in report["checkpoints_in_s3"]), (tag, row)
    assert re.search(r"Iteration\s+60 / 60", after["text"]), after["text"][:500]

    # the navigation's Training page lists the run and links to it
    page.goto(f"{api.url}/plugin/neoxflow-training")
    listing = page.frame_locator("iframe").first
    listing.locator(f"a:text-is('{run_name}')").first.wait_for()

    # a dry run's tab shows the rendered scripts
    assert api.wait_run(DAG_ID, dry_id, timeout=240)["state"] == "success"
    frame = open_tab(page, api, dry_id)
    names = frame.locator("details.script summary").all_inner_texts()
    assert "train" in names and "NeoX config" in names, names
    assert "#!/bin/bash" in frame.locator("details.script pre").first.inner_text()
    page.screenshot(path=str(SHOTS / "training-view-dry-run.png"), full_page=True)
