#!/usr/bin/env bash
# Peak RSS of a berth node while a large blob is pushed and pulled through it, on the
# local disk and on S3 (SeaweedFS): blobs are streamed, so the peak must not grow
# with the blob's size. Usage: benches/memory.sh [SIZE_MIB ...]   (default: 256 2048)
# Prints one line per backend and size: push/pull wall time and the node's VmHWM.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
SIZES=("${@:-256 2048}")
[ "$#" -gt 0 ] || SIZES=(256 2048)
BERTH="$CARGO_TARGET_DIR/release/berth"
[ -x "$BERTH" ] || cargo build --release -p berth
WEED="${BERTH_TOOLS:-/var/cache/berth-tools}/venv/bin/weed"
[ -x "$WEED" ] || bash scripts/install-test-deps.sh
WORK=$(mktemp -d /tmp/berth-mem-XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 1 150); do curl -sf "$1" >/dev/null 2>&1 && return 0; sleep 0.2; done; echo "no answer from $1" >&2; return 1; }
hwm_mib() { awk '/VmHWM/ {printf "%.0f", $2/1024}' "/proc/$1/status"; }

# SeaweedFS on private ports.
S3PORT=$(free_port)
mkdir -p "$WORK/sw/data" "$WORK/sw/log"
echo '{"identities":[{"name":"berth","credentials":[{"accessKey":"bench","secretKey":"benchsecret"}],"actions":["Admin","Read","List","Tagging","Write"]}]}' > "$WORK/sw/s3.json"
ports=()
for _ in 1 2 3 4; do ports+=("$(free_port)"); done
(cd "$WORK/sw" && exec "$WEED" -logdir="$WORK/sw/log" mini -dir="$WORK/sw/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
  -master.telemetry=false -s3.config="$WORK/sw/s3.json" -bucket=berth -admin.ui=false -webdav=false \
  -s3.port.iceberg=0 -s3.port.lance=0 -s3.port="$S3PORT" -master.port="${ports[0]}" -volume.port="${ports[1]}" \
  -filer.port="${ports[2]}" -admin.port="${ports[3]}" -master.port.grpc=$((ports[0]+10000)) \
  -volume.port.grpc=$((ports[1]+10000)) -filer.port.grpc=$((ports[2]+10000)) -s3.port.grpc=$((S3PORT+10000)) \
  -admin.port.grpc=$((ports[3]+10000)) >"$WORK/sw/out.log" 2>&1) &
PIDS+=($!)
sleep 3

run() { # backend size_mib
    local backend=$1 size=$2 port dir
    port=$(free_port); dir="$WORK/node-$backend-$size"; mkdir -p "$dir"
    {
        echo "listen = \"127.0.0.1:$port\""; echo "data_dir = \"$dir\""
        if [ "$backend" = s3 ]; then
            printf '[storage]\nbackend = "s3"\n[storage.s3]\nbucket = "berth"\nendpoint = "http://127.0.0.1:%s"\npath_style = true\naccess_key_id = "bench"\nsecret_access_key = "benchsecret"\n' "$S3PORT"
        fi
    } > "$dir/berth.toml"
    env -u RUST_LOG "$BERTH" serve --config "$dir/berth.toml" >"$dir/log" 2>&1 &
    local pid=$!; PIDS+=($pid)
    wait_http "http://127.0.0.1:$port/readyz"
    local blob="$WORK/blob-$size" digest t0 t1 t2
    [ -f "$blob" ] || head -c "$((size * 1024 * 1024))" /dev/urandom > "$blob"
    digest="sha256:$(sha256sum "$blob" | cut -d' ' -f1)"
    local base_rss push_peak; base_rss=$(hwm_mib $pid)
    t0=$(date +%s.%N)
    # From stdin, streamed chunked (with -T FILE curl appends the file name to a URL
    # that ends in a slash).
    curl -sf -X POST -H 'Content-Type: application/octet-stream' -T - < "$blob" \
        "http://127.0.0.1:$port/v2/bench/mem/blobs/uploads/?digest=$digest" -o /dev/null
    t1=$(date +%s.%N)
    push_peak=$(hwm_mib $pid)
    # Restart the high-water mark at the current RSS, so the pull's peak is its own.
    echo 5 > "/proc/$pid/clear_refs" 2>/dev/null || true
    curl -sf "http://127.0.0.1:$port/v2/bench/mem/blobs/$digest" -o /dev/null
    t2=$(date +%s.%N)
    printf '%-3s %6d MiB  push %6.2f s  pull %6.2f s  RSS after start %4d MiB  peak: push %4d MiB  pull %4d MiB\n' \
        "$backend" "$size" "$(awk "BEGIN{print $t1 - $t0}")" "$(awk "BEGIN{print $t2 - $t1}")" "$base_rss" "$push_peak" "$(hwm_mib $pid)"
    kill "$pid"; wait "$pid" 2>/dev/null || true
}

for size in "${SIZES[@]}"; do
    run fs "$size"
    run s3 "$size"
done
