#!/usr/bin/env bash
# Import rate from a fastapi-users database (issue 12): a SQLite database with
# fastapi-users-db-sqlalchemy's own `user` table (created by its SQLAlchemy model) holding
# USERS users (default 100,000; one real pwdlib argon2id hash shared by all: the import
# copies hashes, it never computes one), imported with `strata import --from fastapi-users`
# into an empty SQLite and an empty PostgreSQL, then again (everyone already present).
#
#   bench/import.sh
#   USERS=20000 PYTHON=/path/to/venv/bin/python bench/import.sh
#
# PYTHON needs fastapi-users[sqlalchemy] (CI's cached venv has it: $HOME/.cache/strata-tools/py).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh

USERS=${USERS:-100000}
PYTHON=${PYTHON:-${STRATA_TEST_PYTHON:-$HOME/.cache/strata-tools/py/bin/python}}
PG_ADMIN_URL=${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/test}
say() { echo "[import-bench] $*" >&2; }
"$PYTHON" -c 'import fastapi_users_db_sqlalchemy, pwdlib' || { echo "$PYTHON lacks fastapi-users[sqlalchemy]" >&2; exit 1; }

release_bin
machine_facts
WORK=$(mktemp -d)
cleanup() {
  psql -q "$PG_ADMIN_URL" -c "DROP SCHEMA IF EXISTS bench_import CASCADE" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

say "making a fastapi-users database of $USERS users"
"$PYTHON" - "$WORK/source.db" "$USERS" <<'PY'
import sqlite3, sys, uuid
from fastapi_users_db_sqlalchemy import SQLAlchemyBaseUserTableUUID
from pwdlib import PasswordHash
from sqlalchemy import create_engine
from sqlalchemy.orm import DeclarativeBase

class Base(DeclarativeBase):
    pass

class User(SQLAlchemyBaseUserTableUUID, Base):
    pass

path, n = sys.argv[1], int(sys.argv[2])
Base.metadata.create_all(create_engine(f"sqlite:///{path}"))
hashed = PasswordHash.recommended().hash("the same password for everyone")
with sqlite3.connect(path) as conn:
    # The GUID type stores str(uuid) (36 characters) on SQLite, as fastapi-users writes it.
    conn.executemany(
        "INSERT INTO user (id, email, hashed_password, is_active, is_superuser, is_verified) VALUES (?, ?, ?, 1, 0, 1)",
        ((str(uuid.uuid4()), f"user{i}@example.com", hashed) for i in range(n)),
    )
PY

secs() { local s e; s=$(date +%s.%N); "$@" >"$WORK/last.out" 2>"$WORK/last.err" || { cat "$WORK/last.err" "$WORK/last.out" >&2; exit 1; }; e=$(date +%s.%N); awk -v s="$s" -v e="$e" 'BEGIN { printf "%.2f", e - s }'; }
rate() { awk -v n="$USERS" -v t="$1" 'BEGIN { printf "%.0f", n / t }'; }

{
  echo "### Import from fastapi-users — $(date -u +%Y-%m-%d)"
  echo
  echo "Machine: $CORES cores ($CPU), ${MEM} GiB RAM. $USERS users in a fastapi-users SQLite database (its own SQLAlchemy table), one run; release build."
  echo
  echo "| into | first import | users/s | second run (all present) | users/s |"
  echo "|---|---:|---:|---:|---:|"
} > "$WORK/report.md"
psql -q "$PG_ADMIN_URL" -c "DROP SCHEMA IF EXISTS bench_import CASCADE; CREATE SCHEMA bench_import" >/dev/null
for target in sqlite postgres; do
  case $target in
    sqlite) URL="sqlite://$WORK/target.db" ;;
    postgres) URL="$PG_ADMIN_URL?options=-csearch_path%3Dbench_import" ;;
  esac
  STRATA_DATABASE_URL=$URL STRATA_LOG_LEVEL=error "$BIN" migrate >/dev/null
  say "$target: first import"
  FIRST=$(secs env STRATA_DATABASE_URL="$URL" STRATA_LOG_LEVEL=error "$BIN" import --from fastapi-users "sqlite+aiosqlite:///$WORK/source.db")
  tail -n 3 "$WORK/last.out" >&2
  say "$target: second import"
  SECOND=$(secs env STRATA_DATABASE_URL="$URL" STRATA_LOG_LEVEL=error "$BIN" import --from fastapi-users "sqlite+aiosqlite:///$WORK/source.db")
  echo "| $target | ${FIRST} s | $(rate "$FIRST") | ${SECOND} s | $(rate "$SECOND") |" >> "$WORK/report.md"
done
cat "$WORK/report.md"
