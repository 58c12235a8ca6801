#!/usr/bin/env bash
# End-to-end checks that the test cluster behaves like a real control plane in
# the ways orgkeeper relies on: CEL validation of CRDs, owner-reference
# garbage collection, namespace deletion, ServiceAccount tokens and RBAC.
#
# Usage: smoke.sh [KUBECONFIG]   (default: $KUBECONFIG)
# Exits non-zero if any check fails; the last line is "N passed, N failed".
# Safe to run repeatedly against the same cluster: it cleans up after itself.
set -euo pipefail

# shellcheck source=tests/cluster/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

KUBECONFIG_ARG="${1:-${KUBECONFIG:-}}"
[[ -n "$KUBECONFIG_ARG" && -f "$KUBECONFIG_ARG" ]] \
  || die "usage: smoke.sh KUBECONFIG (or set KUBECONFIG); got '${KUBECONFIG_ARG}'"
export KUBECONFIG="$KUBECONFIG_ARG"

# Prefer the pinned kubectl from the venv; fall back to one on PATH.
KUBECTL="$(kubectl_bin)"
[[ -x "$KUBECTL" ]] || KUBECTL="$(command -v kubectl)" || die "kubectl not found"

# Unique names so a rerun never trips over leftovers of an interrupted run.
SUFFIX="$(date +%s)-$$"
CRD_GROUP="smoke.orgkeeper.test"
CEL_MESSAGE="minReplicas must not exceed maxReplicas"
PASSED=0
FAILED=0
TMP_DIR="$(mktemp -d)"

k() { "$KUBECTL" --request-timeout=20s "$@"; }

cleanup() {
  k delete crd "widgets.$CRD_GROUP" --ignore-not-found --wait=false >/dev/null 2>&1 || true
  k delete configmap -n default "smoke-owner-$SUFFIX" "smoke-dependent-$SUFFIX" \
    --ignore-not-found --wait=false >/dev/null 2>&1 || true
  k delete namespace "smoke-ns-$SUFFIX" --ignore-not-found --wait=false >/dev/null 2>&1 || true
  k delete serviceaccount -n default "smoke-sa-$SUFFIX" --ignore-not-found >/dev/null 2>&1 || true
  rm -rf "$TMP_DIR"
}
trap cleanup EXIT

# run_check NAME FUNCTION: runs one check in a subshell so a failing command
# inside it (set -e) fails that check only. The subshell runs as a background job
# because bash ignores set -e inside an `if` condition or an ||/&& list.
run_check() {
  local name="$1" fn="$2" rc=0
  printf '=== %s\n' "$name"
  ("$fn") &
  wait "$!" || rc=$?
  if ((rc == 0)); then
    printf -- '--- PASS: %s\n' "$name"
    PASSED=$((PASSED + 1))
  else
    printf -- '--- FAIL: %s\n' "$name"
    FAILED=$((FAILED + 1))
  fi
}

# eventually SECONDS COMMAND...: retries COMMAND once a second until it
# succeeds or SECONDS pass.
eventually() {
  local limit="$1" end
  shift
  end=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < end)) || return 1
    sleep 1
  done
}

# gone ARGS...: true once `kubectl get ARGS` says NotFound (not on other errors).
gone() {
  local out
  if out="$(k get "$@" 2>&1)"; then return 1; fi
  [[ "$out" == *NotFound* ]]
}

check_namespaces() {
  k get namespaces
  k get namespace default kube-system >/dev/null
}

