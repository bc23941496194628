# syntax=docker/dockerfile:1
# neoxflow: the GPT-NeoX training image that Slurm runs through pyxis/enroot (profile key
# cluster.container_image, e.g. /fsx/apps/gpt-neox.sqsh; see docs/docker.md).
#
# The stack is the seed recipe's (aws-samples/awsome-distributed-training v1.1.0, 3.test_cases/15.gpt-neox):
# NGC PyTorch 23.12 (which already ships NCCL 2.19.3), EFA installer 1.30.0, aws-ofi-nccl 1.8.1-aws,
# flash-attn 2.5.5. Unlike the seed, GPT-NeoX and DeeperSpeed are pinned to the commits neoxflow was
# checked against (a real run: tests/fixtures/neox-run), and the pieces that otherwise compile on the
# cluster at start-up are built here, with the system g++ (a CXX wrapper made NeoX's dataset helper
# segfault in build_sample_idx_int32).
#
#   docker build -f docker/neox.Dockerfile -t neoxflow/gpt-neox:ea7aefd8 docker/
#   docker/enroot-import.sh neoxflow/gpt-neox:ea7aefd8 /fsx/apps/gpt-neox.sqsh
#
# The image's Python is 3.10 (NGC 23.12): the scripts of include/cluster that run in it stay 3.10-compatible
# (tests/unit/test_docker.py checks them).
FROM nvcr.io/nvidia/pytorch:23.12-py3

