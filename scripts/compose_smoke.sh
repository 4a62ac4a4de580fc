#!/usr/bin/env bash
# docker-compose.yml, actually run (issue 17, item 6). Opt-in and slow (minutes; not part of the
# test suite):
#
#   SIMS_DATA=/path/to/datasets bash scripts/compose_smoke.sh      # SIMS_DATA holds camvid/
#
# 1. docker: installs Debian's docker.io, docker-compose and debootstrap when missing (as root),
#    starts dockerd when no daemon answers (and stops it again at the end);
# 2. base image: no registry is needed: `debootstrap --variant=minbase` builds Debian bookworm
#    (python3, venv, libgomp1) from the host's apt mirror, with the host's CA bundle (the one its
#    pip uses), and `docker import` makes it sims-base:bookworm (kept for later runs);
# 3. image: `docker build --network host` of the Dockerfile on that base, torch==2.13.0 CPU (from
#    the PyTorch index, or from a local CPU wheel served on loopback when that index is out of
#    reach: SIMS_TORCH_WHEELS, default the host pip's find-links);
# 4. the stack: Dask scheduler, a general Dask worker and two synthesis replicas, the indexer job
#    building the CamVid bank through the cluster, then the retrieval service;
# 5. checks: /retrieve and /synthesize answer; one synthesis replica is killed and /synthesize
#    still answers; the replica comes back;
# 6. `docker-compose down -v`, and nothing of the project is left.
#
# Timings and outcomes go to benchmarks/results/compose_smoke.json (SIMS_SMOKE_OUT). Settings:
# SIMS_HTTP_PORT (8000), SIMS_SMOKE_PROJECT (sims-smoke), COMPOSE (docker-compose, or
# "docker compose"), DOCKER (Debian's /usr/bin/docker when present), SIMS_TORCH_VERSION (2.13.0).
set -Eeuo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

: "${SIMS_DATA:?set SIMS_DATA to a directory that holds camvid/ (e.g. SIMS_DATA=/work/shared/data)}"
SIMS_DATA=$(cd "$SIMS_DATA" && pwd)
[[ -d "$SIMS_DATA/camvid/valannot" ]] || { echo "no camvid/valannot under SIMS_DATA=$SIMS_DATA" >&2; exit 2; }
project=${SIMS_SMOKE_PROJECT:-sims-smoke}
http_port=${SIMS_HTTP_PORT:-8000}
torch_version=${SIMS_TORCH_VERSION:-2.13.0}
base_image=sims-base:bookworm
out_json=${SIMS_SMOKE_OUT:-$repo/benchmarks/results/compose_smoke.json}
work=$(mktemp -d /tmp/sims-compose-smoke.XXXXXX)
url="http://127.0.0.1:$http_port"
export SIMS_DATA SIMS_HTTP_PORT=$http_port COMPOSE_PROJECT_NAME=$project
SIMS_API_KEY=$(python3 -c "import secrets; print(secrets.token_hex(16))")
export SIMS_API_KEY
started_dockerd="" index_pid="" results=()

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
fail() { log "FAIL: $*"; results+=("\"failed\": $(json "$*")"); exit 1; }
json() { python3 -c 'import json, sys; print(json.dumps(sys.argv[1]))' "$1"; }
# step NAME COMMAND...: run it, record its seconds under NAME.
step() {
    local name=$1 t0 t1
    shift
    t0=$(date +%s.%N)
    "$@"
    t1=$(date +%s.%N)
    results+=("\"${name}_seconds\": $(python3 -c "print(round($t1 - $t0, 1))")")
    log "$name: $(python3 -c "print(round($t1 - $t0, 1))") s"
}

