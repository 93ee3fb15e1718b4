#!/usr/bin/env bash
# `make bench-dispatch`: assignment decisions/s with 1,000 technicians (the dispatcher's
# engine against PostgreSQL), then ingress, dispatcher and technician-alerter (release
# build) on the stack and the time from a service request accepted to its alert stored
# by the alerter (p50/p99) at half that rate. Not a test: it reports, it does not assert.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${VEIL_BIN:-$root/.build/release}
state=${VEIL_STATE:-$root/.veil/bench-dispatch}
logs=$state/logs
mkdir -p "$logs"
base_port=${VEIL_BENCH_ADMIN_PORT:-9301}
export VEIL_INGRESS_ADMIN_TOKEN=bench-admin-$RANDOM$RANDOM
source "$root/Deploy/local/services.sh"
veil_keys_and_roles
trap veil_stop_all EXIT
# Decisions first, on PostgreSQL alone: the engine as the dispatcher runs it, without the
# three services' idle work (fetch polling, relays, timers) sharing the two cores.
echo "==> decisions: the assignment engine against PostgreSQL"
decisions=$("$bin/veil-bench" dispatch --technicians "${TECHNICIANS:-1000}" --requests "${REQUESTS:-5000}" | tee /dev/stderr \
  | sed -n 's/^ *\([0-9]*\) decisions\/s.*/\1/p')
echo "==> starting ingress, dispatcher, technician-alerter (release build; logs in $logs)"
veil_start_services warning ingress dispatcher technician-alerter
veil_wait_ready
# Half the measured decision rate, capped at 200/s (what two cores carry through three services).
rate=${RATE:-$(( ${decisions:-400} / 2 > 200 ? 200 : ${decisions:-400} / 2 ))}
"$bin/veil-bench" dispatch --latency-only --technicians "${TECHNICIANS:-1000}" \
  --url "http://127.0.0.1:${VEIL_HTTP_PORT:-18080}" --seconds "${SECONDS_PER_PHASE:-10}" --rate "$rate"
