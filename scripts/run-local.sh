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
# The login role for the proxy (which never lets cloud_admin through); its
# password is made once and kept beside the repository's keys.
password_file=$repo/neon_role_password
if [[ ! -s $password_file ]]; then
  (umask 077 && head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$password_file")
fi
password=$(cat "$password_file")
if ! "$neon_local" role list | grep -qx neon; then
  NEON_ROLE_PASSWORD=$password "$neon_local" role create neon > /dev/null
fi
# STATUS is the last column: `running`, or `running (commits stuck for Ns)`.
if ! "$neon_local" endpoint list | awk '$1 == "main"' | grep -q ' running\( (.*)\)\?$'; then
  "$neon_local" endpoint start main
fi
address=$("$neon_local" endpoint list | awk '$1 == "main" { print $2 }')
port=${address##*:}
proxy=$(awk '/^\[/ { section = $0 } section == "[proxy]" && $1 == "listen_pg_addr" { gsub(/"/, "", $3); print $3 }' "$repo/config")
proxy_port=${proxy##*:}
serverless=$(awk '/^\[/ { section = $0 } section == "[proxy]" && $1 == "listen_serverless_addr" { gsub(/"/, "", $3); print $3 }' "$repo/config")
serverless=${serverless:-127.0.0.1:4444}
cat <<MSG

Everything runs: the storage broker, the pageserver, the safekeepers, and a
compute (stock PostgreSQL 15) for the branch 'main' of the default tenant.
Connect as the superuser, directly:

    psql -h 127.0.0.1 -p $port -U cloud_admin postgres

or through the proxy, which starts a branch's compute on demand and
suspends it when idle, as the role 'neon' (its password is in
$password_file):

    psql "postgresql://neon:$password@127.0.0.1:${proxy_port:-5432}/postgres?options=branch%3Dmain"

or over HTTP (and WebSocket), as Neon's serverless driver does
(docs/proxy.md shows how to point the driver and Drizzle at it):

    curl -s http://$serverless/sql -H "Neon-Connection-String: postgresql://neon:$password@127.0.0.1/postgres" -d '{"query": "SELECT 1 AS one"}'

Every daemon's API wants a token: \`cargo neon auth token\` prints one
(docs/authentication.md).

Then try the README's
walkthrough (\`cargo neon timeline branch --branch-name dev\`, ...);
\`cargo neon endpoint list\` shows the computes, and \`cargo neon stop\`
stops everything.
MSG
