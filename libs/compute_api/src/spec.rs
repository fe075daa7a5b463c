//! The compute spec: which timeline a compute serves, where the storage is,
//! how postgres listens, and the roles and databases it must have.
//!
//! ```json
//! {
//!   "format_version": 1,
//!   "tenant_id": "9ef87a5bf0d92544f6fafeeb3239695c",
//!   "timeline_id": "de200bd42b49cc1814412c7e592dd6e9",
//!   "pageserver_connstring": "postgresql://cloud_admin@127.0.0.1:64000",
//!   "pageserver_http": "127.0.0.1:9898",
//!   "safekeepers": ["127.0.0.1:5454"],
//!   "pg_port": 55432,
//!   "mode": "primary",
//!   "roles": [{"name": "alice", "password": "secret"}],
//!   "databases": [{"name": "app", "owner": "alice"}],
//!   "delta_operations": [{"action": "delete_role", "name": "bob"}],
//!   "settings": {"work_mem": "8MB"}
//! }
//! ```

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};
use utils::{Lsn, TenantId, TimelineId};

/// The only format this code reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// The superuser compute_ctl and the control plane connect as. Specs may
/// not create, alter or drop it.
pub const SUPERUSER: &str = "cloud_admin";

/// The `application_name` of the proxy's pooled connections (SQL over
/// HTTP). The compute's activity monitor does not count them while they
/// are idle: a warm pool does not keep a compute from suspending.
pub const SERVERLESS_APPLICATION_NAME: &str = "neon_serverless_pool";

/// Settings compute_ctl sets itself: the WAL service depends on them, so a
/// spec may not change them.
pub const RESERVED_SETTINGS: &[&str] = &[
    "port",
    "listen_addresses",
    "synchronous_standby_names",
    "synchronous_commit",
    "wal_level",
    "wal_consistency_checking",
    "wal_compression",
    "max_wal_senders",
    "max_replication_slots",
    "hot_standby",
    "unix_socket_directories",
    "hba_file",
    "ident_file",
    "data_directory",
    "config_file",
    "restart_after_crash",
    "password_encryption",
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComputeSpec {
    #[serde(default = "format_version")]
    pub format_version: u32,
    pub tenant_id: TenantId,
    pub timeline_id: TimelineId,
    /// The pageserver's libpq address: `host:port` or
    /// `postgresql://user@host:port`.
    pub pageserver_connstring: String,
    /// The pageserver's HTTP API, `host:port`: compute_ctl waits there until
    /// the pageserver has the WAL the base backup needs.
    pub pageserver_http: String,
    /// Safekeeper libpq addresses, `host:port`. Required for a primary.
    #[serde(default)]
    pub safekeepers: Vec<String>,
    /// The port postgres listens on.
    pub pg_port: u16,
    /// postgres's `listen_addresses`.
    #[serde(default = "default_listen")]
    pub listen_addresses: String,
    /// PostgreSQL major version.
    #[serde(default = "default_pg_version")]
    pub pg_version: u32,
    #[serde(default)]
    pub mode: ComputeMode,
    #[serde(default)]
    pub roles: Vec<Role>,
    #[serde(default)]
    pub databases: Vec<Database>,
    /// Changes that cannot be read from the desired state: drops and renames,
    /// applied before `roles` and `databases`.
    #[serde(default)]
    pub delta_operations: Vec<DeltaOp>,
    /// Extra `postgresql.conf` settings (not those in [`RESERVED_SETTINGS`]).
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
    /// Suspend after this long without clients (used by the control plane;
    /// compute_ctl only reports activity).
    #[serde(default)]
    pub suspend_timeout_seconds: Option<u64>,
    /// Commits wait while the pageserver lags the safekeepers' commit LSN
    /// by more than this many bytes (backpressure); unset: 256 MiB, 0: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pageserver_lag_bytes: Option<u64>,
    /// Lazy data directory (relation blocks read from the pageserver on
    /// first use, through compute_ctl's FUSE filesystem): `true` requires
    /// it, `false` copies every relation in the base backup; unset: lazy
    /// where FUSE can be mounted, else full (said in compute_ctl's log).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lazy: Option<bool>,
    /// The token compute_ctl presents to the pageserver (libpq password,
    /// HTTP bearer) and the safekeepers: one for the spec's tenant. Unset
    /// where the storage does not authenticate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_auth_token: Option<String>,
}

fn format_version() -> u32 {
    FORMAT_VERSION
}

fn default_listen() -> String {
    "127.0.0.1".into()
}

fn default_pg_version() -> u32 {
    15
}

/// Read-write, read-only at a fixed LSN, or a read replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ComputeMode {
    /// Read-write: its WAL goes through the walproposer to the safekeepers.
    #[default]
    Primary,
    /// Read-only at this LSN (time travel): postgres runs as a hot standby
    /// that never gets WAL, so it refuses writes.
    Static(Lsn),
    /// A read replica: a hot standby that starts at the timeline's latest
    /// shutdown checkpoint and streams the primary's WAL from the
    /// safekeepers, following it; it refuses writes.
    Replica,
}

