#!/usr/bin/env bash
# Create .venv and install SIMS into it. Idempotent; pass extras, e.g. `scripts/setup.sh dev`.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build. GPU users can
# install their own CUDA build of torch before running this script.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/pip install -q --disable-pip-version-check "torch==${SIMS_TORCH_VERSION:-2.13.0}"
fi
.venv/bin/pip install -q --disable-pip-version-check -e ".${extras:+[$extras]}"
