#!/usr/bin/env bash
# What services cost while nothing happens: starts the given services (release build) on
# the stack, lets them settle, and prints each one's CPU, the broker's and PostgreSQL's in
# milliseconds per second over SECONDS_IDLE (default 20). Not a test: it reports.
#   Deploy/local/with-stack.sh Deploy/local/idle-cpu.sh ingress anonymizer key-vault matcher merger
#   VEIL_BROKERS=3 Deploy/local/with-stack.sh Deploy/local/idle-cpu.sh ...   (three mock brokers)
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: $0 SERVICE..." >&2; exit 2; }
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${VEIL_BIN:-$root/.build/release}
state=${VEIL_STATE:-$root/.veil}/idle
logs=$state/logs
mkdir -p "$logs"
base_port=${VEIL_BENCH_ADMIN_PORT:-9411}
source "$root/Deploy/local/services.sh"
veil_keys_and_roles >/dev/null
trap veil_stop_all EXIT
veil_start_services warning "$@"
veil_wait_ready
sleep 8
seconds=${SECONDS_IDLE:-20}
broker=$(cat "${VEIL_STATE:-$root/.veil}/broker.pid" 2>/dev/null || true)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
postgres_ticks() { local t=0 p; for p in $(pgrep -u postgres postgres || true); do t=$((t + $(ticks "$p"))); done; echo "$t"; }
declare -A before
for p in "${pids[@]}" $broker; do before[$p]=$(ticks "$p"); done
pg_before=$(postgres_ticks)
sleep "$seconds"
hz=$(getconf CLK_TCK); total=0; i=0
report() { echo "$1: $(( $2 * 1000 / hz / seconds )) ms/s"; total=$((total + $2)); }
for p in "${pids[@]}"; do report "${started_services[$i]}" $(( $(ticks "$p") - before[$p] )); i=$((i + 1)); done
[ -n "$broker" ] && report "broker" $(( $(ticks "$broker") - before[$broker] ))
report "postgres" $(( $(postgres_ticks) - pg_before ))
echo "total: $(( total * 1000 / hz / seconds )) ms of CPU per second, idle (${VEIL_BROKERS:-1} broker(s))"
