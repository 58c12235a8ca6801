#!/usr/bin/env bash
# Proves the chart's RBAC is sufficient: `orgkeeper controller` runs outside the test cluster with a kubeconfig
# that holds only the chart's ServiceAccount token, and the examples converge. Then the everyday operations of
# the guides (revoke a key, remove a user, delete an organization's namespace) go through with those rights,
# and the controller never logs a "forbidden".
#
# Needs the `controller` command (issue 3). Until the binary has it, every check here is skipped (exit 3).
#
# Usage: tests/chart/converge.sh [KUBECONFIG]
#   ORGKEEPER_BIN   the binary (default: target/debug/orgkeeper, built with cargo when missing)
set -euo pipefail

# shellcheck source=tests/chart/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=tests/chart/cluster.sh
source "$CHART_TESTS_DIR/cluster.sh"

CONVERGE_TIMEOUT="${ORGKEEPER_CONVERGE_TIMEOUT:-180}"
ORG_NS="acme"
CONVERGE_DIR=""
CONVERGE_SKIP=""

orgkeeper_bin() {
  local bin="${ORGKEEPER_BIN:-$REPO_ROOT/target/debug/orgkeeper}"
  if [[ ! -x "$bin" && -z "${ORGKEEPER_BIN:-}" ]]; then
    log "building the orgkeeper binary (cargo build --bin orgkeeper)"
    (cd "$REPO_ROOT" && cargo build --quiet --bin orgkeeper >&2)
  fi
  printf '%s' "$bin"
}

free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# The accounts the example Users reference (github:NAME or google:EMAIL); they must exist before users join.
example_accounts() {
  "$PY" - "$REPO_ROOT/examples/acme" <<'EOF'
import pathlib, sys, yaml
for path in sorted(pathlib.Path(sys.argv[1]).glob("*.yaml")):
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc.get("kind") == "User":
            spec = doc["spec"]
            print(f"github:{spec['github']}" if "github" in spec else f"google:{spec['google']}")
EOF
}

# Starts the controller in its own process group (stopped by stop_controller). Sets CONVERGE_SKIP when the
# binary has no controller yet.
start_controller() {
  BIN="$(orgkeeper_bin)"
  if ! "$BIN" controller --help >/dev/null 2>&1; then
    CONVERGE_SKIP="awaits the controller: '$BIN controller' does not exist yet (issue 3)"
    return 0
  fi
  CONVERGE_DIR="$(mktemp -d)"
  chmod 700 "$CONVERGE_DIR"
  install_release "$RELEASE" "$RELEASE_NS" >/dev/null
  KUBECTL="$KUBECTL" "$CHART_TESTS_DIR/sa-kubeconfig.sh" "$RELEASE_NS" "$RELEASE" "$CONVERGE_DIR/controller.kubeconfig" 2h >/dev/null
  DATABASE_URL="sqlite://$CONVERGE_DIR/orgkeeper.db"
  # The OSO_URL the chart gives the controller: the data plane's Service.
  OSO_URL="$(k -n "$RELEASE_NS" get deployment "$RELEASE-controller" \
    -o jsonpath='{.spec.template.spec.containers[0].env[?(@.name=="ORGKEEPER_OSO_URL")].value}')"
  METRICS_ADDR="127.0.0.1:$(free_port)"
  # shellcheck disable=SC2046  # one account per word
  "$BIN" accounts add --database-url "$DATABASE_URL" $(example_accounts) >&2
  log "starting: orgkeeper controller --kubeconfig (ServiceAccount $RELEASE_NS/$RELEASE) --namespace all"
  setsid "$BIN" controller \
    --kubeconfig "$CONVERGE_DIR/controller.kubeconfig" \
    --database-url "$DATABASE_URL" \
    --namespace all \
    --metrics-addr "$METRICS_ADDR" \
    --oso-url "$OSO_URL" \
    > "$CONVERGE_DIR/controller.log" 2>&1 &
  CONTROLLER_PID=$!
  echo "$CONTROLLER_PID" > "$CONVERGE_DIR/controller.pid"
}

stop_controller() {
  [[ -n "$CONVERGE_DIR" && -f "$CONVERGE_DIR/controller.pid" ]] || return 0
  local pid
  pid="$(cat "$CONVERGE_DIR/controller.pid")"
  kill -TERM -- "-$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$CONVERGE_DIR/controller.pid"
}

skip_without_controller() {
  if [[ -n "$CONVERGE_SKIP" ]]; then
    echo "SKIP: $CONVERGE_SKIP"
    exit 3
  fi
  kill -0 "$(cat "$CONVERGE_DIR/controller.pid")" 2>/dev/null || {
    echo "the controller is not running; its log ends with:"
    tail -20 "$CONVERGE_DIR/controller.log"
    return 1
  }
}

