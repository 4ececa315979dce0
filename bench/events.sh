#!/usr/bin/env bash
# Event pipeline benchmark (issue 9). Three parts, one markdown report on stdout:
#  1. per broker, outbox → relay → broker → listener (crates/strata/examples/events_bench.rs):
#     a saturating run (RATE_MAX events/s offered for DURATION s) gives events/s end to end;
#     a run at half that rate gives outbox-to-listener latency p50/p99. Ratios are to
#     memory:// (the in-process bus) from the same run.
#  2. webhook deliveries/s to a local receiver, durable (store → dispatcher → HTTP) against
#     bare sender requests at the same concurrency.
#  3. the API's write throughput (PATCH /v1/users/{id}, wrk) with events off (--role api:
#     outbox rows written, nothing relays them) and on (--role all, with the in-process bus
#     and with NATS).
#
#   bench/events.sh                                  # every broker reachable, 5 s per run
#   BROKERS="memory nats" DURATION=10 bench/events.sh
#   BROKERS=" " WEBHOOKS=0 STRATA_BIN=/tmp/old/strata bench/events.sh   # API writes only, another build
#
# Brokers are the machine's services on their default ports (see README); Kafka is a private
# tansu on KAFKA_PORT with in-memory storage, from the CI tools cache (.ci/kafka.sh builds it):
# tansu's SQLite storage engine, which CI uses, manages ~140 events/s and would measure tansu.
# Targets 127.0.0.1 only; every run is bounded by DURATION (plus a 60 s drain at most).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh

DURATION=${DURATION:-5}
RATE_MAX=${RATE_MAX:-20000}
BROKERS=${BROKERS:-"memory nats amqp mqtt redis-stream kafka"}
WEBHOOKS=${WEBHOOKS:-5000}
USERS=${USERS:-200}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-2}
PORT=${PORT:-18291}
KAFKA_PORT=${KAFKA_PORT:-19092}
TANSU=${TANSU:-${STRATA_TOOLS_DIR:-$HOME/.cache/strata-tools}/tansu/bin/tansu}
BASE="http://127.0.0.1:$PORT"
ADMIN="bench-admin-token-0123456789"
PASSWORD="bench password 1"

say() { echo "[events-bench] $*" >&2; }
for tool in wrk curl; do command -v "$tool" >/dev/null || { echo "$tool not found" >&2; exit 1; }; done

say "building release"
cargo build --release -q -p strata --bin strata --example events_bench
BIN=${STRATA_BIN:-target/release/strata}
EB=target/release/examples/events_bench
machine_facts

WORK=$(mktemp -d)
SERVER_PID=""
TANSU_PID=""
stop_server() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""; fi
}
cleanup() {
  stop_server
  if [ -n "$TANSU_PID" ]; then kill "$TANSU_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

url_of() {
  case $1 in
    memory) echo "memory://" ;;
    nats) echo "nats://127.0.0.1:4222" ;;
    amqp) echo "amqp://guest:guest@127.0.0.1:5672/%2f" ;;
    mqtt) echo "mqtt://127.0.0.1:1883" ;;
    redis-stream) echo "redis-stream://127.0.0.1:6379" ;;
    # tansu holds every fetch for the full wait: 500 ms (librdkafka's default) would be
    # most of the latency measured. Kafka itself answers fetches as soon as data arrives.
    kafka) echo "kafka://127.0.0.1:$KAFKA_PORT?fetch_wait_ms=10" ;;
  esac
}
port_of() { case $1 in nats) echo 4222 ;; amqp) echo 5672 ;; mqtt) echo 1883 ;; redis-stream) echo 6379 ;; kafka) echo "$KAFKA_PORT" ;; *) echo "" ;; esac; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
field() { echo "$1" | tr ' ' '\n' | awk -F= -v k="$2" '$1 == k {print $2}'; }

