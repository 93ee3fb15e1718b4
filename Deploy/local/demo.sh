#!/usr/bin/env bash
# `make demo`: Veil's main job end to end on the stack (with-stack.sh set DATABASE_URL
# and KAFKA_BROKERS): keys and database roles, the seven services, 10,000 synthetic
# customers exported and filed, 1,000 signed inquiries from a device, the downstream
# provider's decrypted results and a summary; then a k2 rotation, service requests and
# technicians, the SMS-to-app channel link, point-of-sale lookups, the dead-letter
# path, a service-key rotation gone wrong and repaired with veilctl status and dlq
# replay, and a graceful shutdown.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${VEIL_BIN:-$root/.build/debug}
state=${VEIL_STATE:-$root/.veil}
logs=$state/logs
mkdir -p "$logs"
services=(ingress anonymizer key-vault matcher merger dispatcher technician-alerter)
base_port=${VEIL_DEMO_ADMIN_PORT:-9101}

source "$root/Deploy/local/services.sh"
export VEIL_INGRESS_ADMIN_TOKEN=${VEIL_INGRESS_ADMIN_TOKEN:-demo-admin-token-$RANDOM$RANDOM}
export VEIL_DISPATCHER_ADMIN_TOKEN=${VEIL_DISPATCHER_ADMIN_TOKEN:-demo-dispatcher-token-$RANDOM$RANDOM}
export VEIL_SMS_PROVIDER=outbox VEIL_SMS_OUTBOX_DIR=$state/sms-outbox
rm -rf "$VEIL_SMS_OUTBOX_DIR"
veil_keys_and_roles
trap veil_stop_all EXIT
echo "==> starting the seven services (logs in $logs)"
veil_start_services info "${services[@]}"
veil_wait_ready
printf '\n%-20s %-7s %-8s %s\n' SERVICE PORT STATUS "READY"
i=0
for s in "${services[@]}"; do
  port=$((base_port + i))
  live=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/health/live")
  printf '%-20s %-7s %-8s %s\n' "$s" "$port" "$live" "$(curl -s "http://127.0.0.1:$port/health/ready")"
  i=$((i + 1))
done

ingress_url=http://127.0.0.1:${VEIL_HTTP_PORT:-18080}
customers=${VEIL_DEMO_CUSTOMERS:-10000}
inquiries=${VEIL_DEMO_INQUIRIES:-1000}
unknown=$((inquiries / 10))
psql_count() { psql "$DATABASE_URL" -Atqc "$1" 2>/dev/null || echo 0; }

echo
echo "==> the provider generates $customers synthetic customers and exports them (ids hashed with kP.id, names/phones/addresses dropped)"
"$bin/veilctl" upstream sample --count "$customers" --out "$state/customers.csv"
head -3 "$state/customers.csv" | sed 's/^/  csv: /'
"$bin/veilctl" upstream export "$state/customers.csv" --keys "$state/keys" | sed 's/^/  /'

printf '==> the key-vault files them (token, key versions, encryptedA, encrypted record)'
for _ in $(seq 1 120); do
  filed=$(psql_count "SELECT count(*) FROM key_vault.filed_records")
  [ "${filed:-0}" -ge "$customers" ] && break; printf '.'; sleep 0.5
done
echo " $filed filed"

echo
echo "==> a device enrolls and sends $inquiries signed inquiries ($unknown for people who are not customers)"
"$bin/veilctl" device inquire --device "$state/device.json" --url "$ingress_url" \
  --users-from "$state/customers.csv" --count "$inquiries" --unknown "$unknown" --concurrency 16 | sed 's/^/  /'

echo
echo "==> the downstream provider verifies and opens veil.insights.v1 with its own key"
"$bin/veilctl" consume insights --keys "$state/keys" --provider provider-demo --count "$inquiries" --idle 30 \
  >"$state/insights.jsonl" 2>"$state/consume.txt" || true
head -2 "$state/insights.jsonl" | cut -c1-400 | sed 's/^/  /'
sed 's/^/  /' "$state/consume.txt"
matched=$(grep -c '"matched":true' "$state/insights.jsonl" || true)
unmatched=$(grep -c '"matched":false' "$state/insights.jsonl" || true)
dead=$("$bin/veilctl" status --json | python3 -c 'import json,sys; print(sum(d["kept"] for d in json.load(sys.stdin)["deadLetters"]))' || echo "?")
echo
echo "  summary: sent $inquiries; matched $matched (expected $((inquiries - unknown))); unmatched $unmatched (expected $unknown); dead-lettered $dead"

