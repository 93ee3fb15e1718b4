#!/usr/bin/env bash
# The embedded development stack: a private PostgreSQL cluster and the embedded
# Kafka broker, each started only when DATABASE_URL / KAFKA_BROKERS are unset.
#
#   stack.sh up     start what is needed; writes $VEIL_STATE/stack.env
#   stack.sh down   stop what `up` started
#   stack.sh env    print the environment (source it: eval "$(stack.sh env)")
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
state=${VEIL_STATE:-$root/.veil}
# The broker binary: $VEIL_BIN's, else the debug build's, else the release build's (the
# `make bench-*` targets build only the release configuration).
bin=${VEIL_BIN:-$root/.build/debug}
if [ -z "${VEIL_BIN:-}" ] && [ ! -x "$bin/veil-dev-broker" ] && [ -x "$root/.build/release/veil-dev-broker" ]; then
  bin=$root/.build/release
fi
envfile=$state/stack.env
mkdir -p "$state"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

as_postgres() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_up() {
  local pgbin; pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  local data=$state/pg port; port=$(free_port)
  # The cluster is recreated at every `up`, so its files live in memory (/dev/shm) when
  # the machine has it: on disk, the kernel's writeback of PostgreSQL's pages cost about
  # as much CPU as PostgreSQL itself in the benchmarks. $state/pg links to it.
  # VEIL_PG_ON_DISK=1 keeps them in $state/pg.
  rm -rf "$(readlink -f "$data")" "$data"
  if [ -z "${VEIL_PG_ON_DISK:-}" ] && [ -d /dev/shm ] && [ -w /dev/shm ]; then
    local memory; memory=/dev/shm/veil-pg-$(printf %s "$state" | md5sum | cut -c1-12)
    rm -rf "$memory"; mkdir -p "$memory"; ln -s "$memory" "$data"
  else
    mkdir -p "$data"
  fi
  [ "$(id -u)" -eq 0 ] && chown postgres:postgres "$(readlink -f "$data")"
  chmod 700 "$(readlink -f "$data")"
  local pw=$state/pg.pw; echo "veil-dev" > "$pw"; [ "$(id -u)" -eq 0 ] && chown postgres "$pw"
  as_postgres "$pgbin/initdb" -D "$data" -U postgres --pwfile="$pw" --auth-host=scram-sha-256 --auth-local=trust -E UTF8 >"$state/initdb.log" 2>&1
  # VEIL_PG_STATEMENTS=1 loads pg_stat_statements (time per statement, for measuring).
  local extra=""
  [ -n "${VEIL_PG_STATEMENTS:-}" ] && extra="-c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all"
  as_postgres "$pgbin/pg_ctl" -D "$data" -l "$data/server.log" -w -t 60 \
    -o "-p $port -k $data -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300 $extra" start >/dev/null
  as_postgres "$pgbin/createdb" -h "$data" -p "$port" -U postgres veil
  [ -n "${VEIL_PG_STATEMENTS:-}" ] && as_postgres psql -h "$data" -p "$port" -U postgres -d veil -qc "CREATE EXTENSION pg_stat_statements"
  echo "$pgbin" > "$state/pg.bin"
  echo "export DATABASE_URL=postgres://postgres:veil-dev@127.0.0.1:$port/veil" >> "$envfile"
  echo "export VEIL_EMBEDDED_PG=1" >> "$envfile"
  echo "==> PostgreSQL on 127.0.0.1:$port (data in $(readlink -f "$data"))"
}

