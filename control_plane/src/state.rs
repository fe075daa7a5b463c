//! What neon_local remembers besides its config: the default tenant and
//! the branch names of timelines (`state.toml` in the repository).

use std::path::Path;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use utils::{TenantId, TimelineId};

pub const STATE_FILE: &str = "state.toml";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct State {
    pub default_tenant_id: Option<TenantId>,
    pub branches: Vec<Branch>,
    /// Login roles of tenants' databases, in the specs of their endpoints.
    pub roles: Vec<LoginRole>,
    /// Roles deleted with `role delete`: endpoints drop them at start.
    pub dropped_roles: Vec<DroppedRole>,
}

/// A login role, with its password kept only as a SCRAM-SHA-256 verifier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRole {
    pub tenant_id: TenantId,
    pub name: String,
    pub encrypted_password: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DroppedRole {
    pub tenant_id: TenantId,
    pub name: String,
}

/// A branch name of a tenant's timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Branch {
    pub tenant_id: TenantId,
    pub name: String,
    pub timeline_id: TimelineId,
}

impl State {
    pub fn load(repo: &Path) -> anyhow::Result<Self> {
        let path = repo.join(STATE_FILE);
        if !path.exists() {
            return Ok(State::default());
        }
        daemon_utils::load_config(Some(&path))
    }

    /// Writes through a temporary file and a rename.
    pub fn save(&self, repo: &Path) -> anyhow::Result<()> {
        let path = repo.join(STATE_FILE);
        let tmp = repo.join(format!("{STATE_FILE}.tmp"));
        let text = format!(
            "# neon_local's default tenant and branch names; written by neon_local.\n\n{}",
            toml::to_string_pretty(self).context("serializing the state")?
        );
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .with_context(|| format!("writing {}", path.display()))
    }

    /// The tenant's login roles, as a spec lists them.
    pub fn roles_of(&self, tenant_id: TenantId) -> Vec<compute_api::spec::Role> {
        self.roles
            .iter()
            .filter(|r| r.tenant_id == tenant_id)
            .map(|r| compute_api::spec::Role {
                name: r.name.clone(),
                password: None,
                encrypted_password: Some(r.encrypted_password.clone()),
            })
            .collect()
    }

    /// The roles deleted from the tenant, as a spec's delta operations.
    pub fn dropped_roles_of(&self, tenant_id: TenantId) -> Vec<compute_api::DeltaOp> {
        self.dropped_roles
            .iter()
            .filter(|r| r.tenant_id == tenant_id)
            .map(|r| compute_api::DeltaOp::DeleteRole {
                name: r.name.clone(),
            })
            .collect()
    }

    /// Adds (or replaces the password of) a role of the tenant.
    pub fn set_role(&mut self, tenant_id: TenantId, name: &str, encrypted_password: String) {
        self.dropped_roles
            .retain(|r| !(r.tenant_id == tenant_id && r.name == name));
        self.roles
            .retain(|r| !(r.tenant_id == tenant_id && r.name == name));
        self.roles.push(LoginRole {
            tenant_id,
            name: name.to_owned(),
            encrypted_password,
        });
    }

    /// Removes a role of the tenant; false if it had none of that name.
    pub fn drop_role(&mut self, tenant_id: TenantId, name: &str) -> bool {
        let before = self.roles.len();
        self.roles
            .retain(|r| !(r.tenant_id == tenant_id && r.name == name));
        if self.roles.len() == before {
            return false;
        }
        self.dropped_roles.push(DroppedRole {
            tenant_id,
            name: name.to_owned(),
        });
        true
    }

    /// The tenant given, else the default one.
    pub fn tenant(&self, given: Option<TenantId>) -> anyhow::Result<TenantId> {
        match given.or(self.default_tenant_id) {
            Some(id) => Ok(id),
            None => bail!(
                "no --tenant-id given and no default tenant: create one with `neon_local tenant create --set-default`"
            ),
        }
    }

    pub fn timeline(&self, tenant_id: TenantId, name: &str) -> Option<TimelineId> {
        self.branches
            .iter()
            .find(|b| b.tenant_id == tenant_id && b.name == name)
            .map(|b| b.timeline_id)
    }

    /// The timeline of branch `name`, or an error naming the branches there are.
    pub fn require_timeline(&self, tenant_id: TenantId, name: &str) -> anyhow::Result<TimelineId> {
        if let Some(id) = self.timeline(tenant_id, name) {
            return Ok(id);
        }
        let names: Vec<&str> = self
            .branches
            .iter()
            .filter(|b| b.tenant_id == tenant_id)
            .map(|b| b.name.as_str())
            .collect();
        let known = if names.is_empty() {
            "it has none".to_owned()
        } else {
            format!("it has {}", names.join(", "))
        };
        bail!("tenant {tenant_id} has no branch named '{name}' ({known})")
    }

    pub fn branch_name(&self, tenant_id: TenantId, timeline_id: TimelineId) -> Option<&str> {
        self.branches
            .iter()
            .find(|b| b.tenant_id == tenant_id && b.timeline_id == timeline_id)
            .map(|b| b.name.as_str())
    }

    /// Forgets branch `name`; whether there was one.
    pub fn remove_branch(&mut self, tenant_id: TenantId, name: &str) -> bool {
        let before = self.branches.len();
        self.branches
            .retain(|b| !(b.tenant_id == tenant_id && b.name == name));
        self.branches.len() != before
    }

    pub fn add_branch(&mut self, tenant_id: TenantId, name: &str, timeline_id: TimelineId) {
        self.branches.push(Branch {
            tenant_id,
            name: name.to_owned(),
            timeline_id,
        });
    }
}

/// Branch and endpoint names: letters, digits, `_`, `-` and `.`.
pub fn check_name(what: &str, name: &str) -> anyhow::Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !name.starts_with('.');
    if !valid {
        bail!("invalid {what} name '{name}': use 1 to 63 letters, digits, '_', '-' or '.'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_lookups() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(State::load(dir.path()).unwrap(), State::default());
        let tenant = TenantId::generate();
        let main = TimelineId::generate();
        let mut state = State {
            default_tenant_id: Some(tenant),
            ..Default::default()
        };
        state.add_branch(tenant, "main", main);
        state.save(dir.path()).unwrap();
        let loaded = State::load(dir.path()).unwrap();
        assert_eq!(loaded, state);
        assert_eq!(loaded.tenant(None).unwrap(), tenant);
        assert_eq!(loaded.require_timeline(tenant, "main").unwrap(), main);
        assert_eq!(loaded.branch_name(tenant, main), Some("main"));
        let err = loaded
            .require_timeline(tenant, "nope")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no branch named 'nope' (it has main)"),
            "{err}"
        );
        assert!(State::default().tenant(None).is_err());
    }

    #[test]
    fn names() {
        check_name("branch", "migration_check").unwrap();
        check_name("endpoint", "ep-1.a").unwrap();
        for bad in ["", "a b", "../x", ".hidden", "a/b"] {
            assert!(check_name("branch", bad).is_err(), "{bad}");
        }
    }
}
