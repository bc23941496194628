"""DAGs the training cluster tests run with dag.test() (tests/cluster/test_training.py).

Everything a test varies comes in through ``params`` (the run's conf), rendered as native objects.
"""

from __future__ import annotations

from airflow.sdk import DAG

from neoxflow.operators.slurm import SlurmOperator
from neoxflow.operators.training import NeoXTrainOperator
from neoxflow.sensors.checkpoint import CheckpointSensor

with DAG(
    "nxf_test_train",
    schedule=None,
    catchup=False,
    render_template_as_native_obj=True,
    params={
        "script": "#!/bin/bash\ntrue\n",
        "remote_dir": "/tmp",
        "save_dir": "/tmp/save",
        "listing_script": "/tmp/ckpt_listing.py",
        "listing_python": "python3",
        "run_name": "run",
    },
    tags=["neoxflow-test"],
) as train_dag:
    NeoXTrainOperator(
        task_id="train",
        script="{{ params.script }}",
        remote_dir="{{ params.remote_dir }}",
        save_dir="{{ params.save_dir }}",
        listing_script="{{ params.listing_script }}",
        listing_python="{{ params.listing_python }}",
        run_name="{{ params.run_name }}",
        train_iters=20,
        poll_interval=0.5,
        list_every=4,
        stall_window=12.0,
    )

with DAG(
    "nxf_test_checkpoint_sensor",
    schedule=None,
    catchup=False,
    render_template_as_native_obj=True,
    params={
        "save_dir": "/tmp/save",
        "listing_script": "/tmp/ckpt_listing.py",
        "listing_python": "python3",
        "after_iteration": None,
        "run_name": "run",
    },
    tags=["neoxflow-test"],
) as checkpoint_sensor_dag:
    CheckpointSensor(
        task_id="wait",
        save_dir="{{ params.save_dir }}",
        listing_script="{{ params.listing_script }}",
        listing_python="{{ params.listing_python }}",
        after_iteration="{{ params.after_iteration }}",
        run_name="{{ params.run_name }}",
        poke_interval=0.5,
        stall_window=4.0,
    )

with DAG(
    "nxf_test_export",
    schedule=None,
    catchup=False,
    render_template_as_native_obj=True,
    params={"script": "#!/bin/bash\ntrue\n", "remote_dir": "/tmp"},
    tags=["neoxflow-test"],
) as export_dag:
    SlurmOperator(
        task_id="export",
        script="{{ params.script }}",
        remote_dir="{{ params.remote_dir }}",
        poll_interval=0.5,
    )
