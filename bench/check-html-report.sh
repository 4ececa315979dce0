#!/usr/bin/env bash
# Checks the --html report in a real headless browser (Debian's chromium): generates a report
# from a short journey run against the crate's mock server on 127.0.0.1, loads it from disk
# with the network disabled, and requires that the page's self-check saw no script error and
# every plot drew a visible line. Leaves the report, the DOM dump and a screenshot in
# $OUT_DIR (default bench/out/html-check) for a human to look at.
#
#   bench/check-html-report.sh            # fails loudly if chromium is missing
#   REPORT=run.html bench/check-html-report.sh   # check an existing report instead
set -euo pipefail
cd "$(dirname "$0")/.."

CHROMIUM=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$CHROMIUM" ]; then
    echo "FAIL: chromium is not installed; install it with: apt-get update && apt-get install -y chromium" >&2
    exit 1
fi

OUT_DIR=${OUT_DIR:-bench/out/html-check}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
profile=$(mktemp -d)
server_pid=""
cleanup() {
    if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
    rm -rf "$profile"
}
trap cleanup EXIT

if [ -n "${REPORT:-}" ]; then
    cp "$REPORT" "$OUT_DIR/report.html"
else
    cargo build --quiet -p strata-bench --examples
    examples=${CARGO_TARGET_DIR:-target}/debug/examples

    "$examples/mock-server" 127.0.0.1:0 >"$OUT_DIR/server.log" 2>&1 &
    server_pid=$!
    url=""
    for _ in $(seq 1 100); do
        url=$(sed -n 's/^listening on //p' "$OUT_DIR/server.log")
        [ -n "$url" ] && break
        sleep 0.1
    done
    [ -n "$url" ] || { echo "FAIL: the mock server did not start" >&2; cat "$OUT_DIR/server.log" >&2; exit 1; }

    "$examples/bench-cli" --target "$url" --scenario journey --rate 40 --duration 4s --warmup 1s \
        --watch-pid "$server_pid" --slo "p99<10s,errors<1%" --quiet \
        --html "$OUT_DIR/report.html" --json "$OUT_DIR/report.json" --csv "$OUT_DIR/report.csv" >"$OUT_DIR/summary.txt"
fi

flags=(--headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update
    --disable-sync --no-first-run --user-data-dir="$profile" --disable-extensions
    --virtual-time-budget=5000 --enable-logging=stderr --v=0)
"$CHROMIUM" "${flags[@]}" --dump-dom "file://$OUT_DIR/report.html" >"$OUT_DIR/dom.html" 2>"$OUT_DIR/chromium.log" || true
"$CHROMIUM" "${flags[@]}" --window-size=1200,2600 --screenshot="$OUT_DIR/report.png" "file://$OUT_DIR/report.html" \
    >/dev/null 2>>"$OUT_DIR/chromium.log" || true

body=$(grep -o '<body[^>]*>' "$OUT_DIR/dom.html" | head -1 || true)
plots=$(sed -n 's/.*data-plots="\([0-9]*\)".*/\1/p' <<<"$body")
drawn=$(sed -n 's/.*data-plots-drawn="\([0-9]*\)".*/\1/p' <<<"$body")
status=0
if [ -z "$body" ]; then
    echo "FAIL: chromium produced no DOM (see $OUT_DIR/chromium.log)" >&2
    status=1
elif ! grep -q 'data-check="ok"' <<<"$body"; then
    echo "FAIL: the report's self-check did not pass: $body" >&2
    status=1
fi
if grep -E 'Uncaught|CONSOLE\(.*(Error|error)' "$OUT_DIR/chromium.log" >&2; then
    echo "FAIL: script errors in the console (above)" >&2
    status=1
fi
if [ "$status" -eq 0 ] && [ "${plots:-0}" -ge 5 ] && [ "$plots" = "$drawn" ]; then
    echo "ok: the HTML report loads in $("$CHROMIUM" --version 2>/dev/null) with no errors and draws all $drawn plots"
    echo "    ($OUT_DIR/report.html, screenshot $OUT_DIR/report.png)"
else
    echo "FAIL: plots ${plots:-?}, drawn ${drawn:-?}" >&2
    exit 1
fi
