# moodstream scoring server: gRPC on 50051, Prometheus metrics on 9464.
#
#   docker build -f deploy/server.Dockerfile -t moodstream-server:0.1.0 .     (from the repository root)
#   docker run --gpus all -p 50051:50051 -p 9464:9464 \
#     -v "$PWD/models:/models:ro" \
#     -v "$PWD/deploy/secrets/tokens.json:/run/secrets/tokens.json:ro" \
#     -e REDIS_URL=redis://redis-host:6379/0 moodstream-server:0.1.0
#
# The PyPI torch 2.13.0 wheel carries its own CUDA 13.0 user-space libraries
# (cuBLAS, cuDNN, ...), so the CUDA "base" image is enough: it brings the
# container-toolkit settings and the driver requirement (NVIDIA driver >= 580
# on the host). The same image runs on CPU-only hosts (--device auto).
ARG CUDA_IMAGE=nvidia/cuda:13.0.0-base-ubuntu24.04
FROM ${CUDA_IMAGE}

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/moodstream \
    PATH=/opt/moodstream/bin:$PATH

# Ubuntu 24.04's Python is 3.12 (moodstream supports 3.11-3.13).
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/moodstream

# Dependencies first, in their own layer: a code change does not reinstall torch.
COPY pyproject.toml /src/pyproject.toml
COPY deploy/pyproject_requirements.py /src/deploy/pyproject_requirements.py
RUN python /src/deploy/pyproject_requirements.py --pyproject /src/pyproject.toml server > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# moodstream itself, with the server extra (its dependencies are already in place).
COPY README.md /src/README.md
COPY moodstream /src/moodstream
COPY agent /src/agent
COPY server /src/server
COPY model /src/model
COPY trainer /src/trainer
COPY dashboard /src/dashboard
COPY proto /src/proto
RUN pip install --no-deps "/src[server]" \
    && pip check \
    && pip install --no-deps $(python /src/deploy/pyproject_requirements.py --pyproject /src/pyproject.toml \
        --without-dependencies) \
    && rm -rf /src
COPY deploy/grpc_health_check.py /opt/moodstream/grpc_health_check.py

# No network at run time: a checkpoint folder holds every weight, so the
# Hugging Face hub is never asked. Caches go to /tmp, which may be the only
# writable place (read-only root file system).
ENV HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HOME=/tmp/huggingface \
    XDG_CACHE_HOME=/tmp/cache \
    CUDA_CACHE_PATH=/tmp/nv \
    REDIS_URL=redis://redis:6379/0

RUN groupadd --system --gid 10001 moodstream \
    && useradd --system --uid 10001 --gid moodstream --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin moodstream \
    && mkdir -p /models \
    && chown moodstream:moodstream /models
USER 10001:10001

# The model folder is mounted here, read-only: one checkpoint folder per version and `current` naming the
# one new sessions get; versions are added and switched without a restart (docs/models.md).
VOLUME ["/models"]
# gRPC (moodstream.v1.Screening, grpc.health.v1.Health, reflection) and Prometheus /metrics.
EXPOSE 50051 9464

# Docker's own health check: the standard gRPC health service, as Kubernetes'
# readiness probe asks it: SERVING while the model is loaded and Redis answers.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "/opt/moodstream/grpc_health_check.py", "127.0.0.1:50051", "--service", "moodstream.v1.Screening"]

# The tokens file (hashes only, see `moodstream token create`) is a secret
# mounted at /run/secrets/tokens.json; REDIS_URL names the shared Redis.
ENTRYPOINT ["moodstream"]
CMD ["server", "--models", "/models", "--host", "0.0.0.0", "--port", "50051", \
     "--metrics-port", "9464", "--tokens", "/run/secrets/tokens.json", "--json-logs"]
