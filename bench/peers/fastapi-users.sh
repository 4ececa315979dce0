#!/usr/bin/env bash
# Who-am-I side by side with the library a Python team would otherwise use (issue 8):
# fastapi-users 15 on PostgreSQL (asyncpg, database token strategy: server-side sessions like
# Strata's), served by uvicorn[standard] with 2 workers (one per core), and Strata on the same
# PostgreSQL with its default in-process cache. Same machine, same wrk settings, same run.
# Prints a markdown table; progress goes to stderr.
#
#   bench/peers/fastapi-users.sh                    # 10 s per row
#   DURATION=30 bench/peers/fastapi-users.sh
#   STRATA_BIN=/path/to/strata bench/peers/fastapi-users.sh
#
# Needs: wrk, curl, psql, python3 (the peer's pinned packages are installed once into
# $STRATA_TOOLS_DIR/peer, ~/.cache/strata-tools/peer by default). Targets 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=bench/lib.sh
. bench/lib.sh

DURATION=${DURATION:-10}
USERS=${USERS:-50}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-2}
PEER_PORT=${PEER_PORT:-18191}
PORT=${PORT:-18192}
PG_ADMIN_URL=${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/test}
PASSWORD="bench password 1"
tools=${STRATA_TOOLS_DIR:-$HOME/.cache/strata-tools}
peer=$tools/peer
say() { echo "[peers] $*" >&2; }
command -v wrk >/dev/null || { echo "wrk not found: apt-get install -y wrk" >&2; exit 1; }

# Pinned: the versions measured in bench/RESULTS.md.
pins=("fastapi-users[sqlalchemy]==15.0.5" fastapi-users-db-sqlalchemy==7.0.0 fastapi==0.165.0 SQLAlchemy==2.0.58
  asyncpg==0.32.0 "uvicorn[standard]==0.55.0")
if ! "$peer/bin/python" -c 'import fastapi_users, asyncpg, uvicorn, uvloop, httptools' 2>/dev/null; then
  say "installing the peer into $peer"
  python3 -m venv "$peer" && "$peer/bin/pip" install -q "${pins[@]}"
fi

release_bin
machine_facts
WORK=$(mktemp -d)
PEER_PID="" SERVER_PID="" PG_SCHEMA=""
cleanup() {
  for pid in $PEER_PID $SERVER_PID; do kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true; done
  drop_schema
  psql -q "$PG_ADMIN_URL" -c "DROP SCHEMA IF EXISTS peer_bench_$$ CASCADE" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# --- the peer ---
psql -q "$PG_ADMIN_URL" -c "CREATE SCHEMA peer_bench_$$" >/dev/null
export PEER_DATABASE_URL="postgresql+asyncpg://postgres@127.0.0.1:5432/test" PEER_SCHEMA="peer_bench_$$"
"$peer/bin/python" bench/peers/fastapi_users/app.py create
"$peer/bin/uvicorn" app:app --app-dir bench/peers/fastapi_users --host 127.0.0.1 --port "$PEER_PORT" \
  --workers 2 --no-access-log --log-level warning >"$WORK/peer.out" 2>&1 &
PEER_PID=$!
PEER="http://127.0.0.1:$PEER_PORT"
for _ in $(seq 1 100); do curl -sf "$PEER/healthz" >/dev/null 2>&1 && break; sleep 0.2; done
curl -sf "$PEER/healthz" >/dev/null || { cat "$WORK/peer.out" >&2; exit 1; }
say "peer: seeding $USERS users"
seq 1 "$USERS" | sed 's/.*/peer-&@bench.example/' >"$WORK/peer_emails.txt"
xargs -P "$(nproc)" -I{} curl -sf -o /dev/null "$PEER/auth/register" -H 'content-type: application/json' \
  -d "{\"email\":\"{}\",\"password\":\"$PASSWORD\"}" <"$WORK/peer_emails.txt"
xargs -P "$(nproc)" -I{} curl -sf "$PEER/auth/login" --data-urlencode "username={}" \
  --data-urlencode "password=$PASSWORD" <"$WORK/peer_emails.txt" | grep -o '"access_token":"[^"]*"' | cut -d'"' -f4 \
  >"$WORK/peer_tokens.txt"
[ "$(wc -l <"$WORK/peer_tokens.txt")" -eq "$USERS" ] || { echo "peer seeding failed" >&2; cat "$WORK/peer.out" >&2; exit 1; }

BASE=$PEER
say "peer: GET /users/me"
read -r p_rps p_p50 p_p99 p_bad <<<"$(run_wrk /users/me bench/wrk/tokens.lua "$WORK/peer_tokens.txt")"
kill "$PEER_PID"; wait "$PEER_PID" 2>/dev/null || true; PEER_PID=""

# --- Strata, same database server, default cache ---
database_url postgres "strata_peers_$$"
STRATA_DATABASE_URL="$URL" STRATA_LOG_LEVEL=warn STRATA_THROTTLE_CLIENT_MAX_FAILURES=1000000 \
  STRATA_THROTTLE_REGISTRATION_MAX=1000000 "$BIN" serve --listen "127.0.0.1:$PORT" >"$WORK/server.out" 2>"$WORK/server.err" &
SERVER_PID=$!
BASE="http://127.0.0.1:$PORT"
wait_ready
say "strata: seeding $USERS users"
seed_users "strata-"
say "strata: GET /healthz"
read -r h_rps h_p50 h_p99 h_bad <<<"$(run_wrk /healthz)"
say "strata: GET /v1/sessions/current"
read -r s_rps s_p50 s_p99 s_bad <<<"$(run_wrk /v1/sessions/current bench/wrk/tokens.lua "$WORK/tokens.txt")"

echo "### Who-am-I vs fastapi-users — $(date -u +%Y-%m-%d)"
echo
echo "Machine: $CORES cores ($CPU), ${MEM} GiB RAM; wrk -t$THREADS -c$CONNECTIONS, ${DURATION}s per row, $USERS users' tokens round robin, on the same machine."
echo "Peer: fastapi-users 15.0.5 + SQLAlchemy 2.0.58/asyncpg 0.32.0 on PostgreSQL, database token strategy, uvicorn[standard] 0.55.0 with 2 workers, access log off."
echo "Strata: \`$BIN\`, same PostgreSQL, default cache."
echo
echo "| server | endpoint | req/s | p50 | p99 | non-2xx | ratio |"
echo "|---|---|---:|---:|---:|---:|---|"
echo "| fastapi-users | GET /users/me | $p_rps | $p_p50 | $p_p99 | $p_bad | baseline |"
echo "| Strata | GET /healthz | $h_rps | $h_p50 | $h_p99 | $h_bad | $(awk -v a="$h_rps" -v b="$p_rps" 'BEGIN { printf "%.1f×", a / b }') |"
echo "| Strata | GET /v1/sessions/current | $s_rps | $s_p50 | $s_p99 | $s_bad | **$(awk -v a="$s_rps" -v b="$p_rps" 'BEGIN { printf "%.1f×", a / b }')** of fastapi-users |"
