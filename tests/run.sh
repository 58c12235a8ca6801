#!/usr/bin/env bash
# Runs every orgkeeper test on this machine: starts what the tests need (a throwaway PostgreSQL and the real
# Kubernetes test cluster), then formatting, lints, the Rust suites (unit, store, CLI, controller end-to-end,
# data plane) and the chart suite. Works on a fresh machine (it builds and installs what is missing, e.g.
# kube-apiserver from Go modules on the first run) and on a warm one (it reuses ~/.cache/orgkeeper).
#
#   tests/run.sh                everything
#   ORGKEEPER_SKIP_LINT=1       skip cargo fmt --check and clippy
#   ORGKEEPER_SKIP_CLUSTER=1    skip everything that needs the Kubernetes test cluster
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s (%ss)\n' "$*" "$SECONDS" >&2; }

state="${TMPDIR:-/tmp}/orgkeeper-run-$$"
mkdir -p "$state"
# Servers of our own, so a developer's running test servers are neither reused nor stopped.
export ORGKEEPER_PG_DIR="$state/pg"
export ORGKEEPER_CLUSTER_DIR="$state/cluster"
with_cluster=$([[ "${ORGKEEPER_SKIP_CLUSTER:-0}" == 1 ]] && echo 0 || echo 1)
cluster_pid=

cleanup() {
  [[ -n "$cluster_pid" ]] && kill "$cluster_pid" 2>/dev/null
  tests/postgres/down.sh || true
  if ((with_cluster)); then
    tests/cluster/down.sh >/dev/null 2>&1 || true
    ORGKEEPER_CLUSTER_DIR="$state/cluster-chart" tests/cluster/down.sh >/dev/null 2>&1 || true
  fi
  rm -rf "$state"
}
trap cleanup EXIT

if ((with_cluster)); then
  step "Kubernetes test cluster (in the background; builds kube-apiserver on a fresh machine)"
  tests/cluster/up.sh >"$state/cluster.out" 2>"$state/cluster.log" &
  cluster_pid=$!
fi

step "PostgreSQL"
ORGKEEPER_TEST_POSTGRES_URL=$(tests/postgres/up.sh | tail -n 1)
export ORGKEEPER_TEST_POSTGRES_URL

if [[ "${ORGKEEPER_SKIP_LINT:-0}" != 1 ]]; then
  step "cargo fmt --check"
  cargo fmt --all -- --check
  step "cargo clippy"
  cargo clippy --locked --all-targets -- -D warnings
fi

step "build the tests"
cargo test --locked --no-run

if ((with_cluster)); then
  step "wait for the test cluster"
  if ! wait "$cluster_pid"; then
    tail -n 50 "$state/cluster.log" >&2
    echo "the test cluster did not start" >&2
    exit 1
  fi
  cluster_pid=
  ORGKEEPER_TEST_KUBECONFIG=$(tail -n 1 "$state/cluster.out")
  export ORGKEEPER_TEST_KUBECONFIG
fi

step "cargo test"
cargo test --locked

if ((with_cluster)); then
  step "chart suite (on a cluster of its own: the end-to-end tests leave cluster-wide RBAC behind)"
  tests/cluster/down.sh >/dev/null
  chart_kubeconfig=$(ORGKEEPER_CLUSTER_DIR="$state/cluster-chart" tests/cluster/up.sh | tail -n 1)
  KUBECONFIG="$chart_kubeconfig" tests/chart/run.sh
fi

step "done"
