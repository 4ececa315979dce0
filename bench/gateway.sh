#!/usr/bin/env bash
# Gateway benchmark (issue 10): Strata's gateway against HAProxy and nginx, in one run, in
# front of the same three api instances (--role api, one SQLite file, in-process caches),
# for /healthz and the session check. Ratios and added latency are to direct access to
# one instance from the same run. HAProxy and nginx run the shipped deploy/ configurations
# with the ports changed; all three balance round robin over equal weights.
#
# Then fairness: the gateway over two of those instances and a fourth that answers 10 ms
# late (behind bench/delay_relay.py, 5 ms each way: this kernel has no netem qdisc),
# for each algorithm: requests/s, p50/p99 and the slow instance's share (a third is fair,
# less is better).
#
#   bench/gateway.sh
#   DURATION=10 CONNECTIONS=64 ROUNDS=5 bench/gateway.sh
#   FAIRNESS=0 bench/gateway.sh        # without the fairness rows
#
# Needs wrk, haproxy and nginx (Debian packages); a proxy that is missing is skipped. The
# fairness rows need python3. Targets 127.0.0.1 only; every run is bounded by DURATION.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh

DURATION=${DURATION:-5}
USERS=${USERS:-200}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-3}
PROXY_PORT=${PROXY_PORT:-18400}
API_PORTS=(18401 18402 18403)
ADMIN="bench-admin-token-0123456789"
PASSWORD="bench password 1"

say() { echo "[gateway-bench] $*" >&2; }
command -v wrk >/dev/null || { echo "wrk not found" >&2; exit 1; }

# STRATA_BIN=PATH measures that build instead of building this checkout.
if [ -z "${STRATA_BIN:-}" ]; then
  say "building release"
  cargo build --release -q -p strata --bin strata
fi
BIN=${STRATA_BIN:-target/release/strata}
machine_facts

WORK=$(mktemp -d)
PIDS=()
PROXY_PID=""
stop_proxy() {
  if [ -n "$PROXY_PID" ]; then kill "$PROXY_PID" 2>/dev/null || true; wait "$PROXY_PID" 2>/dev/null || true; PROXY_PID=""; fi
}
cleanup() {
  stop_proxy
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

for port in "${API_PORTS[@]}"; do
  STRATA_DATABASE_URL="sqlite://$WORK/cluster.db" STRATA_LOG_LEVEL=error STRATA_ROLE=api \
    STRATA_THROTTLE_CLIENT_MAX_FAILURES=1000000 STRATA_THROTTLE_REGISTRATION_MAX=1000000 \
    STRATA_ADMIN_TOKEN="$ADMIN" STRATA_PASSWORD_MEMORY_KIB=4096 STRATA_PASSWORD_ITERATIONS=1 \
    "$BIN" serve --listen "127.0.0.1:$port" > "$WORK/api$port.out" 2> "$WORK/server.err" &
  PIDS+=($!)
  BASE="http://127.0.0.1:$port"
  wait_ready
done
BASE="http://127.0.0.1:${API_PORTS[0]}"
say "seeding $USERS users"
seed_users "g-"

ports_in() { sed -e "s/127.0.0.1:8080/127.0.0.1:$PROXY_PORT/" -e "s/127.0.0.1:8081/127.0.0.1:${API_PORTS[0]}/" \
  -e "s/127.0.0.1:8082/127.0.0.1:${API_PORTS[1]}/" -e "s/127.0.0.1:8083/127.0.0.1:${API_PORTS[2]}/" "$1"; }
wait_port() { for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$PROXY_PORT/healthz" && return; sleep 0.1; done; echo "proxy on $PROXY_PORT never answered" >&2; cat "$WORK"/gw.out "$WORK"/gw.err "$WORK"/haproxy.log "$WORK"/nginx.log >&2 || true; ss -ltnp | grep ":$PROXY_PORT" >&2 || true; exit 1; }

start_proxy() {
  case $1 in
    strata)
      STRATA_LOG_LEVEL=error STRATA_ADMIN_TOKEN="$ADMIN" STRATA_GATEWAY_ALGORITHM=round-robin \
        STRATA_GATEWAY_UPSTREAMS="static://127.0.0.1:${API_PORTS[0]},127.0.0.1:${API_PORTS[1]},127.0.0.1:${API_PORTS[2]}" \
        "$BIN" serve --role gateway --listen "127.0.0.1:$PROXY_PORT" > "$WORK/gw.out" 2> "$WORK/gw.err" &
      PROXY_PID=$! ;;
    haproxy)
      ports_in deploy/haproxy.cfg > "$WORK/haproxy.cfg"
      haproxy -db -f "$WORK/haproxy.cfg" > "$WORK/haproxy.log" 2>&1 &
      PROXY_PID=$! ;;
    nginx)
      mkdir -p "$WORK/nginx"
      ports_in deploy/nginx.conf > "$WORK/nginx/nginx.conf"
      nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -g 'daemon off;' > "$WORK/nginx.log" 2>&1 &
      PROXY_PID=$! ;;
  esac
  wait_port
}

{
  echo "### Gateway — $(date -u +%Y-%m-%d)"
  echo
  echo "Machine: $CORES cores ($CPU), ${MEM} GiB RAM; wrk -t$THREADS -c$CONNECTIONS, median of $ROUNDS runs of ${DURATION}s per row taken in turns, three api instances (SQLite, in-process cache), the proxy and wrk on the same cores. Round robin everywhere; added latency is over direct access to one instance."
  echo
  echo "| path | via | req/s | of direct | p50 | p99 | added p50 | added p99 | non-2xx |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|---:|"
} > "$WORK/report.md"

