#!/usr/bin/env bash
# The accuracy suite of `strata bench --analyze` (issue 13): induced bottlenecks, each at
# three severities, several seeded repetitions, in random order; then the confusion matrix.
# The slow network is a rate-limited veth link between namespaces of our own (tbf; this
# kernel lacks netem), never lo.
#
#   bench/bottlenecks/run.sh [--reps N] [--seed S] [--only "db_pool app_lock"] [--severities "1 2 3"] [--out DIR]
#
# Every run: a fresh `strata serve` (a test build with the `fault-injection` feature, which
# release builds lack) pinned to CPU 1, the generator pinned to CPU 0 (taskset), a stepped
# `--find-max` (2 s steps) with `--analyze --watch-pid`; its JSON report and verdict land in
# DIR (default target/bottlenecks). bench/bottlenecks/matrix.py DIR then prints the matrix
# (tuning on severities 1 and 3, reported on severity 2 and the combinations).
#
# Needs root (cgroup v1 or v2 CPU and memory limits, a network namespace with a veth pair
# and tc tbf — never on lo), PostgreSQL on 127.0.0.1:5432, and two CPUs.
set -euo pipefail
cd "$(dirname "$0")/../.."

REPS=2 SEED=13 ONLY="" OUT=target/bottlenecks SEVERITIES="1 2 3"
while [ $# -gt 0 ]; do
  case $1 in
    --reps) REPS=$2; shift 2 ;;
    --seed) SEED=$2; shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    --severities) SEVERITIES=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    *) echo "usage: $0 [--reps N] [--seed S] [--only \"SCENARIO…\"] [--out DIR]" >&2; exit 2 ;;
  esac
done
SCENARIOS=(none db_pool db_server server_cpu server_memory network generator app_lock app_blocking cache
  combo_pool_blocking combo_cpu_cache)
[ -n "$ONLY" ] && read -r -a SCENARIOS <<<"$ONLY"

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
echo "== building the fault-injection test build"
cargo build --release -q -p strata --features fault-injection
cp target/release/strata "$OUT/strata-fault"
BIN=$OUT/strata-fault

PG=postgres://postgres@127.0.0.1:5432
psql -q "$PG/test" -c 'DROP DATABASE IF EXISTS strata_bottlenecks' -c 'CREATE DATABASE strata_bottlenecks' >/dev/null
PG_URL=$PG/strata_bottlenecks
PORT=18090
NS=strata-bt

cgroup_dir() { # CONTROLLER NAME → the directory (v1 hierarchy, else the v2 unified one)
  if [ -d "/sys/fs/cgroup/$1" ]; then echo "/sys/fs/cgroup/$1/$2"; else echo "/sys/fs/cgroup/$2"; fi
}
cpu_limit() { # PID CORES NAME
  local d; d=$(cgroup_dir cpu "$3"); mkdir -p "$d"
  if [ -f "$d/cpu.cfs_quota_us" ]; then
    echo 100000 >"$d/cpu.cfs_period_us"; awk -v c="$2" 'BEGIN { printf "%d\n", c * 100000 }' >"$d/cpu.cfs_quota_us"
  else
    awk -v c="$2" 'BEGIN { printf "%d 100000\n", c * 100000 }' >"$d/cpu.max"
  fi
  echo "$1" >"$d/cgroup.procs"
}
mem_limit() { # PID BYTES NAME
  local d; d=$(cgroup_dir memory "$3"); mkdir -p "$d"
  if [ -f "$d/memory.limit_in_bytes" ]; then echo "$2" >"$d/memory.limit_in_bytes"; else echo "$2" >"$d/memory.max"; fi
  echo "$1" >"$d/cgroup.procs"
}
cleanup_cgroups() {
  for c in cpu memory; do
    for n in strata-bt-srv strata-bt-gen; do
      local d; d=$(cgroup_dir $c $n)
      [ -d "$d" ] || continue
      # Move anything left back to the root before removing the group.
      for p in $(cat "$d/cgroup.procs" 2>/dev/null); do echo "$p" >"$(dirname "$d")/cgroup.procs" 2>/dev/null || true; done
      rmdir "$d" 2>/dev/null || true
    done
  done
}
# This kernel has no sch_netem (and no modules to load): the link is made slow with tbf, a
# token-bucket rate limit, which queues packets as a congested link does.
net_up() { # RATE (tc units, e.g. 4mbit): the server's side of a veth pair in its own namespace
  ip netns add $NS
  ip link add bt-host type veth peer name bt-srv
  ip link set bt-srv netns $NS
  ip addr add 10.203.0.1/24 dev bt-host && ip link set bt-host up
  ip netns exec $NS ip addr add 10.203.0.2/24 dev bt-srv
  ip netns exec $NS ip link set bt-srv up && ip netns exec $NS ip link set lo up
  tc qdisc add dev bt-host root tbf rate "$1" burst 8kb latency 500ms
  ip netns exec $NS tc qdisc add dev bt-srv root tbf rate "$1" burst 8kb latency 500ms
}
net_down() { ip link del bt-host 2>/dev/null || true; ip netns del $NS 2>/dev/null || true; }

