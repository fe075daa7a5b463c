#!/usr/bin/env bash
# Install what building and testing the project needs on a fresh Debian
# bookworm machine: PostgreSQL 15 (server, client tools, pgbench,
# pg_waldump), and the tools the build uses. Idempotent; needs root (or
# sudo) only when something is missing.
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
)

missing=()
for package in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done

if ((${#missing[@]} > 0)); then
  echo "installing: ${missing[*]}"
  sudo=""
  if [[ $(id -u) -ne 0 ]]; then
    sudo="sudo"
  fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! command -v cargo >/dev/null; then
  echo "error: cargo not found: install a Rust toolchain (https://rustup.rs)" >&2
  exit 1
fi

# PostgreSQL refuses to run as root; tests run it as this OS user then.
if [[ $(id -u) -eq 0 ]] && ! id -u "${PG_OS_USER:-postgres}" >/dev/null 2>&1; then
  useradd --system --create-home "${PG_OS_USER:-postgres}"
fi
