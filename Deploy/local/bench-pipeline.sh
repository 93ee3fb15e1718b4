#!/usr/bin/env bash
# `make bench-pipeline`: the five inquiry services (release build) on the stack, driven
# by `veil-bench pipeline`: crypto-only bound, end-to-end throughput, latency at half
# of it, and upstream filing rate. Not a test: it reports, it does not assert.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${VEIL_BIN:-$root/.build/release}
state=${VEIL_STATE:-$root/.veil/bench}
logs=$state/logs
mkdir -p "$logs"
base_port=${VEIL_BENCH_ADMIN_PORT:-9201}
source "$root/Deploy/local/services.sh"
veil_keys_and_roles
# The customer's app waits for the insight: the five services send at once instead of
# batching for 5 ms on each of the five hops (KAFKA_LINGER_MS=5 to compare; docs/ARCHITECTURE.md).
export KAFKA_LINGER_MS=${KAFKA_LINGER_MS:-0}
echo "==> producers linger ${KAFKA_LINGER_MS} ms (KAFKA_LINGER_MS)"
trap veil_stop_all EXIT
echo "==> starting ingress, anonymizer, key-vault, matcher, merger (release build; logs in $logs)"
VEIL_MERGER_SAVE=${VEIL_MERGER_SAVE:-true} veil_start_services "${VEIL_BENCH_LOG_LEVEL:-warning}" ingress anonymizer key-vault matcher merger
veil_wait_ready
"$bin/veil-bench" pipeline --url "http://127.0.0.1:${VEIL_HTTP_PORT:-18080}" --keys "$state/keys" \
  --seconds "${SECONDS_PER_PHASE:-15}" --concurrency "${CONCURRENCY:-48}" --filing-records "${FILING_RECORDS:-100000}" \
  --vault-metrics "http://127.0.0.1:$((base_port + 2))/metrics" ${BENCH_ARGS:-}
