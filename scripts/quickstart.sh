#!/usr/bin/env bash
# Set up, then build a memory bank from the bundled CamVid sample and print what it holds.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bank="${SIMS_BANK:-.sims/banks/camvid-sample}"
.venv/bin/sims index build --dataset camvid --root examples/camvid-sample --out "$bank"
echo
echo "Bank ready in $bank. Read it from Python with: memory_bank.open_bank('$bank')"
