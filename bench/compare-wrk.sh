#!/usr/bin/env bash
# Generator speed: strata bench (closed model, C connections) against wrk (same C) on the same
# static endpoint of the same server, alternating runs so both see the same machine state.
# Prints each run's requests/s and the ratio strata-bench / wrk; exits 1 below MIN_RATIO.
#
#   bench/compare-wrk.sh                       # target: the crate's mock server (GET /healthz)
#   TARGET=strata bench/compare-wrk.sh         # target: `strata serve` (release build)
#   GENERATOR=strata bench/compare-wrk.sh      # generator: `strata bench` instead of the example CLI
#   CONNECTIONS=64 DURATION=10 ROUNDS=3 MIN_RATIO=0.8 PORT=18181 bench/compare-wrk.sh
#
# Only ever targets 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

CONNECTIONS=${CONNECTIONS:-32}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
PORT=${PORT:-18181}
MIN_RATIO=${MIN_RATIO:-0.8}
TARGET=${TARGET:-mock}
GENERATOR=${GENERATOR:-example}
THREADS=${THREADS:-$(nproc)}
PATH_UNDER_TEST=${PATH_UNDER_TEST:-/healthz}
URL="http://127.0.0.1:${PORT}"

command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install -y wrk)" >&2; exit 2; }

work=$(mktemp -d)
server_pid=""
cleanup() {
    if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

echo "building (release)…" >&2
packages=(-p strata-bench)
if [ "$TARGET" = strata ] || [ "$GENERATOR" = strata ]; then packages+=(-p strata); fi
if [ "${#packages[@]}" -gt 2 ]; then cargo build --release --quiet -p strata >&2; fi
cargo build --release --quiet -p strata-bench --examples >&2
root=$(pwd)

case "$TARGET" in
    mock) "$root/target/release/examples/mock-server" "127.0.0.1:${PORT}" >"$work/server.log" 2>&1 & server_pid=$! ;;
    # Started in a scratch directory so its default SQLite file lands there.
    strata) (cd "$work" && exec "$root/target/release/strata" serve --listen "127.0.0.1:${PORT}") >"$work/server.log" 2>&1 & server_pid=$! ;;
    *) echo "TARGET must be mock or strata" >&2; exit 2 ;;
esac
case "$GENERATOR" in
    example) bench=("$root/target/release/examples/bench-cli") ;;
    strata) bench=("$root/target/release/strata" bench) ;;
    *) echo "GENERATOR must be example or strata" >&2; exit 2 ;;
esac

for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/${PORT}") 2>/dev/null; then break; fi
    sleep 0.1
done

# Both tools get a short warm-up so neither pays for the server's first connections.
wrk -t"$THREADS" -c"$CONNECTIONS" -d2s "${URL}${PATH_UNDER_TEST}" >/dev/null

wrk_total=0; bench_total=0
for round in $(seq 1 "$ROUNDS"); do
    wrk_rps=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" "${URL}${PATH_UNDER_TEST}" | awk '/Requests\/sec:/ {print $2}')
    "${bench[@]}" --target "$URL" --scenario http --path "$PATH_UNDER_TEST" --connections "$CONNECTIONS" \
        --duration "${DURATION}s" --no-metrics --quiet --json "$work/bench.json" >/dev/null
    bench_rps=$(awk '/"totals"/ {t=1} t && /"rps"/ {gsub(/[,]/, "", $2); print $2; exit}' "$work/bench.json")
    if ! kill -0 "$server_pid" 2>/dev/null; then
        echo "the target server died; its log:" >&2
        cat "$work/server.log" >&2
        exit 2
    fi
    echo "round $round: wrk ${wrk_rps} req/s, strata bench ${bench_rps} req/s"
    wrk_total=$(awk -v a="$wrk_total" -v b="$wrk_rps" 'BEGIN {print a + b}')
    bench_total=$(awk -v a="$bench_total" -v b="$bench_rps" 'BEGIN {print a + b}')
done

ratio=$(awk -v a="$bench_total" -v b="$wrk_total" 'BEGIN {printf "%.3f", a / b}')
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(free -g | awk '/Mem:/ {print $2}') GiB"
echo "target: $TARGET ${PATH_UNDER_TEST}; $CONNECTIONS connections; ${DURATION}s × $ROUNDS rounds"
echo "mean: wrk $(awk -v t="$wrk_total" -v n="$ROUNDS" 'BEGIN {printf "%.0f", t / n}') req/s, strata bench $(awk -v t="$bench_total" -v n="$ROUNDS" 'BEGIN {printf "%.0f", t / n}') req/s"
echo "ratio strata-bench/wrk: $ratio (required ≥ $MIN_RATIO)"
awk -v r="$ratio" -v m="$MIN_RATIO" 'BEGIN {exit !(r >= m)}'
