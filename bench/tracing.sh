#!/usr/bin/env bash
# Tracing cost on the hot path (issue 14): the cached session check with tracing off, on at
# 1 % sampling and on at 100 %, each as a ratio to GET /healthz of the same process in the
# same run. Spans go over OTLP/HTTP to a local sink (a small Python HTTP server that answers
# 200 and counts bodies), so the exporter does its real work. Rounds alternate the modes;
# prints a markdown table on stdout, progress on stderr.
#
#   bench/tracing.sh                    # SQLite, memory cache, 5 s per row, 2 rounds
#   DURATION=10 ROUNDS=3 bench/tracing.sh
#
# Needs wrk, curl, python3. Strata on 127.0.0.1:18291, the sink on 127.0.0.1:18292; every run
# is bounded by DURATION.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh

DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-2}
USERS=${USERS:-200}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-2}
PORT=${PORT:-18291}
SINK_PORT=${SINK_PORT:-18292}
BASE="http://127.0.0.1:$PORT"
PASSWORD="bench password 1"

say() { echo "[tracing-bench] $*" >&2; }
for tool in wrk curl python3; do command -v "$tool" >/dev/null || { echo "$tool not found" >&2; exit 1; }; done
release_bin
machine_facts

WORK=$(mktemp -d)
SERVER_PID="" SINK_PID=""
stop_server() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""; fi
}
cleanup() {
  stop_server
  [ -z "$SINK_PID" ] || kill "$SINK_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

cat > "$WORK/sink.py" <<'PY'
import http.server, sys
class Sink(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200); self.send_header("content-length", "0"); self.end_headers()
    def log_message(self, *args): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
PY
python3 "$WORK/sink.py" "$SINK_PORT" &
SINK_PID=$!

URL="sqlite://$WORK/bench.db"
# start_server RATIO (empty: tracing off)
start_server() {
  local endpoint=""
  [ -z "$1" ] || endpoint="http://127.0.0.1:$SINK_PORT"
  STRATA_DATABASE_URL="$URL" STRATA_LOG_LEVEL=error STRATA_THROTTLE_CLIENT_MAX_FAILURES=1000000 \
    STRATA_THROTTLE_REGISTRATION_MAX=1000000 STRATA_CACHE_URL=memory:// \
    STRATA_PASSWORD_MEMORY_KIB=4096 STRATA_PASSWORD_ITERATIONS=1 \
    STRATA_OTLP_ENDPOINT="$endpoint" STRATA_TRACE_SAMPLE_RATIO="${1:-1}" \
    "$BIN" serve --listen "127.0.0.1:$PORT" > "$WORK/server.out" 2> "$WORK/server.err" &
  SERVER_PID=$!
  wait_ready
}
spans() {
  curl -s "$BASE/metrics" | awk '/^strata_trace_spans_exported_total/ {e += $2} /^strata_trace_spans_dropped_total/ {d += $2} END {printf "%d %d\n", e, d}'
}

start_server ""
say "seeding $USERS users"
seed_users "t-"
stop_server

ROWS="$WORK/rows"
: > "$ROWS"
for round in $(seq 1 "$ROUNDS"); do
  for mode in off 0.01 1; do
    ratio_arg=$([ "$mode" = off ] && echo "" || echo "$mode")
    start_server "$ratio_arg"
    say "round $round, tracing $mode"
    read -r h_rps h_p50 h_p99 h_bad <<< "$(run_wrk /healthz)"
    read -r s_rps s_p50 s_p99 s_bad <<< "$(run_wrk /v1/sessions/current bench/wrk/tokens.lua "$WORK/tokens.txt")"
    sleep 1.5 # one flush interval: the last batch is counted
    read -r exported dropped <<< "$(spans)"
    echo "$mode $round $h_rps $h_p50 $h_p99 $s_rps $s_p50 $s_p99 $((h_bad + s_bad)) $exported $dropped" >> "$ROWS"
    stop_server
  done
done

echo "### Tracing cost — $(date -u +%Y-%m-%d)"
echo
echo "Machine: $CORES cores ($CPU), ${MEM} GiB RAM. \`bench/tracing.sh\`: SQLite, memory cache, wrk -t$THREADS -c$CONNECTIONS, ${DURATION}s per row on the same machine; $USERS sessions round-robin. Spans to a local OTLP/HTTP sink. Each row: /healthz then the session check on the same process; $ROUNDS rounds, modes alternating."
echo
echo "| tracing | round | /healthz req/s | session check req/s | of /healthz | p50 | p99 | spans exported | dropped | non-2xx |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
while read -r mode round h_rps h_p50 h_p99 s_rps s_p50 s_p99 bad exported dropped; do
  label=$(case $mode in off) echo "off" ;; 0.01) echo "on, 1 %" ;; *) echo "on, 100 %" ;; esac)
  echo "| $label | $round | $h_rps | $s_rps | $(ratio "$s_rps" "$h_rps") | $s_p50 | $s_p99 | $exported | $dropped | $bad |"
done < "$ROWS"
