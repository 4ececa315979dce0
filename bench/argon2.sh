#!/usr/bin/env bash
# argon2 implementations side by side (issue 8): RFC 9106 vectors, cross-verification of PHC
# strings with today's argon2 0.5, and verifies/s at Strata's parameters (one thread and one
# per core). The crate is outside the workspace so the workspace never builds three argon2s.
# Prints a markdown report on stdout; exits non-zero if any correctness check fails.
#
#   bench/argon2.sh
#   ROUNDS=9 COUNT=30 CROSS=100 bench/argon2.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# The repository's target/ unless the caller chose one.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
echo "[bench] building release (bench/argon2)" >&2
cargo build --release -q --locked --manifest-path bench/argon2/Cargo.toml
echo "[bench] $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')," \
  "$(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM;" \
  "flags: $(grep -o 'avx512[a-z_0-9]*\|avx2\|sha_ni' /proc/cpuinfo | sort -u | tr '\n' ' ')" >&2
exec "$CARGO_TARGET_DIR/release/strata-argon2-bench"