check_crd_cel() {
  k apply -f - <<EOF
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.$CRD_GROUP
spec:
  group: $CRD_GROUP
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              x-kubernetes-validations:
                - rule: "self.minReplicas <= self.maxReplicas"
                  message: "$CEL_MESSAGE"
              properties:
                minReplicas: {type: integer}
                maxReplicas: {type: integer}
EOF
  k wait --for condition=Established --timeout=30s "crd/widgets.$CRD_GROUP"
  widget() {
    printf 'apiVersion: %s/v1\nkind: Widget\nmetadata: {name: %s, namespace: default}\nspec: {minReplicas: %s, maxReplicas: %s}\n' \
      "$CRD_GROUP" "$1" "$2" "$3"
  }
  # Discovery of a new CRD can lag a moment behind Established.
  widget "valid-$SUFFIX" 1 3 > "$TMP_DIR/valid.yaml"
  eventually 30 k create --dry-run=server -f "$TMP_DIR/valid.yaml"
  widget "invalid-$SUFFIX" 5 1 > "$TMP_DIR/invalid.yaml"
  local out
  if out="$(k create --dry-run=server -f "$TMP_DIR/invalid.yaml" 2>&1)"; then
    echo "invalid Widget was accepted: $out"
    return 1
  fi
  echo "server rejected the invalid Widget: $out"
  [[ "$out" == *"$CEL_MESSAGE"* ]]
}

check_garbage_collection() {
  local owner="smoke-owner-$SUFFIX" dependent="smoke-dependent-$SUFFIX" uid
  k create configmap -n default "$owner" --from-literal=role=owner
  uid="$(k get configmap -n default "$owner" -o jsonpath='{.metadata.uid}')"
  k apply -f - <<EOF
apiVersion: v1
kind: ConfigMap
metadata:
  name: $dependent
  namespace: default
  ownerReferences:
    - {apiVersion: v1, kind: ConfigMap, name: $owner, uid: $uid}
data: {role: dependent}
EOF
  k delete configmap -n default "$owner"
  local start=$SECONDS
  if eventually 30 gone configmap -n default "$dependent"; then
    echo "garbage collector deleted the dependent $((SECONDS - start)) s after its owner"
  else
    echo "dependent ConfigMap still exists 30 s after its owner was deleted"
    return 1
  fi
}

check_namespace_deletion() {
  local ns="smoke-ns-$SUFFIX" start
  k create namespace "$ns"
  k create secret generic -n "$ns" smoke-secret --from-literal=k=v
  k delete namespace "$ns" --wait=false
  start=$SECONDS
  if eventually 60 gone namespace "$ns"; then
    echo "namespace with a Secret was deleted in $((SECONDS - start)) s"
  else
    echo "namespace $ns still exists after 60 s:"
    k get namespace "$ns" -o yaml || true
    return 1
  fi
}

check_serviceaccount_token() {
  local sa="smoke-sa-$SUFFIX" token who can
  k create serviceaccount "$sa" -n default
  token="$(k create token "$sa" -n default --duration=10m)"
  [[ "$token" =~ ^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$ ]] || { echo "not a JWT: $token"; return 1; }
  echo "TokenRequest returned a ${#token}-character JWT"

  # The token must authenticate on its own (no client certificate).
  local server
  server="$(k config view --raw --minify -o jsonpath='{.clusters[0].cluster.server}')"
  k config view --raw --minify -o jsonpath='{.clusters[0].cluster.certificate-authority-data}' \
    | base64 -d > "$TMP_DIR/ca.crt"
  who="$(KUBECONFIG=/dev/null k --server "$server" --certificate-authority "$TMP_DIR/ca.crt" \
    --token "$token" auth whoami -o jsonpath='{.status.userInfo.username}')"
  echo "token authenticates as $who"
  [[ "$who" == "system:serviceaccount:default:$sa" ]]

  # A fresh ServiceAccount has no RBAC grants: least privilege is enforced.
  can="$(k auth can-i list secrets -n default --as "system:serviceaccount:default:$sa" || true)"
  echo "can-i list secrets as the ServiceAccount: $can"
  [[ "$can" == "no" ]]
}

main() {
  run_check "kubectl get namespaces" check_namespaces
  run_check "CRD with CEL rule rejects an invalid object" check_crd_cel
  run_check "garbage collector deletes owned ConfigMap" check_garbage_collection
  run_check "namespace with a Secret is deleted" check_namespace_deletion
  run_check "ServiceAccount token and RBAC" check_serviceaccount_token
  printf '%s passed, %s failed\n' "$PASSED" "$FAILED"
  ((FAILED == 0))
}

main "$@"
