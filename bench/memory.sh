#!/usr/bin/env bash
# Memory (issue 8): resident set of `strata serve` idle, and its peak under the session-check
# load once 100,000 sessions are cached (SQLite, default in-process cache). The sessions are
# written straight into the database (a token is `st_` + base64url of 32 random bytes, stored
# as its SHA-256): making 100,000 through the API would cost 100,000 argon2 verifies and
# measure nothing more. Prints a markdown table; progress goes to stderr.
#
#   bench/memory.sh
#   SESSIONS=200000 DURATION=30 bench/memory.sh
#   STRATA_BIN=/path/to/strata bench/memory.sh
#
# Needs: wrk, curl, python3. Targets 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh

DURATION=${DURATION:-20}
SESSIONS=${SESSIONS:-100000}
USERS=${USERS:-100}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-2}
PORT=${PORT:-18193}
BASE="http://127.0.0.1:$PORT"
PASSWORD="bench password 1"
say() { echo "[memory] $*" >&2; }
command -v wrk >/dev/null || { echo "wrk not found: apt-get install -y wrk" >&2; exit 1; }

release_bin
machine_facts
WORK=$(mktemp -d)
SERVER_PID=""
cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
kib() { awk -v f="$1" '$1 == f":" {print $2}' "/proc/$SERVER_PID/status"; }
mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

STRATA_DATABASE_URL="sqlite://$WORK/bench.db" STRATA_LOG_LEVEL=warn STRATA_THROTTLE_CLIENT_MAX_FAILURES=1000000 \
  STRATA_THROTTLE_REGISTRATION_MAX=1000000 "$BIN" serve --listen "127.0.0.1:$PORT" >"$WORK/server.out" 2>"$WORK/server.err" &
SERVER_PID=$!
wait_ready
sleep 2
IDLE=$(kib VmRSS)
# The split: heap and stacks (anonymous) against mapped files, almost all of it the
# binary's own code, which the kernel maps in large folios and can drop at any time.
IDLE_ANON=$(kib RssAnon)
IDLE_FILE=$(kib RssFile)
say "idle: $(mb "$IDLE") MB"

say "seeding $USERS users through the API, then $SESSIONS sessions into the database"
seed_users "mem-"
"${PYTHON:-python3}" - "$WORK/bench.db" "$WORK/ids.txt" "$SESSIONS" "$WORK/many_tokens.txt" <<'PY'
import base64, hashlib, os, sqlite3, sys, time, uuid
db, ids_file, count, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
users = [uuid.UUID(line.strip()).bytes for line in open(ids_file) if line.strip()]
now = int(time.time() * 1_000_000)
conn = sqlite3.connect(db, timeout=30)
rows, tokens = [], []
for n in range(count):
    raw = os.urandom(32)
    tokens.append("st_" + base64.urlsafe_b64encode(raw).rstrip(b"=").decode())
    rows.append((uuid.uuid4().bytes, hashlib.sha256(raw).digest(), users[n % len(users)], now, now + 86_400_000_000))
conn.executemany("INSERT INTO sessions (id, token_hash, user_id, created_at, expires_at) VALUES (?, ?, ?, ?, ?)", rows)
conn.commit()
open(out, "w").write("\n".join(tokens) + "\n")
PY
AFTER_SEED=$(kib VmRSS)
# The hashing threads give their argon2 arenas back after 10 s without work; the session
# checks below hash nothing, so the peak is taken from there.
say "waiting for the hashing threads' idle release"
sleep 12
RELEASED=$(kib VmRSS)
echo 5 >"/proc/$SERVER_PID/clear_refs"

say "GET /v1/sessions/current over $SESSIONS tokens, ${DURATION}s"
read -r s_rps s_p50 s_p99 s_bad <<<"$(run_wrk /v1/sessions/current bench/wrk/tokens.lua "$WORK/many_tokens.txt")"
LOADED=$(kib VmRSS)
LOADED_ANON=$(kib RssAnon)
LOADED_FILE=$(kib RssFile)
PEAK=$(kib VmHWM)
HITS=$(curl -sf "$BASE/metrics" | awk '/^strata_cache_lookups_total\{.*kind="session".*outcome="hit"/ {s += $2} END {print s + 0}')
MISSES=$(curl -sf "$BASE/metrics" | awk '/^strata_cache_lookups_total\{.*kind="session".*outcome="miss"/ {s += $2} END {print s + 0}')

echo "### Memory — $(date -u +%Y-%m-%d)"
echo
echo "Machine: $CORES cores ($CPU), ${MEM} GiB RAM. \`$BIN\`, SQLite, default in-process cache (100,000 entries / 64 MiB)."
echo "Load: wrk -t$THREADS -c$CONNECTIONS, ${DURATION}s of GET /v1/sessions/current over $SESSIONS distinct sessions (round robin)."
echo
echo "| state | RSS | of which anonymous / mapped files | goal |"
echo "|---|---:|---|---|"
echo "| idle after start | $(mb "$IDLE") MB | $(mb "$IDLE_ANON") / $(mb "$IDLE_FILE") MB | ≤ 30 MB |"
echo "| after seeding $USERS users (argon2 buffers) | $(mb "$AFTER_SEED") MB | | |"
echo "| 12 s later (hashing threads idle, buffers given back) | $(mb "$RELEASED") MB | | |"
echo "| end of the session-check load | $(mb "$LOADED") MB | $(mb "$LOADED_ANON") / $(mb "$LOADED_FILE") MB | |"
echo "| peak during the load (VmHWM, reset just before it) | $(mb "$PEAK") MB | | ≤ 80 MB |"
echo
echo "Session checks: $s_rps req/s, p50 $s_p50, p99 $s_p99, non-2xx $s_bad; session cache hits $HITS, misses (database reads) $MISSES."
