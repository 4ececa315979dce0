#!/usr/bin/env bash
# SCIM benchmark (issue 15): the userName lookup identity providers make before every
# create, GET /scim/v2/Users?filter=userName eq "…", over USERS users; and a PATCH adding or
# removing one member of a group of GROUP_MEMBERS members, next to the same PATCH on a group
# of 10 — equal rates show that a membership change does not rewrite the group (the store
# inserts or deletes the one member row: see update_group in crates/strata-store). Ratios to
# GET /healthz of the same binary in the same run. Users are seeded through /scim/v2/Bulk
# (1,000 operations a request), the group's members by PATCHes of 1,000.
# Prints a markdown report on stdout; progress goes to stderr.
#
#   bench/scim.sh                               # sqlite and postgres, 10 s per run
#   DURATION=30 BACKENDS=sqlite bench/scim.sh
#   STRATA_BIN=/path/to/strata bench/scim.sh    # measure another build
#
# Needs: wrk, curl, python3; for postgres, psql and the local server. Targets 127.0.0.1
# only; every run is bounded by DURATION.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh

DURATION=${DURATION:-10}
BACKENDS=${BACKENDS:-"sqlite postgres"}
USERS=${USERS:-10000}
GROUP_MEMBERS=${GROUP_MEMBERS:-10000}
OUTSIDERS=${OUTSIDERS:-1000}
CONNECTIONS=${CONNECTIONS:-32}
PATCH_CONNECTIONS=${PATCH_CONNECTIONS:-8}
THREADS=${THREADS:-2}
PORT=${PORT:-18183}
PG_ADMIN_URL=${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/test}
BASE="http://127.0.0.1:$PORT"
export ADMIN_TOKEN="bench-admin-token-0123456789abcdef0123456789"

say() { echo "[bench] $*" >&2; }
command -v wrk >/dev/null || { echo "wrk not found: apt-get install -y wrk" >&2; exit 1; }
[ "$GROUP_MEMBERS" -le "$USERS" ] || { echo "GROUP_MEMBERS must be at most USERS" >&2; exit 1; }
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

scim() { # METHOD PATH [BODY-FILE] → response body on stdout; fails on a non-2xx
  local args=(-sf -X "$1" "$BASE/scim/v2$2" -H "authorization: Bearer $ADMIN_TOKEN" -H 'content-type: application/scim+json')
  [ -n "${3:-}" ] && args+=(--data-binary "@$3")
  curl "${args[@]}"
}