KINDS="organizations.orgkeeper.dev,environments.orgkeeper.dev,users.orgkeeper.dev,apikeys.orgkeeper.dev"

check_examples_converge() {
  skip_without_controller
  # a namespace left terminating by an earlier test must be gone before it is created again
  k wait --for=delete "namespace/$ORG_NS" --timeout="${CONVERGE_TIMEOUT}s" 2>/dev/null || true
  k apply -k "$REPO_ROOT/examples/acme/"
  if ! k wait --for=condition=Ready --timeout="${CONVERGE_TIMEOUT}s" -n "$ORG_NS" "$KINDS" --all; then
    k get -n "$ORG_NS" "$KINDS"
    tail -30 "$CONVERGE_DIR/controller.log"
    return 1
  fi
  k get -n "$ORG_NS" "$KINDS"
}

# Each ApiKey's Secret: the key and the data plane's Service as URL (from the chart's values), immutable (unless the ApiKey rotates), owned by its ApiKey, orgkeeper's labels plus the template's,
# and no GitOps tracking label or annotation (Argo CD or Flux would otherwise treat it as theirs and prune it).
check_secrets() {
  skip_without_controller
  k get -n "$ORG_NS" apikeys.orgkeeper.dev -o json > "$CONVERGE_DIR/apikeys.json"
  k get -n "$ORG_NS" secrets -o json > "$CONVERGE_DIR/secrets.json"
  "$PY" - "$CONVERGE_DIR/apikeys.json" "$CONVERGE_DIR/secrets.json" "http://$RELEASE-data-plane.$RELEASE_NS.svc:8080" <<'EOF'
import base64, json, re, sys
keys = json.load(open(sys.argv[1]))["items"]
oso_url = sys.argv[3]
secrets = {s["metadata"]["name"]: s for s in json.load(open(sys.argv[2]))["items"]}
tracking = re.compile(r"^(app\.kubernetes\.io/instance|argocd\.argoproj\.io/|kustomize\.toolkit\.fluxcd\.io/|helm\.toolkit\.fluxcd\.io/)")
problems = []
def labels_of(s):
    return s["metadata"].get("labels", {})
for key in keys:
    name = key["metadata"]["name"]
    secret_name = (key["spec"].get("secret") or {}).get("name") or name
    s = secrets.get(secret_name)
    if s is None:
        problems.append(f"ApiKey {name}: no Secret {secret_name}")
        continue
    data = {k: base64.b64decode(v).decode() for k, v in s.get("data", {}).items()}
    # never print the key itself
    if not re.fullmatch(r"e_[A-Za-z0-9]+_[A-Za-z0-9]+_[A-Za-z0-9_-]{16,}", data.get("OSO_AUTH", "")):
        problems.append(f"Secret {secret_name}: OSO_AUTH is not an orgkeeper key")
    if data.get("OSO_URL") != oso_url:
        problems.append(f"Secret {secret_name}: OSO_URL is {data.get('OSO_URL')!r}, not the data plane's Service {oso_url}")
    # a rotating ApiKey's Secret is rewritten in place by each rotation, so it is the one kind not immutable
    if s.get("immutable") is not True and not key["spec"].get("rotation"):
        problems.append(f"Secret {secret_name}: not immutable")
    if key["spec"].get("rotation") and labels_of(s).get("orgkeeper.dev/key-id") != (key.get("status") or {}).get("keyId"):
        problems.append(f"Secret {secret_name}: does not hold the current key of its rotating ApiKey {name}")
    owners = [(o["kind"], o["name"]) for o in s["metadata"].get("ownerReferences", [])]
    if ("ApiKey", name) not in owners:
        problems.append(f"Secret {secret_name}: not owned by ApiKey {name} ({owners})")
    labels = s["metadata"].get("labels", {})
    if labels.get("app.kubernetes.io/managed-by") != "orgkeeper":
        problems.append(f"Secret {secret_name}: not labelled managed-by orgkeeper")
    for label, value in ((key["spec"].get("secret") or {}).get("template") or {}).get("labels", {}).items():
        if labels.get(label) != value:
            problems.append(f"Secret {secret_name}: template label {label} missing")
    marks = [m for m in list(labels) + list(s["metadata"].get("annotations", {})) if tracking.match(m)]
    if marks:
        problems.append(f"Secret {secret_name}: carries GitOps tracking metadata {marks}")
    print(f"Secret {secret_name} for ApiKey {name}: checked")
for p in problems:
    print("FAIL:", p)
sys.exit(1 if problems or not keys else 0)
EOF
}

