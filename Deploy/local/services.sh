# Sourced by demo.sh and bench-pipeline.sh: a development key set, a database role per
# service, and the services started in the background with their logs in $logs.
# Expects: $bin (the built executables), $state, $logs, $base_port; the stack's
# DATABASE_URL (administrative) and KAFKA_BROKERS.

veil_keys_and_roles() {
  echo "==> generating a development key set (services, directory, provider keys, demo provider) in $state/keys"
  rm -rf "$state/keys"
  "$bin/veilctl" keys init --out "$state/keys" >/dev/null
  export VEIL_KEYS_DIR=$state/keys
  echo "==> provisioning one database role and schema per service"
  for schema in ingress anonymizer key_vault matcher merger dispatcher technician_alerter; do
    psql "$DATABASE_URL" -qc "DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null 2>&1 || true
  done
  eval "$("$bin/veilctl" db provision --exports)"
}

pids=()
veil_start_services() {  # veil_start_services LEVEL service...
  local level=$1; shift
  started_services=("$@")
  local i=0
  for s in "$@"; do
    local var=VEIL_DATABASE_URL_$(echo "$s" | tr 'a-z-' 'A-Z_')
    DATABASE_URL=${!var} VEIL_ADMIN_PORT=$((base_port + i)) VEIL_LOG_LEVEL=$level \
      VEIL_HTTP_PORT=${VEIL_HTTP_PORT:-18080} VEIL_VAULT_KEY_REFRESH_SECONDS=1 \
      "$bin/$s" >"$logs/$s.log" 2>&1 &
    pids+=($!)
    i=$((i + 1))
  done
}

veil_restart_service() {  # veil_restart_service NAME LEVEL: SIGTERM it, wait, start it again on its port
  local name=$1 level=$2 i=0
  for s in "${started_services[@]}"; do
    if [ "$s" = "$name" ]; then
      kill -TERM "${pids[$i]}" 2>/dev/null || true
      wait "${pids[$i]}" 2>/dev/null || true
      local var=VEIL_DATABASE_URL_$(echo "$s" | tr 'a-z-' 'A-Z_')
      DATABASE_URL=${!var} VEIL_ADMIN_PORT=$((base_port + i)) VEIL_LOG_LEVEL=$level \
        VEIL_HTTP_PORT=${VEIL_HTTP_PORT:-18080} VEIL_VAULT_KEY_REFRESH_SECONDS=1 \
        "$bin/$s" >>"$logs/$s.log" 2>&1 &
      pids[$i]=$!
    fi
    i=$((i + 1))
  done
}

veil_status_endpoints() {  # VEIL_STATUS_ENDPOINTS for veilctl status
  local i=0 list=()
  for s in "${started_services[@]}"; do list+=("$s=http://127.0.0.1:$((base_port + i))"); i=$((i + 1)); done
  (IFS=,; echo "${list[*]}")
}

veil_wait_ready() {
  printf '==> waiting for /health/ready'
  local deadline=$((SECONDS + 90))
  while :; do
    local ready=0 i=0
    for s in "${started_services[@]}"; do
      curl -fs "http://127.0.0.1:$((base_port + i))/health/ready" >/dev/null 2>&1 && ready=$((ready + 1))
      i=$((i + 1))
    done
    [ "$ready" -eq ${#started_services[@]} ] && break
    [ $SECONDS -ge $deadline ] && { echo; echo "error: only $ready of ${#started_services[@]} services ready; see $logs" >&2; exit 1; }
    printf '.'; sleep 1
  done
  echo
}

veil_stop_all() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
