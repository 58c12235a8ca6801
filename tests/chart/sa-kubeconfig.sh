#!/usr/bin/env bash
# Writes a kubeconfig that authenticates as a ServiceAccount with a short-lived token (TokenRequest API), so a
# program outside the cluster runs with exactly that ServiceAccount's RBAC rights. The context's namespace is
# the ServiceAccount's, which is where the controller keeps its leader-election Lease.
#
# Usage: sa-kubeconfig.sh NAMESPACE SERVICEACCOUNT OUTPUT [DURATION]   (default duration 1h)
# Reads the API server address and CA from the current kubeconfig ($KUBECONFIG); kubectl from $KUBECTL or PATH.
set -euo pipefail

[[ $# -ge 3 ]] || { echo "usage: $0 NAMESPACE SERVICEACCOUNT OUTPUT [DURATION]" >&2; exit 2; }
NS="$1" SA="$2" OUT="$3" DURATION="${4:-1h}"
KUBECTL="${KUBECTL:-kubectl}"

server="$("$KUBECTL" config view --raw --minify -o jsonpath='{.clusters[0].cluster.server}')"
ca_data="$("$KUBECTL" config view --raw --minify -o jsonpath='{.clusters[0].cluster.certificate-authority-data}')"
token="$("$KUBECTL" create token "$SA" -n "$NS" --duration "$DURATION")"

umask 077
ca_file="$(mktemp)"
trap 'rm -f "$ca_file"' EXIT
printf '%s' "$ca_data" | base64 -d > "$ca_file"
rm -f "$OUT"
kc() { "$KUBECTL" config --kubeconfig "$OUT" "$@" >/dev/null; }
kc set-cluster cluster --server "$server" --certificate-authority "$ca_file" --embed-certs
kc set-credentials "$SA" --token "$token"
kc set-context "$SA" --cluster cluster --user "$SA" --namespace "$NS"
kc use-context "$SA"
chmod 600 "$OUT"
echo "$OUT"