SERVER_PID=""
stop_server() {
  if [ -n "$SERVER_PID" ]; then
    kill "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$SERVER_PID" 2>/dev/null || true
  fi
  SERVER_PID=""
}
finish() { stop_server; net_down; cleanup_cgroups; }
trap finish EXIT
finish

# start_server HOST [NETNS]: env comes from the caller (STRATA_*), database per scenario.
start_server() {
  local host=$1 ns=${2:-}
  local db=$WORK/db.sqlite
  rm -f "$db"*
  local wrap=()
  [ -n "$ns" ] && wrap=(ip netns exec "$ns")
  STRATA_DATABASE_URL=${DB_URL:-sqlite://$db} STRATA_LOG=warn \
    "${wrap[@]}" taskset -c 1 "$BIN" serve --listen "$host:$PORT" >"$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/$host/$PORT") 2>/dev/null; then return; fi
    sleep 0.1
  done
  echo "server did not start:" >&2; cat "$WORK/server.log" >&2; exit 1
}

# One run: SCENARIO SEVERITY REP.
run_one() {
  local scenario=$1 sev=$2 rep=$3 i=$(($2 - 1))
  local host=127.0.0.1 ns="" truth=$scenario rate=200 load=(--scenario session-check) gen_cores="" until=""
  local -a env=()
  DB_URL=""
  case $scenario in
    none) until=$(echo 600 1200 2400 | cut -d' ' -f$sev) ;;
    db_pool)
      DB_URL=$PG_URL env+=(STRATA_DATABASE_MAX_CONNECTIONS=$(echo 3 2 1 | cut -d' ' -f$sev))
      load=(--scenario http --path '/v1/sessions/current?include=groups' -H 'authorization: Bearer ${token}') ;;
    db_server)
      DB_URL=$PG_URL env+=(STRATA_FAULT_INJECT=db_delay=$(echo 2ms 4ms 8ms | cut -d' ' -f$sev))
      load=(--scenario http --path '/v1/sessions/current?include=groups' -H 'authorization: Bearer ${token}') rate=100 ;;
    server_cpu) load=(--scenario login) rate=2 ;;
    server_memory) env+=(STRATA_FAULT_INJECT=mem_leak=$(echo 16KiB 32KiB 64KiB | cut -d' ' -f$sev)) ;;
    network) host=10.203.0.2 ns=$NS ;;
    generator) gen_cores=$(echo 0.2 0.1 0.05 | cut -d' ' -f$sev) rate=500 ;;
    app_lock) env+=(STRATA_FAULT_INJECT=app_lock=$(echo 1ms 2ms 4ms | cut -d' ' -f$sev)) rate=50 ;;
    app_blocking) env+=(STRATA_FAULT_INJECT=app_blocking=$(echo 500us 1ms 2ms | cut -d' ' -f$sev)) rate=50 ;;
    # memory:// with room for a few of the 20 users' entries: the cache is there (its lookups
    # are counted) but misses. With none:// there is no cache to count lookups of.
    cache) env+=(STRATA_CACHE_URL=$(echo 'memory://?entries=8' 'memory://?entries=3' 'memory://?entries=1' | cut -d' ' -f$sev)) ;;
    combo_pool_blocking)
      truth=db_pool+app_blocking DB_URL=$PG_URL
      env+=(STRATA_DATABASE_MAX_CONNECTIONS=1 STRATA_FAULT_INJECT=app_blocking=$(echo 200us 300us 500us | cut -d' ' -f$sev))
      load=(--scenario http --path '/v1/sessions/current?include=groups' -H 'authorization: Bearer ${token}') ;;
    combo_cpu_cache) truth=server_cpu+cache env+=('STRATA_CACHE_URL=memory://?entries=1') ;;
    *) echo "unknown scenario $scenario" >&2; exit 2 ;;
  esac
  if [ "$scenario" = network ]; then net_up "$(echo 8mbit 4mbit 2mbit | cut -d' ' -f$sev)"; fi
  (if [ ${#env[@]} -gt 0 ]; then export "${env[@]}"; fi; start_server "$host" "$ns")
  SERVER_PID=$(pgrep -n -f "$BIN serve --listen $host:$PORT")
  case $scenario in
    server_cpu) cpu_limit "$SERVER_PID" "$(echo 0.75 0.5 0.25 | cut -d' ' -f$sev)" strata-bt-srv ;;
    combo_cpu_cache) cpu_limit "$SERVER_PID" "$(echo 0.5 0.35 0.2 | cut -d' ' -f$sev)" strata-bt-srv ;;
    server_memory) mem_limit "$SERVER_PID" $((192 << 20)) strata-bt-srv ;;
  esac
  local name=$scenario-s$sev-r$rep
  local bench=(taskset -c 0 "$BIN" bench --target "http://$host:$PORT" "${load[@]}" --users 20
    --find-max --rate "$rate" --find-max-growth 1.5 --duration 2s --timeout 5s --analyze
    --watch-pid "$SERVER_PID" -q --json "$OUT/$name.json")
  [ -n "$until" ] && bench+=(--find-max-until "$until")
  if [ -n "$gen_cores" ]; then
    local d; d=$(cgroup_dir cpu strata-bt-gen); mkdir -p "$d"
    if [ -f "$d/cpu.cfs_quota_us" ]; then
      echo 100000 >"$d/cpu.cfs_period_us"; awk -v c="$gen_cores" 'BEGIN { printf "%d\n", c * 100000 }' >"$d/cpu.cfs_quota_us"
    else
      awk -v c="$gen_cores" 'BEGIN { printf "%d 100000\n", c * 100000 }' >"$d/cpu.max"
    fi
    bench=(bash -c 'echo $$ >"$0/cgroup.procs"; exec "$@"' "$d" "${bench[@]}")
  fi
  timeout 300 "${bench[@]}" >"$OUT/$name.txt" 2>&1 || true
  stop_server
  net_down
  cleanup_cgroups
  local verdict
  verdict=$(tail -1 "$OUT/$name.txt")
  printf '%s\t%s\t%s\t%s\t%s\n' "$scenario" "$truth" "$sev" "$rep" "$verdict" >>"$OUT/runs.tsv"
  printf '%-22s s%s r%s  truth %-22s %s\n' "$scenario" "$sev" "$rep" "$truth" "$verdict"
}

WORK=$(mktemp -d)
: >"$OUT/runs.tsv"
plan=()
for s in "${SCENARIOS[@]}"; do for sev in $SEVERITIES; do for r in $(seq 1 "$REPS"); do plan+=("$s $sev $r"); done; done; done
echo "== ${#plan[@]} runs in random order (seed $SEED)"
# A seeded shuffle, so a rerun with the same seed runs in the same order.
mapfile -t plan < <(printf '%s\n' "${plan[@]}" | shuf --random-source=<(yes "$SEED"))
for p in "${plan[@]}"; do
  # shellcheck disable=SC2086
  run_one $p
done
rm -rf "$WORK"
echo "== confusion matrix"
python3 bench/bottlenecks/matrix.py "$OUT"