impl ComputeMode {
    pub fn name(&self) -> &'static str {
        match self {
            ComputeMode::Primary => "primary",
            ComputeMode::Static(_) => "static",
            ComputeMode::Replica => "replica",
        }
    }
}

/// A login role (never a superuser).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Role {
    pub name: String,
    /// A password in clear text: compute_ctl hashes it into a SCRAM-SHA-256
    /// verifier before postgres sees it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// A precomputed SCRAM-SHA-256 verifier (`SCRAM-SHA-256$4096:...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypted_password: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Database {
    pub name: String,
    /// Owner role [default: the superuser].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum DeltaOp {
    DeleteRole { name: String },
    RenameRole { name: String, new_name: String },
    DeleteDb { name: String },
    RenameDb { name: String, new_name: String },
}

/// A spec that cannot be used, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SpecError(pub String);

fn err(message: impl Into<String>) -> SpecError {
    SpecError(message.into())
}

/// The longest identifier PostgreSQL keeps (`NAMEDATALEN - 1`).
const MAX_IDENTIFIER: usize = 63;

fn check_name(what: &str, name: &str) -> Result<(), SpecError> {
    if name.is_empty() || name.len() > MAX_IDENTIFIER {
        return Err(err(format!(
            "{what} name {name:?} must have 1 to {MAX_IDENTIFIER} bytes"
        )));
    }
    if name.contains('\0') {
        return Err(err(format!("{what} name {name:?} contains a NUL byte")));
    }
    Ok(())
}

pub fn check_role_name(name: &str) -> Result<(), SpecError> {
    check_name("role", name)?;
    if name == SUPERUSER || name.starts_with("pg_") {
        return Err(err(format!(
            "role {name:?} is reserved: specs may not manage {SUPERUSER} or pg_* roles"
        )));
    }
    Ok(())
}

fn check_db_name(name: &str) -> Result<(), SpecError> {
    check_name("database", name)?;
    if matches!(name, "postgres" | "template0" | "template1") {
        return Err(err(format!(
            "database {name:?} is reserved: specs may not manage it"
        )));
    }
    Ok(())
}

impl ComputeSpec {
    /// Parses and validates a spec.
    pub fn from_json(text: &str) -> Result<Self, SpecError> {
        let spec: ComputeSpec =
            serde_json::from_str(text).map_err(|e| err(format!("invalid compute spec: {e}")))?;
        spec.validate()?;
        Ok(spec)
    }

