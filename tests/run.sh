#!/usr/bin/env bash
# Runs every orgkeeper test on this machine: starts what the tests need (a throwaway PostgreSQL, and the real
# Kubernetes test cluster when the suites that need it are present), then formatting, lints and the test suites.
# Works on a fresh machine (it builds and installs what is missing) and on a warm one (it reuses caches).
#
#   tests/run.sh            everything
#   ORGKEEPER_SKIP_LINT=1   skip cargo fmt --check and clippy
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s (%ss)\n' "$*" "$SECONDS" >&2; }

cleanup() {
  tests/postgres/down.sh || true
}
trap cleanup EXIT

step "PostgreSQL"
# A server of our own, so a developer's running test server is neither reused nor stopped.
export ORGKEEPER_PG_DIR="${TMPDIR:-/tmp}/orgkeeper-pg-run-$$"
ORGKEEPER_TEST_POSTGRES_URL=$(tests/postgres/up.sh | tail -n 1)
export ORGKEEPER_TEST_POSTGRES_URL

if [[ "${ORGKEEPER_SKIP_LINT:-0}" != 1 ]]; then
  step "cargo fmt --check"
  cargo fmt --all -- --check
  step "cargo clippy"
  cargo clippy --locked --all-targets -- -D warnings
fi

step "cargo test"
cargo test --locked

step "done"
