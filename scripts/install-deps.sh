#!/usr/bin/env bash
# Install what building and testing the project needs on a fresh Debian
# bookworm machine: PostgreSQL 15 (server, client tools, pgbench,
# pg_waldump), the tools the build uses, and PostgreSQL's own regression
# suite for test_pg_regress.py (scripts/fetch-pg-regress.sh). Idempotent;
# needs root (or sudo) only when something is missing.
set -euo pipefail

packages=(
  postgresql-15          # the compute's PostgreSQL, pg_waldump, pgbench
  postgresql-client-15   # psql, pg_amcheck
  build-essential        # a C toolchain for crates with C parts
  pkg-config
  protobuf-compiler      # protoc, for the storage broker's gRPC definitions
  python3-venv           # the test runner's virtual environment
  util-linux             # runuser: PostgreSQL must not run as root
  openssl                # certificates for the proxy's TLS (tests, docs/proxy.md)
  dpkg-dev               # dpkg-source: `apt-get source` of the regression suite
  fuse3                  # fusermount3: lazy computes (compute_fs) when not root
)

sudo=""
if [[ $(id -u) -ne 0 ]]; then
  sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
updated=no
apt_update() {
  if [[ $updated == no ]]; then
    $sudo apt-get update -qq
    updated=yes
  fi
}

# deb-src entries, for `apt-get source postgresql-15`: those of the
# machine's Debian mirror (debian.sources) in a file of their own.
if ! grep -qsE '^(deb-src[[:space:]]|Types:.*deb-src)' /etc/apt/sources.list /etc/apt/sources.list.d/*; then
  sources=/etc/apt/sources.list.d/debian.sources
  if [[ -f $sources ]]; then
    sed 's/^Types:.*/Types: deb-src/' "$sources"
  else
    printf 'Types: deb-src\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: %s\n\n' \
      http://deb.debian.org/debian "bookworm bookworm-updates" /usr/share/keyrings/debian-archive-keyring.gpg \
      http://deb.debian.org/debian-security bookworm-security /usr/share/keyrings/debian-archive-keyring.gpg
  fi | $sudo tee /etc/apt/sources.list.d/debian-src.sources >/dev/null
  apt_update
fi

missing=()
for package in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done

if ((${#missing[@]} > 0)); then
  echo "installing: ${missing[*]}"
  apt_update
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The regression suite's C library is built against the server's headers,
# and its expected output is that of one minor version: the server, its
# client tools (pg_regress, psql), the headers and the source must be one
# version. The installed server's when the archive still has it (a fresh
# machine just installed the archive's; this leaves a server that other
# work uses alone); else the archive moved on (a point release replaced
# that minor): all three are upgraded to the archive's version.
version() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || true; }
server=$(version postgresql-15)
if [[ $(version postgresql-client-15) != "$server" || $(version postgresql-server-dev-15) != "$server" ]]; then
  apt_update
  archive=$(apt-cache madison postgresql-15 postgresql-server-dev-15 | awk -F' *[|] *' -v v="$server" '$2 == v { sub(/^ +/, "", $1); print $1, $3 }')
  if [[ $(version postgresql-client-15) == "$server" ]] \
     && grep -q '^postgresql-server-dev-15 .*Packages$' <<<"$archive" \
     && grep -q '^postgresql-15 .*Sources$' <<<"$archive"; then
    echo "installing: postgresql-server-dev-15=$server"
    $sudo apt-get install -y -qq --no-install-recommends "postgresql-server-dev-15=$server"
  else
    echo "upgrading postgresql-15, postgresql-client-15, postgresql-server-dev-15 to the archive's version"
    $sudo apt-get install -y -qq --no-install-recommends postgresql-15 postgresql-client-15 postgresql-server-dev-15
  fi
fi

if ! command -v cargo >/dev/null; then
  echo "error: cargo not found: install a Rust toolchain (https://rustup.rs)" >&2
  exit 1
fi

# cargo-fuzz, for the fuzz targets (scripts/fuzz-smoke.sh, `make fuzz`).
CARGO_FUZZ_VERSION=0.13.2
if [[ $(cargo fuzz --version 2>/dev/null) != "cargo-fuzz $CARGO_FUZZ_VERSION" ]]; then
  echo "installing: cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi

# PostgreSQL refuses to run as root; tests run it as this OS user then.
if [[ $(id -u) -eq 0 ]] && ! id -u "${PG_OS_USER:-postgres}" >/dev/null 2>&1; then
  useradd --system --create-home "${PG_OS_USER:-postgres}"
fi

"$(dirname "$0")/fetch-pg-regress.sh"
