#!/usr/bin/env bash
# Cache benchmark: for each backend, seeds users once, then restarts the same release
# binary over the same database with each cache shape and measures with wrk:
#   GET /healthz (the HTTP ceiling of this binary; the baseline of every ratio),
#   GET /v1/sessions/current (session check: token → session + user),
#   GET /v1/users/{id} read by the admin token (user by id),
# for: no cache (none://), memory://, Redis (L2 only), tiered (L1 + Redis), and Redis or
# tiered with the Redis server killed (the degraded path: breaker open, database answers).
# Hit ratio = (hit + negative_hit) / all cached lookups during the run, from /metrics.
# Prints a markdown report on stdout; progress goes to stderr.
#
#   bench/cache.sh                              # sqlite and postgres, 5 s per run
#   DURATION=10 BACKENDS=sqlite bench/cache.sh
#
# Needs: wrk, curl, redis-server; for postgres, psql and the local server. Uses its own
# ports (Strata 18281, a private Redis on 16379) and targets 127.0.0.1 only; every run is
# bounded by DURATION.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh

DURATION=${DURATION:-5}
BACKENDS=${BACKENDS:-"sqlite postgres"}
USERS=${USERS:-200}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-2}
PORT=${PORT:-18281}
REDIS_PORT=${REDIS_PORT:-16379}
PG_ADMIN_URL=${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/test}
BASE="http://127.0.0.1:$PORT"
ADMIN="bench-admin-token-0123456789"
PASSWORD="bench password 1"
L1="entries=100000,mb=64,ttl_ms=5000"

say() { echo "[cache-bench] $*" >&2; }
for tool in wrk curl redis-server redis-cli; do
  command -v "$tool" >/dev/null || { echo "$tool not found" >&2; exit 1; }
done

say "building release"
cargo build --release -q -p strata
BIN=${CARGO_TARGET_DIR:-target}/release/strata
machine_facts

