#!/usr/bin/env bash
# SIMS in one command: set up, build a memory bank from the bundled CamVid sample, serve it with a
# synthesis worker in the same process, synthesize photos for the 8 bundled val layouts and one
# coarse layout over HTTP, and write them with side-by-side grids to outputs/quickstart/.
#
#   bash scripts/quickstart.sh           # ... then stop the server
#   bash scripts/quickstart.sh --serve   # ... and keep serving until Ctrl-C
#
# Environment: SIMS_BANK (bank directory, default .sims/banks/camvid-sample-train),
# SIMS_WEIGHTS (synthesis network, default weights/synthesis), SIMS_OUT (default outputs/quickstart),
# SIMS_PORT (default: a free loopback port).
set -euo pipefail
cd "$(dirname "$0")/.."

serve=0
for arg in "$@"; do
    case "$arg" in
        --serve) serve=1 ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        *) echo "unknown argument: $arg (try --serve)" >&2; exit 2 ;;
    esac
done

bank="${SIMS_BANK:-.sims/banks/camvid-sample-train}"
weights="${SIMS_WEIGHTS:-weights/synthesis}"
out="${SIMS_OUT:-outputs/quickstart}"
sample=examples/camvid-sample
coarse=examples/coarse-layouts/0016E5_08059_coarse.png

# 1. Set up .venv (idempotent).
bash scripts/setup.sh
sims=.venv/bin/sims
if [ ! -f "$weights/config.json" ]; then
    echo "error: no synthesis network in $weights (config.json + model.safetensors); set SIMS_WEIGHTS" >&2
    exit 2
fi

# 2. The bank: the 24 sample *train* images, so that the val layouts below are never their own source.
if [ ! -f "$bank/CURRENT" ]; then
    "$sims" index build --dataset camvid --root "$sample" --splits train --out "$bank" --no-progress
else
    echo "Bank $bank exists; reusing it (delete it to rebuild)."
fi

# 3. Serve it with the in-process synthesis worker on a free loopback port; wait until ready.
port="${SIMS_PORT:-$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
url="http://127.0.0.1:$port"
mkdir -p "$out"
log="$out/server.log"
"$sims" serve --bank "$bank" --host 127.0.0.1 --port "$port" --with-worker --weights "$weights" >"$log" 2>&1 &
server=$!
stop_server() {
    if kill -0 "$server" 2>/dev/null; then
        kill -TERM "$server" 2>/dev/null || true  # uvicorn shuts down cleanly on SIGTERM
        wait "$server" 2>/dev/null || true
    fi
}
trap stop_server EXIT
trap 'exit 130' INT TERM
printf 'Starting the service on %s ' "$url"
for _ in $(seq 1 120); do
    if ! kill -0 "$server" 2>/dev/null; then
        echo; echo "error: the service exited; its log ($log):" >&2; tail -n 20 "$log" >&2; exit 1
    fi
    if .venv/bin/python -c "import sys, urllib.request; urllib.request.urlopen('$url/readyz', timeout=1)" 2>/dev/null; then
        break
    fi
    printf '.'; sleep 1
done
echo " ready."

# 4. Synthesize over HTTP: the 8 val layouts (CamVid's 11 = unlabelled), then a coarse layout.
"$sims" synthesize --service "$url" --out "$out" --unlabelled 11 --extras --grid "$out/grid.png" \
    $(printf -- '--layout %s ' "$sample"/valannot/*.png)
"$sims" synthesize --service "$url" --out "$out/coarse" --coarse --n 2 --extras --grid "$out/grid-coarse.png" \
    --layout "$coarse"

echo
echo "Done. Look at:"
echo "  $out/grid.png          layout | canvas | output | provenance, one row per val layout"
echo "  $out/grid-coarse.png   a coarse layout, refined, with two seeds"
echo "  $out/*.png             the photos (plus .canvas.png, .provenance.png, .layout.png, .json per photo)"
if [ "$serve" = 1 ]; then
    echo
    echo "Serving $url (POST /synthesize, /retrieve; docs at $url/docs). Ctrl-C to stop."
    wait "$server"
fi