    /// Checks what serde cannot: versions, names, passwords, settings.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.format_version != FORMAT_VERSION {
            return Err(err(format!(
                "unsupported spec format_version {} (this compute_ctl reads {FORMAT_VERSION})",
                self.format_version
            )));
        }
        if self.pg_version != 15 {
            return Err(err(format!(
                "PostgreSQL {} is not supported: only 15 is implemented",
                self.pg_version
            )));
        }
        if self.pg_port == 0 {
            return Err(err("pg_port must not be 0"));
        }
        self.pageserver_pg_addr()?;
        if self.pageserver_http.trim().is_empty() {
            return Err(err("pageserver_http is empty"));
        }
        match self.mode {
            ComputeMode::Primary if self.safekeepers.is_empty() => {
                return Err(err("a primary compute needs at least one safekeeper"));
            }
            ComputeMode::Replica if self.safekeepers.is_empty() => {
                return Err(err("a replica needs the safekeepers to stream WAL from"));
            }
            ComputeMode::Static(lsn) if !lsn.is_valid() => {
                return Err(err("a static compute needs a valid LSN"));
            }
            _ => {}
        }
        let mut roles = HashSet::new();
        for role in &self.roles {
            check_role_name(&role.name)?;
            if !roles.insert(role.name.as_str()) {
                return Err(err(format!("role {:?} is listed twice", role.name)));
            }
            if role.password.is_some() && role.encrypted_password.is_some() {
                return Err(err(format!(
                    "role {:?} has both password and encrypted_password",
                    role.name
                )));
            }
            if let Some(verifier) = &role.encrypted_password {
                if !is_scram_verifier(verifier) {
                    return Err(err(format!(
                        "role {:?}: encrypted_password must be a SCRAM-SHA-256 verifier (SCRAM-SHA-256$<iterations>:<salt>$<stored key>:<server key>)",
                        role.name
                    )));
                }
            }
        }
        let mut dbs = HashSet::new();
        for db in &self.databases {
            check_db_name(&db.name)?;
            if !dbs.insert(db.name.as_str()) {
                return Err(err(format!("database {:?} is listed twice", db.name)));
            }
            if let Some(owner) = &db.owner {
                check_name("owner", owner)?;
            }
        }
        for op in &self.delta_operations {
            match op {
                DeltaOp::DeleteRole { name } => check_role_name(name)?,
                DeltaOp::RenameRole { name, new_name } => {
                    check_role_name(name)?;
                    check_role_name(new_name)?;
                }
                DeltaOp::DeleteDb { name } => check_db_name(name)?,
                DeltaOp::RenameDb { name, new_name } => {
                    check_db_name(name)?;
                    check_db_name(new_name)?;
                }
            }
        }
        for (name, value) in &self.settings {
            let valid = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
            if !valid {
                return Err(err(format!("invalid setting name {name:?}")));
            }
            if RESERVED_SETTINGS.contains(&name.to_ascii_lowercase().as_str()) {
                return Err(err(format!(
                    "setting {name:?} is set by compute_ctl and may not be changed"
                )));
            }
            if value.contains(['\n', '\r', '\0']) {
                return Err(err(format!("setting {name:?}: the value has a line break")));
            }
        }
        Ok(())
    }

    /// The pageserver's libpq `host:port` and the user to connect as.
    pub fn pageserver_pg_addr(&self) -> Result<(String, String), SpecError> {
        let s = self.pageserver_connstring.trim();
        let rest = s
            .strip_prefix("postgresql://")
            .or_else(|| s.strip_prefix("postgres://"));
        let (user, hostport) = match rest {
            Some(rest) => {
                let rest = rest.split(['/', '?']).next().unwrap_or_default();
                match rest.rsplit_once('@') {
                    Some((user, hostport)) => {
                        (user.split(':').next().unwrap_or_default(), hostport)
                    }
                    None => ("", rest),
                }
            }
            None => ("", s),
        };
        let valid = hostport
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !valid {
            return Err(err(format!(
                "pageserver_connstring {s:?} is not host:port nor postgresql://[user@]host:port"
            )));
        }
        let user = if user.is_empty() { SUPERUSER } else { user };
        Ok((hostport.to_owned(), user.to_owned()))
    }
}

