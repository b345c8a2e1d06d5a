#!/usr/bin/env bash
# Time from kill -9 of a 3-node cluster's leader until a new leader is known and a
# write through a survivor succeeds. Nodes share a local blob directory (fs backend,
# shared = true); default Raft timings (heartbeat 100ms, election timeout 0.5-1 s after
# a 1 s leader lease).
# Usage: benches/failover.sh [ROUNDS]   (default 5)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
ROUNDS=${1:-5}
BERTH="${BERTH_BIN:-$CARGO_TARGET_DIR/release/berth}"
[ -x "$BERTH" ] || cargo build --release -p berth
WORK=$(mktemp -d /tmp/berth-failover-XXXXXX)
declare -A PID
cleanup() { for p in "${PID[@]}"; do kill -9 "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now_ms() { date +%s%3N; }

declare -A HTTP GRPC
for i in 1 2 3; do HTTP[$i]=$(free_port); GRPC[$i]=$(free_port); done
members="\"1=127.0.0.1:${GRPC[1]}\", \"2=127.0.0.1:${GRPC[2]}\", \"3=127.0.0.1:${GRPC[3]}\""
mkdir -p "$WORK/shared"
start() {
    local i=$1
    mkdir -p "$WORK/n$i"
    cat > "$WORK/n$i/berth.toml" <<TOML
listen = "127.0.0.1:${HTTP[$i]}"
data_dir = "$WORK/n$i"
[log]
level = "warn"
[storage.fs]
path = "$WORK/shared"
shared = true
[cluster]
node_id = $i
grpc_listen = "127.0.0.1:${GRPC[$i]}"
initial_members = [$members]
TOML
    "$BERTH" serve --config "$WORK/n$i/berth.toml" >>"$WORK/n$i/log" 2>&1 &
    PID[$i]=$!
}
leader_of() { curl -sf "http://127.0.0.1:${HTTP[$1]}/admin/cluster" | python3 -c 'import sys,json; print(json.load(sys.stdin).get("leader") or 0)' 2>/dev/null || echo 0; }
for i in 1 2 3; do start $i; done
for _ in $(seq 1 100); do [ "$(leader_of 1)" != 0 ] && break; sleep 0.1; done

for round in $(seq 1 "$ROUNDS"); do
    old=$(leader_of 1); [ "$old" != 0 ] || old=$(leader_of 2)
    survivor=$(( old % 3 + 1 ))
    t0=$(now_ms)
    kill -9 "${PID[$old]}"; wait "${PID[$old]}" 2>/dev/null || true
    elected=""
    for _ in $(seq 1 1000); do
        l=$(leader_of "$survivor")
        if [ "$l" != 0 ] && [ "$l" != "$old" ]; then elected=$(now_ms); break; fi
        sleep 0.01
    done
    data="round-$round-$RANDOM"; digest="sha256:$(printf '%s' "$data" | sha256sum | cut -d' ' -f1)"
    curl -sf -X POST --data-binary "$data" "http://127.0.0.1:${HTTP[$survivor]}/v2/bench/failover/blobs/uploads/?digest=$digest" -o /dev/null
    written=$(now_ms)
    echo "round $round: leader $old killed; new leader $(leader_of "$survivor") after $((elected - t0)) ms; first write through node $survivor acknowledged after $((written - t0)) ms"
    start "$old"
    for _ in $(seq 1 200); do [ "$(leader_of "$old")" != 0 ] && break; sleep 0.05; done
    sleep 1
done
