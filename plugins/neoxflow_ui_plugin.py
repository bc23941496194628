"""Registers the Training view (``neoxflow/ui``) with Airflow 3's plugin interface: its FastAPI app under
``/neoxflow`` in the api-server, a "Training" tab on every DAG run page and a "Training" entry in the
navigation (external views: server-rendered pages in the UI's frame, no JavaScript build)."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin


def _app():
    from neoxflow.ui.routes import app

    return app


class NeoxflowUIPlugin(AirflowPlugin):
    name = "neoxflow_ui"
    fastapi_apps = [{"app": _app(), "url_prefix": "/neoxflow", "name": "neoxflow Training view"}]
    external_views = [
        {
            "name": "Training",
            "href": "/neoxflow/runs/{DAG_ID}/{RUN_ID}",
            "destination": "dag_run",
            "url_route": "neoxflow-training-run",
            "category": "neoxflow",
        },
        {
            "name": "Training",
            "href": "/neoxflow/runs?dag_id=pythia_pretrain",
            "destination": "nav",
            "url_route": "neoxflow-training",
            "category": "neoxflow",
        },
    ]