WORK=$(mktemp -d)
SERVER_PID=""
REDIS_UP=""
PG_SCHEMA=""
stop_server() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""; fi
}
start_redis() {
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
    --pidfile "$WORK/redis.pid" --logfile "$WORK/redis.log" --dir "$WORK"
  for _ in $(seq 1 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
  REDIS_UP=1
}
# Only our private Redis, by its pid file; never the shared one.
kill_redis() {
  if [ -n "$REDIS_UP" ] && [ -f "$WORK/redis.pid" ]; then
    kill -9 "$(cat "$WORK/redis.pid")" 2>/dev/null || true
    rm -f "$WORK/redis.pid"
  fi
  REDIS_UP=""
  sleep 0.2
}
cleanup() {
  stop_server
  kill_redis
  drop_schema
  rm -rf "$WORK"
}
trap cleanup EXIT

# start_server CACHE_URL L1
start_server() {
  STRATA_DATABASE_URL="$URL" STRATA_LOG_LEVEL=error STRATA_THROTTLE_CLIENT_MAX_FAILURES=1000000 STRATA_THROTTLE_REGISTRATION_MAX=1000000 \
    STRATA_ADMIN_TOKEN="$ADMIN" STRATA_CACHE_URL="$1" STRATA_CACHE_L1="$2" STRATA_CACHE_SECRET=bench-cache-secret-0123 \
    STRATA_PASSWORD_MEMORY_KIB=4096 STRATA_PASSWORD_ITERATIONS=1 \
    "$BIN" serve --listen "127.0.0.1:$PORT" > "$WORK/server.out" 2> "$WORK/server.err" &
  SERVER_PID=$!
  wait_ready
}


# lookups KIND → "hits total" so far, from /metrics
lookups() {
  curl -s "$BASE/metrics" | awk -v kind="$1" '
    $1 ~ "^strata_cache_lookups_total\\{kind=\"" kind "\"" {
      total += $2; if ($1 ~ /outcome="(hit|negative_hit)"/) hits += $2 }
    END { printf "%d %d\n", hits, total }'
}


# measure BACKEND MODE KIND PATH SCRIPT FILE
measure() {
  local backend=$1 mode=$2 kind=$3 path=$4 script=$5 file=$6 before after
  before=$(lookups "$kind")
  read -r rps p50 p99 bad <<< "$(run_wrk "$path" "$script" "$file")"
  after=$(lookups "$kind")
  local hit_ratio
  hit_ratio=$(awk -v b="$before" -v a="$after" 'BEGIN { split(b, x, " "); split(a, y, " ");
    t = y[2] - x[2]; if (t > 0) printf "%.1f%%", 100 * (y[1] - x[1]) / t; else print "—" }')
  echo "| $backend | $mode | $label | $rps | $p50 | $p99 | $bad | $hit_ratio | $(ratio "$rps" "$HEALTHZ") |" >> "$REPORT"
  [ "$kind" = session ] && SESSION_RPS["$backend/$mode"]=$rps
  return 0
}
declare -A SESSION_RPS BASELINE

# factor A B → "1.16×"
factor() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f×", a / b; else print "—" }'; }

REPORT="$WORK/report.md"
{
  echo "### Caching — $(date -u +%Y-%m-%d)"
  echo
  echo "Machine: $CORES cores ($CPU), ${MEM} GiB RAM. wrk -t$THREADS -c$CONNECTIONS, ${DURATION}s per row, on the same machine as the server; $USERS users, one session each, requests round-robin over them."
  echo "Redis: a private redis-server on 127.0.0.1:$REDIS_PORT. Tiered L1: \`$L1\`. \"killed\": the Redis process is SIGKILLed before the run (the server keeps its cache URL)."
  echo
  echo "| backend | cache | endpoint | req/s | p50 | p99 | non-2xx | hit ratio | of /healthz |"
  echo "|---|---|---|---:|---:|---:|---:|---:|---:|"
} > "$REPORT"

for backend in $BACKENDS; do
  database_url "$backend" "strata_cache_bench_$$"
  start_server "none://" "off"
  say "$backend: seeding $USERS users"
  seed_users "c-$backend-"
  sed "s/\$/ $ADMIN/" "$WORK/ids.txt" > "$WORK/id_admin.txt"
  say "$backend: GET /healthz"
  read -r HEALTHZ h_p50 h_p99 h_bad <<< "$(run_wrk /healthz)"
  echo "| $backend | — | GET /healthz | $HEALTHZ | $h_p50 | $h_p99 | $h_bad | — | baseline |" >> "$REPORT"
  BASELINE[$backend]=$HEALTHZ
  stop_server

  for mode in none memory redis tiered "redis killed" "tiered killed"; do
    case $mode in
      none) cache="none://"; l1=off ;;
      memory) cache="memory://"; l1=off ;;
      redis|"redis killed") cache="redis://127.0.0.1:$REDIS_PORT"; l1=off ;;
      tiered|"tiered killed") cache="redis://127.0.0.1:$REDIS_PORT"; l1=$L1 ;;
    esac
    case $mode in redis|tiered|*killed) start_redis ;; esac
    start_server "$cache" "$l1"
    case $mode in *killed) kill_redis ;; esac
    say "$backend / $mode: session check"
    label="GET /v1/sessions/current"
    measure "$backend" "$mode" session /v1/sessions/current bench/wrk/tokens.lua "$WORK/tokens.txt"
    say "$backend / $mode: get user (admin)"
    label="GET /v1/users/{id}"
    measure "$backend" "$mode" user /v1/users bench/wrk/get_user.lua "$WORK/id_admin.txt"
    stop_server
    kill_redis
  done
  drop_schema
done

{
  echo
  echo "Issue 8's goals for the session check, from the rows above:"
  echo
  echo "| backend | memory:// of /healthz (≥ 85%) | tiered of /healthz (≥ 80%) | Redis only ÷ no cache (SQLite ≥ 1×, PostgreSQL ≥ 1.5×) |"
  echo "|---|---:|---:|---:|"
  for backend in $BACKENDS; do
    echo "| $backend | $(ratio "${SESSION_RPS[$backend/memory]:-0}" "${BASELINE[$backend]:-0}") | $(ratio "${SESSION_RPS[$backend/tiered]:-0}" "${BASELINE[$backend]:-0}") | $(factor "${SESSION_RPS[$backend/redis]:-0}" "${SESSION_RPS[$backend/none]:-0}") |"
  done
} >> "$REPORT"
cat "$REPORT"
