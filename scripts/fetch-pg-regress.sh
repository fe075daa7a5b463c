#!/usr/bin/env bash
# Fetch PostgreSQL's own regression suite for test_runner/regress/test_pg_regress.py:
# src/test/regress of the Debian source package of the installed server
# (`apt-get source`, not built), with the C libraries the suite loads
# compiled against the installed server's headers.
#
# The suite lands in $PG_REGRESS_CACHE/<upstream version>/ (default
# /var/cache/neon-pg-regress/15.18/ for postgresql-15 15.18-0+deb12u1):
# sql/, expected/, data/, parallel_schedule, and the C libraries
# regress.so, refint.so and autoinc.so; a file VERSION holds the Debian
# version it came from. Outside the git tree and world-readable on
# purpose: the compute's PostgreSQL runs as another OS user (PG_OS_USER),
# reads the suite's data files (COPY FROM server files) and loads the
# libraries from there.
#
# Needs deb-src entries, dpkg-dev and postgresql-server-dev-15 of the
# server's version (scripts/install-deps.sh sees to them and calls this).
# Idempotent: does nothing when the suite of the installed version is there.
set -euo pipefail
umask 022

cache=${PG_REGRESS_CACHE:-/var/cache/neon-pg-regress}
pg_config=/usr/lib/postgresql/15/bin/pg_config

# The version of the server the tests run (postgres, pg_regress and psql
# come from its packages): the suite's expected output must be its own.
version=$(dpkg-query -W -f='${Version}' postgresql-15)
upstream=${version%%-*}
dest=$cache/$upstream

if [[ -f $dest/autoinc.so && $(cat "$dest/VERSION" 2>/dev/null) == "$version" ]]; then
  exit 0
fi

headers=$(dpkg-query -W -f='${Version}' postgresql-server-dev-15 2>/dev/null || true)
if [[ $headers != "$version" ]]; then
  echo "error: postgresql-server-dev-15 ${headers:-is not installed}, the server is $version:" \
       "run scripts/install-deps.sh" >&2
  exit 1
fi

sudo=""
if [[ $(id -u) -ne 0 ]]; then
  sudo="sudo"
fi
if [[ ! -w $cache ]]; then
  $sudo mkdir -p "$cache"
  $sudo chown "$(id -u):$(id -g)" "$cache"
  chmod 755 "$cache"
fi

work=$(mktemp -d "$cache/.fetch.XXXXXX")
trap 'rm -rf "$work"' EXIT
echo "fetching the source of postgresql-15 $version into $dest"
# Run as root, apt would try to drop to its sandbox user, who cannot write
# here: the download needs no sandbox (apt checks the hashes of the files).
fetch() {
  (cd "$work" && apt-get source -qq --download-only -o APT::Sandbox::User=root "postgresql-15=$version" >/dev/null)
}
# The source index may predate the deb-src entries: refresh it once.
if ! fetch; then
  $sudo apt-get update -qq
  fetch
fi
# Unpack with Debian's patches applied: they are in the installed server
# too. Its output only on failure: it warns that it cannot check the .dsc's
# signature (no Debian developer keyring), which apt already vouched for
# (the .dsc's hash is in the signed Sources index).
if ! out=$(cd "$work" && dpkg-source -x ./*.dsc src 2>&1); then
  echo "$out" >&2
  exit 1
fi
regress=$work/src/src/test/regress

# The suite's C libraries through PGXS, with the installed server's
# compiler flags (with_llvm=no: no JIT bitcode, which the suite never uses):
# regress.so, and refint.so and autoinc.so of contrib/spi, built by its
# own makefile (the triggers test loads them from the suite's directory,
# where the suite's makefile copies them in a build tree).
cat >"$work/Makefile" <<EOF
MODULES = regress
PG_CONFIG = $pg_config
PGXS := \$(shell \$(PG_CONFIG) --pgxs)
include \$(PGXS)
EOF
make -s -C "$regress" -f "$work/Makefile" with_llvm=no >/dev/null
spi=$work/src/contrib/spi
make -s -C "$spi" USE_PGXS=1 PG_CONFIG="$pg_config" with_llvm=no >/dev/null
cp "$spi/refint.so" "$spi/autoinc.so" "$regress/"
rm -f "$regress"/*.o

echo "$version" >"$regress/VERSION"
chmod -R a+rX "$regress"
rm -rf "$dest"
mv "$regress" "$dest"
echo "PostgreSQL $upstream regression suite in $dest"