echo
echo "==> the key-vault rotates k2 alone: every token is re-derived from the filed encryptedA; inquiries keep matching"
DATABASE_URL=$VEIL_DATABASE_URL_KEY_VAULT "$bin/key-vault" rotate-match-key 2>&1 | tail -1 | sed 's/^/  /'
"$bin/veilctl" device inquire --device "$state/device.json" --url "$ingress_url" \
  --users-from "$state/customers.csv" --count 20 --concurrency 4 | sed -n 2p | sed 's/^/  after rotation: /'
"$bin/veilctl" consume insights --keys "$state/keys" --count $((inquiries + 20)) --idle 15 --summary-only 2>&1 | sed 's/^/  /'

echo
echo "==> service requests: three technicians, a customer's phone enrolled with a one-time code, requests sealed to the dispatcher"
for t in "tech-ana:Ana Lopez:north" "tech-ben:Ben Okafor:north" "tech-chloe:Chloe Martin:south"; do
  IFS=: read -r id name region <<<"$t"
  "$bin/veilctl" technician add --id "$id" --name "$name" --skills network,installation --regions "$region" --home-region "$region" \
    --capacity 2 --device "$state/$id.json" --database "$VEIL_DATABASE_URL_DISPATCHER" | sed 's/^/  /'
done
alerter_url=http://127.0.0.1:${VEIL_ALERTER_HTTP_PORT:-8081}
code=$("$bin/veilctl" device code --account CUST-1001 --url "$ingress_url")
echo "  back office issued a one-time code for account CUST-1001 (delivered out of band)"
"$bin/veilctl" device enroll --device "$state/customer-phone.json" --url "$ingress_url" --account CUST-1001 --code "$code" | sed 's/^/  /'
"$bin/veilctl" technician listen --device "$state/tech-ana.json" --url "$alerter_url" --ingress "$ingress_url" --decline-every 2 --seconds 25 \
  >"$state/tech-ana.txt" 2>&1 &
ana=$!
"$bin/veilctl" technician listen --device "$state/tech-ben.json" --url "$alerter_url" --ingress "$ingress_url" --seconds 25 \
  >"$state/tech-ben.txt" 2>&1 &
ben=$!
for what in "No internet since this morning" "Router blinks red after the storm" "Line dead on the second floor" "New line for the shop"; do
  category=outage; [ "$what" = "New line for the shop" ] && category=installation
  "$bin/veilctl" device request --device "$state/customer-phone.json" --url "$ingress_url" --category "$category" \
    --priority 3 --region north --description "$what" | sed 's/^/  request /'
done
wait "$ana" "$ben" || true
sed 's/^/  /' "$state/tech-ana.txt" "$state/tech-ben.txt"
echo "  the customer's phone opens its confirmations (sealed to it; ingress only stored sealed bytes):"
"$bin/veilctl" device inbox --device "$state/customer-phone.json" --url "$ingress_url" | sed 's/^/    /'
"$bin/veilctl" dispatch stats --database "$VEIL_DATABASE_URL_DISPATCHER" | sed 's/^/  /'

