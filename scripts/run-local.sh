#!/usr/bin/env bash
# The README's main job: create the local repository (.neon, or
# $NEON_REPO_DIR) if needed, start every daemon, make sure there is a
# default tenant with a running endpoint 'main' on its branch 'main', and
# print how to connect. `make run` builds first. Running it again is safe.
set -euo pipefail
cd "$(dirname "$0")/.."
neon_local=target/debug/neon_local
if [[ ! -x $neon_local ]]; then
  echo "error: $neon_local not found: run 'make run' (it builds first)" >&2
  exit 1
fi
repo=${NEON_REPO_DIR:-.neon}
if [[ ! -f $repo/config ]]; then
  "$neon_local" init
fi
"$neon_local" start
if ! grep -q '^default_tenant_id' "$repo/state.toml" 2>/dev/null; then
  "$neon_local" tenant create --set-default
fi
if [[ ! -f $repo/endpoints/main/endpoint.toml ]]; then
  "$neon_local" endpoint create main
fi
# STATUS is the last column: `running`, or `running (commits stuck for Ns)`.
if ! "$neon_local" endpoint list | awk '$1 == "main"' | grep -q ' running\( (.*)\)\?$'; then
  "$neon_local" endpoint start main
fi
address=$("$neon_local" endpoint list | awk '$1 == "main" { print $2 }')
port=${address##*:}
proxy=$(awk '/^\[/ { section = $0 } section == "[proxy]" && $1 == "listen_pg_addr" { gsub(/"/, "", $3); print $3 }' "$repo/config")
proxy_port=${proxy##*:}
cat <<MSG

Everything runs: the storage broker, the pageserver, the safekeepers, and a
compute (stock PostgreSQL 15) for the branch 'main' of the default tenant.
Connect with

    psql -h 127.0.0.1 -p $port -U cloud_admin postgres

or postgresql://cloud_admin@127.0.0.1:$port/postgres. Or through the proxy,
which starts a branch's compute on demand and suspends it when idle:

    psql "host=127.0.0.1 port=${proxy_port:-5432} dbname=postgres user=cloud_admin options=branch=main"

Then try the README's
walkthrough (\`cargo neon timeline branch --branch-name dev\`, ...);
\`cargo neon endpoint list\` shows the computes, and \`cargo neon stop\`
stops everything.
MSG
