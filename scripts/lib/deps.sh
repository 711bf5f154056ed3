# scripts/lib/deps.sh - installs the Debian packages tally builds, runs and tests
# with, when any is missing. Sourced by scripts/test and scripts/demo.
TALLY_DEBIAN_PACKAGES=(
    gcc make cmake pkg-config
    libsqlite3-dev sqlite3
    librdkafka-dev kcat
    libjson-c-dev
    libevent-dev
)

# Only the test suite needs these: curl drives the daemon's HTTP endpoint and
# Chromium renders its live page headless (tests/kafka/test_http.sh); influxdb
# is the InfluxDB server `tally ingest influxdb` is tested against
# (scripts/influxdb runs its own influxd on loopback, beside any system service
# the package may enable on 8086); openssl makes the test broker's CA and
# certificates for its TLS and SASL_SSL listeners (scripts/kafka, KAFKA_SECURE=1);
# clang-format checks that the C sources keep .clang-format (scripts/format).
TALLY_TEST_DEBIAN_PACKAGES=(
    curl
    chromium
    influxdb
    openssl
    clang-format
)

# The fuzz harnesses (scripts/fuzz, tests/fuzz): clang and its sanitizer and
# libFuzzer runtimes (a recommendation of clang only, so named here).
TALLY_FUZZ_DEBIAN_PACKAGES=(
    clang
    libclang-rt-dev
)

# tally_install_packages PKG...: installs those of PKG that are missing.
tally_install_packages() {
    local missing=()
    for pkg in "$@"; do
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

# What building and running tally needs.
tally_install_deps() { tally_install_packages "${TALLY_DEBIAN_PACKAGES[@]}"; }

# That, and what the test suite needs besides.
tally_install_test_deps() {
    tally_install_packages "${TALLY_DEBIAN_PACKAGES[@]}" "${TALLY_TEST_DEBIAN_PACKAGES[@]}"
}

# What building and running the fuzz harnesses needs besides.
tally_install_fuzz_deps() { tally_install_packages "${TALLY_FUZZ_DEBIAN_PACKAGES[@]}"; }
