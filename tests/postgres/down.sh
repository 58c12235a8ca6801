#!/usr/bin/env bash
# Stops the throwaway PostgreSQL started by up.sh and removes its data.
set -euo pipefail
state_dir="${ORGKEEPER_PG_DIR:-${TMPDIR:-/tmp}/orgkeeper-pg}"
[[ -d "$state_dir/data" ]] || exit 0
pg_ctl=$(command -v pg_ctl || ls -d /usr/lib/postgresql/*/bin/pg_ctl 2>/dev/null | sort -V | tail -n 1)
if [[ $(id -u) -eq 0 ]]; then
  runuser -u postgres -- "$pg_ctl" -D "$state_dir/data" -m fast stop >/dev/null 2>&1 || true
else
  "$pg_ctl" -D "$state_dir/data" -m fast stop >/dev/null 2>&1 || true
fi
rm -rf "$state_dir"