ms() { awk -v v="$1" 'BEGIN { if (v ~ /us$/) { sub(/us$/, "", v); print v / 1000 } else if (v ~ /ms$/) { sub(/ms$/, "", v); print v } else if (v ~ /s$/) { sub(/s$/, "", v); print v * 1000 } else print v }'; }
added() { awk -v a="$(ms "$1")" -v b="$(ms "$2")" 'BEGIN { printf "%+.2f ms", a - b }'; }

# Every row is the median of ROUNDS runs, taken in turns (direct, strata, haproxy, nginx,
# direct, …) so that a noisy spell on this shared machine hits them all alike.
median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
for path in healthz session; do
  case $path in healthz) args=(/healthz) ;; session) args=(/v1/sessions/current bench/wrk/tokens.lua "$WORK/tokens.txt") ;; esac
  vias=(direct strata)
  for via in haproxy nginx; do
    if command -v "$via" >/dev/null; then vias+=("$via"); else say "$via not installed: skipped"; fi
  done
  for round in $(seq 1 "$ROUNDS"); do
    for via in "${vias[@]}"; do
      say "$path: $via (round $round of $ROUNDS)"
      if [ "$via" = direct ]; then
        BASE="http://127.0.0.1:${API_PORTS[0]}"
      else
        start_proxy "$via"
        BASE="http://127.0.0.1:$PROXY_PORT"
      fi
      run_wrk "${args[@]}" >> "$WORK/$path.$via"
      stop_proxy
    done
  done
  col() { awk -v c="$2" '{ print $c }' "$WORK/$path.$1" | while read -r v; do ms "$v"; done | median; }
  d_rps=$(awk '{ print $1 }' "$WORK/$path.direct" | median)
  d_p50=$(col direct 2)
  d_p99=$(col direct 3)
  for via in "${vias[@]}"; do
    rps=$(awk '{ print $1 }' "$WORK/$path.$via" | median)
    p50=$(col "$via" 2)
    p99=$(col "$via" 3)
    bad=$(awk '{ s += $4 } END { print s }' "$WORK/$path.$via")
    if [ "$via" = direct ]; then
      echo "| $path | direct (one instance) | $rps | 100% | ${p50} ms | ${p99} ms | — | — | $bad |" >> "$WORK/report.md"
    else
      echo "| $path | $via | $rps | $(ratio "$rps" "$d_rps") | ${p50} ms | ${p99} ms | $(added "$p50" "$d_p50") | $(added "$p99" "$d_p99") | $bad |" >> "$WORK/report.md"
    fi
  done
done
fairness() {
  # The slow instance is a fourth api instance behind bench/delay_relay.py, which holds every
  # chunk 5 ms each way (this kernel has no netem qdisc to do it on a veth link).
  local backend=18404 slow=127.0.0.1:18405
  command -v python3 >/dev/null || { say "fairness: python3 not found: skipped"; return; }
  STRATA_DATABASE_URL="sqlite://$WORK/cluster.db" STRATA_LOG_LEVEL=error STRATA_ROLE=api \
    STRATA_THROTTLE_CLIENT_MAX_FAILURES=1000000 STRATA_ADMIN_TOKEN="$ADMIN" \
    "$BIN" serve --listen "127.0.0.1:$backend" > "$WORK/slow.out" 2> "$WORK/server.err" &
  PIDS+=($!)
  python3 bench/delay_relay.py "${slow#*:}" "127.0.0.1:$backend" 5 &
  PIDS+=($!)
  BASE="http://$slow"
  wait_ready
  {
    echo
    echo "Fairness: the gateway over two of those instances and one 10 ms slower (a relay adding 5 ms each way), /healthz, wrk -t$THREADS -c$CONNECTIONS, ${DURATION}s per row. A third of the requests is a fair share for the slow one; less is better."
    echo
    echo "| algorithm | req/s | p50 | p99 | slow instance's share |"
    echo "|---|---:|---:|---:|---:|"
  } >> "$WORK/report.md"
  for algorithm in round-robin weighted least-conn p2c-ewma; do
    say "fairness: $algorithm"
    STRATA_LOG_LEVEL=error STRATA_ADMIN_TOKEN="$ADMIN" STRATA_GATEWAY_ALGORITHM=$algorithm \
      STRATA_GATEWAY_UPSTREAMS="static://127.0.0.1:${API_PORTS[0]},127.0.0.1:${API_PORTS[1]},$slow" \
      "$BIN" serve --role gateway --listen "127.0.0.1:$PROXY_PORT" > "$WORK/gw.out" 2> "$WORK/gw.err" &
    PROXY_PID=$!
    wait_port
    BASE="http://127.0.0.1:$PROXY_PORT"
    read -r rps p50 p99 _ <<< "$(run_wrk /healthz)"
    share=$(curl -sf "$BASE/gateway/upstreams" -H "authorization: Bearer $ADMIN" \
      | jq -r --arg slow "$slow" '[.upstreams[] | .requests] as $all | (.upstreams[] | select(.authority == $slow) | .requests) / ($all | add) * 100 | floor | "\(.)%"')
    echo "| $algorithm | $rps | $p50 | $p99 | $share |" >> "$WORK/report.md"
    stop_proxy
  done
}
if [ "${FAIRNESS:-1}" != 0 ]; then fairness; fi
cat "$WORK/report.md"
