#!/usr/bin/env bash
# The chart against a real API server (tests/cluster/up.sh): helm install and upgrade succeed, the pods the
# Deployments would create pass the "restricted" Pod Security Standard, and `kubectl auth can-i` shows that the
# controller's ServiceAccount has exactly what the controller needs and nothing more, in both RBAC modes
# (all namespaces: a ClusterRole; watched namespaces: a Role in each). Pods never run (there is no kubelet).
#
# Usage: tests/chart/cluster.sh [KUBECONFIG]   (default: $KUBECONFIG, else starts the test cluster)
set -euo pipefail

# shellcheck source=tests/chart/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RELEASE="orgkeeper"
RELEASE_NS="orgkeeper-system"
# The second release, in watched-namespace mode.
NS_RELEASE="orgkeeper-teams"
NS_RELEASE_NS="orgkeeper-teams"
WATCHED_NS="team-a"
OTHER_NS="team-b"

k() { "$KUBECTL" --request-timeout=30s "$@"; }
sa_of() { printf 'system:serviceaccount:%s:%s' "$1" "$2"; }

# use_cluster [KUBECONFIG]: sets KUBECONFIG and KUBECTL, starting the test cluster when none is given.
use_cluster() {
  local given="${1:-${KUBECONFIG:-}}"
  if [[ -z "$given" ]]; then
    given="$("$REPO_ROOT/tests/cluster/up.sh" | tail -n 1)"
  fi
  [[ -f "$given" ]] || die "no kubeconfig at '$given'"
  export KUBECONFIG="$given"
  KUBECTL="${ORGKEEPER_KUBECTL:-$(dirname "$given")/bin/kubectl}"
  [[ -x "$KUBECTL" ]] || KUBECTL="$(command -v kubectl)" || die "kubectl not found"
  export KUBECTL
}

ensure_namespace() {
  local ns
  for ns in "$@"; do
    k get namespace "$ns" >/dev/null 2>&1 || k create namespace "$ns" >/dev/null
  done
}

# install_release RELEASE NAMESPACE [HELM_ARGS...]: namespace, database Secret, helm upgrade --install.
# The database URL is a placeholder: nothing runs in this cluster, and the converge test runs the controller
# outside it with its own store.
install_release() {
  local release="$1" ns="$2"
  shift 2
  ensure_namespace "$ns"
  k -n "$ns" get secret orgkeeper-database >/dev/null 2>&1 \
    || k -n "$ns" create secret generic orgkeeper-database --from-literal=url=sqlite::memory: >/dev/null
  "$HELM" upgrade --install "$release" "$CHART_DIR" --namespace "$ns" --wait=false "$@"
}

check_install() {
  install_release "$RELEASE" "$RELEASE_NS" --set dataPlane.enabled=true --set networkPolicy.enabled=true
  [[ "$("$HELM" status "$RELEASE" -n "$RELEASE_NS")" == *$'\nSTATUS: deployed\n'* ]]
  local crd
  for crd in organizations environments users apikeys; do
    k wait --for condition=Established --timeout=60s "crd/$crd.orgkeeper.dev"
  done
  k -n "$RELEASE_NS" get deployment "$RELEASE-controller" "$RELEASE-data-plane" >/dev/null
  k -n "$RELEASE_NS" get service "$RELEASE-controller-metrics" "$RELEASE-data-plane" >/dev/null
  k -n "$RELEASE_NS" get serviceaccount "$RELEASE" "$RELEASE-data-plane" >/dev/null
  k -n "$RELEASE_NS" get pdb,networkpolicy,role,rolebinding -l "app.kubernetes.io/instance=$RELEASE"
  k get clusterrole,clusterrolebinding -l "app.kubernetes.io/instance=$RELEASE"
  local replicas
  replicas="$(k -n "$RELEASE_NS" get deployment "$RELEASE-controller" -o jsonpath='{.spec.replicas}')"
  [[ "$replicas" == 2 ]] || { echo "controller replicas: $replicas"; return 1; }
}

revision() { "$HELM" status "$RELEASE" -n "$RELEASE_NS" -o json | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["version"])'; }

check_upgrade_is_idempotent() {
  local before after revision_before
  before="$(k get clusterrole "$RELEASE-controller" -o jsonpath='{.metadata.resourceVersion}')"
  revision_before="$(revision)"
  "$HELM" upgrade "$RELEASE" "$CHART_DIR" --namespace "$RELEASE_NS" --reuse-values --wait=false >/dev/null
  [[ "$(revision)" == "$((revision_before + 1))" ]] || { echo "no new revision"; return 1; }
  after="$(k get clusterrole "$RELEASE-controller" -o jsonpath='{.metadata.resourceVersion}')"
  [[ "$before" == "$after" ]] || { echo "the ClusterRole changed on an upgrade with the same values"; return 1; }
  echo "helm upgrade with the same values changed nothing (ClusterRole resourceVersion $after)"
}

