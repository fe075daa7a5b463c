#!/usr/bin/env bash
# cargo-skeleton.sh OUT: copies the workspace's manifests (Cargo.toml,
# Cargo.lock, .cargo/) into OUT with every target's source replaced by a
# stub (`fn main() {}`, an empty lib.rs). The Dockerfile builds the
# skeleton first: that layer holds every dependency compiled, and Docker
# reuses it as long as no manifest changes, so a source change rebuilds only
# the workspace's own crates (what `cargo chef` does, without installing it).
set -euo pipefail
out=${1:?usage: cargo-skeleton.sh OUT}
mkdir -p "$out"
cp Cargo.toml Cargo.lock "$out/"
[[ -d .cargo ]] && cp -r .cargo "$out/"

stub() { # stub FILE: a source file that compiles as a binary or a library
  mkdir -p "$(dirname "$out/$1")"
  case $1 in
    */lib.rs) : >"$out/$1" ;;
    *) echo 'fn main() {}' >"$out/$1" ;;
  esac
}

while IFS= read -r manifest; do
  dir=$(dirname "$manifest")
  mkdir -p "$out/$dir"
  cp "$manifest" "$out/$dir/"
  # Targets cargo discovers by convention, and any explicit `path = "x.rs"`.
  while IFS= read -r file; do
    stub "$dir/$file"
  done < <(
    cd "$dir"
    {
      for f in src/lib.rs src/main.rs build.rs; do [[ -f $f ]] && echo "$f"; done
      find src/bin tests benches examples -maxdepth 2 -name '*.rs' 2>/dev/null |
        grep -E '^[^/]+/[^/]+\.rs$|^src/bin/[^/]+\.rs$|/main\.rs$' || true
      sed -n 's/^[[:space:]]*path[[:space:]]*=[[:space:]]*"\([^"]*\.rs\)".*/\1/p' Cargo.toml
    } | sort -u
  )
done < <(find . -name Cargo.toml -not -path './target/*' -not -path './Cargo.toml' -not -path "./${out#/}/*" | sort)
