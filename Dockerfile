# SIMS: one image for every role (retrieval service, indexer, Dask scheduler and workers,
# synthesis worker); docker-compose.yml picks the command. Not built here: the development
# machine has no Docker engine (see docs/service.md).
FROM python:3.11-slim

# libgomp: OpenMP runtime of FAISS and torch.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    NUMBA_CACHE_DIR=/tmp/numba-cache

WORKDIR /app

# The CPU build of torch first (the default wheel on Linux is a multi-GB CUDA build), at the
# version scripts/setup.sh pins; setup.sh then skips torch and installs the project.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN python -m venv /app/.venv \
    && /app/.venv/bin/pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

COPY . .
# The s3 extra: the image serves banks on S3 as well as on volumes.
RUN bash scripts/setup.sh s3 \
    && useradd --create-home --uid 1000 sims \
    && mkdir -p /banks /data \
    && chown sims:sims /banks

ENV PATH=/app/.venv/bin:$PATH \
    SIMS_HOST=0.0.0.0 \
    SIMS_PORT=8000
USER sims
EXPOSE 8000
ENTRYPOINT ["sims"]
CMD ["serve", "--bank", "/banks/camvid"]
