#!/usr/bin/env bash
# Runs the official Oso clients, unchanged, against OSO_URL: Python oso-cloud 2.6.0, Python 1.5.1 (the
# legacy v1 endpoints) and Node oso-cloud 2.6.0, one after another (each resets the facts it uses).
#
#   OSO_AUTH=<ReadWrite key> OSO_AUTH_READONLY=<ReadOnly key> tests/clients/run.sh http://127.0.0.1:8081
#
# Both keys belong to the same environment. Keys are read from the environment, never from arguments, so
# they do not show up in process listings. Set ORGKEEPER_EXPECT_NO_POLICIES=0 when the target evaluates
# policies (it then skips the check that /api/authorize answers 404, saying policies are not evaluated).
# Installs the clients on first use (tests/clients/setup.sh, cached under ~/.cache/orgkeeper/clients).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
url="${1:-${OSO_URL:-}}"
[[ -n "$url" ]] || { echo "usage: OSO_AUTH=... OSO_AUTH_READONLY=... $0 OSO_URL" >&2; exit 2; }
[[ -n "${OSO_AUTH:-}" ]] || { echo "OSO_AUTH (a ReadWrite key) is not set" >&2; exit 2; }
[[ -n "${OSO_AUTH_READONLY:-}" ]] || { echo "OSO_AUTH_READONLY (a ReadOnly key) is not set" >&2; exit 2; }
export OSO_URL="$url" OSO_AUTH OSO_AUTH_READONLY

dir="$("$here/setup.sh")"

echo "== python oso-cloud 2.6.0 -> $url"
"$dir/py-2.6.0/bin/python" "$here/python/check_v2.py"
echo "== python oso-cloud 1.5.1 (v1 endpoints) -> $url"
"$dir/py-1.5.1/bin/python" "$here/python/check_v1.py"
echo "== node oso-cloud 2.6.0 -> $url"
NODE_PATH="$dir/node-2.6.0/node_modules" node "$here/node/check.js"
echo "== all official clients passed against $url"
