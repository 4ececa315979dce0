#!/usr/bin/env bash
# Read replicas and data size (issue 11), on private PostgreSQL servers this script starts
# (initdb, pg_basebackup -R, pg_ctl as the postgres user, in a temporary directory), with
# Strata's cache off so every request reaches the database. Users and sessions are seeded
# in bulk with SQL (one API-registered template's password hash, tokens derived from their
# number), not through argon2.
#
#   bench/replicas.sh                 # session check and get-user: primary only vs primary + 2 replicas
#   bench/replicas.sh size            # session check at 10,000 and at 10,000,000 users
#   bench/replicas.sh shards          # session check and get-user: primary only vs 4 shards over 2 servers
#   USERS=100000 DURATION=20 bench/replicas.sh
#   SIZES="10000 1000000" bench/replicas.sh size
#   AFTER_SEED_SQL="CREATE INDEX ON sessions USING hash (token_hash)" bench/replicas.sh size   # try a schema change
#   PREWARM=1 SHARED_BUFFERS=12GB bench/replicas.sh size     # tables and indexes in memory first (pg_prewarm)
#
# Reports throughput and p50/p99 with ratios to the first row of the same run, and the CPU
# each request cost Strata and PostgreSQL (for the capacity model in bench/RESULTS.md).
# Needs: wrk, curl, psql, PostgreSQL server binaries. Targets 127.0.0.1 only; every load
# run is bounded by DURATION.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh

MODE=${1:-replicas}
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-1}
PORT=${PORT:-18191}
USERS=${USERS:-10000}
SIZES=${SIZES:-"10000 10000000"}
SAMPLE=${SAMPLE:-100000}
WARMUP=${WARMUP:-5}
RATE=${RATE:-4000}
SHARED_BUFFERS=${SHARED_BUFFERS:-6GB}
BASE="http://127.0.0.1:$PORT"
PASSWORD="bench password 1"
PG_PORTS=(25461 25462 25463)

say() { echo "[bench] $*" >&2; }
for tool in wrk curl psql; do command -v $tool >/dev/null || { echo "$tool not found" >&2; exit 1; }; done
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
release_bin
machine_facts

WORK=$(mktemp -d /tmp/strata-replicas.XXXXXX)
chmod 755 "$WORK"
[ "$(id -u)" = 0 ] && chown postgres "$WORK"
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
SERVER_PID=""
cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null || true
  for d in "$WORK"/pg*; do [ -d "$d/data" ] && as_pg "$PGBIN/pg_ctl" -D "$d/data" -m immediate stop >/dev/null 2>&1 || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

settings() {
  printf "port = %s\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '%s'\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\nshared_buffers = '$SHARED_BUFFERS'\nmax_wal_size = '4GB'\nwal_keep_size = '1GB'\nmax_connections = 100\n" "$1" "$2"
}

pg_primary() { # PORT
  local dir="$WORK/pg$1"
  as_pg mkdir -p "$dir"
  as_pg "$PGBIN/initdb" -D "$dir/data" -U postgres -A trust --no-sync >/dev/null
  settings "$1" "$dir" | as_pg tee -a "$dir/data/postgresql.conf" >/dev/null
  echo "host replication all 127.0.0.1/32 trust" | as_pg tee -a "$dir/data/pg_hba.conf" >/dev/null
  as_pg "$PGBIN/pg_ctl" -D "$dir/data" -l "$dir/log" -w start >/dev/null
}

pg_replica() { # PRIMARY_PORT PORT
  local dir="$WORK/pg$2"
  as_pg mkdir -p "$dir"
  as_pg "$PGBIN/pg_basebackup" -h 127.0.0.1 -p "$1" -U postgres -D "$dir/data" -R -X stream
  settings "$2" "$dir" | as_pg tee -a "$dir/data/postgresql.auto.conf" >/dev/null
  as_pg "$PGBIN/pg_ctl" -D "$dir/data" -l "$dir/log" -w start >/dev/null
}

pg_url() { echo "postgres://postgres@127.0.0.1:$1/postgres"; }
psql_on() { psql -qAt "$(pg_url "$1")" "${@:2}"; }

