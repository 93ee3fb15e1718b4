#!/usr/bin/env bash
# `make demo`: provisions a database role per service, starts the seven services
# against the stack (with-stack.sh set DATABASE_URL and KAFKA_BROKERS), shows them
# healthy, sends a poison message to show the dead-letter path, and stops them
# gracefully.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${VEIL_BIN:-$root/.build/debug}
state=${VEIL_STATE:-$root/.veil}
logs=$state/logs
mkdir -p "$logs"
services=(ingress anonymizer key-vault matcher merger dispatcher technician-alerter)
base_port=${VEIL_DEMO_ADMIN_PORT:-9101}

echo "==> generating a development key set (services, directory, demo provider) in $state/keys"
rm -rf "$state/keys"
"$bin/veilctl" keys init --out "$state/keys" >/dev/null
export VEIL_KEYS_DIR=$state/keys

echo "==> provisioning one database role and schema per service"
eval "$("$bin/veilctl" db provision --exports)"

pids=()
stop_all() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap stop_all EXIT

echo "==> starting the seven services (logs in $logs)"
i=0
for s in "${services[@]}"; do
  var=VEIL_DATABASE_URL_$(echo "$s" | tr 'a-z-' 'A-Z_')
  DATABASE_URL=${!var} VEIL_ADMIN_PORT=$((base_port + i)) VEIL_LOG_LEVEL=info \
    "$bin/$s" >"$logs/$s.log" 2>&1 &
  pids+=($!)
  i=$((i + 1))
done

printf '==> waiting for /health/ready'
deadline=$((SECONDS + 90))
while :; do
  ready=0; i=0
  for s in "${services[@]}"; do
    curl -fs "http://127.0.0.1:$((base_port + i))/health/ready" >/dev/null 2>&1 && ready=$((ready + 1))
    i=$((i + 1))
  done
  [ "$ready" -eq ${#services[@]} ] && break
  [ $SECONDS -ge $deadline ] && { echo; echo "error: only $ready of ${#services[@]} services ready; see $logs" >&2; exit 1; }
  printf '.'; sleep 1
done
echo

printf '\n%-20s %-7s %-8s %s\n' SERVICE PORT STATUS "READY"
i=0
for s in "${services[@]}"; do
  port=$((base_port + i))
  live=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/health/live")
  printf '%-20s %-7s %-8s %s\n' "$s" "$port" "$live" "$(curl -s "http://127.0.0.1:$port/health/ready")"
  i=$((i + 1))
done

echo
echo "==> a value that is not a signed envelope goes to the dead-letter topic, with the reason"
printf 'not-an-envelope' | kcat -P -b "$KAFKA_BROKERS" -t veil.inquiries.tokenized.v1 -k demo-1 -H ce_id=demo-1 -H ce_type=demo.poison 2>/dev/null
for _ in $(seq 1 30); do
  out=$(kcat -C -b "$KAFKA_BROKERS" -t veil.inquiries.tokenized.v1.dlq -o beginning -e -q \
        -f 'dlq key=%k headers=%h\n' 2>/dev/null || true)
  [ -n "$out" ] && break; sleep 0.5
done
echo "${out:-error: nothing reached the dead-letter topic}"
echo
echo "==> matcher metrics"
curl -s "http://127.0.0.1:$((base_port + 3))/metrics" | grep -E '^veil_(messages|dead_letters|errors)' || true

echo
echo "==> rotating the matcher's keys and publishing the new signed key directory on veil.keys.directory.v1"
"$bin/veilctl" keys rotate --dir "$state/keys" --party matcher
"$bin/veilctl" keys publish --dir "$state/keys"
for _ in $(seq 1 40); do
  installed=0
  for s in "${services[@]}"; do grep -q '"key directory installed"' "$logs/$s.log" && installed=$((installed + 1)); done
  [ "$installed" -eq ${#services[@]} ] && break; sleep 0.5
done
echo "  $installed of ${#services[@]} services installed the new directory"

echo
echo "==> graceful shutdown (SIGTERM)"
stop_all
trap - EXIT
for s in "${services[@]}"; do
  grep -q '"service stopped"\|"msg":"service stopped"' "$logs/$s.log" && echo "  $s stopped cleanly" || echo "  $s: see $logs/$s.log"
done
