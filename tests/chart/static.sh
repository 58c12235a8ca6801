#!/usr/bin/env bash
# Chart checks that need no cluster: CRD copy, helm lint, helm template validated against the Kubernetes schemas,
# values.schema.json refusing bad values, the Argo CD / Flux health checks, the Dockerfile and these scripts.
#
# Usage: tests/chart/static.sh     (run.sh runs it together with the cluster checks)
set -euo pipefail

# shellcheck source=tests/chart/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RELEASE_NS="orgkeeper-system"

helm_template() { "$HELM" template orgkeeper "$CHART_DIR" --namespace "$RELEASE_NS" "$@"; }

check_chart_crds_match_generated() {
  if cmp -s "$REPO_ROOT/crds/orgkeeper.dev.yaml" "$CHART_DIR/crds/orgkeeper.dev.yaml"; then
    echo "charts/orgkeeper/crds/orgkeeper.dev.yaml is identical to crds/orgkeeper.dev.yaml"
  else
    echo "the chart's CRDs differ from crds/: cp crds/orgkeeper.dev.yaml charts/orgkeeper/crds/"
    diff -u "$REPO_ROOT/crds/orgkeeper.dev.yaml" "$CHART_DIR/crds/orgkeeper.dev.yaml" | head -20
    return 1
  fi
}

