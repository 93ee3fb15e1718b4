#!/usr/bin/env bash
# The dispatcher's decision statement alone, driven by PostgreSQL's own pgbench (a C client),
# on a benchmark schema of 1,000 technicians (`veil-bench dispatch --keep-schema`). Prints
# calls per second for: the statement unprepared (-M extended) and prepared, and a request
# nobody can take against one that is offered. Run on the stack (release build):
#   Deploy/local/with-stack.sh Deploy/local/pgbench-dispatch.sh
# Settings: CLIENTS (default 8), CALLS (per client, default 625), ROUNDS (default 3).
# To weigh a schema change, set BASELINE_SQL and VARIANT_SQL (run in the schema, statement by
# statement; the schema starts as the migrations leave it): each round applies BASELINE_SQL,
# runs the offered script, applies VARIANT_SQL, runs it again, and prints both rates.
# VARIANT=<name> takes them from Deploy/local/pgbench-variants/<name>.{baseline,variant}.sql,
# the pairs behind the figures in docs/ARCHITECTURE.md (e.g. VARIANT=025-guards).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
if [ -n "${VARIANT:-}" ]; then
  BASELINE_SQL=$(cat "$root/Deploy/local/pgbench-variants/$VARIANT.baseline.sql")
  VARIANT_SQL=$(cat "$root/Deploy/local/pgbench-variants/$VARIANT.variant.sql")
fi
bin=${VEIL_BIN:-$root/.build/release}
: "${DATABASE_URL:?run under Deploy/local/with-stack.sh or set DATABASE_URL}"
pgbench=$(command -v pgbench || ls /usr/lib/postgresql/*/bin/pgbench | sort -V | tail -1)
schema=$("$bin/veil-bench" dispatch --keep-schema --requests 1 | sed -n 's/^ *kept schema //p')
work=$(mktemp -d); trap 'rm -rf "$work"; psql -q "$DATABASE_URL" -c "SET client_min_messages = warning" -c "DROP SCHEMA $schema CASCADE"' EXIT
call() {  # call REGION-EXPRESSION SKILL-EXPRESSION
  echo "SELECT technician_id, expires_at FROM $schema.submit_request(gen_random_uuid(), 'outage', 1, $1, ARRAY[$2], 'technician', gen_random_uuid(), 3600, 1.0, 0.5);"
}
skills="(ARRAY['network','fiber','installation','tv','voice'])"
# Eligible: technician i lives in r(i mod 20) with skills (i mod 5) and (i+1 mod 5), so a request
# in r<n> for skill <n mod 5> always has someone at home.
{ echo '\set r random(0,19)'; call "'r' || :r" "$skills[(:r % 5) + 1]"; } > "$work/offered.sql"
call "'r0'" "'tv'" > "$work/nobody.sql"   # r0 and r19 technicians have network/fiber/voice only
reset() {
  psql -q "$DATABASE_URL" -c "DELETE FROM $schema.reservations" -c "DELETE FROM $schema.dispatch_requests" \
    -c "UPDATE $schema.technicians SET active_load = 0, last_offer_at = NULL" -c "VACUUM ANALYZE $schema.technicians" \
    -c "VACUUM ANALYZE $schema.reservations" -c "VACUUM ANALYZE $schema.dispatch_requests"
}
run() {  # run MODE SCRIPT
  reset
  "$pgbench" -n -M "$1" -c "${CLIENTS:-8}" -j 2 -t "${CALLS:-625}" -f "$work/$2.sql" "$DATABASE_URL" 2>&1 \
    | sed -n "s/^tps = \([0-9.]*\).*/   $2, -M $1: \1 calls\/s/p"
}
# Statement by statement (not one -c transaction), so the SQL may VACUUM.
in_schema() { printf '%s\n' "SET search_path = $schema;" "$1" | psql -q -v ON_ERROR_STOP=1 "$DATABASE_URL" >/dev/null; }
echo "== submit_request on $schema, ${CLIENTS:-8} clients × ${CALLS:-625} calls, ${ROUNDS:-3} rounds"
for _ in $(seq "${ROUNDS:-3}"); do
  if [ -n "${VARIANT_SQL:-}" ]; then
    in_schema "${BASELINE_SQL:?set BASELINE_SQL with VARIANT_SQL}"; echo "   baseline:"; run prepared offered
    in_schema "$VARIANT_SQL"; echo "   variant:"; run prepared offered
  else
    run extended offered; run prepared offered; run prepared nobody
  fi
done
