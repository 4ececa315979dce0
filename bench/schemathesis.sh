#!/usr/bin/env bash
# Schemathesis against a fresh Strata (debug build unless STRATA_BIN says otherwise): every
# operation of /openapi.json, examples, coverage and fuzzing phases, with the rules in
# bench/schemathesis.toml. Fails on any finding. Installs a pinned Schemathesis into a cached
# virtualenv on first use.
#   bench/schemathesis.sh [max examples per operation, default 30]
set -euo pipefail
cd "$(dirname "$0")/.."
examples=${1:-30}
tools=${STRATA_TOOLS_DIR:-$HOME/.cache/strata-tools}
venv=$tools/schemathesis
pin=schemathesis==4.32.5
if ! "$venv/bin/python" -c 'import sys, importlib.metadata as m; sys.exit(m.version("schemathesis") != sys.argv[1])' "${pin#*==}" 2>/dev/null; then
  python3 -m venv --clear "$venv" && "$venv/bin/pip" install -q "$pin" \
    || { echo "FATAL: cannot install $pin" >&2; exit 1; }
fi
bin=${STRATA_BIN:-${CARGO_TARGET_DIR:-target}/debug/strata}
[ -x "$bin" ] || { echo "FATAL: no strata binary at $bin (cargo build first)" >&2; exit 1; }
dir=$(mktemp -d)
token=schemathesis-admin-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
# Cheap hashing and no throttle: the fuzzer sends thousands of logins and registrations.
STRATA_DATABASE_URL="sqlite://$dir/st.db" STRATA_ADMIN_TOKEN=$token STRATA_PASSWORD_MEMORY_KIB=256 \
  STRATA_PASSWORD_ITERATIONS=1 STRATA_THROTTLE_CLIENT_MAX_FAILURES=1000000 STRATA_THROTTLE_ACCOUNT_MAX_FAILURES=1000000 \
  STRATA_THROTTLE_REGISTRATION_MAX=1000000 STRATA_LOG_LEVEL=warn \
  "$bin" serve --listen 127.0.0.1:0 >"$dir/out" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 1 100); do grep -q 'listening on' "$dir/out" 2>/dev/null && break; sleep 0.1; done
addr=$(sed -n 's/^strata listening on http:\/\/\([^ ]*\).*/\1/p' "$dir/out")
[ -n "$addr" ] || { echo "FATAL: strata did not start" >&2; cat "$dir/out" >&2; exit 1; }
# Its cache (.schemathesis/) goes to the temporary directory, not the checkout.
config=$PWD/bench/schemathesis.toml
cd "$dir" && "$venv/bin/schemathesis" --config-file "$config" run "http://$addr/openapi.json" \
  -H "Authorization: Bearer $token" --phases examples,coverage,fuzzing -n "$examples" --seed 1 \
  --suppress-health-check all --workers 2 --no-color