check_helm_lint() {
  "$HELM" lint --strict "$CHART_DIR"
  local values
  for values in "$CHART_DIR"/ci/*-values.yaml; do
    "$HELM" lint --strict "$CHART_DIR" -f "$values"
  done
}

# render_and_validate NAME MANIFESTS_PY_ARGS -- HELM_ARGS...: renders the chart, validates every built-in kind
# with kubernetes-validate --strict (unknown fields are errors), then runs manifests.py.
render_and_validate() {
  local name="$1" out
  shift
  local checks=()
  while [[ "$1" != "--" ]]; do checks+=("$1"); shift; done
  shift
  out="$(mktemp --suffix ".$name.yaml")"
  helm_template "$@" > "$out"
  local report
  report="$("$TOOLS_VENV/bin/kubernetes-validate" --quiet --strict -k "$K8S_SCHEMA_VERSION" "$out" 2>&1)" || {
    printf '%s\n' "$report" | sed "s#$out#$name#"
    rm -f "$out"
    return 1
  }
  # Only custom kinds may lack a schema (ServiceMonitor, PrometheusRule: Prometheus Operator).
  if printf '%s\n' "$report" | grep '^WARN' | grep -Ev 'kind (ServiceMonitor|PrometheusRule) with api version monitoring.coreos.com/v1'; then
    rm -f "$out"
    return 1
  fi
  echo "kubernetes-validate --strict (Kubernetes $K8S_SCHEMA_VERSION): every built-in kind is valid"
  "$PY" "$CHART_TESTS_DIR/manifests.py" "$out" --release-namespace "$RELEASE_NS" "${checks[@]}"
  rm -f "$out"
}

check_template_default() { render_and_validate default -- ; }
check_template_controller_only() {
  render_and_validate controller-only -- --set dataPlane.enabled=false --set controller.osoUrl=https://oso.example.com
}
check_template_full() {
  render_and_validate full --watch-namespaces acme,globex -- -f "$CHART_DIR/ci/full-values.yaml"
}
check_template_data_plane() {
  render_and_validate data-plane -- --set dataPlane.enabled=true --set networkPolicy.enabled=true \
    --set metrics.serviceMonitor.enabled=true
}
check_template_namespaced() {
  render_and_validate namespaced --watch-namespaces team-a,team-b -- \
    --set 'controller.watchNamespaces={team-a,team-b}'
}
# The default topology: the fact store bound to the data-plane pod's loopback behind the sidecar, no Service
# port for it, NetworkPolicies on, metrics open to the monitoring namespace only, new keys pointing at the
# data plane's Service (tests/chart/topology.py says what exactly).
check_topology_default() {
  local out
  out="$(mktemp --suffix .topology.yaml)"
  helm_template > "$out"
  "$PY" "$CHART_TESTS_DIR/topology.py" "$out" --release-namespace "$RELEASE_NS"
  rm -f "$out"
}
check_topology_exposed_facts() {
  local out
  out="$(mktemp --suffix .topology.yaml)"
  helm_template --set dataPlane.service.exposeFacts=true \
    --set 'networkPolicy.factsFrom[0].namespaceSelector.matchLabels.kubernetes\.io/metadata\.name=fact-loaders' > "$out"
  "$PY" "$CHART_TESTS_DIR/topology.py" "$out" --release-namespace "$RELEASE_NS" --exposed-facts-from fact-loaders
  rm -f "$out"
}
check_app_needs_no_store_credentials() {
  "$PY" "$CHART_TESTS_DIR/topology.py" --app "$REPO_ROOT/examples/app/backend.yaml"
}

check_template_external_upstream() {
  local out
  out="$(helm_template --set dataPlane.enabled=true --set dataPlane.facts.enabled=false \
    --set dataPlane.sidecar.upstream=http://oso.example.internal:8080)"
  grep -q 'value: "http://oso.example.internal:8080"' <<<"$out"
  if grep -q 'name: facts' <<<"$out"; then echo "a fact store container was rendered"; return 1; fi
  echo "sidecar forwards to the configured upstream; no fact store container"
}

# Shared limits: with dataPlane.redis the replicas may be more than one, the sidecar gets the URL from the
# Secret (never as a plain value) with the fallback and timeout, and the data plane's NetworkPolicy lets it reach
# Redis when egress is restricted; without Redis more than one replica is refused (checked below).
check_template_shared_limits() {
  local out
  out="$(mktemp --suffix .redis.yaml)"
  helm_template --set dataPlane.replicas=3 --set dataPlane.redis.existingSecret=orgkeeper-redis \
    --set dataPlane.redis.fallback=deny --set networkPolicy.enabled=true \
    --set 'networkPolicy.egress[0].ports[0].port=53' --set 'networkPolicy.egress[0].ports[0].protocol=UDP' \
    --set 'dataPlane.redis.to[0].namespaceSelector.matchLabels.kubernetes\.io/metadata\.name=redis' > "$out"
  local status=0
  "$PY" - "$out" <<'EOF2' || status=1
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
deployment = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("data-plane"))
assert deployment["spec"]["replicas"] == 3, deployment["spec"]["replicas"]
sidecar = next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "sidecar")
env = {e["name"]: e for e in sidecar["env"]}
url = env["ORGKEEPER_REDIS_URL"]
assert "value" not in url and url["valueFrom"]["secretKeyRef"] == {"name": "orgkeeper-redis", "key": "url"}, url
assert env["ORGKEEPER_REDIS_FALLBACK"]["value"] == "deny" and env["ORGKEEPER_REDIS_TIMEOUT"]["value"] == "100ms"
assert env["ORGKEEPER_REDIS_MODE"]["value"] == "standalone" and "ORGKEEPER_REDIS_SENTINEL_MASTER" not in env, env
policy = next(d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"].endswith("data-plane"))
assert "Egress" in policy["spec"]["policyTypes"], policy["spec"]["policyTypes"]
redis_rules = [r for r in policy["spec"]["egress"] if {"port": 6379, "protocol": "TCP"} in r.get("ports", [])]
assert len(redis_rules) == 1, policy["spec"]["egress"]
peer = redis_rules[0]["to"][0]["namespaceSelector"]["matchLabels"]
assert peer == {"kubernetes.io/metadata.name": "redis"}, peer
controller = next(d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"].endswith("controller"))
assert all(6379 not in [p["port"] for p in r.get("ports", [])] for r in controller["spec"]["egress"]), "controller"
print("3 data-plane replicas share limits through the Redis of the Secret; the NetworkPolicy lets only them reach it")
EOF2
  [[ $status == 0 ]] || return 1
  # Sentinel: the sentinels' URLs, comma-separated, and the primary's name reach the sidecar.
  helm_template --set dataPlane.replicas=2 \
    --set 'dataPlane.redis.url=redis://sentinel-0:26379\,redis://sentinel-1:26379' \
    --set dataPlane.redis.mode=sentinel --set dataPlane.redis.sentinelMaster=limits > "$out"
  "$PY" - "$out" <<'EOF2' || status=1
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
deployment = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("data-plane"))
sidecar = next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "sidecar")
env = {e["name"]: e.get("value") for e in sidecar["env"]}
assert env["ORGKEEPER_REDIS_URL"] == "redis://sentinel-0:26379,redis://sentinel-1:26379", env
assert env["ORGKEEPER_REDIS_MODE"] == "sentinel" and env["ORGKEEPER_REDIS_SENTINEL_MASTER"] == "limits", env
print("Sentinel: the sentinels and the primary's name reach the sidecar")
EOF2
  rm -f "$out"
  return "$status"
}

# Who may do what: the admission policies are on by default, name the exempt users, and go with one value.
check_admission_policy_switch() {
  local out
  out="$(helm_template --set 'admissionPolicy.gitOpsServiceAccounts={argocd/argocd-application-controller}')"
  [[ "$(grep -c '^kind: ValidatingAdmissionPolicy$' <<<"$out")" == 2 ]] || { echo "expected 2 policies"; return 1; }
  grep -q 'system:serviceaccount:argocd:argocd-application-controller' <<<"$out" || {
    echo "the GitOps applier is not exempt"
    return 1
  }
  out="$(helm_template --set admissionPolicy.enabled=false)"
  if grep -q 'ValidatingAdmissionPolicy' <<<"$out"; then echo "admissionPolicy.enabled=false still renders a policy"; return 1; fi
  echo "two policies and bindings by default, the applier exempt only when listed, none with enabled=false"
}

# Each case: a description, text the error must contain, and helm --set arguments.
check_schema_refuses_bad_values() {
  local cases=(
    "zero controller replicas|controller.replicas|--set controller.replicas=0"
    "a typo in a key|replica|--set controller.replica=2"
    "an unknown log format|logging.format|--set logging.format=xml"
    "a bad image pull policy|image.pullPolicy|--set image.pullPolicy=Sometimes"
    "a namespace that is not a DNS label|controller.watchNamespaces|--set controller.watchNamespaces={Team_A}"
    "the same namespace twice|controller.watchNamespaces|--set controller.watchNamespaces={acme,acme}"
    "no database Secret|database.existingSecret|--set database.existingSecret="
    "a port out of range|controller.metricsPort|--set controller.metricsPort=70000"
    "a writable root filesystem|containerSecurityContext.readOnlyRootFilesystem|--set containerSecurityContext.readOnlyRootFilesystem=false"
    "running as root allowed|podSecurityContext.runAsNonRoot|--set podSecurityContext.runAsNonRoot=false"
    "privilege escalation|containerSecurityContext.allowPrivilegeEscalation|--set containerSecurityContext.allowPrivilegeEscalation=true"
    "an added capability|containerSecurityContext.capabilities.add|--set containerSecurityContext.capabilities.add={NET_ADMIN}"
    "an OSO_URL that is not a URL|controller.osoUrl|--set controller.osoUrl=sidecar:8080"
    "a database URL as a plain value|controller.extraEnv.0.name|--set controller.extraEnv[0].name=ORGKEEPER_DATABASE_URL --set controller.extraEnv[0].value=postgres://u:p@db/x"
    "no upstream without the fact store|dataPlane.sidecar|--set dataPlane.enabled=true --set dataPlane.facts.enabled=false"
    "the fact store exposed without a NetworkPolicy peer|networkPolicy.factsFrom|--set dataPlane.service.exposeFacts=true"
    "the fact store exposed with NetworkPolicies off|networkPolicy.enabled=true|--set dataPlane.service.exposeFacts=true --set networkPolicy.enabled=false --set networkPolicy.factsFrom[0].ipBlock.cidr=10.0.0.0/8"
    "no OSO_URL without the data plane|controller.osoUrl|--set dataPlane.enabled=false"
    "a metrics namespace that is not a DNS label|networkPolicy.metricsNamespaces|--set networkPolicy.metricsNamespaces={Monitoring}"
    "colliding data plane ports|ports must differ|--set dataPlane.enabled=true --set dataPlane.facts.port=8080"
    "an existing ServiceAccount without a name|serviceAccount|--set serviceAccount.create=false"
    "a bad scrape interval|metrics.serviceMonitor.interval|--set metrics.serviceMonitor.interval=soon"
    "a memory quantity with a typo|controller.resources.limits.memory|--set controller.resources.limits.memory=256MB"
    "a user name template without its placeholder|controller.kubernetesUser.github|--set controller.kubernetesUser.github=oidc:{user}"
    "a GitOps applier that is not NAMESPACE/NAME|admissionPolicy.gitOpsServiceAccounts|--set admissionPolicy.gitOpsServiceAccounts={argocd}"
    "a key staleness that is not a duration|dataPlane.sidecar.maxKeyStaleness|--set dataPlane.sidecar.maxKeyStaleness=never"
    "several data-plane replicas without Redis|dataPlane.redis|--set dataPlane.replicas=2"
    "a Redis URL that is not redis:// or rediss://|dataPlane.redis.url|--set dataPlane.redis.url=http://redis:6379"
    "an unknown Redis fallback|dataPlane.redis.fallback|--set dataPlane.redis.url=redis://redis:6379 --set dataPlane.redis.fallback=open"
    "an unknown Redis mode|dataPlane.redis.mode|--set dataPlane.redis.url=redis://redis:6379 --set dataPlane.redis.mode=replicated"
  )
  local entry what expected args failures=0
  for entry in "${cases[@]}"; do
    IFS='|' read -r what expected args <<<"$entry"
    # shellcheck disable=SC2086  # args is a list of --set flags
    expect_failure "$what" "$expected" helm_template $args || failures=$((failures + 1))
  done
  ((failures == 0))
}

# The alerts: promtool accepts the rule file and its unit tests pass (each alert fires when it should and not
# before); the chart's PrometheusRule and dashboard ConfigMap carry exactly those files, and every dashboard
# query is valid PromQL. Which metric names they may use is checked against the running binaries in
# converge.sh.
check_alert_rules() {
  command -v promtool >/dev/null || { echo "promtool is needed (Debian: apt-get install -y prometheus)"; return 1; }
  promtool check rules "$CHART_DIR/alerts/orgkeeper.rules.yaml"
  promtool test rules "$CHART_TESTS_DIR/monitoring/alerts_test.yaml"
}
check_monitoring_rendered() {
  command -v promtool >/dev/null || { echo "promtool is needed (Debian: apt-get install -y prometheus)"; return 1; }
  local out
  out="$(mktemp --suffix .monitoring.yaml)"
  helm_template --set metrics.dashboard.enabled=true --set metrics.prometheusRule.enabled=true > "$out"
  "$PY" "$CHART_TESTS_DIR/monitoring.py" chart "$out"
  rm -f "$out"
}

check_health_checks() { "$PY" "$CHART_TESTS_DIR/health_test.py"; }

check_examples_validate() {
  "$TOOLS_VENV/bin/kubernetes-validate" --quiet --strict -k "$K8S_SCHEMA_VERSION" \
    "$REPO_ROOT"/examples/app/*.yaml "$REPO_ROOT/examples/acme/namespace.yaml"
  # Argo CD and Flux objects: no schema offline, so check they parse and name what they point at.
  "$PY" - "$REPO_ROOT" <<'EOF'
import sys, yaml
root = sys.argv[1]
app = yaml.safe_load(open(f"{root}/examples/argocd/application.yaml"))
assert app["kind"] == "Application" and app["spec"]["source"]["path"] == "examples/acme", app
flux = list(yaml.safe_load_all(open(f"{root}/examples/flux/acme-tenancy.yaml")))[0]
assert flux["kind"] == "Kustomization" and flux["spec"]["path"] == "./examples/acme", flux
assert {e["kind"] for e in flux["spec"]["healthCheckExprs"]} == {"Organization", "Environment", "User", "ApiKey"}
import pathlib
listed = set(yaml.safe_load(open(f"{root}/examples/acme/kustomization.yaml"))["resources"])
present = {p.name for p in pathlib.Path(f"{root}/examples/acme").glob("*.yaml")} - {"kustomization.yaml"}
assert listed == present, f"examples/acme/kustomization.yaml lists {sorted(listed)}, the folder has {sorted(present)}"
repo = yaml.safe_load(open(f"{root}/examples/flux/gitrepository.yaml"))
assert repo["kind"] == "GitRepository" and flux["spec"]["sourceRef"]["name"] == repo["metadata"]["name"]
print("Argo CD Application and Flux Kustomization point at examples/acme")
EOF
}

check_dockerfile() {
  "$TOOLS_VENV/bin/hadolint" --failure-threshold info "$REPO_ROOT/Dockerfile"
  grep -q '^USER 65532:65532$' "$REPO_ROOT/Dockerfile"
  echo "hadolint: no findings; the image runs as 65532"
}

check_shellcheck() {
  "$TOOLS_VENV/bin/shellcheck" -x -P "$REPO_ROOT" "$CHART_TESTS_DIR"/*.sh
  echo "shellcheck: no findings in tests/chart/*.sh"
}

static_checks() {
  run_check "chart CRDs are a copy of crds/" check_chart_crds_match_generated
  run_check "helm lint --strict (default and ci/ values)" check_helm_lint
  run_check "helm template, default values, validates" check_template_default
  run_check "helm template, controller only (no data plane), validates" check_template_controller_only
  run_check "helm template, every option set, validates" check_template_full
  run_check "helm template, data plane, NetworkPolicy and ServiceMonitor, validates" check_template_data_plane
  run_check "helm template, watched namespaces use Roles only, validates" check_template_namespaced
  run_check "helm template, sidecar in front of another upstream" check_template_external_upstream
  run_check "helm template, shared limits: replicas, the Redis Secret, NetworkPolicy egress to Redis" check_template_shared_limits
  run_check "topology: fact store on loopback, no Service port, NetworkPolicy on, OSO_URL the data plane" check_topology_default
  run_check "topology: an exposed fact store admits only networkPolicy.factsFrom" check_topology_exposed_facts
  run_check "topology: the example application needs no store credentials" check_app_needs_no_store_credentials
  run_check "values.schema.json refuses bad values" check_schema_refuses_bad_values
  run_check "admission policies: on by default, exemptions explicit, off with one value" check_admission_policy_switch
  run_check "alerts: promtool check rules and promtool test rules" check_alert_rules
  run_check "PrometheusRule and Grafana dashboard rendered from the chart's files; valid PromQL" check_monitoring_rendered
  run_check "Argo CD health checks (Lua) and Flux healthCheckExprs (CEL)" check_health_checks
  run_check "examples validate" check_examples_validate
  run_check "Dockerfile lint" check_dockerfile
  run_check "shellcheck" check_shellcheck
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  ensure_chart_tools
  static_checks
  summary
fi