# Total CPU seconds (user + system) of the processes named by the pids on stdin.
cpu_of() {
  local tick total=0 pid
  tick=$(getconf CLK_TCK)
  while read -r pid; do
    [ -r "/proc/$pid/stat" ] || continue
    total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)))
  done
  awk -v t="$total" -v k="$tick" 'BEGIN { printf "%.3f", t / k }'
}
# CPU seconds of every PostgreSQL server here: postmasters and their children (backends,
# WAL senders and receivers, the startup process replaying WAL).
pg_cpu() {
  local d pm
  for d in "$WORK"/pg*/data; do
    [ -r "$d/postmaster.pid" ] || continue
    pm=$(head -1 "$d/postmaster.pid")
    echo "$pm"
    pgrep -P "$pm" || true
  done | cpu_of
}

start_strata() { # REPLICA_URLS [CATALOG_URL SHARD_URLS]
  STRATA_DATABASE_URL="${2:-$(pg_url "${PG_PORTS[0]}")}" STRATA_DATABASE_REPLICAS="$1" STRATA_DATABASE_SHARDS="${3:-}" \
    STRATA_CACHE_URL=none:// \
    STRATA_LOG_LEVEL=warn STRATA_THROTTLE_CLIENT_MAX_FAILURES=1000000 STRATA_THROTTLE_REGISTRATION_MAX=1000000 \
    "$BIN" serve --listen "127.0.0.1:$PORT" > "$WORK/server.out" 2> "$WORK/server.err" &
  SERVER_PID=$!
  wait_ready
}

stop_strata() { kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""; }

# seed FROM TO: users FROM..TO with a session each, like the API-registered template.
seed() {
  psql_on "${PG_PORTS[0]}" -c "
    INSERT INTO users (id, email, name, password_hash, role, status, version, created_at, updated_at, verified, mfa_enabled)
      SELECT md5('bench-user-' || i)::uuid, 'b' || i || '@bench.example', 'Bench ' || i, t.password_hash, t.role,
             t.status, 1, t.created_at, t.updated_at, t.verified, false
      FROM generate_series($1::bigint, $2::bigint) i, (SELECT * FROM users WHERE email = 'template@bench.example') t;
    INSERT INTO sessions (id, token_hash, user_id, created_at, expires_at, revoked_at)
      SELECT md5('bench-session-' || i)::uuid, sha256(sha256(int8send(i))), md5('bench-user-' || i)::uuid,
             t.created_at, t.created_at + 3650 * 86400 * 1000000::bigint, NULL
      FROM generate_series($1::bigint, $2::bigint) i, (SELECT min(created_at) AS created_at FROM users) t;" \
    -c "${AFTER_SEED_SQL:-SELECT 1}" -c "VACUUM ANALYZE users" -c "VACUUM ANALYZE sessions"
  if [ "${PREWARM:-0}" = 1 ]; then
    # Tables and indexes into shared_buffers (which must hold them): measures the data
    # size's cost in memory, not the first pass over a cold cache.
    psql_on "${PG_PORTS[0]}" -c "CREATE EXTENSION IF NOT EXISTS pg_prewarm" -c "
      SELECT sum(pg_prewarm(c.oid::regclass)) FROM pg_class c
      WHERE c.relname IN ('users', 'sessions') OR c.oid IN
        (SELECT indexrelid FROM pg_index WHERE indrelid IN ('users'::regclass, 'sessions'::regclass))" >/dev/null
  fi
}

# Sharded seeding: user i's token is sha256(int8send(i)) as above; its id is the md5 id with
# the fifteenth byte set to the first byte of the token's hash, so that the session and the
# user share a logical shard (of 256; Strata makes tokens that way, SessionToken::generate_in).
placed_id() { # SQL expression of i
  echo "encode(set_byte(decode(md5('bench-user-' || $1), 'hex'), 14, get_byte(sha256(sha256(int8send($1))), 0)), 'hex')::uuid"
}

# seed_shard URL K N FROM TO PASSWORD_HASH: users FROM..TO whose logical shard lands on
# physical shard K of N (the first map puts logical l on shard l mod N), a session each.
seed_shard() {
  psql -qAt "$1" -c "
    INSERT INTO users (id, email, name, password_hash, role, status, version, created_at, updated_at, verified, mfa_enabled)
      SELECT $(placed_id i), 'b' || i || '@bench.example', 'Bench ' || i, '$6', 'user', 'active', 1, 0, 0, false, false
      FROM generate_series($4::bigint, $5::bigint) i WHERE get_byte(sha256(sha256(int8send(i))), 0) % $3 = $2;
    INSERT INTO sessions (id, token_hash, user_id, created_at, expires_at, revoked_at)
      SELECT md5('bench-session-' || i)::uuid, sha256(sha256(int8send(i))), $(placed_id i), 0,
             4102444800000000, NULL
      FROM generate_series($4::bigint, $5::bigint) i WHERE get_byte(sha256(sha256(int8send(i))), 0) % $3 = $2;" \
    -c "VACUUM ANALYZE users" -c "VACUUM ANALYZE sessions"
}