check_install_refuses_bad_values() {
  expect_failure "a typo in a value, at install time" "Additional property replica is not allowed" \
    "$HELM" install bad-values "$CHART_DIR" --namespace "$RELEASE_NS" --set controller.replica=3
  if "$HELM" status bad-values -n "$RELEASE_NS" >/dev/null 2>&1; then echo "a release was recorded"; return 1; fi
}

# The CRDs the chart installed refuse what would make Argo CD or Flux prune a key's Secret.
check_tracking_labels_refused() {
  ensure_namespace acme
  expect_failure "an ApiKey whose Secret would carry Argo CD's tracking label" "tracking labels" \
    k create --dry-run=server -f - <<'EOF'
apiVersion: orgkeeper.dev/v1alpha1
kind: ApiKey
metadata: {name: tracked, namespace: acme}
spec:
  organizationRef: {name: acme}
  environment: production
  secret:
    name: tracked
    template:
      labels: {app.kubernetes.io/instance: backend}
EOF
}

# The pods the Deployments would create, and the example application's, are admitted under the "restricted"
# Pod Security Standard (server-side dry run: the API server's PodSecurity admission decides).
check_pod_security_restricted() {
  local tmp
  tmp="$(mktemp -d)"
  k label namespace "$RELEASE_NS" --overwrite pod-security.kubernetes.io/enforce=restricted >/dev/null
  # Prove that enforcement is on: a pod that escalates privileges is refused.
  expect_failure "a privileged pod in a restricted namespace" "violates PodSecurity" \
    k -n "$RELEASE_NS" run psa-probe --image=busybox --dry-run=server --privileged
  local deploy
  for deploy in "$RELEASE-controller" "$RELEASE-data-plane"; do
    k -n "$RELEASE_NS" get deployment "$deploy" -o json | "$PY" -c '
import json, sys
d = json.load(sys.stdin)
t = d["spec"]["template"]
print(json.dumps({"apiVersion": "v1", "kind": "Pod",
                  "metadata": {"generateName": d["metadata"]["name"] + "-", "labels": t["metadata"]["labels"]},
                  "spec": t["spec"]}))' > "$tmp/$deploy.json"
    k -n "$RELEASE_NS" create --dry-run=server -f "$tmp/$deploy.json" >/dev/null
    echo "admitted under restricted: a pod of $deploy"
  done
  k apply -f "$REPO_ROOT/examples/acme/namespace.yaml" >/dev/null
  k label namespace acme --overwrite pod-security.kubernetes.io/enforce=restricted >/dev/null
  k -n acme create --dry-run=server -f "$REPO_ROOT/examples/app/backend.yaml" >/dev/null
  k -n acme get deployment backend >/dev/null 2>&1 && { echo "dry run created the Deployment"; return 1; }
  echo "admitted under restricted: examples/app/backend.yaml"
  rm -rf "$tmp"
}

# can_i_list SUBJECT NAMESPACE: the resource rules `kubectl auth can-i --list` reports, as "resource verb"
# lines, without the self-review rights every authenticated user has.
can_i_list() {
  k auth can-i --list --as "$1" -n "$2" --no-headers 2>/dev/null | "$PY" -c '
import re, sys
for line in sys.stdin:
    cols = re.split(r"\s{2,}", line.strip())
    if len(cols) < 4 or cols[0].startswith("[") or cols[0].startswith("self"):
        continue  # non-resource URLs and self-reviews
    for verb in cols[3].strip("[]").split():
        print(cols[0], verb)' | sort -u
}

# expected_rules WHAT: the controller's rules ("reconcile"), the leader-election rules ("leases"), or both, as
# `kubectl auth can-i --list` names them, read from docs/controller-rbac.yaml (the role the controller's
# end-to-end tests run under).
expected_rules() {
  "$PY" - "$REPO_ROOT/docs/controller-rbac.yaml" "$1" <<'EOF'
import sys, yaml
role, what = yaml.safe_load(open(sys.argv[1])), sys.argv[2]
for rule in role["rules"]:
    for group in rule["apiGroups"]:
        for resource in rule["resources"]:
            base, _, sub = resource.partition("/")
            name = (f"{base}.{group}" if group else base) + (f"/{sub}" if sub else "")
            # release namespace only: the Lease and the declared account lists (read-only ConfigMaps); the
            # admission parameters (ConfigMaps it creates) are in every organization's namespace
            leases = base == "leases" or (base == "configmaps" and "create" not in rule["verbs"])
            if (leases and what.endswith("leases")) or (not leases and what.startswith("reconcile")):
                for verb in rule["verbs"]:
                    print(name, verb)
EOF
}

