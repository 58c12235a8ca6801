#!/usr/bin/env bash
# Stop the test cluster started by up.sh and delete its state dir (etcd data,
# certificates, kubeconfig, logs). Safe to run when nothing is running.
# Cached binaries (~/.cache/orgkeeper/k8s-*, the venv) are kept.
set -euo pipefail

# shellcheck source=tests/cluster/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

main() {
  take_lock
  stop_all
  if [[ -e "$STATE_DIR" ]]; then
    remove_state_dir
  else
    log "nothing to remove at $STATE_DIR"
  fi
}

main "$@"