if [[ " $BROKERS " == *" kafka "* ]]; then
  if [ -x "$TANSU" ]; then
    (cd "$WORK" && exec "$TANSU" broker --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
      --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" --storage-engine memory://tansu/ >tansu.log 2>&1) &
    TANSU_PID=$!
    for _ in $(seq 1 50); do port_open "$KAFKA_PORT" && break; sleep 0.1; done
  else
    say "no tansu at $TANSU (run .ci/kafka.sh once): skipping kafka"
  fi
fi

{
  echo "### Events — $(date -u +%Y-%m-%d)"
  echo
  echo "Machine: $CORES cores ($CPU), ${MEM} GiB RAM; broker, Strata and the load on the same machine. SQLite outbox (a fresh file per run), one relay, one listener, 16 open-loop writers; ${DURATION}s of writes per row, at $RATE_MAX events/s offered (saturating) and at half the saturated rate (latency)."
  echo
  echo "| broker | events/s end to end | of memory:// | at half rate: events/s | p50 | p99 | max | duplicates |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|"
} > "$WORK/report.md"

BASELINE=""
for broker in $BROKERS; do
  port=$(port_of "$broker")
  if [ -n "$port" ] && ! port_open "$port"; then say "$broker: nothing on 127.0.0.1:$port, skipped"; continue; fi
  url=$(url_of "$broker")
  say "$broker: saturating run"
  max=$("$EB" events "$url" "$RATE_MAX" "$DURATION")
  eps=$(field "$max" events_per_s)
  [ -z "$BASELINE" ] && BASELINE=$eps
  half=$(awk -v e="$eps" 'BEGIN { printf "%d", e / 2 }')
  say "$broker: $eps events/s; latency run at $half/s"
  lat=$("$EB" events "$url" "$half" "$DURATION")
  echo "| $broker | $eps | $(ratio "$eps" "$BASELINE") | $(field "$lat" events_per_s) | $(field "$lat" p50_ms) ms | $(field "$lat" p99_ms) ms | $(field "$lat" max_ms) ms | $(( $(field "$max" duplicates) + $(field "$lat" duplicates) )) |" >> "$WORK/report.md"
done

if [ "$WEBHOOKS" -gt 0 ]; then
say "webhooks: $WEBHOOKS deliveries"
wh=$("$EB" webhooks "$WEBHOOKS")
{
  echo
  echo "Webhooks: $WEBHOOKS deliveries to one endpoint on a local receiver (answers 204), 64 in flight, one connection per delivery."
  echo
  echo "| path | deliveries/s | ratio |"
  echo "|---|---:|---:|"
  echo "| bare HttpSender requests (baseline) | $(field "$wh" raw_per_s) | — |"
  echo "| durable: queued in SQLite, claimed, sent, recorded | $(field "$wh" deliveries_per_s) | $(field "$wh" ratio) |"
} >> "$WORK/report.md"
fi

# API writes with events off and on.
start_server() {
  STRATA_DATABASE_URL="sqlite://$WORK/api.db" STRATA_LOG_LEVEL=error STRATA_ROLE=$1 STRATA_EVENTS_URL=$2 \
    STRATA_EVENTS_NAMESPACE="bench$$" STRATA_THROTTLE_CLIENT_MAX_FAILURES=1000000 STRATA_THROTTLE_REGISTRATION_MAX=1000000 \
    STRATA_ADMIN_TOKEN="$ADMIN" STRATA_PASSWORD_MEMORY_KIB=4096 STRATA_PASSWORD_ITERATIONS=1 \
    "$BIN" serve --listen "127.0.0.1:$PORT" > "$WORK/server.out" 2> "$WORK/server.err" &
  SERVER_PID=$!
  wait_ready
}
if port_open 4222; then
  {
    echo
    echo "API writes: PATCH /v1/users/{id} (new name, as the user) over $USERS users, wrk -t$THREADS -c$CONNECTIONS, ${DURATION}s, SQLite."
    echo
    echo "| events | req/s | p50 | p99 | non-2xx | of events off |"
    echo "|---|---:|---:|---:|---:|---:|"
  } >> "$WORK/report.md"
  export WRK_THREADS=$THREADS
  OFF=""
  # "in-process" runs the relay and every listener in the API process on the memory:// bus: the
  # worker's own cost. "NATS" adds the broker, a separate process on the same cores. Each mode
  # gets a fresh database with the same users, so no run relays (or audits) another's backlog.
  for mode in "off (--role api)" "on (--role all, in-process bus)" "on (--role all, NATS)"; do
    stop_server
    rm -f "$WORK"/api.db*
    case $mode in
      off*) start_server api memory:// ;;
      *in-process*) start_server all memory:// ;;
      *) start_server all nats://127.0.0.1:4222 ;;
    esac
    say "seeding $USERS users"
    seed_users "e-"
    # Each user's current version (the ETag the first PATCH needs), as of now.
    paste -d' ' "$WORK/ids.txt" "$WORK/tokens.txt" | while read -r id token; do
      v=$(curl -sf "$BASE/v1/users/$id" -H "authorization: Bearer $token" | grep -o '"version":[0-9]*' | cut -d: -f2)
      echo "$id $token $v"
    done > "$WORK/id_token_version.txt"
    say "API writes, events $mode"
    read -r rps p50 p99 bad <<< "$(run_wrk /v1/users bench/wrk/patch_user.lua "$WORK/id_token_version.txt")"
    [ -z "$OFF" ] && OFF=$rps
    echo "| $mode | $rps | $p50 | $p99 | $bad | $(ratio "$rps" "$OFF") |" >> "$WORK/report.md"
  done
  stop_server
fi
cat "$WORK/report.md"