ARG EFA_INSTALLER_VERSION=1.30.0
# Optional: the installer tarball's sha256, checked when given (AWS publishes a GPG signature, not a hash).
ARG EFA_INSTALLER_SHA256=
ARG AWS_OFI_NCCL_VERSION=1.8.1-aws
# NCCL is the base image's own 2.19.3 (the seed dropped its custom NCCL build for that reason); the build
# fails if the base ever carries another version.
ARG NCCL_VERSION_CODE=21903
ARG NEOX_COMMIT=ea7aefd8f8e183256992d9fede4d7c71a46d67a5
ARG DEEPERSPEED_COMMIT=65d9f99249f79ebd7c4577b6aeb0d3dff5a1cef6
# CUDA targets for the ahead-of-time builds: A100 (8.0) and H100/H200 (9.0).
ARG TORCH_CUDA_ARCH_LIST="8.0;9.0"
# nvcc needs several GiB per job for flash-attn; lower this on a small build host.
ARG MAX_JOBS=8

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CC=/usr/bin/gcc \
    CXX=/usr/bin/g++

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# --- system packages; drop the base image's MPI and verbs libraries (EFA brings its own) ----------------------
# Ubuntu package versions are not pinned: the NGC tag fixes the distribution snapshot they come from.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get remove -y --allow-change-held-packages libmlx5-1 ibverbs-utils libibverbs-dev libibverbs1 \
    && rm -rf /opt/hpcx/ompi /usr/local/mpi /opt/hpcx/nccl_rdma_sharp_plugin \
    && apt-get install -y --no-install-recommends \
        autoconf automake build-essential ca-certificates curl g++ gcc git libhwloc-dev libtool \
        openssh-client \
    && rm -rf /var/lib/apt/lists/* \
    && ldconfig
ENV OPAL_PREFIX=

# --- EFA (libfabric + Amazon's Open MPI); only --skip-kmod/--no-verify/--skip-limit-conf inside an image ----
WORKDIR /tmp/efa
RUN apt-get update \
    && curl -fsSLO "https://efa-installer.amazonaws.com/aws-efa-installer-${EFA_INSTALLER_VERSION}.tar.gz" \
    && if [ -n "${EFA_INSTALLER_SHA256}" ]; then \
        echo "${EFA_INSTALLER_SHA256}  aws-efa-installer-${EFA_INSTALLER_VERSION}.tar.gz" | sha256sum -c -; fi \
    && tar -xf "aws-efa-installer-${EFA_INSTALLER_VERSION}.tar.gz" --strip-components=1 \
    && ./efa_installer.sh -y -g -d --skip-kmod --no-verify --skip-limit-conf \
    && rm -rf /tmp/efa /var/lib/apt/lists/* \
    && ldconfig
ENV LD_LIBRARY_PATH=/opt/amazon/efa/lib:/opt/amazon/openmpi/lib:/usr/local/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH} \
    PATH=/opt/amazon/efa/bin:/opt/amazon/openmpi/bin:${PATH}

# --- aws-ofi-nccl: NCCL's network plugin for EFA (libnccl-net.so under /opt/amazon/efa/lib) ---------------------
WORKDIR /tmp/aws-ofi-nccl
RUN curl -fsSL "https://github.com/aws/aws-ofi-nccl/archive/refs/tags/v${AWS_OFI_NCCL_VERSION}.tar.gz" \
        | tar -xz --strip-components=1 \
    && ./autogen.sh \
    && ./configure --prefix=/opt/amazon/efa --with-libfabric=/opt/amazon/efa --with-cuda=/usr/local/cuda \
        --enable-platform-aws --with-mpi=/opt/amazon/openmpi \
    && make -j"$(nproc)" install \
    && rm -rf /tmp/aws-ofi-nccl \
    && printf '%s\n' /usr/local/lib /opt/amazon/openmpi/lib /opt/amazon/efa/lib > /etc/ld.so.conf.d/efa.conf \
    && ldconfig \
    && test -e /opt/amazon/efa/lib/libnccl-net.so

# --- NCCL: assert the base image's version (ncclGetVersion needs no GPU) ------------------------------------
RUN python -c "import ctypes, sys; lib = ctypes.CDLL('libnccl.so.2'); v = ctypes.c_int(); \
lib.ncclGetVersion(ctypes.byref(v)); print('NCCL version code', v.value); \
sys.exit(0 if v.value == ${NCCL_VERSION_CODE} else 'NCCL version code %d, expected ${NCCL_VERSION_CODE}' % v.value)"

ENV OMPI_MCA_pml=^cm,ucx \
    OMPI_MCA_btl=tcp,self \
    OMPI_MCA_btl_tcp_if_exclude=lo,docker0 \
    OPAL_PREFIX=/opt/amazon/openmpi \
    NCCL_SOCKET_IFNAME=^docker,lo

# --- GPT-NeoX at the pinned commit ------------------------------------------------------------------------------
WORKDIR /workspace/gpt-neox
RUN git init -q . \
    && git remote add origin https://github.com/EleutherAI/gpt-neox.git \
    && git fetch -q --depth 1 origin "${NEOX_COMMIT}" \
    && git checkout -q FETCH_HEAD \
    && test "$(git rev-parse HEAD)" = "${NEOX_COMMIT}"

# --- Python packages ----------------------------------------------------------------------------------------------
# The constraints file keeps NGC's CUDA build of torch (and its numpy) in place whatever a package asks for.
# NeoX's requirements name an older DeeperSpeed commit: that line is dropped and the pinned one installed
# instead. DeeperSpeed needs hjson and pydantic (a stock image lacks them); boto3 serves neoxflow's
# fetch/stage scripts; zstandard matches requirements.txt. DS_BUILD_FUSED_ADAM builds the fused Adam op now
# instead of a ~40 s JIT compile into each user's home at every first launch.
RUN pip list --format=freeze | grep -iE '^(torch|numpy)==' > /etc/pip-constraints.txt \
    && cat /etc/pip-constraints.txt \
    && grep -viE '^deepspeed' requirements/requirements.txt > /tmp/neox-requirements.txt \
    && pip install -c /etc/pip-constraints.txt -r /tmp/neox-requirements.txt \
    && pip install -c /etc/pip-constraints.txt hjson==3.1.0 pydantic==2.14.4 boto3==1.44.8 zstandard==0.25.0 \
    && DS_BUILD_OPS=0 DS_BUILD_FUSED_ADAM=1 pip install -c /etc/pip-constraints.txt --no-build-isolation \
        "deepspeed @ git+https://github.com/EleutherAI/DeeperSpeed.git@${DEEPERSPEED_COMMIT}" \
    && rm /tmp/neox-requirements.txt
ENV PIP_CONSTRAINT=/etc/pip-constraints.txt

# flash-attn from source against NGC's torch (its prebuilt wheels target release torch builds).
RUN MAX_JOBS="${MAX_JOBS}" FLASH_ATTENTION_FORCE_BUILD=TRUE pip install --no-build-isolation flash-attn==2.5.5

# --- NeoX's compiled helpers, built now with the system g++ -------------------------------------------------------
# megatron/data/helpers (compiled by `make` at start-up when missing) and the fused softmax/rope kernels
# (JIT-loaded at start-up when a *_fusion option is on). torch re-checks the kernels at every start and
# takes a lock file in their build folder, and pyxis runs the job as the submitting user: both folders are
# left writable for everyone.
RUN make -C megatron/data CXX=/usr/bin/g++ \
    && python -c "from megatron.fused_kernels import load; load()" \
    && python -c "import flash_attn, deepspeed, hjson, pydantic, boto3, zstandard; \
print('flash-attn', flash_attn.__version__, 'deepspeed', deepspeed.__version__)" \
    && chmod -R a+rwX megatron/data megatron/fused_kernels/build

LABEL org.opencontainers.image.title="neoxflow GPT-NeoX" \
      org.opencontainers.image.description="GPT-NeoX ${NEOX_COMMIT} + DeeperSpeed ${DEEPERSPEED_COMMIT}, EFA ${EFA_INSTALLER_VERSION}, aws-ofi-nccl ${AWS_OFI_NCCL_VERSION}" \
      org.opencontainers.image.base.name="nvcr.io/nvidia/pytorch:23.12-py3" \
      neoxflow.neox.commit="${NEOX_COMMIT}" \
      neoxflow.deeperspeed.commit="${DEEPERSPEED_COMMIT}"

WORKDIR /workspace/gpt-neox
