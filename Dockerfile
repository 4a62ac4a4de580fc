# SIMS: one image for every role (retrieval service, indexer, Dask scheduler and workers,
# synthesis workers); docker-compose.yml picks the command. scripts/compose_smoke.sh builds it
# on a Debian base made with debootstrap (no registry needed) and runs the stack (docs/scaling.md).
#
# BASE_IMAGE: any Debian-like image with python3 (3.11+) and its venv module.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

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
# pip settings of a build host behind a TLS-inspecting proxy or with its own index (unset by
# default): PIP_CERT names a CA bundle inside the base image, PIP_EXTRA_INDEX_URL another index.
ARG PIP_CERT
ARG PIP_EXTRA_INDEX_URL
RUN python3 -m venv /app/.venv \
    && /app/.venv/bin/pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

# The dependencies alone, from pyproject.toml: this layer is rebuilt only when they change, not
# on every source edit.
COPY pyproject.toml ./
RUN /app/.venv/bin/python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['s3']))" > /tmp/requirements.txt \
    && /app/.venv/bin/pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

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
