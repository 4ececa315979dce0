#!/usr/bin/env bash
# Core API benchmark: builds release, starts Strata per backend, seeds users through the
# API, and measures with wrk: GET /healthz (the HTTP ceiling of this binary on this
# machine), GET /v1/sessions/current, GET /v1/users/{id}, POST /v1/sessions, POST /v1/users.
# Also measures the single-core argon2id verify time (the login ceiling = cores / verify).
# Prints a markdown report on stdout; progress goes to stderr.
#
#   bench/core.sh                       # sqlite and postgres, 10 s per run
#   DURATION=30 BACKENDS=sqlite bench/core.sh
#   CACHE=memory:// bench/core.sh       # default none://: measure the storage path itself
#                                       # (bench/cache.sh compares cache shapes)
#   BIN=/path/to/old/strata bench/core.sh   # measure another build (before/after a change)
#
# For postgres it also runs `pgbench -S -M prepared` (the database's own point-read ceiling
# on this machine, same client count and duration) and reports the session check against it.
#
# Needs: wrk (apt-get install wrk), curl; for postgres, psql, pgbench and the local server.
# Targets 127.0.0.1 only; every run is bounded by DURATION.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh

DURATION=${DURATION:-10}
BACKENDS=${BACKENDS:-"sqlite postgres"}
USERS=${USERS:-200}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-2}
PORT=${PORT:-18181}
PG_ADMIN_URL=${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/test}
CACHE=${CACHE:-none://}
BASE="http://127.0.0.1:$PORT"
PASSWORD="bench password 1"

say() { echo "[bench] $*" >&2; }
command -v wrk >/dev/null || { echo "wrk not found: apt-get install -y wrk" >&2; exit 1; }
command -v curl >/dev/null || { echo "curl not found" >&2; exit 1; }

say "building release"
cargo build --release -q -p strata
cargo build --release -q -p strata-core --example hash_cost
BIN=${BIN:-target/release/strata}
HASH_COST=$(target/release/examples/hash_cost)
VERIFY_MS=$(echo "$HASH_COST" | sed -n 's/argon2id_verify_ms=//p')
LOGIN_CEILING=$(echo "$HASH_COST" | sed -n 's/login_ceiling_rps=//p')
PARALLEL_VERIFY=$(echo "$HASH_COST" | sed -n 's/parallel_verify_rps=//p')
machine_facts

WORK=$(mktemp -d)
SERVER_PID=""
PG_SCHEMA=""
PGBENCH_DB=""
cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null || true
  drop_schema
  [ -n "$PGBENCH_DB" ] && psql -q "$PG_ADMIN_URL" -c "DROP DATABASE IF EXISTS $PGBENCH_DB" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT



REPORT="$WORK/report.md"
{
  echo "### Core API — $(date -u +%Y-%m-%d)"
  echo
  echo "Binary: \`$BIN\`."
  echo "Machine: $CORES cores ($CPU), ${MEM} GiB RAM. wrk -t$THREADS -c$CONNECTIONS, ${DURATION}s per row, on the same machine as the server. Cache: \`$CACHE\`."
  echo "argon2id verify (m=19 MiB, t=2, p=1), one core: **${VERIFY_MS} ms** → login ceiling $CORES ÷ verify = **${LOGIN_CEILING} req/s**;"
  echo "measured with one verify per core at once: **${PARALLEL_VERIFY} req/s** (what the machine really sustains)."
  echo
  echo "| backend | endpoint | req/s | p50 | p99 | non-2xx | ratio |"
  echo "|---|---|---:|---:|---:|---:|---|"
} > "$REPORT"

for backend in $BACKENDS; do
  database_url "$backend" "strata_bench_$$"
  say "$backend: starting strata"
  STRATA_DATABASE_URL="$URL" STRATA_CACHE_URL="$CACHE" STRATA_CACHE_SECRET=bench-cache-secret-0123 STRATA_LOG_LEVEL=warn STRATA_THROTTLE_CLIENT_MAX_FAILURES=1000000 STRATA_THROTTLE_REGISTRATION_MAX=1000000 \
    "$BIN" serve --listen "127.0.0.1:$PORT" > "$WORK/server.out" 2> "$WORK/server.err" &
  SERVER_PID=$!
  wait_ready

  say "$backend: seeding $USERS users"
  seed_users "u-$backend-"
  paste -d' ' "$WORK/ids.txt" "$WORK/tokens.txt" > "$WORK/id_tokens.txt"

  say "$backend: GET /healthz"
  read -r h_rps h_p50 h_p99 h_bad <<< "$(run_wrk /healthz)"
  say "$backend: GET /v1/sessions/current"
  read -r s_rps s_p50 s_p99 s_bad <<< "$(run_wrk /v1/sessions/current bench/wrk/tokens.lua "$WORK/tokens.txt")"
  say "$backend: GET /v1/users/{id}"
  read -r u_rps u_p50 u_p99 u_bad <<< "$(run_wrk /v1/users bench/wrk/get_user.lua "$WORK/id_tokens.txt")"
  say "$backend: POST /v1/sessions"
  read -r l_rps l_p50 l_p99 l_bad <<< "$(run_wrk /v1/sessions bench/wrk/login.lua "$WORK/emails.txt")"
  say "$backend: POST /v1/users"
  read -r r_rps r_p50 r_p99 r_bad <<< "$(run_wrk /v1/users bench/wrk/register.lua)"

  s_vs_db=""
  if [ "$backend" = postgres ] && command -v pgbench >/dev/null; then
    say "postgres: pgbench -S (the database's point-read ceiling)"
    PGBENCH_DB="strata_pgbench_$$"
    psql -q "$PG_ADMIN_URL" -c "CREATE DATABASE $PGBENCH_DB" >/dev/null
    pg_bench_url="${PG_ADMIN_URL%/*}/$PGBENCH_DB"
    pgbench -q -i -s 10 "$pg_bench_url" >/dev/null 2>&1
    tps=$(pgbench -S -M prepared -c "$CONNECTIONS" -j "$THREADS" -T "$DURATION" "$pg_bench_url" 2>/dev/null | awk '/^tps/ {printf "%.2f", $3}')
    psql -q "$PG_ADMIN_URL" -c "DROP DATABASE IF EXISTS $PGBENCH_DB" >/dev/null; PGBENCH_DB=""
    s_vs_db=", $(ratio "$s_rps" "$tps") of pgbench -S ($tps tps)"
  fi

  {
    echo "| $backend | GET /healthz | $h_rps | $h_p50 | $h_p99 | $h_bad | baseline |"
    echo "| $backend | GET /v1/sessions/current | $s_rps | $s_p50 | $s_p99 | $s_bad | $(ratio "$s_rps" "$h_rps") of /healthz$s_vs_db |"
    echo "| $backend | GET /v1/users/{id} | $u_rps | $u_p50 | $u_p99 | $u_bad | $(ratio "$u_rps" "$h_rps") of /healthz |"
    echo "| $backend | POST /v1/sessions | $l_rps | $l_p50 | $l_p99 | $l_bad | $(ratio "$l_rps" "$LOGIN_CEILING") of cores ÷ verify, $(ratio "$l_rps" "$PARALLEL_VERIFY") of parallel verify |"
    echo "| $backend | POST /v1/users | $r_rps | $r_p50 | $r_p99 | $r_bad | $(ratio "$r_rps" "$LOGIN_CEILING") of cores ÷ verify, $(ratio "$r_rps" "$PARALLEL_VERIFY") of parallel verify |"
  } >> "$REPORT"

  kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""
  drop_schema
done

echo >> "$REPORT"
echo "Goals (issue 8): uncached PostgreSQL session check ≥ 35% of /healthz; logins ≥ 1.3× the argon2 0.5 build's (compare with an older run). Cached shapes: bench/cache.sh." >> "$REPORT"
cat "$REPORT"
