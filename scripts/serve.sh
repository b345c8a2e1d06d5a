#!/usr/bin/env bash
# Start a berth registry on the embedded default: metadata in RocksDB and blobs on
# the local disk under ./berth-data, HTTP on 127.0.0.1:5000. Installs what the build
# needs, builds the release binary, then runs it in the foreground.
# Extra arguments go to `berth serve` (e.g. --listen 0.0.0.0:5000 --config berth.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
install_build_deps
cargo build --release -p berth
exec "$CARGO_TARGET_DIR/release/berth" serve "$@"
