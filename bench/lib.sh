# Shared by the wrk-based bench scripts (source it; needs THREADS, CONNECTIONS, DURATION, BASE).

# run_wrk PATH [SCRIPT ARG] → "rps p50 p99 non2xx"
run_wrk() {
  local path=$1 script=${2:-} arg=${3:-} out
  if [ -n "$script" ]; then
    out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency -s "$script" "$BASE$path" -- "$arg")
  else
    out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency "$BASE$path")
  fi
  local rps p50 p99 bad
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p50=$(echo "$out" | awk '$1 == "50%" {print $2}')
  p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
  bad=$(echo "$out" | awk '/Non-2xx/ {print $5}')
  echo "$rps $p50 $p99 ${bad:-0}"
}

# ratio A B → "A/B as a percentage"
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.0f%%", 100 * a / b; else print "n/a" }'; }

# Sets CORES, CPU and MEM (GiB) for the report header.
machine_facts() {
  CORES=$(nproc)
  CPU=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
  MEM=$(free -g | awk '/Mem:/ {print $2}')
}

# database_url BACKEND SCHEMA → sets URL; for postgres creates SCHEMA in PG_ADMIN_URL and sets
# PG_SCHEMA so drop_schema (call it from the EXIT trap too) removes it.
database_url() {
  case $1 in
    sqlite) URL="sqlite://$WORK/bench.db" ;;
    postgres)
      PG_SCHEMA=$2
      psql -q "$PG_ADMIN_URL" -c "CREATE SCHEMA $PG_SCHEMA" >/dev/null
      URL="$PG_ADMIN_URL?options=-csearch_path%3D$PG_SCHEMA" ;;
    *) echo "unknown backend $1" >&2; exit 1 ;;
  esac
}

drop_schema() {
  if [ -n "${PG_SCHEMA:-}" ]; then
    psql -q "$PG_ADMIN_URL" -c "DROP SCHEMA IF EXISTS $PG_SCHEMA CASCADE" >/dev/null 2>&1 || true
    PG_SCHEMA=""
  fi
}

# Waits for the server on BASE to be ready; shows its stderr and fails if it never is.
wait_ready() {
  for _ in $(seq 1 100); do curl -sf "$BASE/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
  curl -sf "$BASE/readyz" >/dev/null || { cat "$WORK/server.err" >&2; exit 1; }
}

# seed_users PREFIX: registers and logs in USERS users (email PREFIX<n>@bench.example,
# password PASSWORD) through the API; writes $WORK/emails.txt, and tokens.txt and ids.txt
# (line n of those two belongs to the same user).
seed_users() {
  seq 1 "$USERS" | sed "s/.*/$1&@bench.example/" > "$WORK/emails.txt"
  xargs -P "$CORES" -I{} curl -sf -o /dev/null "$BASE/v1/users" -H 'content-type: application/json' \
    -d "{\"email\":\"{}\",\"name\":\"Bench\",\"password\":\"$PASSWORD\"}" < "$WORK/emails.txt"
  # Token and id are read from the same responses in the same order, so the files line up
  # whatever order the parallel logins finish in.
  xargs -P "$CORES" -I{} curl -sf "$BASE/v1/sessions" -H 'content-type: application/json' \
    -d "{\"email\":\"{}\",\"password\":\"$PASSWORD\"}" < "$WORK/emails.txt" > "$WORK/logins.json"
  grep -o '"token":"[^"]*"' "$WORK/logins.json" | cut -d'"' -f4 > "$WORK/tokens.txt"
  grep -o '"user":{"id":"[^"]*"' "$WORK/logins.json" | cut -d'"' -f6 > "$WORK/ids.txt"
  [ "$(wc -l < "$WORK/tokens.txt")" -eq "$USERS" ] || { echo "seeding failed" >&2; exit 1; }
}

# Sets BIN: STRATA_BIN when given (to measure another build), else a fresh release build of
# this checkout.
release_bin() {
  if [ -z "${STRATA_BIN:-}" ]; then
    echo "building release" >&2
    cargo build --release -q -p strata --bin strata
  fi
  BIN=${STRATA_BIN:-target/release/strata}
}
