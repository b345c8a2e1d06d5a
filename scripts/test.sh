#!/usr/bin/env bash
# Run the whole test suite: formatting, lints, unit tests, and the integration tests
# that drive the real binary with real clients (skopeo, podman, oras, docker).
# Installs what is missing first.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
install_build_deps
bash scripts/install-test-deps.sh
command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest

export BERTH_TOOLS="${BERTH_TOOLS:-/var/cache/berth-tools}"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --all-features -- -D warnings
cargo nextest run --workspace --all-features --no-fail-fast "$@"
# The spec suite once more against a 3-node cluster on SeaweedFS, every request to
# the next node in turn (a round-robin load balancer).
BERTH_SPEC_NODES=3 cargo nextest run --workspace --all-features --no-fail-fast -E 'test(/^spec::/)' "$@"
