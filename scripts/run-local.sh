#!/usr/bin/env bash
# The README's main job: create the local repository (.neon) if needed and
# start every daemon, then say how to reach them. `make run` builds first.
set -euo pipefail
cd "$(dirname "$0")/.."
neon_local=target/debug/neon_local
if [[ ! -x $neon_local ]]; then
  echo "error: $neon_local not found: run 'make run' (it builds first)" >&2
  exit 1
fi
if [[ ! -f .neon/config ]]; then
  "$neon_local" init
fi
"$neon_local" start
cat <<'MSG'

The storage broker, pageserver and safekeeper are running; see their status
with `cargo neon pageserver status` (and likewise for the others), and stop
everything with `cargo neon stop`.

Not yet: computes. Tenants, branches and endpoints, and so a psql
connection string, come with the compute issue (docs/ARCHITECTURE.md keeps
the status).
MSG
