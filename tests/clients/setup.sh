#!/usr/bin/env bash
# Installs the official Oso clients the harness runs, unchanged, from PyPI and npm:
#   python oso-cloud==2.6.0 and oso-cloud==1.5.1 (one virtualenv each), node oso-cloud@2.6.0.
# Into ORGKEEPER_CLIENTS_DIR (default ~/.cache/orgkeeper/clients); idempotent and safe to run concurrently
# (a second run finds them installed and returns at once). Needs python3 with venv, node and npm.
set -euo pipefail

dir="${ORGKEEPER_CLIENTS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/orgkeeper/clients}"
log() { echo "clients: $*" >&2; }

need() { command -v "$1" >/dev/null 2>&1 || { log "$1 not found: $2"; exit 1; }; }
need python3 "install Python 3 (apt-get install -y python3 python3-venv)"
need node "install Node.js 18 or later (apt-get install -y nodejs npm)"
need npm "install npm (apt-get install -y npm)"

mkdir -p "$dir"
exec 9>"$dir/.lock"
flock 9

python_client() {
  local version=$1 venv="$dir/py-$1"
  if "$venv/bin/python" -c "import oso_cloud.version as v, sys; sys.exit(v.__version__ != '$version')" 2>/dev/null; then
    return
  fi
  log "installing oso-cloud==$version (PyPI) into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv" || { log "python3 -m venv failed: apt-get install -y python3-venv"; exit 1; }
  "$venv/bin/pip" install --disable-pip-version-check -q "oso-cloud==$version" >&2
}

node_client() {
  local version=$1 prefix="$dir/node-$1"
  if [[ "$(node -p "require('$prefix/node_modules/oso-cloud/package.json').version" 2>/dev/null)" == "$version" ]]; then
    return
  fi
  log "installing oso-cloud@$version (npm) into $prefix"
  rm -rf "$prefix"
  mkdir -p "$prefix"
  echo '{"name": "orgkeeper-client-harness", "private": true}' >"$prefix/package.json"
  npm install --prefix "$prefix" --no-audit --no-fund --loglevel=error "oso-cloud@$version" >&2
}

python_client 2.6.0
python_client 1.5.1
node_client 2.6.0
echo "$dir"
