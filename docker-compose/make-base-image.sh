#!/usr/bin/env bash
# Makes, without any container registry, the two images the Dockerfile
# starts FROM:
#
#   neon-local/debian:bookworm  Debian bookworm (minbase) made by debootstrap
#                               from Debian's package mirror and `docker import`ed;
#                               what debian:bookworm is on a registry.
#   neon-local/rust:bookworm    that image plus this machine's active Rust
#                               toolchain (`rustc --print sysroot`, without
#                               its docs) in /usr/local/rust; what
#                               rust:<version>-bookworm is on a registry.
#
# Idempotent: an image whose tag exists is kept (the Rust image is made again
# when the host's `rustc --version` changed). With registry access you may
# skip this script and retag instead:
#   docker tag debian:bookworm neon-local/debian:bookworm
#   docker tag rust:1-bookworm  neon-local/rust:bookworm
#
# Needs root (debootstrap, for the first image only) and the debootstrap
# package, which it installs with apt-get when missing.
#
# Environment: DEBIAN_MIRROR (default http://deb.debian.org/debian),
# BASE_IMAGE, RUST_IMAGE (the tags), FORCE=1 to make both again.
set -euo pipefail

BASE_IMAGE=${BASE_IMAGE:-neon-local/debian:bookworm}
RUST_IMAGE=${RUST_IMAGE:-neon-local/rust:bookworm}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm

log() { echo "make-base-image: $*" >&2; }

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

sudo=""
if [[ $(id -u) -ne 0 ]]; then
  sudo="sudo"
fi

# Commands run on exit, whatever happens: temporary directories, containers.
cleanup=()
trap 'for c in "${cleanup[@]}"; do eval "$c" || true; done' EXIT

make_debian() {
  if [[ ${FORCE:-0} != 1 ]] && image_exists "$BASE_IMAGE"; then
    log "$BASE_IMAGE exists"
    return
  fi
  if ! command -v debootstrap >/dev/null && [[ ! -x /usr/sbin/debootstrap ]]; then
    log "installing debootstrap"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null ||
      { $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
  fi
  local root
  root=$(mktemp -d "${TMPDIR:-/tmp}/neon-debootstrap.XXXXXX")
  cleanup+=("$sudo rm -rf '$root' '$root.log'")
  log "debootstrap $SUITE (minbase) from $DEBIAN_MIRROR into $root"
  local started=$SECONDS
  $sudo env PATH="$PATH:/usr/sbin:/sbin" debootstrap --variant=minbase "$SUITE" "$root" "$DEBIAN_MIRROR" \
    >"$root.log" 2>&1 || { tail -30 "$root.log" >&2; rm -f "$root.log"; return 1; }
  rm -f "$root.log"
  # What the registry's debian image has: updates and security suites, no
  # recommended packages, no apt caches in layers.
  $sudo tee "$root/etc/apt/sources.list" >/dev/null <<EOF
deb $DEBIAN_MIRROR $SUITE main
deb $DEBIAN_MIRROR $SUITE-updates main
deb ${DEBIAN_MIRROR%/debian}/debian-security $SUITE-security main
EOF
  $sudo tee "$root/etc/apt/apt.conf.d/docker-no-recommends" >/dev/null <<EOF
APT::Install-Recommends "false";
APT::Install-Suggests "false";
EOF
  $sudo tee "$root/etc/apt/apt.conf.d/docker-clean" >/dev/null <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  # This machine's own CA certificates (an intercepting proxy's, a
  # company's): images that install ca-certificates trust them too, so cargo
  # and pip reach crates.io and PyPI from containers as they do from here.
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    $sudo mkdir -p "$root/usr/local/share/ca-certificates"
    $sudo cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
  fi
  $sudo rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/archives/*.deb "$root"/tmp/*
  $sudo tar -C "$root" --numeric-owner -c . |
    docker import --change 'CMD ["bash"]' --change 'ENV LANG=C.UTF-8' - "$BASE_IMAGE" >/dev/null
  log "$BASE_IMAGE made in $((SECONDS - started)) s"
}

make_rust() {
  command -v rustc >/dev/null || { log "error: no rustc on this machine"; return 1; }
  local version sysroot
  version=$(rustc --version)
  sysroot=$(rustc --print sysroot)
  if [[ ${FORCE:-0} != 1 ]] && image_exists "$RUST_IMAGE" &&
    [[ $(docker image inspect -f '{{ index .Config.Labels "rustc.version" }}' "$RUST_IMAGE") == "$version" ]]; then
    log "$RUST_IMAGE exists ($version)"
    return
  fi
  [[ -x $sysroot/bin/cargo ]] || { log "error: $sysroot has no cargo"; return 1; }
  log "$RUST_IMAGE: $BASE_IMAGE + $version from $sysroot"
  local started=$SECONDS container
  container=neon-make-rust-image-$$
  cleanup+=("docker rm -f '$container' >/dev/null 2>&1")
  # The toolchain without its HTML docs (800 MB), and CA certificates for
  # cargo's downloads.
  docker run --name "$container" -v "$sysroot:/toolchain:ro" "$BASE_IMAGE" bash -euc '
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ca-certificates >/dev/null
    rm -rf /var/lib/apt/lists/*
    mkdir -p /usr/local/rust
    cd /toolchain
    tar --exclude=./share/doc -c . | tar -C /usr/local/rust -x
    /usr/local/rust/bin/cargo --version >/dev/null
  ' >&2
  docker commit \
    --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV CARGO_HOME=/usr/local/cargo' \
    --change "LABEL rustc.version=\"$version\"" \
    "$container" "$RUST_IMAGE" >/dev/null
  log "$RUST_IMAGE made in $((SECONDS - started)) s"
}

make_debian
make_rust