# 1. docker, compose, debootstrap
install_tools() {
    local missing=()
    command -v dockerd >/dev/null || missing+=(docker.io)
    command -v docker-compose >/dev/null || [[ -n "${COMPOSE:-}" ]] || missing+=(docker-compose)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    if ((${#missing[@]})); then
        [[ $(id -u) -eq 0 ]] || { echo "install ${missing[*]} (as root) first" >&2; exit 2; }
        log "installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}
install_tools
# Debian's client matches Debian's daemon (a newer client elsewhere on PATH may want buildx).
DOCKER=${DOCKER:-$(command -v /usr/bin/docker || command -v docker)}
read -r -a compose <<<"${COMPOSE:-docker-compose}"
export DOCKER_BUILDKIT=0

start_dockerd() {
    if "$DOCKER" info >/dev/null 2>&1; then
        return
    fi
    log "starting dockerd (log: $work/dockerd.log)"
    setsid dockerd >"$work/dockerd.log" 2>&1 </dev/null &
    started_dockerd=$!
    for _ in $(seq 60); do
        "$DOCKER" info >/dev/null 2>&1 && return
        sleep 1
    done
    tail -20 "$work/dockerd.log" >&2
    fail "dockerd did not start (see $work/dockerd.log)"
}

cleanup() {
    local code=$?
    set +e
    if "$DOCKER" info >/dev/null 2>&1; then
        log "tearing down"
        "${compose[@]}" --profile jobs --profile http-workers down -v --remove-orphans >"$work/down.log" 2>&1
        left=$("$DOCKER" ps -aq --filter "label=com.docker.compose.project=$project" | wc -l)
        vols=$("$DOCKER" volume ls -q --filter "label=com.docker.compose.project=$project" | wc -l)
        log "left behind: $left containers, $vols volumes"
        results+=("\"left_containers\": $left" "\"left_volumes\": $vols")
    fi
    [[ -n "$index_pid" ]] && kill "$index_pid" 2>/dev/null
    if [[ -n "$started_dockerd" ]]; then
        log "stopping the dockerd this script started"
        kill "$started_dockerd" 2>/dev/null && wait "$started_dockerd" 2>/dev/null
    fi
    results+=("\"passed\": $([[ $code -eq 0 ]] && echo true || echo false)")
    mkdir -p "$(dirname "$out_json")"
    {
        echo "{"
        echo "  \"what\": \"scripts/compose_smoke.sh: image build, compose up, indexer, /retrieve, /synthesize, a killed synthesis replica, down\","
        echo "  \"date\": \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\","
        echo "  \"docker\": $(json "${docker_version:-unknown}"),"
        echo "  \"compose\": $(json "$("${compose[@]}" version --short 2>/dev/null || echo unknown)"),"
        echo "  \"cpus\": $(nproc),"
        local IFS=$'\n'
        printf '  %s,\n' "${results[@]}" | sed '$ s/,$//'
        echo "}"
    } >"$out_json"
    log "results in $out_json"
    rm -rf "$work"
    exit $code
}
trap cleanup EXIT
# A command that fails outside `fail` still says where, in the log and the results.
trap 'fail "line $LINENO: \`$BASH_COMMAND\` exited $?"' ERR
step dockerd start_dockerd
docker_version=$("$DOCKER" version --format '{{.Server.Version}}' 2>/dev/null || echo unknown)

# 2. The base image, from the apt mirror (no registry)
# pip_setting NAME: a setting of the host's pip (`pip config list`: files and PIP_* variables).
pip_setting() {
    pip config list 2>/dev/null | sed -n "s/^[^=]*\.$1='\(.*\)'\$/\1/p" | head -1
}
host_ca() { # the CA bundle the host's pip uses
    local ca
    ca=$(pip_setting cert)
    [[ -n "$ca" && -f "$ca" ]] || ca=/etc/ssl/certs/ca-certificates.crt
    echo "$ca"
}
apt_mirror() {
    local m
    m=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    [[ -n "$m" ]] || m=$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    echo "${m:-http://deb.debian.org/debian}"
}
build_base() {
    if "$DOCKER" image inspect "$base_image" >/dev/null 2>&1; then
        log "$base_image exists (docker rmi it to rebuild)"
        return
    fi
    local root=$work/rootfs mirror
    mirror=$(apt_mirror)
    log "debootstrap bookworm from $mirror"
    debootstrap --variant=minbase --include=python3,python3-venv,libgomp1,ca-certificates \
        bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
        tail -20 "$work/debootstrap.log" >&2
        fail "debootstrap failed"
    }
    # The host's bundle holds its proxy's CA: pip in the build verifies PyPI through it.
    cp "$(host_ca)" "$root/etc/ssl/certs/ca-certificates.crt"
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -c . | "$DOCKER" import - "$base_image" >/dev/null
    rm -rf "$root"
}
step base_image build_base

# 3. The image
torch_args=()
torch_index() { # sets torch_args: where the build gets torch from
    if python3 -c "import urllib.request; urllib.request.urlopen('https://download.pytorch.org/whl/cpu/torch/', timeout=10)" 2>/dev/null; then
        return
    fi
    local wheels wheel port
    wheels=${SIMS_TORCH_WHEELS:-$(pip_setting find-links)}
    wheel=$(ls "$wheels"/torch-"$torch_version"+cpu-*.whl 2>/dev/null | head -1 || true)
    [[ -n "$wheel" ]] || fail "download.pytorch.org is out of reach and no torch-$torch_version+cpu wheel is in ${wheels:-SIMS_TORCH_WHEELS}"
    log "serving $wheel to the build (download.pytorch.org is out of reach)"
    mkdir -p "$work/index/simple/torch"
    ln -s "$wheel" "$work/index/simple/torch/"
    # A fixed port: the URL is a build argument, and a new one would rebuild every layer after it.
    port=${SIMS_SMOKE_INDEX_PORT:-18765}
    (cd "$work/index" && exec python3 -m http.server "$port" --bind 127.0.0.1 >/dev/null 2>&1) &
    index_pid=$!
    sleep 1
    # torch's own dependencies still come from PyPI.
    torch_args=(--build-arg "TORCH_INDEX_URL=http://127.0.0.1:$port/simple"
        --build-arg "PIP_EXTRA_INDEX_URL=https://pypi.org/simple")
}
build_image() {
    torch_index
    "$DOCKER" build --network host --build-arg BASE_IMAGE="$base_image" \
        --build-arg PIP_CERT=/etc/ssl/certs/ca-certificates.crt --build-arg TORCH_VERSION="$torch_version" \
        "${torch_args[@]}" -t sims:latest . >"$work/build.log" 2>&1 || {
        tail -30 "$work/build.log" >&2
        fail "docker build failed"
    }
    [[ -n "$index_pid" ]] && kill "$index_pid" && index_pid=""
    local version
    version=$("$DOCKER" run --rm --entrypoint python sims:latest -c "import torch; print(torch.__version__)")
    [[ "$version" == "$torch_version+cpu" ]] || fail "the image has torch $version, not $torch_version+cpu"
    results+=("\"torch\": $(json "$version")" "\"image_mb\": $("$DOCKER" image inspect sims:latest --format '{{.Size}}' | awk '{print int($1 / 1e6)}')")
}
step image build_image

# 4. The stack
if python3 -c "import socket; socket.create_connection(('127.0.0.1', $http_port), 1)" 2>/dev/null; then
    fail "port $http_port is taken: set SIMS_HTTP_PORT"
fi
"${compose[@]}" --profile jobs --profile http-workers down -v --remove-orphans >/dev/null 2>&1 || true
up_cluster() {
    "${compose[@]}" up -d --no-build --scale dask-synthesis=2 dask-scheduler dask-worker dask-synthesis \
        >"$work/up.log" 2>&1 || { cat "$work/up.log" >&2; fail "compose up of the cluster failed"; }
}
step cluster_up up_cluster
build_bank() {
    "${compose[@]}" run --rm indexer >"$work/indexer.log" 2>&1 || {
        tail -30 "$work/indexer.log" >&2
        fail "the indexer job failed"
    }
    tail -3 "$work/indexer.log"
}
step indexer build_bank
wait_ready() {
    "${compose[@]}" up -d --no-build retrieval >"$work/up-retrieval.log" 2>&1 || fail "compose up retrieval failed"
    for _ in $(seq 240); do
        curl -sf "$url/readyz" >/dev/null && return
        sleep 1
    done
    "${compose[@]}" logs --tail 30 retrieval >&2
    fail "the retrieval service was not ready within 240 s"
}
step service_ready wait_ready
replicas() { curl -sf "$url/metrics" | awk '/^sims_synthesis_replicas / {print int($2)}'; }
wait_replicas() {
    for _ in $(seq 120); do
        [[ "$(replicas)" == "$1" ]] && return
        sleep 1
    done
    fail "the service did not see $1 synthesis replicas within 120 s (it sees $(replicas))"
}
step replicas_seen wait_replicas 2

# 5. Checks
layout=$(ls "$SIMS_DATA"/camvid/valannot/*.png | sed -n 1p)
check_retrieve() {
    local code
    code=$(curl -s -o "$work/retrieve.json" -w '%{http_code}' -F "layout=@$layout" -F k=3 -F dataset_ids=true "$url/retrieve")
    [[ "$code" == 200 ]] || fail "/retrieve answered $code: $(head -c 300 "$work/retrieve.json")"
    python3 -c "import json, sys; r = json.load(open(sys.argv[1])); assert r['components'] and r['bank_version']; \
print(len(r['components']), 'components from bank', r['bank_version'])" "$work/retrieve.json"
}
step retrieve check_retrieve
# synthesize FILE: POST /synthesize, asking again after a 503's Retry-After (as RetrievalClient does).
synthesize() {
    local code tries=0 wait
    while :; do
        code=$(curl -s -D "$work/headers" -o "$1" -w '%{http_code}' -F "layout=@$layout" -F seed=3 \
            -F dataset_ids=true "$url/synthesize")
        [[ "$code" == 503 && $tries -lt 30 ]] || break
        wait=$(awk 'tolower($1) == "retry-after:" {print int($2)}' "$work/headers")
        tries=$((tries + 1))
        sleep "${wait:-1}"
    done
    echo "$code"
}
check_synthesize() {
    local code
    code=$(synthesize "$work/photo.png")
    [[ "$code" == 200 ]] || fail "/synthesize answered $code: $(head -c 300 "$work/photo.png")"
    python3 -c "import sys; d = open(sys.argv[1], 'rb').read(); assert d[:8] == b'\x89PNG\r\n\x1a\n', d[:100]" "$work/photo.png"
    grep -i '^server-timing' "$work/headers" | tr -d '\r'
}
step synthesize check_synthesize
kill_replica() {
    local victim
    victim=$("${compose[@]}" ps -q dask-synthesis | sed -n 1p)  # sed reads it all: `head` could SIGPIPE compose under pipefail
    [[ -n "$victim" ]] || fail "no dask-synthesis container to kill"
    "$DOCKER" kill "$victim" >/dev/null
    log "killed synthesis replica ${victim:0:12}"
    local ok=0 codes=()
    for i in 1 2 3 4 5 6; do
        code=$(synthesize "$work/after-$i.png")
        codes+=("$code")
        [[ "$code" == 200 ]] && ok=$((ok + 1))
    done
    log "after the kill: ${codes[*]}"
    results+=("\"after_kill_statuses\": [$(IFS=,; echo "${codes[*]}")]")
    ((ok == 6)) || fail "after killing a replica, /synthesize answered ${codes[*]}"
    cmp -s "$work/photo.png" "$work/after-1.png" || fail "the same request gave other bytes after the kill"
}
step kill_replica kill_replica
restore_replica() {
    # restart: unless-stopped does not restart a container that `docker kill` stopped: scale back.
    "${compose[@]}" up -d --no-build --no-recreate --scale dask-synthesis=2 dask-synthesis >"$work/rescale.log" 2>&1
    wait_replicas 2
    [[ "$(synthesize "$work/restored.png")" == 200 ]] || fail "/synthesize failed after the replica came back"
}
step replica_back restore_replica
results+=("\"checks\": \"retrieve, synthesize, 6/6 syntheses after killing a replica, replica back\"")
log "all checks passed"
