//! `role create|list|delete`: the login roles of a tenant's databases.
//!
//! neon_local keeps each role's password only as a SCRAM-SHA-256 verifier
//! (in `state.toml`), puts the tenant's roles in the spec of every endpoint
//! it starts, and sends the new spec to the tenant's running primaries at
//! once. These are the roles clients log in as through the proxy, which
//! never lets the superuser through.

use std::path::Path;

use anyhow::{bail, Context};
use utils::TenantId;

use crate::endpoint::Endpoint;
use crate::local_env::LocalEnv;
use crate::state::State;

/// Creates the role, or sets a new password for it.
pub fn role_create(
    repo: &Path,
    env: &LocalEnv,
    tenant_id: Option<TenantId>,
    name: &str,
    password: &str,
) -> anyhow::Result<()> {
    let mut state = State::load(repo)?;
    let tenant_id = state.tenant(tenant_id)?;
    compute_api::spec::check_role_name(name)?;
    if password.is_empty() {
        bail!("the password may not be empty");
    }
    let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
    let existed = state
        .roles
        .iter()
        .any(|r| r.tenant_id == tenant_id && r.name == name);
    state.set_role(tenant_id, name, verifier);
    state.save(repo)?;
    let what = if existed {
        "new password for"
    } else {
        "created"
    };
    println!("{what} role '{name}' of tenant {tenant_id}");
    reconfigure_running(repo, env, tenant_id)
}

/// Prints the tenant's roles.
pub fn role_list(repo: &Path, tenant_id: Option<TenantId>) -> anyhow::Result<()> {
    let state = State::load(repo)?;
    let tenant_id = state.tenant(tenant_id)?;
    let mut names: Vec<&str> = state
        .roles
        .iter()
        .filter(|r| r.tenant_id == tenant_id)
        .map(|r| r.name.as_str())
        .collect();
    names.sort_unstable();
    if names.is_empty() {
        println!("tenant {tenant_id} has no login roles: create one with `neon_local role create NAME --password PW`");
    }
    for name in names {
        println!("{name}");
    }
    Ok(())
}

/// Deletes the role: the tenant's running primaries drop it now, the
/// others when they next start.
pub fn role_delete(
    repo: &Path,
    env: &LocalEnv,
    tenant_id: Option<TenantId>,
    name: &str,
) -> anyhow::Result<()> {
    let mut state = State::load(repo)?;
    let tenant_id = state.tenant(tenant_id)?;
    if !state.drop_role(tenant_id, name) {
        bail!("tenant {tenant_id} has no role '{name}' (see `neon_local role list`)");
    }
    state.save(repo)?;
    println!("deleted role '{name}' of tenant {tenant_id}");
    reconfigure_running(repo, env, tenant_id)
}

/// Sends the new spec to the tenant's running primaries.
fn reconfigure_running(repo: &Path, env: &LocalEnv, tenant_id: TenantId) -> anyhow::Result<()> {
    for endpoint in Endpoint::list(repo)? {
        if endpoint.conf.tenant_id != tenant_id
            || !endpoint.conf.is_primary()
            || endpoint.running_pid(env)?.is_none()
        {
            continue;
        }
        endpoint
            .reconfigure(env)
            .with_context(|| format!("updating running endpoint '{}'", endpoint.conf.name))?;
        println!("  applied to running endpoint '{}'", endpoint.conf.name);
    }
    Ok(())
}