# tokens N: SAMPLE random users of 1..N as "id token" lines ($WORK/id_tokens.txt) and
# tokens alone ($WORK/tokens.txt).
tokens() {
  psql_on "${PG_PORTS[0]}" -c "
    SELECT md5('bench-user-' || i)::uuid || ' st_' || rtrim(translate(encode(sha256(int8send(i)), 'base64'), '+/', '-_'), '=')
    FROM (SELECT 1 + floor(random() * $1)::bigint AS i FROM generate_series(1, LEAST($SAMPLE, $1))) s" > "$WORK/id_tokens.txt"
  cut -d' ' -f2 "$WORK/id_tokens.txt" > "$WORK/tokens.txt"
}

# row TABLE LABEL RPS P50 P99 BAD STRATA_US PG_US: appends a row to the table file; its first
# row is the baseline of the ratios.
row() {
  local table=$1 label=$2 rps=$3 p50=$4 p99=$5 bad=$6
  [ -s "$table.base" ] || echo "$rps $p50 $p99" > "$table.base"
  local b_rps b_p50 b_p99
  read -r b_rps b_p50 b_p99 < "$table.base"
  echo "| $label | $rps | $p50 | $p99 | $bad | $(ratio "$rps" "$b_rps") | $(lat_ratio "$p50" "$b_p50") | $(lat_ratio "$p99" "$b_p99") | $7 | $8 |" >> "$table"
}