echo
echo "==> from SMS to the app: a customer texted the hotline; the back office sends a one-time signed link; their app opens it"
"$bin/veilctl" channel upgrade --phone +4917612345678 --message "Internet down, can you help?" | sed 's/^/  /'
# The SMS leaves through the dispatcher's outbox a moment after the request is queued.
for _ in $(seq 1 50); do ls "$VEIL_SMS_OUTBOX_DIR"/*.json >/dev/null 2>&1 && break; sleep 0.2; done
link=$(python3 -c 'import glob, json, sys; f = sorted(glob.glob(sys.argv[1] + "/*.json"))[-1]; print(json.load(open(f))["text"].split()[-1])' "$VEIL_SMS_OUTBOX_DIR")
echo "  SMS outbox ($VEIL_SMS_OUTBOX_DIR): \"Continue securely in our app: ${link%%#*}#…\""
"$bin/veilctl" device open-link --device "$state/customer-phone.json" --url "$ingress_url" --link "$link" | sed 's/^/  /'
"$bin/veilctl" device open-link --device "$state/customer-phone.json" --url "$ingress_url" --link "$link" >/dev/null
sleep 3
echo "  the app's inbox (the second opening of the same link is refused):"
"$bin/veilctl" device inbox --device "$state/customer-phone.json" --url "$ingress_url" | grep channel- | sed 's/^/    /'
echo "  (an agent now sees the chat in the console at http://127.0.0.1:${VEIL_DISPATCHER_HTTP_PORT:-8082}/console: veilctl agent add)"

echo
echo "==> point of sale: the provider files 2,000 TID → household mappings (sealed to the key-vault); a till looks customers up"
"$bin/veilctl" upstream sample-households --count 2000 --out "$state/households.csv" 2>/dev/null
"$bin/veilctl" upstream households "$state/households.csv" --quiet | sed 's/^/  /'
sleep 3
"$bin/veilctl" pos enroll --terminal till-7 --keys "$state/till-7.json" --url "$ingress_url" | sed 's/^/  /'
for row in 2 7 13; do
  tid=$(sed -n "${row}p" "$state/households.csv" | cut -d, -f1)   # the till reads the customer's card
  "$bin/veilctl" pos sale --terminal till-7 --keys "$state/till-7.json" --url "$ingress_url" --tid "$tid" \
    --upcs 036000291452,4006381333931 | sed 's/^/  /'
done
"$bin/veilctl" pos lookup --terminal till-7 --keys "$state/till-7.json" --url "$ingress_url" --tid 6274999999999999 2>&1 \
  | sed 's/^/  unknown card: /' || true

echo
echo "==> a value that is not a signed envelope goes to the dead-letter topic, with the reason"
printf 'not-an-envelope' | kcat -P -b "$KAFKA_BROKERS" -t veil.inquiries.anonymized.v1 -k demo-1 -H ce_id=demo-1 -H ce_type=demo.poison 2>/dev/null
for _ in $(seq 1 30); do
  out=$("$bin/veilctl" dlq list veil.inquiries.anonymized.v1.dlq 2>/dev/null || true)
  [ -n "$out" ] && break; sleep 0.5
done
echo "${out:-error: nothing reached the dead-letter topic}" | sed 's/^/  /'

echo
echo "==> an operator mistake: the matcher's keys are rotated and the directory published before the matcher restarted with them"
"$bin/veilctl" keys rotate matcher --publish | sed 's/^/  /'
for _ in $(seq 1 40); do
  installed=0
  for s in "${services[@]}"; do grep -q '"key directory installed"' "$logs/$s.log" && installed=$((installed + 1)); done
  [ "$installed" -eq ${#services[@]} ] && break; sleep 0.5
done
echo "  $installed of ${#services[@]} services installed the new directory; 5 inquiries now get sealed to a matcher key the running matcher lacks"
"$bin/veilctl" device inquire --device "$state/device.json" --url "$ingress_url" \
  --users-from "$state/customers.csv" --count 5 --concurrency 1 | sed -n 2p | sed 's/^/  /'
for _ in $(seq 1 30); do
  pending=$("$bin/veilctl" dlq list veil.inquiries.tokenized.v1.dlq 2>/dev/null | grep -c pending || true)
  [ "${pending:-0}" -ge 5 ] && break; sleep 0.5
done
echo
echo "==> veilctl status: health, lag per consumer group and topic, dead letters"
VEIL_STATUS_ENDPOINTS=$(veil_status_endpoints) "$bin/veilctl" status | sed 's/^/  /'
echo
echo "==> the fix: restart the matcher with the rotated key folder, then replay its dead letters (same ids, original time)"
veil_restart_service matcher info
veil_wait_ready
"$bin/veilctl" dlq replay veil.inquiries.tokenized.v1.dlq 2>/dev/null | sed 's/^/  /'
"$bin/veilctl" consume insights --keys "$state/keys" --count $((inquiries + 25)) --idle 15 --summary-only 2>&1 | sed 's/^/  after the replay: /'
"$bin/veilctl" dlq replay veil.inquiries.tokenized.v1.dlq 2>/dev/null | sed 's/^/  again (nothing pending): /'

echo
echo "==> graceful shutdown (SIGTERM)"
veil_stop_all
trap - EXIT
for s in "${services[@]}"; do
  grep -q '"service stopped"\|"msg":"service stopped"' "$logs/$s.log" && echo "  $s stopped cleanly" || echo "  $s: see $logs/$s.log"
done
