#!/usr/bin/env bash
# The chart suite, one entry point for CI: the static checks (lint, template + schema validation, values schema,
# Argo CD/Flux health checks, Dockerfile), then against the test cluster: helm install, Pod Security, RBAC
# (can-i), and the controller converging the examples with the chart's ServiceAccount (skipped until the
# controller exists). Ends with "N passed, N failed[, N skipped]"; exits non-zero if anything failed.
#
# Usage: tests/chart/run.sh [--static]
#   KUBECONFIG            a running test cluster; when unset, tests/cluster/up.sh starts (or reuses) one
#                         (ORGKEEPER_CLUSTER_DIR picks its state dir)
#   ORGKEEPER_BIN         the orgkeeper binary for the converge test (default target/debug/orgkeeper)
#   ORGKEEPER_CACHE_DIR   where helm and the Python tools are cached (default ~/.cache/orgkeeper)
set -euo pipefail

# shellcheck source=tests/chart/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=tests/chart/static.sh
source "$CHART_TESTS_DIR/static.sh"
# shellcheck source=tests/chart/cluster.sh
source "$CHART_TESTS_DIR/cluster.sh"
# shellcheck source=tests/chart/converge.sh
source "$CHART_TESTS_DIR/converge.sh"

main() {
  ensure_chart_tools
  static_checks
  if [[ "${1:-}" != "--static" ]]; then
    use_cluster "${KUBECONFIG:-}"
    trap 'converge_cleanup; cleanup_cluster' EXIT
    cluster_checks
    converge_checks
  fi
  summary
}

main "$@"
