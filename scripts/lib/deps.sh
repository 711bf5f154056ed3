# scripts/lib/deps.sh - installs the Debian packages tally builds, runs and tests
# with, when any is missing. Sourced by scripts/test and scripts/demo.
TALLY_DEBIAN_PACKAGES=(
    gcc make cmake pkg-config
    libsqlite3-dev sqlite3
    librdkafka-dev kcat
    libjson-c-dev
    libevent-dev
)

tally_install_deps() {
    local missing=()
    for pkg in "${TALLY_DEBIAN_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" ||
            missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        echo "tally: missing Debian packages: ${missing[*]}" >&2
        echo "tally: install them (sudo apt-get install ${missing[*]}) or run this as root" >&2
        return 1
    fi
    echo "tally: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
