"""The Training view: an Airflow UI page per DAG run of pythia_pretrain (``neoxflow_ui_plugin.py`` at the
plugins folder's root registers it).

- ``story``: pure; turns what the pipeline recorded (XComs, task tries, the run of record, the report, the
  job logs when visible) into one JSON-ready story of the run.
- ``render``: pure; the story as one HTML page with an inline SVG loss chart (hover shows the point), no
  JavaScript build and no external asset.
- ``sources``: reads those records inside the api-server (Airflow's metadata DB, S3 through the amazon
  provider, the FSx log only where the profile says Airflow sees FSx).
- ``app``: the FastAPI app; every route checks the caller's read access to the DAG with Airflow's own
  auth dependencies.
"""