# table FILE TITLE: starts a table.
table() {
  {
    echo
    echo "$2"
    echo
    echo "| run | req/s | p50 | p99 | non-2xx | req/s ratio | p50 ratio | p99 ratio | Strata CPU µs/req | PostgreSQL CPU µs/req |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  } > "$1"
  rm -f "$1.base"
}

# Runs a load command, measuring the CPU Strata and PostgreSQL spent on it; sets S_US and
# PG_US (per request, given the request count as the command's output's first word).
cpu_per_request() {
  local s_before p_before s_after p_after out requests
  s_before=$(echo "$SERVER_PID" | cpu_of); p_before=$(pg_cpu)
  out=$("$@")
  s_after=$(echo "$SERVER_PID" | cpu_of); p_after=$(pg_cpu)
  requests=$(echo "$out" | awk '{print $1}')
  S_US=$(awk -v a="$s_before" -v b="$s_after" -v n="$requests" 'BEGIN { printf "%.0f", (b - a) * 1e6 / n }')
  PG_US=$(awk -v a="$p_before" -v b="$p_after" -v n="$requests" 'BEGIN { printf "%.0f", (b - a) * 1e6 / n }')
  LOAD_OUT=$(echo "$out" | cut -d' ' -f2-)
}

# Unmeasured load first (PostgreSQL's buffers, connection pools).
warm() {
  DURATION=$WARMUP run_wrk "$@" >/dev/null
}

# Closed model (wrk, CONNECTIONS connections): "requests rps p50 p99 bad".
closed_load() {
  local path=$1 script=$2 arg=$3
  local rps p50 p99 bad
  read -r rps p50 p99 bad <<< "$(run_wrk "$path" "$script" "$arg")"
  echo "$(awk -v r="$rps" -v d="$DURATION" 'BEGIN { printf "%.0f", r * d }') $rps $p50 $p99 $bad"
}

# Open model at RATE req/s (strata bench, latency from the intended send time, as wrk2),
# session check over the users of $WORK/id_tokens.txt: "requests rps p50 p99 errors".
open_load() {
  "$BIN" bench --target "$BASE" --scenario session-check --rate "$1" --duration "${DURATION}s" \
    --users-file "$WORK/id_tokens.txt" --no-metrics -q --json "$WORK/open.json" >/dev/null
  python3 - "$WORK/open.json" <<'PY'
import json, sys
t = json.load(open(sys.argv[1]))["totals"]
us = lambda v: f"{v / 1000:.2f}ms"
print(t["requests"], f"{t['rps']:.0f}", us(t["latency"]["p50_us"]), us(t["latency"]["p99_us"]), t["errors"])
PY
}

# measure TABLE LABEL PATH SCRIPT ARG: a closed-model row.
measure() {
  curl -sf "$BASE/readyz" >/dev/null
  warm "$3" "$4" "$5"
  cpu_per_request closed_load "$3" "$4" "$5"
  # shellcheck disable=SC2086
  row "$1" "$2" $LOAD_OUT "$S_US" "$PG_US"
}

# measure_open TABLE LABEL RATE: an open-model row.
measure_open() {
  curl -sf "$BASE/readyz" >/dev/null
  warm /v1/sessions/current bench/wrk/tokens.lua "$WORK/tokens.txt"
  cpu_per_request open_load "$3"
  # shellcheck disable=SC2086
  row "$1" "$2" $LOAD_OUT "$S_US" "$PG_US"
}

# wrk latencies ("1.23ms", "850.00us") as a ratio of the baseline's.
lat_ratio() {
  awk -v a="$1" -v b="$2" 'function us(x) { if (x ~ /us$/) return x + 0; if (x ~ /ms$/) return x * 1000; if (x ~ /s$/) return x * 1e6; return x }
    BEGIN { if (us(b) > 0) printf "%.2f×", us(a) / us(b); else print "n/a" }'
}

REPORT="$WORK/report.md"
echo "### Read replicas and data size — $(date -u +%Y-%m-%d), \`bench/replicas.sh $MODE\`" > "$REPORT"
echo >> "$REPORT"
[ -n "${AFTER_SEED_SQL:-}" ] && echo "After seeding: \`$AFTER_SEED_SQL\`." >> "$REPORT"
[ "${PREWARM:-0}" = 1 ] && echo "After seeding, users and sessions with their indexes are loaded into shared_buffers (\`pg_prewarm\`)." >> "$REPORT"
echo "Machine: $CORES cores ($CPU), ${MEM} GiB RAM; Strata, PostgreSQL $(basename "$(dirname "$PGBIN")") servers (shared_buffers $SHARED_BUFFERS) and the load generator share it. ${DURATION}s per row after ${WARMUP}s unmeasured. Cache off (\`none://\`)." >> "$REPORT"

say "starting the PostgreSQL primary"
pg_primary "${PG_PORTS[0]}"
start_strata ""
curl -sf "$BASE/v1/users" -H 'content-type: application/json' \
  -d "{\"email\":\"template@bench.example\",\"name\":\"Template\",\"password\":\"$PASSWORD\"}" >/dev/null

case $MODE in
  replicas)
    say "seeding $USERS users with sessions"
    seed 1 "$USERS"
    tokens "$USERS"
    say "starting two streaming replicas"
    pg_replica "${PG_PORTS[0]}" "${PG_PORTS[1]}"
    pg_replica "${PG_PORTS[0]}" "${PG_PORTS[2]}"
    sleep 2
    REPLICAS="$(pg_url "${PG_PORTS[1]}"),$(pg_url "${PG_PORTS[2]}")"
    table "$WORK/t1" "Session check (\`GET /v1/sessions/current\`), $USERS users, closed model:"
    table "$WORK/t2" "Get user (\`GET /v1/users/{id}\` as that user: a session check and a user read), $USERS users, closed model:"
    for setup in "primary only" "primary + 2 replicas"; do
      stop_strata
      if [ "$setup" = "primary only" ]; then start_strata ""; else start_strata "$REPLICAS"; fi
      say "$setup: session check"
      measure "$WORK/t1" "$setup" /v1/sessions/current bench/wrk/tokens.lua "$WORK/tokens.txt"
      say "$setup: get user"
      measure "$WORK/t2" "$setup" /v1/users bench/wrk/get_user.lua "$WORK/id_tokens.txt"
    done
    cat "$WORK/t1" "$WORK/t2" >> "$REPORT"
    curl -sf "$BASE/metrics" | grep -E '^strata_db_(replica_reads_total|reads_routed_to_primary_total|replica_lag_seconds)' > "$WORK/routing.txt" || true
    {
      echo
      echo "Routing counters after the replica runs:"
      echo
      echo '```'
      cat "$WORK/routing.txt"
      echo '```'
    } >> "$REPORT"
    ;;
  size)
    done_users=0
    table "$WORK/t1" "Session check (\`GET /v1/sessions/current\`) by table size, random sessions of the whole table, closed model (wrk -c$CONNECTIONS):"
    table "$WORK/t2" "The same at a fixed offered load, open model (\`strata bench --rate $RATE\`, latency from the intended send):"
    for size in $SIZES; do
      say "seeding users $((done_users + 1))..$size"
      seed $((done_users + 1)) "$size"
      done_users=$size
      tokens "$size"
      stop_strata
      start_strata ""
      label="$size users ($(psql_on "${PG_PORTS[0]}" -c "SELECT pg_size_pretty(pg_database_size('postgres'))"))"
      say "$size users: session check, closed then open model"
      measure "$WORK/t1" "$label" /v1/sessions/current bench/wrk/tokens.lua "$WORK/tokens.txt"
      measure_open "$WORK/t2" "$label" "$RATE"
    done
    cat "$WORK/t1" "$WORK/t2" >> "$REPORT"
    ;;
  shards)
    say "seeding $USERS users with sessions on the primary"
    seed 1 "$USERS"
    tokens "$USERS"
    table "$WORK/t1" "Session check (\`GET /v1/sessions/current\`), $USERS users, closed model:"
    table "$WORK/t2" "Get user (\`GET /v1/users/{id}\` as that user: a session check and a user read), $USERS users, closed model:"
    say "primary only: session check, get user"
    measure "$WORK/t1" "primary only" /v1/sessions/current bench/wrk/tokens.lua "$WORK/tokens.txt"
    measure "$WORK/t2" "primary only" /v1/users bench/wrk/get_user.lua "$WORK/id_tokens.txt"
    hash=$(psql_on "${PG_PORTS[0]}" -c "SELECT password_hash FROM users WHERE email = 'template@bench.example'")
    stop_strata
    say "a second PostgreSQL server; a catalog and 4 shard databases over the two"
    pg_primary "${PG_PORTS[1]}"
    db_url() { echo "postgres://postgres@127.0.0.1:$1/$2"; }
    psql_on "${PG_PORTS[0]}" -c "CREATE DATABASE catalog" -c "CREATE DATABASE shard0" -c "CREATE DATABASE shard2"
    psql_on "${PG_PORTS[1]}" -c "CREATE DATABASE shard1" -c "CREATE DATABASE shard3"
    SHARD_URLS=()
    for k in 0 1 2 3; do SHARD_URLS+=("$(db_url "${PG_PORTS[$((k % 2))]}" "shard$k")"); done
    CATALOG=$(db_url "${PG_PORTS[0]}" catalog)
    SHARDS=$(IFS=,; echo "${SHARD_URLS[*]}")
    start_strata "" "$CATALOG" "$SHARDS"   # migrates the five databases, writes the shard map
    stop_strata
    for k in 0 1 2 3; do seed_shard "${SHARD_URLS[$k]}" "$k" 4 1 "$USERS" "$hash"; done
    psql -qAt "$CATALOG" -c "INSERT INTO email_claims (email, user_id, state, at)
      SELECT 'b' || i || '@bench.example', $(placed_id i), 'active', 0 FROM generate_series(1, $USERS::bigint) i"
    psql -qAt "$CATALOG" -c "
      SELECT $(placed_id i) || ' st_' || rtrim(translate(encode(sha256(int8send(i)), 'base64'), '+/', '-_'), '=')
      FROM (SELECT 1 + floor(random() * $USERS)::bigint AS i FROM generate_series(1, LEAST($SAMPLE, $USERS))) s" > "$WORK/id_tokens.txt"
    cut -d' ' -f2 "$WORK/id_tokens.txt" > "$WORK/tokens.txt"
    start_strata "" "$CATALOG" "$SHARDS"
    say "4 shards over 2 servers: session check, get user"
    measure "$WORK/t1" "4 shards over 2 servers" /v1/sessions/current bench/wrk/tokens.lua "$WORK/tokens.txt"
    measure "$WORK/t2" "4 shards over 2 servers" /v1/users bench/wrk/get_user.lua "$WORK/id_tokens.txt"
    cat "$WORK/t1" "$WORK/t2" >> "$REPORT"
    {
      echo
      echo '`strata shards status`:'
      echo
      echo '```'
      STRATA_DATABASE_URL="$CATALOG" STRATA_DATABASE_SHARDS="$SHARDS" STRATA_LOG_LEVEL=warn "$BIN" shards status
      echo '```'
    } >> "$REPORT"
    ;;
  *) echo "usage: bench/replicas.sh [replicas|size|shards]" >&2; exit 2 ;;
esac

cat "$REPORT"
