#!/usr/bin/env bash
# Build kube-apiserver and kube-controller-manager from Go modules.
#
# Neither binary is packaged in any registry this project can reach, so we
# compile them from the published k8s.io/kubernetes module. That module's
# go.mod points every staging module (k8s.io/api, k8s.io/client-go, ...) at a
# local ./staging directory, which does not exist in the module zip; a scratch
# module re-points each of them at its published v0.X.Y release instead.
#
# Usage: build-k8s.sh            (builds only what is missing)
# Env:   ORGKEEPER_K8S_VERSION   Kubernetes version (default v1.36.3)
#        ORGKEEPER_CACHE_DIR     cache root (default ~/.cache/orgkeeper)
# Prints the bin directory as its last line of stdout; progress goes to stderr.
set -euo pipefail

K8S_VERSION="${ORGKEEPER_K8S_VERSION:-v1.36.3}"
CACHE_DIR="${ORGKEEPER_CACHE_DIR:-$HOME/.cache/orgkeeper}"
BUILD_DIR="$CACHE_DIR/k8s-$K8S_VERSION"
BIN_DIR="$BUILD_DIR/bin"
COMPONENTS=(kube-apiserver kube-controller-manager)

log() { printf '[build-k8s] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# v1.36.3 -> v0.36.3: staging modules are tagged with the same minor/patch.
staging_version() {
  local v="${K8S_VERSION#v1.}"
  printf 'v0.%s' "$v"
}

all_built() {
  local c
  for c in "${COMPONENTS[@]}"; do
    [[ -x "$BIN_DIR/$c" ]] || return 1
  done
}

# Writes go.mod for the scratch module from the upstream go.mod: same go and
# godebug directives (a dependency's godebug is ignored, so we must copy it to
# get upstream's runtime behaviour), plus one replace per staging module.
write_go_mod() {
  local upstream_mod="$1" staging="$2"
  local go_directive godebug replaces
  go_directive="$(grep -m1 -E '^go [0-9]' "$upstream_mod")"
  godebug="$(grep -E '^godebug ' "$upstream_mod" || true)"
  replaces="$(sed -nE "s#^[[:space:]]*(k8s\.io/[A-Za-z0-9._-]+) => \./staging/src/k8s\.io/[A-Za-z0-9._-]+\$#\t\1 => \1 ${staging}#p" "$upstream_mod")"
  [[ -n "$replaces" ]] || die "no staging replace lines found in $upstream_mod"
  {
    printf 'module orgkeeper.local/k8s-build\n\n%s\n\n' "$go_directive"
    [[ -z "$godebug" ]] || printf '%s\n\n' "$godebug"
    printf 'require k8s.io/kubernetes %s\n\n' "$K8S_VERSION"
    printf 'replace (\n%s\n)\n' "$replaces"
  } > "$BUILD_DIR/go.mod"
}

# Mirrors hack/lib/version.sh so `kubectl version` and the apiserver's
# /version report the real release instead of v0.0.0-master.
version_ldflags() {
  local major minor rest pkg flags="-s -w"
  rest="${K8S_VERSION#v}"
  major="${rest%%.*}"
  rest="${rest#*.}"
  minor="${rest%%.*}"
  for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    flags+=" -X $pkg.gitVersion=$K8S_VERSION"
    flags+=" -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    flags+=" -X $pkg.gitTreeState=clean"
    flags+=" -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  printf '%s' "$flags"
}

build() {
  command -v go >/dev/null || die "go is not on PATH (needed to build Kubernetes $K8S_VERSION)"
  mkdir -p "$BUILD_DIR"
  cd "$BUILD_DIR"

  local upstream_mod staging
  staging="$(staging_version)"
  log "resolving k8s.io/kubernetes@$K8S_VERSION (staging modules $staging)"
  upstream_mod="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" \
    | sed -nE 's/^[[:space:]]*"GoMod": "(.*)",?$/\1/p')"
  [[ -f "$upstream_mod" ]] || die "go mod download did not give a go.mod for k8s.io/kubernetes@$K8S_VERSION"
  write_go_mod "$upstream_mod" "$staging"

  # Static, path-free, stripped binaries: no C toolchain needed, small output.
  export CGO_ENABLED=0
  export GOFLAGS="-trimpath -mod=mod"
  local pkgs=() c
  for c in "${COMPONENTS[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done

  log "downloading modules"
  go mod download k8s.io/kubernetes
  log "compiling ${COMPONENTS[*]} (cold builds take a long time on small machines)"
  local start=$SECONDS tmp="$BUILD_DIR/bin.tmp"
  rm -rf "$tmp"
  mkdir -p "$tmp" "$BIN_DIR"
  go build -ldflags "$(version_ldflags)" -o "$tmp/" "${pkgs[@]}"
  # Move into place only after both linked, so a killed build never leaves a
  # binary that looks complete.
  for c in "${COMPONENTS[@]}"; do mv -f "$tmp/$c" "$BIN_DIR/$c"; done
  rmdir "$tmp"
  log "built ${COMPONENTS[*]} into $BIN_DIR in $((SECONDS - start)) s"
}

main() {
  mkdir -p "$CACHE_DIR"
  # Two concurrent up.sh runs must not build into the same directory.
  exec 9>"$CACHE_DIR/.k8s-$K8S_VERSION.build.lock"
  flock 9
  if all_built; then
    log "using cached binaries in $BIN_DIR"
  else
    build
  fi
  printf '%s\n' "$BIN_DIR"
}

main "$@"
