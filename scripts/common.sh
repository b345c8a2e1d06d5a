# Shared by the set-up scripts: where the build lives and how system packages are
# installed. Sourced, not run.

# One persistent build directory outside the checkout, shared by every run.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/berth-target}"
mkdir -p "$CARGO_TARGET_DIR"

# Install the Debian packages given as arguments that are not installed yet.
apt_install_missing() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "installing: ${missing[*]}" >&2
        local sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

# What building berth needs: a C/C++ toolchain and libclang for RocksDB's bindings.
install_build_deps() {
    apt_install_missing build-essential libclang-dev pkg-config
    command -v cargo >/dev/null || { echo "cargo is required (https://rustup.rs)" >&2; exit 1; }
}
