"""The Training view's FastAPI app, mounted by the plugin under ``/neoxflow`` in the api-server.

Airflow does not authenticate a plugin's routes by itself: every route here depends on Airflow's own
``requires_access_dag`` (the caller's JWT from the ``Authorization`` header or the UI's cookie, checked by
the configured auth manager) for the DAG named in the path or the ``dag_id`` query parameter, for its
runs and its XComs. An anonymous request gets 401, a user without access to the DAG 403.
"""

from __future__ import annotations

import time
from typing import Any

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.common.db.common import SessionDep
from airflow.api_fastapi.core_api.security import requires_access_dag
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse

from neoxflow.ui import page, sources, story

PREFIX = "/neoxflow"
DAG_IDS = ("pythia_pretrain", "pythia_pretrain_continue")

READ_RUNS = [
    Depends(requires_access_dag("GET", DagAccessEntity.RUN)),
    Depends(requires_access_dag("GET", DagAccessEntity.XCOM)),
]

app = FastAPI(title="neoxflow Training view", docs_url=None, redoc_url=None, openapi_url=None)


def _story(session, dag_id: str, run_id: str) -> dict[str, Any]:
    dag_run = sources.find_dag_run(session, dag_id, run_id)
    if dag_run is None:
        raise HTTPException(status_code=404, detail=f"no DAG run {run_id!r} of {dag_id!r}")
    told = story.build_story(sources.gather(session, dag_run), now=time.time())
    told["dag_runs_of_record"] = sources.runs_of_record(session, dag_id, told["run"]["run_name"])
    return told


def _base(request: Request) -> str:
    return str(request.scope.get("root_path") or PREFIX).rstrip("/")


@app.get("/runs", response_class=HTMLResponse, dependencies=READ_RUNS)
def runs(request: Request, session: SessionDep, dag_id: str = DAG_IDS[0]) -> HTMLResponse:
    """The newest runs of one DAG (``dag_id`` query parameter), each linking to its Training page."""
    return HTMLResponse(page.render_index(sources.recent_runs(session, [dag_id]), base=_base(request)))


@app.get("/runs/{dag_id}/{run_id}", response_class=HTMLResponse, dependencies=READ_RUNS)
def run_page(dag_id: str, run_id: str, request: Request, session: SessionDep) -> HTMLResponse:
    return HTMLResponse(page.render_run(_story(session, dag_id, run_id), base=_base(request)))


@app.get("/api/runs/{dag_id}/{run_id}", dependencies=READ_RUNS)
def run_json(dag_id: str, run_id: str, session: SessionDep) -> JSONResponse:
    """The same story as JSON (what the page shows, for tools and tests)."""
    return JSONResponse(_story(session, dag_id, run_id))
