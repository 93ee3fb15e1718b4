#!/usr/bin/env bash
# `make bench-pos`: point-of-sale lookup latency through ingress and the key-vault
# (release build) at a steady rate, p50/p99, beside the bare ingress HTTP round trip
# measured in the same run. Not a test: it reports, it does not assert.
# Settings: RATE (lookups/s, default 500), SECONDS_PER_PHASE (default 10), HOUSEHOLDS (default 20000);
# VEIL_BENCH_TIMELINE=<file> appends every answered call's start and latency (ms), per phase.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${VEIL_BIN:-$root/.build/release}
state=${VEIL_STATE:-$root/.veil/bench-pos}
logs=$state/logs
mkdir -p "$logs"
base_port=${VEIL_BENCH_ADMIN_PORT:-9311}
source "$root/Deploy/local/services.sh"
veil_keys_and_roles
# A till waits for this round trip: ingress and the key-vault send at once (no linger batching).
export KAFKA_LINGER_MS=${KAFKA_LINGER_MS:-0}
trap veil_stop_all EXIT
echo "==> starting ingress and key-vault (release build; logs in $logs)"
veil_start_services warning ingress key-vault
veil_wait_ready
"$bin/veil-bench" pos --url "http://127.0.0.1:${VEIL_HTTP_PORT:-18080}" --rate "${RATE:-500}" \
  --seconds "${SECONDS_PER_PHASE:-10}" --households "${HOUSEHOLDS:-20000}"
