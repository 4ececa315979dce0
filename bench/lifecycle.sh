#!/usr/bin/env bash
# Account lifecycle benchmark (issue 16): password-reset requests per second for emails
# with and without an account, against GET /healthz and password logins of the same binary
# in the same run. The worker sends every reset mail meanwhile (log-only mailer, or
# STRATA_SMTP_URL if set), so the rate includes queueing the token, the mail and the event.
# TOTP logins (password, then the code, issue 16) are measured against password-only logins
# with the same Python client and concurrency (bench/totp_logins.py; codes from pyotp).
# Prints a markdown report on stdout; progress goes to stderr.
#
#   bench/lifecycle.sh                        # sqlite and postgres, 10 s per run
#   DURATION=30 BACKENDS=sqlite bench/lifecycle.sh
#   STRATA_BIN=/path/to/strata bench/lifecycle.sh   # measure another build
#
# Needs: wrk, curl, a python with pyotp (PY, default the CI venv's); for postgres, psql and the local server. Targets 127.0.0.1 only; every
# run is bounded by DURATION.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh

DURATION=${DURATION:-10}
BACKENDS=${BACKENDS:-"sqlite postgres"}
USERS=${USERS:-200}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-2}
PORT=${PORT:-18182}
PG_ADMIN_URL=${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/test}
BASE="http://127.0.0.1:$PORT"
PASSWORD="bench password 1"
PY=${PY:-$HOME/.cache/strata-tools/py/bin/python}
MFA_USERS=${MFA_USERS:-1200}
MFA_CONCURRENCY=${MFA_CONCURRENCY:-16}

say() { echo "[bench] $*" >&2; }
command -v wrk >/dev/null || { echo "wrk not found: apt-get install -y wrk" >&2; exit 1; }
"$PY" -c 'import pyotp' 2>/dev/null || { echo "no pyotp in $PY: $PY -m pip install pyotp==2.9.0" >&2; exit 1; }
release_bin
machine_facts

WORK=$(mktemp -d)
SERVER_PID=""
PG_SCHEMA=""
cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null || true
  drop_schema
  rm -rf "$WORK"
}
trap cleanup EXIT

REPORT="$WORK/report.md"
{
  echo "### Account lifecycle — $(date -u +%Y-%m-%d)"
  echo
  echo "Binary: \`$BIN\`. Machine: $CORES cores ($CPU), ${MEM} GiB RAM. wrk -t$THREADS -c$CONNECTIONS, ${DURATION}s per row, on the same machine as the server; reset throttles raised out of the way; mail: ${STRATA_SMTP_URL:-log only}."
  echo
  echo "| backend | endpoint | req/s | p50 | p99 | non-2xx | ratio |"
  echo "|---|---|---:|---:|---:|---:|---|"
} > "$REPORT"

TOTP_ROWS=""
for backend in $BACKENDS; do
  database_url "$backend" "strata_bench_lc_$$"
  say "$backend: starting strata"
  STRATA_DATABASE_URL="$URL" STRATA_LOG_LEVEL=warn STRATA_THROTTLE_CLIENT_MAX_FAILURES=1000000 \
    STRATA_THROTTLE_REGISTRATION_MAX=1000000 STRATA_MAIL_RESET_ACCOUNT_MAX=1000000000 \
    STRATA_MAIL_RESET_CLIENT_MAX=1000000000 \
    "$BIN" serve --listen "127.0.0.1:$PORT" > "$WORK/server.out" 2> "$WORK/server.err" &
  SERVER_PID=$!
  wait_ready
  say "$backend: seeding $USERS users"
  seed_users "lc-$backend-"
  sed 's/^/nobody-/' "$WORK/emails.txt" > "$WORK/unknown.txt"

  say "$backend: GET /healthz"
  read -r h_rps h_p50 h_p99 h_bad <<< "$(run_wrk /healthz)"
  say "$backend: POST /v1/sessions (password only)"
  read -r l_rps l_p50 l_p99 l_bad <<< "$(run_wrk /v1/sessions bench/wrk/login.lua "$WORK/emails.txt")"
  say "$backend: POST /v1/password-resets, unknown emails"
  read -r n_rps n_p50 n_p99 n_bad <<< "$(run_wrk /v1/password-resets bench/wrk/reset.lua "$WORK/unknown.txt")"
  say "$backend: POST /v1/password-resets, existing accounts"
  read -r k_rps k_p50 k_p99 k_bad <<< "$(run_wrk /v1/password-resets bench/wrk/reset.lua "$WORK/emails.txt")"
  {
    echo "| $backend | GET /healthz | $h_rps | $h_p50 | $h_p99 | $h_bad | baseline |"
    echo "| $backend | POST /v1/sessions (password only) | $l_rps | $l_p50 | $l_p99 | $l_bad | $(ratio "$l_rps" "$h_rps") of /healthz |"
    echo "| $backend | POST /v1/password-resets, no account | $n_rps | $n_p50 | $n_p99 | $n_bad | $(ratio "$n_rps" "$h_rps") of /healthz |"
    echo "| $backend | POST /v1/password-resets, account | $k_rps | $k_p50 | $k_p99 | $k_bad | $(ratio "$k_rps" "$h_rps") of /healthz, $(ratio "$k_rps" "$n_rps") of no account |"
  } >> "$REPORT"
  say "$backend: TOTP logins vs password-only logins ($MFA_USERS accounts each, $MFA_CONCURRENCY clients)"
  read -r t_rate p_rate t_p50 p_p50 t_bad <<< "$("$PY" bench/totp_logins.py "$BASE" "mfa-$backend-" \
    "$MFA_USERS" "$DURATION" "$MFA_CONCURRENCY" "$PASSWORD")"
  TOTP_ROWS+="| $backend | $p_rate | ${p_p50}ms | $t_rate | ${t_p50}ms | $t_bad | $(ratio "$t_rate" "$p_rate") |"$'\n'
  kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""
  drop_schema
done

{
  echo
  echo "TOTP logins (password + code, two requests) against password-only logins, same Python client, ${DURATION}s each, $MFA_CONCURRENCY concurrent clients:"
  echo
  echo "| backend | password logins/s | p50 | TOTP logins/s | p50 | failures | ratio |"
  echo "|---|---:|---:|---:|---:|---:|---|"
  printf '%s' "$TOTP_ROWS"
  echo
} >> "$REPORT"
cat "$REPORT"
