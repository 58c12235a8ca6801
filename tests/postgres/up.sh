#!/usr/bin/env bash
# Starts a throwaway PostgreSQL for the tests: initdb into a temporary directory, listening on 127.0.0.1 at a
# free port (and a socket in the same directory). Prints the database URL as its last line.
# Idempotent: if the server in the state dir is running, it just prints the URL again.
set -euo pipefail

state_dir="${ORGKEEPER_PG_DIR:-${TMPDIR:-/tmp}/orgkeeper-pg}"

log() { echo "postgres: $*" >&2; }

find_bin() {
  local name=$1
  if command -v "$name" >/dev/null 2>&1; then command -v "$name"; return; fi
  local candidate
  candidate=$(ls -d /usr/lib/postgresql/*/bin/"$name" 2>/dev/null | sort -V | tail -n 1 || true)
  [[ -n "$candidate" ]] || { log "$name not found: install PostgreSQL (apt-get install -y postgresql)"; exit 1; }
  echo "$candidate"
}

# initdb and postgres refuse to run as root, so as root we run them as the postgres user.
as_owner() {
  if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

url() { echo "postgres://orgkeeper:orgkeeper@127.0.0.1:$(cat "$state_dir/port")/orgkeeper"; }

pg_ctl=$(find_bin pg_ctl)
initdb=$(find_bin initdb)

if [[ -f "$state_dir/port" ]] && as_owner "$pg_ctl" -D "$state_dir/data" status >/dev/null 2>&1; then
  url
  exit 0
fi

rm -rf "$state_dir"
mkdir -p "$state_dir"
[[ $(id -u) -eq 0 ]] && chown postgres "$state_dir"
port=$(free_port)
echo "$port" >"$state_dir/port"
printf 'orgkeeper\n' >"$state_dir/pwfile"
[[ $(id -u) -eq 0 ]] && chown postgres "$state_dir/pwfile"
log "initdb in $state_dir/data"
as_owner "$initdb" -D "$state_dir/data" -U orgkeeper --pwfile="$state_dir/pwfile" -A scram-sha-256 --no-sync >"$state_dir/initdb.log" 2>&1 \
  || { cat "$state_dir/initdb.log" >&2; exit 1; }
# fsync off: a test database that dies with the machine loses nothing of value, and tests run faster.
as_owner "$pg_ctl" -D "$state_dir/data" -l "$state_dir/server.log" -w -t 60 start \
  -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$state_dir -c fsync=off -c max_connections=200" >&2 \
  || { tail -n 30 "$state_dir/server.log" >&2; exit 1; }
PGPASSWORD=orgkeeper "$(find_bin createdb)" -h 127.0.0.1 -p "$port" -U orgkeeper orgkeeper
log "running on 127.0.0.1:$port"
url
