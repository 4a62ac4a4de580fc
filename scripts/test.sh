#!/usr/bin/env bash
# Set up with the dev extras, then lint and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
# The Studio browser tests drive Debian's Chromium through Playwright (its own browser download
# does not work here). Install it when absent; without it those tests fail under CI=true.
if ! command -v chromium >/dev/null 2>&1; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } ||
            echo "could not install chromium; the browser tests will fail" >&2
    else
        echo "chromium is not installed (apt-get install chromium); the browser tests will not run" >&2
    fi
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# The VGG activation test needs real weights; use the project's shared copy when it sits beside
# the checkout (as on our machines) and SIMS_VGG_WEIGHTS is not set. Elsewhere the test skips.
shared_vgg="../shared/weights/vgg16_hed_features.pth"
if [[ -z "${SIMS_VGG_WEIGHTS:-}" && -f "$shared_vgg" ]]; then
    export SIMS_VGG_WEIGHTS="$PWD/$shared_vgg"
fi
.venv/bin/python -m pytest "$@"