check_health_checks_say_healthy() {
  skip_without_controller
  k get -n "$ORG_NS" "$KINDS" -o json > "$CONVERGE_DIR/objects.json"
  "$PY" "$CHART_TESTS_DIR/health_test.py" --live "$CONVERGE_DIR/objects.json"
}

check_leader_lease() {
  skip_without_controller
  local holders
  holders="$(k -n "$RELEASE_NS" get leases -o jsonpath='{range .items[*]}{.metadata.name}={.spec.holderIdentity}{"\n"}{end}')"
  echo "leases in $RELEASE_NS: ${holders:-none}"
  grep -q '=.' <<<"$holders"
}

# scrape ADDR FILE: saves /metrics of a running binary.
scrape() {
  "$PY" - "$1" "$2" <<'EOF'
import sys, urllib.request
with urllib.request.urlopen(f"http://{sys.argv[1]}/metrics", timeout=5) as r, open(sys.argv[2], "w") as out:
    out.write(r.read().decode())
EOF
}

check_metrics_and_health() {
  skip_without_controller
  "$PY" - "$METRICS_ADDR" <<'EOF'
import sys, urllib.request
base = f"http://{sys.argv[1]}"
for path in ("/healthz", "/readyz", "/metrics"):
    with urllib.request.urlopen(base + path, timeout=5) as r:
        body = r.read().decode()
        print(path, r.status, f"{len(body)} bytes")
        assert r.status == 200
EOF
}

# live_keys ENVIRONMENT: the controller's orgkeeper_controller_environment_live_keys for acme/acme/ENVIRONMENT.
live_keys() {
  scrape "$METRICS_ADDR" "$CONVERGE_DIR/controller.metrics"
  "$PY" - "$CONVERGE_DIR/controller.metrics" "$ORG_NS/acme/$1" <<'EOF'
import re, sys
pattern = re.compile(r'^orgkeeper_controller_environment_live_keys\{environment="' + re.escape(sys.argv[2]) + r'"\} (\S+)$', re.M)
found = pattern.findall(open(sys.argv[1]).read())
print(found[0] if found else "none")
EOF
}

# The live keys per environment the alert OrgkeeperEnvironmentKeysNearLimit watches: what the examples declare.
check_live_keys_metric() {
  skip_without_controller
  local env want got
  for env in production:2 staging:1 development:1; do
    want="${env#*:}"
    got="$(live_keys "${env%%:*}")"
    [[ "$got" == "$want" ]] || { echo "live keys of ${env%%:*}: metric says $got, the examples declare $want"; return 1; }
    echo "orgkeeper_controller_environment_live_keys{environment=\"$ORG_NS/acme/${env%%:*}\"} $got"
  done
}

# The Grafana dashboard and the alerts name only metrics the binaries export: the running controller's
# /metrics, and a sidecar and a fact store started on the store the controller just filled.
check_dashboard_and_alert_metrics_exported() {
  skip_without_controller
  local sidecar_listen sidecar_metrics facts_metrics facts_port pids=() status=0
  facts_port="$(free_port)"
  sidecar_metrics="127.0.0.1:$(free_port)"
  facts_metrics="127.0.0.1:$(free_port)"
  setsid "$BIN" facts --database-url "$DATABASE_URL" --listen "127.0.0.1:$facts_port" \
    --metrics-addr "$facts_metrics" > "$CONVERGE_DIR/facts.log" 2>&1 &
  pids+=("$!")
  sidecar_listen="127.0.0.1:$(free_port)"
  setsid "$BIN" sidecar --database-url "$DATABASE_URL" --listen "$sidecar_listen" \
    --upstream "http://127.0.0.1:$facts_port" --metrics-addr "$sidecar_metrics" > "$CONVERGE_DIR/sidecar.log" 2>&1 &
  pids+=("$!")
  # Traffic through the sidecar, so that its and the fact store's labelled families have samples: one request
  # without a key (401), one write and one read with the backend's key (read from its Secret, never printed).
  k -n "$ORG_NS" get secret backend-oso -o jsonpath='{.data.OSO_AUTH}' | base64 -d > "$CONVERGE_DIR/key"
  "$PY" - "$sidecar_listen" "$CONVERGE_DIR/key" <<'EOF' || status=$?
import json, sys, time, urllib.error, urllib.request
base, key = f"http://{sys.argv[1]}", open(sys.argv[2]).read().strip()
def call(method, path, body=None, auth=True):
    request = urllib.request.Request(base + path, method=method, data=None if body is None else json.dumps(body).encode())
    request.add_header("Content-Type", "application/json")
    if auth:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
for _ in range(100):  # until the sidecar has loaded the keys
    try:
        if call("GET", "/api/facts?predicate=has_role") == 200:
            break
    except OSError:
        pass
    time.sleep(0.1)
fact = {"predicate": "has_role", "args": [{"type": "User", "id": "alice"}, {"type": "String", "id": "admin"}]}
answers = {"no key": call("GET", "/api/facts?predicate=has_role", auth=False),
           "write": call("POST", "/api/batch", [{"inserts": [fact]}]),
           "read": call("GET", "/api/facts?predicate=has_role")}
print("through the sidecar:", answers)
assert answers == {"no key": 401, "write": 200, "read": 200}, answers
EOF
  rm -f "$CONVERGE_DIR/key"
  local addr _
  for addr in "$METRICS_ADDR" "$sidecar_metrics" "$facts_metrics"; do
    for _ in $(seq 100); do scrape "$addr" "$CONVERGE_DIR/$addr.metrics" 2>/dev/null && break; sleep 0.1; done
  done
  "$PY" "$CHART_TESTS_DIR/monitoring.py" names "$CONVERGE_DIR/$METRICS_ADDR.metrics" \
    "$CONVERGE_DIR/$sidecar_metrics.metrics" "$CONVERGE_DIR/$facts_metrics.metrics" || status=$?
  local pid
  for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  return "$status"
}

