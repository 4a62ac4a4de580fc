#!/usr/bin/env bash
# Set up with the dev extras, then lint and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# The VGG activation test needs real weights; use the project's shared copy when it sits beside
# the checkout (as on our machines) and SIMS_VGG_WEIGHTS is not set. Elsewhere the test skips.
shared_vgg="../shared/weights/vgg16_hed_features.pth"
if [[ -z "${SIMS_VGG_WEIGHTS:-}" && -f "$shared_vgg" ]]; then
    export SIMS_VGG_WEIGHTS="$PWD/$shared_vgg"
fi
.venv/bin/python -m pytest "$@"
