"""DAGs the cluster tests run with dag.test() (which needs them in a bundle folder).

Everything a test varies comes in through ``params`` (the run's conf), rendered as native objects.
"""

from __future__ import annotations

from airflow.sdk import DAG

from neoxflow.operators.slurm import SlurmOperator
from neoxflow.sensors.slurm_job import SlurmJobSensor

with DAG(
    "nxf_test_slurm_job",
    schedule=None,
    catchup=False,
    render_template_as_native_obj=True,
    params={
        "script": "#!/bin/bash\ntrue\n",
        "remote_dir": "/tmp",
        "sbatch_options": {},
        "array": None,
        "job_name": None,
    },
    tags=["neoxflow-test"],
) as slurm_job_dag:
    SlurmOperator(
        task_id="job",
        script="{{ params.script }}",
        remote_dir="{{ params.remote_dir }}",
        sbatch_options="{{ params.sbatch_options }}",
        array="{{ params.array }}",
        job_name="{{ params.job_name }}",
        poll_interval=1.0,
    )

with DAG(
    "nxf_test_slurm_sensor",
    schedule=None,
    catchup=False,
    render_template_as_native_obj=True,
    params={"job_id": "0"},
    tags=["neoxflow-test"],
) as slurm_sensor_dag:
    SlurmJobSensor(task_id="wait", job_id="{{ params.job_id }}", poke_interval=1)