# seed_scim_users PREFIX COUNT FILE: creates COUNT users through /Bulk; their emails go to
# FILE, their ids to FILE.ids.
seed_scim_users() {
  local prefix=$1 count=$2 file=$3 from=1
  : > "$file.ids"
  seq 1 "$count" | sed "s/.*/$prefix&@bench.example/" > "$file"
  while [ "$from" -le "$count" ]; do
    python3 - "$file" "$from" 1000 > "$WORK/bulk.json" <<'PY'
import json, sys
emails = open(sys.argv[1]).read().split()
start, n = int(sys.argv[2]) - 1, int(sys.argv[3])
ops = [{"method": "POST", "path": "/Users", "bulkId": f"u{i}",
        "data": {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": e, "displayName": "Bench"}}
       for i, e in enumerate(emails[start:start + n])]
print(json.dumps({"schemas": ["urn:ietf:params:scim:api:messages:2.0:BulkRequest"], "Operations": ops}))
PY
    scim POST /Bulk "$WORK/bulk.json" > "$WORK/bulk.out"
    python3 - "$WORK/bulk.out" >> "$file.ids" <<'PY'
import json, sys
ops = json.load(open(sys.argv[1]))["Operations"]
bad = [o for o in ops if o["status"] != "201"]
if bad:
    sys.exit(f"bulk seeding failed: {bad[0]}")
for o in ops:
    print(o["location"].rsplit("/", 1)[1])
PY
    from=$((from + 1000))
  done
}

# make_group NAME IDS-FILE COUNT → the group id: created empty, then COUNT members of
# IDS-FILE added 1,000 a PATCH (the most one change may name).
make_group() {
  python3 -c 'import json,sys; print(json.dumps({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": sys.argv[1]}))' "$1" > "$WORK/group.json"
  local gid
  gid=$(scim POST /Groups "$WORK/group.json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  head -n "$3" "$2" | split -l 1000 - "$WORK/members."
  for chunk in "$WORK"/members.*; do
    python3 - "$chunk" > "$WORK/patch.json" <<'PY'
import json, sys
ids = open(sys.argv[1]).read().split()
print(json.dumps({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                  "Operations": [{"op": "add", "path": "members", "value": [{"value": i} for i in ids]}]}))
PY
    scim PATCH "/Groups/$gid?excludedAttributes=members" "$WORK/patch.json" > /dev/null
    rm "$chunk"
  done
  echo "$gid"
}

REPORT="$WORK/report.md"
{
  echo "### SCIM — $(date -u +%Y-%m-%d)"
  echo
  echo "Binary: \`$BIN\`. Machine: $CORES cores ($CPU), ${MEM} GiB RAM. wrk -t$THREADS, ${DURATION}s per row, on the same machine as the server; $USERS users (plus $OUTSIDERS outside the groups); filter lookups at -c$CONNECTIONS, PATCHes at -c$PATCH_CONNECTIONS (they all change one group, whose version serialises them)."
  echo
  echo "| backend | request | req/s | p50 | p99 | non-2xx | ratio |"
  echo "|---|---|---:|---:|---:|---:|---|"
} > "$REPORT"

for backend in $BACKENDS; do
  database_url "$backend" "strata_bench_scim_$$"
  say "$backend: starting strata"
  STRATA_DATABASE_URL="$URL" STRATA_LOG_LEVEL=warn STRATA_ADMIN_TOKEN="$ADMIN_TOKEN" \
    "$BIN" serve --listen "127.0.0.1:$PORT" > "$WORK/server.out" 2> "$WORK/server.err" &
  SERVER_PID=$!
  wait_ready
  say "$backend: seeding $USERS + $OUTSIDERS users through /scim/v2/Bulk"
  seed_scim_users "scim-$backend-" "$USERS" "$WORK/members"
  seed_scim_users "outside-$backend-" "$OUTSIDERS" "$WORK/outsiders"
  say "$backend: a group of $GROUP_MEMBERS members and one of 10"
  big=$(make_group "Bench big" "$WORK/members.ids" "$GROUP_MEMBERS")
  small=$(make_group "Bench small" "$WORK/members.ids" 10)
  members=$(scim GET "/Groups/$big" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["members"]))')
  [ "$members" -eq "$GROUP_MEMBERS" ] || { echo "the big group has $members members" >&2; exit 1; }

  say "$backend: GET /healthz"
  read -r h_rps h_p50 h_p99 h_bad <<< "$(run_wrk /healthz)"
  say "$backend: GET /scim/v2/Users?filter=userName eq …"
  read -r f_rps f_p50 f_p99 f_bad <<< "$(run_wrk /scim/v2/Users bench/wrk/scim_filter.lua "$WORK/members")"
  say "$backend: PATCH one member in and out, group of 10"
  export GROUP_ID=$small
  read -r s_rps s_p50 s_p99 s_bad <<< "$(CONNECTIONS=$PATCH_CONNECTIONS run_wrk "/scim/v2/Groups/$small" bench/wrk/scim_group_member.lua "$WORK/outsiders.ids")"
  say "$backend: PATCH one member in and out, group of $GROUP_MEMBERS"
  export GROUP_ID=$big
  read -r b_rps b_p50 b_p99 b_bad <<< "$(CONNECTIONS=$PATCH_CONNECTIONS run_wrk "/scim/v2/Groups/$big" bench/wrk/scim_group_member.lua "$WORK/outsiders.ids")"
  after=$(scim GET "/Groups/$big" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["members"]))')
  {
    echo "| $backend | GET /healthz | $h_rps | $h_p50 | $h_p99 | $h_bad | baseline |"
    echo "| $backend | GET /scim/v2/Users?filter=userName eq … ($USERS users) | $f_rps | $f_p50 | $f_p99 | $f_bad | $(ratio "$f_rps" "$h_rps") of /healthz |"
    echo "| $backend | PATCH group of 10: add or remove one member | $s_rps | $s_p50 | $s_p99 | $s_bad | $(ratio "$s_rps" "$h_rps") of /healthz |"
    echo "| $backend | PATCH group of $GROUP_MEMBERS: add or remove one member | $b_rps | $b_p50 | $b_p99 | $b_bad | $(ratio "$b_rps" "$h_rps") of /healthz, $(ratio "$b_rps" "$s_rps") of the group of 10 |"
  } >> "$REPORT"
  say "$backend: the big group has $after members after the run (between $GROUP_MEMBERS and $((GROUP_MEMBERS + OUTSIDERS)))"
  kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""
  drop_schema
done
echo >> "$REPORT"
cat "$REPORT"