# Revoke a key as the guides say (spec.revoked: true): the status says Revoked, and the health checks treat a
# key revoked on purpose as healthy.
check_revoke_key() {
  skip_without_controller
  k -n "$ORG_NS" patch apikeys.orgkeeper.dev ci-development --type merge -p '{"spec":{"revoked":true}}'
  k -n "$ORG_NS" wait --for=jsonpath='{.status.conditions[?(@.type=="Ready")].reason}'=Revoked \
    --timeout="${CONVERGE_TIMEOUT}s" apikeys.orgkeeper.dev/ci-development
  k -n "$ORG_NS" get apikeys.orgkeeper.dev ci-development -o json | "$PY" -c '
import json, sys; print(json.dumps({"items": [json.load(sys.stdin)]}))' > "$CONVERGE_DIR/revoked.json"
  "$PY" "$CHART_TESTS_DIR/health_test.py" --live "$CONVERGE_DIR/revoked.json"
  local _ got
  for _ in $(seq 50); do got="$(live_keys development)"; [[ "$got" == 0 ]] && break; sleep 0.2; done
  [[ "$got" == 0 ]] || { echo "live keys of development after the revocation: $got, expected 0"; return 1; }
  echo "orgkeeper_controller_environment_live_keys of development: 0 after the revocation"
}

# Remove a user: the controller's finalizer lets the resource go once the store is updated.
check_remove_user() {
  skip_without_controller
  k -n "$ORG_NS" delete users.orgkeeper.dev erin --timeout="${CONVERGE_TIMEOUT}s"
  if k -n "$ORG_NS" get users.orgkeeper.dev erin >/dev/null 2>&1; then echo "erin is still there"; return 1; fi
}

check_delete_organization_namespace() {
  skip_without_controller
  k delete namespace "$ORG_NS" --timeout="${CONVERGE_TIMEOUT}s"
}

check_no_forbidden() {
  skip_without_controller
  # Events refused while the test deletes the organization's namespace are the API server protecting a
  # terminating namespace, not a missing permission.
  if grep -i 'forbidden' "$CONVERGE_DIR/controller.log" | grep -v 'because it is being terminated'; then
    echo "the controller was refused something with the chart's RBAC (above)"
    return 1
  fi
  echo "the controller's log has no 'forbidden' ($(wc -l < "$CONVERGE_DIR/controller.log") lines)"
}

converge_cleanup() {
  stop_controller
  k delete namespace "$ORG_NS" --ignore-not-found --wait=false >/dev/null 2>&1 || true
  [[ -n "$CONVERGE_DIR" ]] && rm -rf "$CONVERGE_DIR"
  return 0
}

converge_checks() {
  start_controller
  run_check "examples converge with the chart's ServiceAccount" check_examples_converge
  run_check "each key is in its own Secret, without GitOps tracking labels" check_secrets
  run_check "Argo CD and Flux health checks say healthy" check_health_checks_say_healthy
  run_check "leader election holds a Lease in the release namespace" check_leader_lease
  run_check "controller /healthz, /readyz, /metrics" check_metrics_and_health
  run_check "controller metric: live keys per environment" check_live_keys_metric
  run_check "dashboard and alerts use only metrics the binaries export" check_dashboard_and_alert_metrics_exported
  run_check "revoke a key" check_revoke_key
  run_check "remove a user" check_remove_user
  run_check "delete the organization's namespace" check_delete_organization_namespace
  run_check "the controller was never forbidden anything" check_no_forbidden
  converge_cleanup
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  ensure_chart_tools
  use_cluster "${1:-}"
  trap 'converge_cleanup; cleanup_cluster' EXIT
  converge_checks
  summary
fi