/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, as
/// PostgreSQL stores it.
pub fn is_scram_verifier(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("SCRAM-SHA-256$") else {
        return false;
    };
    let Some((params, keys)) = rest.split_once('$') else {
        return false;
    };
    let Some((iterations, salt)) = params.split_once(':') else {
        return false;
    };
    let Some((stored, server)) = keys.split_once(':') else {
        return false;
    };
    let base64 = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '='))
    };
    iterations.parse::<u32>().is_ok_and(|n| n > 0)
        && base64(salt)
        && base64(stored)
        && base64(server)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> serde_json::Value {
        serde_json::json!({
            "tenant_id": "9ef87a5bf0d92544f6fafeeb3239695c",
            "timeline_id": "de200bd42b49cc1814412c7e592dd6e9",
            "pageserver_connstring": "127.0.0.1:64000",
            "pageserver_http": "127.0.0.1:9898",
            "safekeepers": ["127.0.0.1:5454"],
            "pg_port": 55432,
        })
    }

    fn parse(v: serde_json::Value) -> Result<ComputeSpec, SpecError> {
        ComputeSpec::from_json(&v.to_string())
    }

    #[test]
    fn minimal_spec_gets_defaults() {
        let spec = parse(minimal()).unwrap();
        assert_eq!(spec.mode, ComputeMode::Primary);
        assert_eq!(spec.listen_addresses, "127.0.0.1");
        assert_eq!(spec.pg_version, 15);
        assert_eq!(
            spec.pageserver_pg_addr().unwrap(),
            ("127.0.0.1:64000".to_owned(), "cloud_admin".to_owned())
        );
        // Round trip.
        let text = serde_json::to_string(&spec).unwrap();
        assert_eq!(ComputeSpec::from_json(&text).unwrap(), spec);
    }

    #[test]
    fn static_mode_and_connstring_forms() {
        let mut v = minimal();
        v["mode"] = serde_json::json!({"static": "0/16B5A50"});
        v["pageserver_connstring"] = "postgresql://someone@localhost:6400/db".into();
        v["safekeepers"] = serde_json::json!([]);
        let spec = parse(v).unwrap();
        assert_eq!(spec.mode, ComputeMode::Static(Lsn(0x16B5A50)));
        assert_eq!(
            spec.pageserver_pg_addr().unwrap(),
            ("localhost:6400".to_owned(), "someone".to_owned())
        );
    }

    #[test]
    fn rejects_bad_specs() {
        let cases: Vec<(&str, serde_json::Value, &str)> = vec![
            ("format_version", 2.into(), "format_version 2"),
            ("pg_version", 16.into(), "only 15"),
            (
                "safekeepers",
                serde_json::json!([]),
                "at least one safekeeper",
            ),
            ("pageserver_connstring", "nohost".into(), "not host:port"),
            (
                "roles",
                serde_json::json!([{"name": "cloud_admin"}]),
                "reserved",
            ),
            (
                "roles",
                serde_json::json!([{"name": "a"}, {"name": "a"}]),
                "twice",
            ),
            (
                "roles",
                serde_json::json!([{"name": "a", "encrypted_password": "md5abc"}]),
                "SCRAM-SHA-256 verifier",
            ),
            (
                "databases",
                serde_json::json!([{"name": "postgres"}]),
                "reserved",
            ),
            (
                "settings",
                serde_json::json!({"wal_level": "minimal"}),
                "set by compute_ctl",
            ),
            (
                "settings",
                serde_json::json!({"a b": "1"}),
                "invalid setting name",
            ),
            ("no_such_field", 1.into(), "unknown field"),
        ];
        for (field, value, expected) in cases {
            let mut v = minimal();
            v[field] = value;
            let e = parse(v).unwrap_err().to_string();
            assert!(e.contains(expected), "{field}: {e}");
        }
    }

    #[test]
    fn delta_operations_parse() {
        let mut v = minimal();
        v["delta_operations"] = serde_json::json!([
            {"action": "delete_role", "name": "bob"},
            {"action": "rename_db", "name": "a", "new_name": "b"},
        ]);
        let spec = parse(v).unwrap();
        assert_eq!(
            spec.delta_operations[1],
            DeltaOp::RenameDb {
                name: "a".into(),
                new_name: "b".into()
            }
        );
    }

    #[test]
    fn scram_verifiers() {
        assert!(is_scram_verifier(
            "SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk+/=:c2VydmVy"
        ));
        assert!(!is_scram_verifier("SCRAM-SHA-256$4096:salt"));
        assert!(!is_scram_verifier("md5abcdef"));
        assert!(!is_scram_verifier("SCRAM-SHA-256$x:salt$a:b"));
    }
}