broker_up() {
  local addr=$state/kafka.bootstrap
  rm -f "$addr"
  [ -x "$bin/veil-dev-broker" ] || { echo "error: $bin/veil-dev-broker not built (run: swift build)" >&2; exit 1; }
  nohup "$bin/veil-dev-broker" --brokers "${VEIL_BROKERS:-1}" --partitions "${VEIL_PARTITIONS:-12}" --address-file "$addr" >"$state/broker.log" 2>&1 &
  echo $! > "$state/broker.pid"
  for _ in $(seq 1 100); do [ -s "$addr" ] && break; sleep 0.1; done
  [ -s "$addr" ] || { echo "error: embedded broker did not start; see $state/broker.log" >&2; exit 1; }
  echo "export KAFKA_BROKERS=$(cat "$addr")" >> "$envfile"
  echo "export VEIL_EMBEDDED_BROKER=1" >> "$envfile"
  # librdkafka's mock cluster holds an empty fetch for the whole fetch.wait.max.ms (500 ms by
  # default) instead of answering when data arrives, which would add up to 0.5 s per pipeline hop.
  echo "export KAFKA_FETCH_WAIT_MAX_MS=\${KAFKA_FETCH_WAIT_MAX_MS:-5}" >> "$envfile"
  # The consumers a till waits on (the vault's stage, ingress's lookup replies) fetch every
  # millisecond instead: two hops of up to 5 ms each were half a lookup's median. Measured at
  # 500 lookups/s: p50 9-13 -> 5-9 ms for ~0.3 ms more CPU per lookup, and ~0.19 of a core more
  # while idle (Deploy/local/idle-cpu.sh; docs/ARCHITECTURE.md §6).
  echo "export KAFKA_REPLY_FETCH_WAIT_MAX_MS=\${KAFKA_REPLY_FETCH_WAIT_MAX_MS:-1}" >> "$envfile"
  echo "==> embedded Kafka broker at $(cat "$addr")"
}

# A DATABASE_URL / KAFKA_BROKERS that this script itself wrote last time (someone sourced
# an old stack.env) names a stack `down` is about to stop, not an external one: forget it.
forget_own_stack() {
  [ -f "$envfile" ] || return 0
  local previous
  previous=$(sed -n 's/^export DATABASE_URL=//p' "$envfile")
  if [ -n "${DATABASE_URL:-}" ] && [ "$DATABASE_URL" = "$previous" ] && grep -q '^export VEIL_EMBEDDED_PG=1' "$envfile"; then unset DATABASE_URL; fi
  previous=$(sed -n 's/^export KAFKA_BROKERS=//p' "$envfile")
  if [ -n "${KAFKA_BROKERS:-}" ] && [ "$KAFKA_BROKERS" = "$previous" ] && grep -q '^export VEIL_EMBEDDED_BROKER=1' "$envfile"; then unset KAFKA_BROKERS; fi
  return 0
}

up() {
  forget_own_stack
  down quiet
  : > "$envfile"
  if [ -n "${DATABASE_URL:-}" ]; then echo "export DATABASE_URL=$DATABASE_URL" >> "$envfile"; echo "==> using DATABASE_URL from the environment"; else pg_up; fi
  if [ -n "${KAFKA_BROKERS:-}" ]; then echo "export KAFKA_BROKERS=$KAFKA_BROKERS" >> "$envfile"; echo "==> using KAFKA_BROKERS=$KAFKA_BROKERS"; else broker_up; fi
}

down() {
  if [ -f "$state/broker.pid" ]; then
    kill "$(cat "$state/broker.pid")" 2>/dev/null || true
    rm -f "$state/broker.pid"
  fi
  if [ -f "$state/pg.bin" ] && [ -d "$state/pg" ]; then
    as_postgres "$(cat "$state/pg.bin")/pg_ctl" -D "$state/pg" -m fast -w stop >/dev/null 2>&1 || true
    rm -f "$state/pg.bin"
  fi
  # A cluster kept in /dev/shm is memory: give it back (the next `up` recreates it anyway),
  # keeping the server's log beside the other state.
  if [ -L "$state/pg" ] && [ -d "$state/pg" ] && [ ! -f "$state/pg/postmaster.pid" ]; then
    cp "$state/pg/server.log" "$state/pg-server.log" 2>/dev/null || true
    rm -rf "$(readlink -f "$state/pg")" "$state/pg"
  fi
  [ "${1:-}" = quiet ] || echo "==> stack stopped"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  env) cat "$envfile" ;;
  *) echo "usage: $0 up|down|env" >&2; exit 2 ;;
esac