# same_rules SUBJECT NAMESPACE reconcile|reconcile+leases|leases|none: the subject's rights in the namespace
# are exactly these.
same_rules() {
  local subject="$1" ns="$2" want got
  want="$(expected_rules "$3" | sort -u)"
  got="$(can_i_list "$subject" "$ns")"
  if [[ "$got" != "$want" ]]; then
    echo "rights of $subject in $ns are not exactly '$3':"
    diff <(printf '%s\n' "$want") <(printf '%s\n' "$got") | sed 's/^</  missing:/; s/^>/  extra:  /' | grep -E 'missing|extra' || true
    return 1
  fi
  echo "rights of $subject in namespace $ns: exactly '$3' ($(printf '%s' "$got" | grep -c . || true) resource/verb pairs)"
}

# can VERB RESOURCE SUBJECT [SCOPE...] -> prints and returns 0 for "yes"
# RESOURCE may name a subresource (apikeys.orgkeeper.dev/status): kubectl would read "/status" as an object
# name, so it goes to --subresource.
can() {
  local verb="$1" resource="$2" subject="$3" answer sub=()
  shift 3
  if [[ "$resource" == */* ]]; then sub=(--subresource "${resource#*/}"); fi
  answer="$(k auth can-i "$verb" "${resource%%/*}" "${sub[@]}" --as "$subject" "$@" 2>/dev/null || true)"
  printf '  can-i %-8s %-36s %-22s %s\n' "$verb" "$resource" "$*" "$answer"
  [[ "$answer" == yes ]]
}

# must VERB RESOURCE SUBJECT SCOPE... / must_not ...: one expectation each; failures are collected.
RBAC_FAILURES=0
must() { can "$@" || { echo "  ^ expected yes"; RBAC_FAILURES=$((RBAC_FAILURES + 1)); }; }
must_not() { ! can "$@" || { echo "  ^ expected no"; RBAC_FAILURES=$((RBAC_FAILURES + 1)); }; }

check_rbac_all_namespaces() {
  local sa
  sa="$(sa_of "$RELEASE_NS" "$RELEASE")"
  ensure_namespace "$OTHER_NS"
  same_rules "$sa" "$RELEASE_NS" reconcile+leases
  same_rules "$sa" acme reconcile
  RBAC_FAILURES=0
  # what it needs, everywhere
  must list apikeys.orgkeeper.dev "$sa" --all-namespaces
  must watch organizations.orgkeeper.dev "$sa" --all-namespaces
  must patch users.orgkeeper.dev/status "$sa" -n acme
  must update apikeys.orgkeeper.dev/finalizers "$sa" -n acme
  must create secrets "$sa" -n acme
  must get secrets "$sa" -n acme
  must create events.events.k8s.io "$sa" -n acme
  must update leases.coordination.k8s.io "$sa" -n "$RELEASE_NS"
  # and nothing more
  must watch secrets "$sa" -n acme
  # update: a rotation rewrites its ApiKey's Secret in place (only rotating keys' Secrets are mutable)
  must update secrets "$sa" -n acme
  must_not delete secrets "$sa" -n acme
  must_not patch secrets "$sa" -n acme
  must_not create organizations.orgkeeper.dev "$sa" -n acme
  must_not update configmaps "$sa" -n acme
  must_not delete configmaps "$sa" -n acme
  must_not create pods "$sa" -n acme
  must_not list pods "$sa" --all-namespaces
  must_not update leases.coordination.k8s.io "$sa" -n acme
  must_not create leases.coordination.k8s.io "$sa" -n kube-system
  must_not get customresourcedefinitions.apiextensions.k8s.io "$sa"
  # the generated Roles and bindings: created and patched, never escalated or bound beyond what it holds
  must create roles.rbac.authorization.k8s.io "$sa" -n acme
  must patch rolebindings.rbac.authorization.k8s.io "$sa" -n acme
  must manage-production environments.orgkeeper.dev "$sa" -n acme
  must_not escalate roles.rbac.authorization.k8s.io "$sa" -n acme
  must_not bind roles.rbac.authorization.k8s.io "$sa" -n acme
  must_not bind clusterroles.rbac.authorization.k8s.io "$sa" -n acme
  must_not delete rolebindings.rbac.authorization.k8s.io "$sa" -n acme
  must_not create clusterrolebindings.rbac.authorization.k8s.io "$sa"
  must_not impersonate serviceaccounts "$sa" -n acme
  # the data plane has no rights at all
  same_rules "$(sa_of "$RELEASE_NS" "$RELEASE-data-plane")" "$RELEASE_NS" none
  ((RBAC_FAILURES == 0))
}

check_rbac_watched_namespaces() {
  ensure_namespace "$WATCHED_NS" "$OTHER_NS"
  install_release "$NS_RELEASE" "$NS_RELEASE_NS" --set "controller.watchNamespaces={$WATCHED_NS}" \
    --set rbac.aggregateToDefaultRoles=false --skip-crds >/dev/null
  local sa
  sa="$(sa_of "$NS_RELEASE_NS" "$NS_RELEASE")"
  same_rules "$sa" "$WATCHED_NS" reconcile
  same_rules "$sa" "$NS_RELEASE_NS" leases
  same_rules "$sa" "$OTHER_NS" none
  RBAC_FAILURES=0
  must list apikeys.orgkeeper.dev "$sa" -n "$WATCHED_NS"
  must create secrets "$sa" -n "$WATCHED_NS"
  must update leases.coordination.k8s.io "$sa" -n "$NS_RELEASE_NS"
  must_not list apikeys.orgkeeper.dev "$sa" --all-namespaces
  must_not list apikeys.orgkeeper.dev "$sa" -n "$OTHER_NS"
  must_not get secrets "$sa" -n "$OTHER_NS"
  must_not create secrets "$sa" -n acme
  must list secrets "$sa" -n "$WATCHED_NS"
  must_not list secrets "$sa" -n "$OTHER_NS"
  must_not list organizations.orgkeeper.dev "$sa" -n "$NS_RELEASE_NS"
  if [[ -n "$(k get clusterrolebinding -l "app.kubernetes.io/instance=$NS_RELEASE" -o name)" ]]; then
    echo "watched-namespace mode created a ClusterRoleBinding"
    RBAC_FAILURES=$((RBAC_FAILURES + 1))
  fi
  ((RBAC_FAILURES == 0))
}

# People who can edit a namespace can manage orgkeeper resources there, through the aggregated roles.
check_aggregated_roles() {
  local user="jane@example.com"
  ensure_namespace acme
  k -n acme delete rolebinding jane-edit jane-view --ignore-not-found >/dev/null
  k -n acme create rolebinding jane-edit --clusterrole=edit --user="$user" >/dev/null
  k -n acme create rolebinding jane-view --clusterrole=view --user="viewer@example.com" >/dev/null
  RBAC_FAILURES=0
  local _
  # the aggregation controller fills edit/view asynchronously
  for _ in $(seq 30); do
    can create apikeys.orgkeeper.dev "$user" -n acme >/dev/null && break
    sleep 1
  done
  must create apikeys.orgkeeper.dev "$user" -n acme
  must delete users.orgkeeper.dev "$user" -n acme
  must_not patch apikeys.orgkeeper.dev/status "$user" -n acme
  must list organizations.orgkeeper.dev "viewer@example.com" -n acme
  must_not create apikeys.orgkeeper.dev "viewer@example.com" -n acme
  must_not get secrets "viewer@example.com" -n acme
  k -n acme delete rolebinding jane-edit jane-view >/dev/null
  ((RBAC_FAILURES == 0))
}

check_uninstall() {
  "$HELM" uninstall "$NS_RELEASE" -n "$NS_RELEASE_NS" >/dev/null
  "$HELM" uninstall "$RELEASE" -n "$RELEASE_NS" >/dev/null
  if k get clusterrole "$RELEASE-controller" >/dev/null 2>&1; then echo "ClusterRole left behind"; return 1; fi
  # Helm never deletes CRDs from crds/: deleting them would delete every organization's resources.
  k get crd organizations.orgkeeper.dev >/dev/null
  echo "uninstalled; the CRDs (and so everyone's resources) stay"
}

cleanup_cluster() {
  "$HELM" uninstall "$NS_RELEASE" -n "$NS_RELEASE_NS" >/dev/null 2>&1 || true
  "$HELM" uninstall "$RELEASE" -n "$RELEASE_NS" >/dev/null 2>&1 || true
  k delete namespace "$NS_RELEASE_NS" "$WATCHED_NS" "$OTHER_NS" --ignore-not-found --wait=false >/dev/null 2>&1 || true
}

cluster_checks() {
  run_check "helm install into the test cluster" check_install
  run_check "helm upgrade with the same values changes nothing" check_upgrade_is_idempotent
  run_check "helm install refuses bad values" check_install_refuses_bad_values
  run_check "the API server refuses GitOps tracking labels on a key's Secret" check_tracking_labels_refused
  run_check "pods pass the restricted Pod Security Standard" check_pod_security_restricted
  run_check "RBAC, all namespaces: exactly what the controller needs" check_rbac_all_namespaces
  run_check "RBAC, watched namespaces: Roles in those namespaces only" check_rbac_watched_namespaces
  run_check "people with edit/view get orgkeeper rights" check_aggregated_roles
  run_check "helm uninstall keeps the CRDs" check_uninstall
  # leave no example namespace behind for the converge test (it waits until the deletion is done)
  k delete namespace acme --ignore-not-found --wait=false >/dev/null
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  ensure_chart_tools
  use_cluster "${1:-}"
  trap cleanup_cluster EXIT
  cluster_checks
  summary
fi
