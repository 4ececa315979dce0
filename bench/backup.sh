#!/usr/bin/env bash
# Backup and restore benchmark (issue 12): a backup of USERS users (default 1,000,000) is
# generated once (no argon2: the hashes are fixed PHC strings; the rows are what counts),
# then, per backend: `strata restore` into an empty database and `strata backup` out of it,
# timed. The baseline, in the same run, is a plain `COPY … FROM` of the same rows (CSV,
# through psql) into a table shaped like `users` (same indexes) in the same PostgreSQL.
#
#   bench/backup.sh
#   USERS=100000 BACKENDS="sqlite postgres" bench/backup.sh
#
# Needs python3, psql; mariadb for the mysql row. PostgreSQL at PG_ADMIN_URL (default the
# test database), MariaDB at MYSQL_URL. Uses fresh schemas/databases it drops at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh

USERS=${USERS:-1000000}
BACKENDS=${BACKENDS:-sqlite postgres mysql}
PG_ADMIN_URL=${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/test}
MYSQL_ADMIN=${MYSQL_ADMIN:-mariadb -h 127.0.0.1 -u root}
say() { echo "[backup-bench] $*" >&2; }

release_bin
machine_facts
WORK=$(mktemp -d)
MYDB=strata_bench_backup_$$
cleanup() {
  psql -q "$PG_ADMIN_URL" -c "DROP SCHEMA IF EXISTS bench_restore CASCADE; DROP TABLE IF EXISTS bench_copy_users" >/dev/null 2>&1 || true
  $MYSQL_ADMIN -e "DROP DATABASE IF EXISTS $MYDB" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# A backup directory as `strata backup` writes it (docs/backup-format.md), made by a tiny
# generator: the manifest comes from an empty database's backup, with the users table
# replaced. The same rows are also written as CSV for the COPY baseline.
say "generating $USERS users"
STRATA_DATABASE_URL="sqlite://$WORK/empty.db" STRATA_LOG_LEVEL=error "$BIN" backup --out "$WORK/empty" >/dev/null 2>&1
python3 - "$WORK" "$USERS" <<'PY'
import gzip, hashlib, json, os, sys, uuid
work, n = sys.argv[1], int(sys.argv[2])
os.makedirs(f"{work}/backup")
manifest = json.load(open(f"{work}/empty/manifest.json"))
t0 = 1767225600000000
content = hashlib.sha256()
with gzip.open(f"{work}/backup/users.jsonl.gz", "wb", compresslevel=1) as out, open(f"{work}/users.csv", "w") as csv:
    buf, cbuf = [], []
    for i in range(n):
        uid = str(uuid.UUID(int=(0x0193 << 112) | i))
        h = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$" + hashlib.sha256(str(i).encode()).hexdigest()[:43]
        line = json.dumps([uid, f"user{i}@example.com", f"User {i}", h, "user", "active", 1, t0 + i, t0 + i], separators=(",", ":")) + "\n"
        buf.append(line)
        cbuf.append(f"{uid},user{i}@example.com,User {i},\"{h}\",user,active,1,{t0 + i},{t0 + i}\n")
        if len(buf) == 10000:
            data = "".join(buf).encode(); content.update(data); out.write(data); csv.write("".join(cbuf)); buf, cbuf = [], []
    data = "".join(buf).encode(); content.update(data); out.write(data); csv.write("".join(cbuf))
for t in manifest["tables"]:
    src = f"{work}/empty/{t['file']}"
    if t["name"] == "users":
        t["rows"], t["sha256"] = n, content.hexdigest()
    else:
        os.replace(src, f"{work}/backup/{t['file']}")
    t["file_sha256"] = hashlib.sha256(open(f"{work}/backup/{t['file']}", "rb").read()).hexdigest()
json.dump(manifest, open(f"{work}/backup/manifest.json", "w"), indent=2)
PY
SIZE=$(du -sh "$WORK/backup" | cut -f1)

secs() { local s e; s=$(date +%s.%N); "$@" >"$WORK/last.out" 2>"$WORK/last.err" || { cat "$WORK/last.err" >&2; exit 1; }; e=$(date +%s.%N); awk -v s="$s" -v e="$e" 'BEGIN { printf "%.2f", e - s }'; }
rate() { awk -v n="$USERS" -v t="$1" 'BEGIN { printf "%.0f", n / t }'; }

say "baseline: COPY of the same rows into PostgreSQL"
psql -q "$PG_ADMIN_URL" -c "DROP SCHEMA IF EXISTS bench_restore CASCADE; CREATE SCHEMA bench_restore" >/dev/null
PG_URL="$PG_ADMIN_URL?options=-csearch_path%3Dbench_restore"
STRATA_DATABASE_URL=$PG_URL STRATA_LOG_LEVEL=error "$BIN" migrate >/dev/null
psql -q "$PG_ADMIN_URL" -c "DROP TABLE IF EXISTS bench_copy_users; CREATE TABLE bench_copy_users (LIKE bench_restore.users INCLUDING ALL)" >/dev/null
COPY_S=$(secs psql -q "$PG_ADMIN_URL" -c "\\copy bench_copy_users FROM '$WORK/users.csv' CSV")

{
  echo "### Backup and restore — $(date -u +%Y-%m-%d)"
  echo
  echo "Machine: $CORES cores ($CPU), ${MEM} GiB RAM. $USERS users ($SIZE as a backup), one run; release build. Baseline: \`psql \\copy\` of the same rows as CSV into a table shaped like \`users\` (same indexes) in the same PostgreSQL: ${COPY_S} s, $(rate "$COPY_S") rows/s."
  echo
  echo "| backend | restore | rows/s | restore vs COPY | backup | rows/s | backup size |"
  echo "|---|---:|---:|---:|---:|---:|---:|"
} > "$WORK/report.md"

for backend in $BACKENDS; do
  case $backend in
    sqlite) URL="sqlite://$WORK/restore.db" ;;
    postgres) URL=$PG_URL ;;
    mysql)
      $MYSQL_ADMIN -e "DROP DATABASE IF EXISTS $MYDB; CREATE DATABASE $MYDB" || { say "mysql unavailable: skipped"; continue; }
      URL="mysql://root@127.0.0.1:3306/$MYDB" ;;
  esac
  say "$backend: restore"
  R=$(secs env STRATA_DATABASE_URL="$URL" STRATA_LOG_LEVEL=error "$BIN" restore --from "$WORK/backup")
  say "$backend: backup"
  B=$(secs env STRATA_DATABASE_URL="$URL" STRATA_LOG_LEVEL=error "$BIN" backup --out "$WORK/out-$backend")
  grep -q "$USERS rows" "$WORK/last.out" || { echo "backup of $backend did not hold $USERS rows: $(cat "$WORK/last.out")" >&2; exit 1; }
  VS=$([ "$backend" = postgres ] && awk -v c="$COPY_S" -v r="$R" 'BEGIN { printf "%.2f", c / r }' || echo "—")
  echo "| $backend | ${R} s | $(rate "$R") | $VS | ${B} s | $(rate "$B") | $(du -sh "$WORK/out-$backend" | cut -f1) |" >> "$WORK/report.md"
done
cat "$WORK/report.md"
