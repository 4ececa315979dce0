#!/usr/bin/env bash
# Kafka for the event bus tests: tansu, a Kafka-protocol broker in Rust (no JVM, one binary),
# on 127.0.0.1:${STRATA_KAFKA_PORT:-9092}, its data in a fresh temporary directory.
#
# tansu is built from crates.io once per machine into a cache that outlives CI runs
# (${STRATA_TOOLS_DIR:-$HOME/.cache/strata-tools}/tansu): about 10 minutes on two cores, which
# CI must not pay on every run. Plain `cargo install tansu` compiles no storage engine, hence
# the features; `--locked` keeps the build to the versions tansu was released with.
# It listens on IPv4 only, so the advertised address is 127.0.0.1, not localhost.
set -euo pipefail

tansu_version=0.6.0
port=${STRATA_KAFKA_PORT:-9092}
root=${STRATA_TOOLS_DIR:-$HOME/.cache/strata-tools}/tansu
bin=$root/bin/tansu

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if [ ! -x "$bin" ] || ! "$bin" --version 2>/dev/null | grep -q "$tansu_version"; then
  echo "kafka: building tansu $tansu_version into $root (once per machine)"
  mkdir -p "$root"
  cargo install --locked --quiet tansu --version "$tansu_version" --features dynostore,libsql --root "$root" \
    || { echo "FATAL: cannot build tansu $tansu_version" >&2; exit 1; }
fi

listener=tcp://127.0.0.1:$port

# A tansu left running by an earlier run keeps every topic that run made, and the event-bus
# tests then wait on metadata for all of them (an hour-old one made them time out). So a
# tansu of ours is restarted empty; anything else on the port (a real Kafka) is used as is.
stale=$(pgrep -f "^$bin broker --listener-url $listener " || true)
if [ -n "$stale" ]; then
  echo "kafka: restarting the tansu left by an earlier run (pid $stale) with no topics"
  for pid in $stale; do
    old=$(readlink "/proc/$pid/cwd" || true)
    kill "$pid" 2>/dev/null || true
    case "$old" in "${TMPDIR:-/tmp}"/strata-kafka.*) rm -rf "$old" ;; esac
  done
  for _ in $(seq 1 50); do port_open "$port" || break; sleep 0.2; done
fi

if port_open "$port"; then echo "kafka: up on 127.0.0.1:$port"; exit 0; fi

echo "kafka: down, starting tansu"
data=$(mktemp -d "${TMPDIR:-/tmp}/strata-kafka.XXXXXX")
# SQLite storage (its path is relative to the working directory): the broker keeps its topics
# and committed offsets in $data, not in memory.
(cd "$data" && exec setsid "$bin" broker --listener-url "$listener" --advertised-listener-url "$listener" \
  --storage-engine sqlite://tansu.db </dev/null >"$data/tansu.log" 2>&1 &)
for _ in $(seq 1 60); do
  if port_open "$port"; then echo "kafka: tansu started on 127.0.0.1:$port (data and log in $data)"; exit 0; fi
  sleep 1
done
echo "FATAL: tansu did not come up on 127.0.0.1:$port; its log:" >&2
tail -n 50 "$data/tansu.log" >&2 || true
exit 1
