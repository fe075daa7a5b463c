//! The configuration compute_ctl writes into a fresh PGDATA.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use anyhow::Context;
use compute_api::{ComputeMode, ComputeSpec};

/// Extra settings from the spec, included by `postgresql.conf` before the
/// settings compute_ctl insists on. Rewritten on `POST /configure`.
pub const SPEC_SETTINGS_FILE: &str = "compute_spec.conf";

/// The replication client name postgres waits for before a commit returns.
pub const WALPROPOSER_NAME: &str = "walproposer";

/// `'value'` with quotes doubled, as `postgresql.conf` wants strings.
pub fn quote_conf(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// The settings a compute must have, whatever the spec says.
pub fn mandatory_settings(spec: &ComputeSpec) -> Vec<(&'static str, String)> {
    let mut listen = spec.listen_addresses.clone();
    let loopback = ["*", "0.0.0.0", "127.0.0.1", "localhost"];
    if !listen.split(',').any(|a| loopback.contains(&a.trim())) {
        // compute_ctl itself connects over loopback.
        listen.push_str(",127.0.0.1");
    }
    let mut settings = vec![
        ("listen_addresses", quote_conf(&listen)),
        ("port", spec.pg_port.to_string()),
        // No sockets in a shared directory: computes connect over TCP.
        ("unix_socket_directories", quote_conf("")),
        // Records of the resource managers the pageserver cannot redo carry
        // the page image it stores instead (docs/design.md).
        (
            "wal_consistency_checking",
            quote_conf(&pg_redo::wal_consistency_checking()),
        ),
        ("wal_compression", "lz4".into()),
        ("wal_level", "replica".into()),
        ("max_wal_senders", "10".into()),
        ("max_replication_slots", "10".into()),
        ("password_encryption", quote_conf("scram-sha-256")),
        // A crashed backend must not make the postmaster replay WAL the
        // safekeepers may not have: fail and start afresh.
        ("restart_after_crash", "off".into()),
        // The local copy is thrown away on every start; durability comes
        // from the safekeepers.
        ("fsync", "off".into()),
    ];
    match spec.mode {
        ComputeMode::Primary => {
            settings.push(("synchronous_standby_names", quote_conf(WALPROPOSER_NAME)));
            settings.push(("synchronous_commit", "on".into()));
        }
        ComputeMode::Static(_) => {
            settings.push(("hot_standby", "on".into()));
        }
        ComputeMode::Replica => {
            settings.push(("hot_standby", "on".into()));
            settings.push(("primary_conninfo", quote_conf(&primary_conninfo(spec))));
        }
    }
    settings
}

/// Where a replica streams WAL from: the safekeepers (libpq tries each in
/// turn), naming the timeline in the startup options, with the tenant's
/// token as the password.
pub fn primary_conninfo(spec: &ComputeSpec) -> String {
    let (hosts, ports): (Vec<&str>, Vec<&str>) = spec
        .safekeepers
        .iter()
        .map(|addr| addr.rsplit_once(':').unwrap_or((addr.as_str(), "5454")))
        .unzip();
    let mut conninfo = format!(
        "host={} port={} user={} application_name=replica options='-c tenant_id={} -c timeline_id={}'",
        hosts.join(","),
        ports.join(","),
        compute_api::spec::SUPERUSER,
        spec.tenant_id,
        spec.timeline_id
    );
    if let Some(token) = &spec.storage_auth_token {
        // A JWT is base64url and dots: nothing to quote.
        conninfo.push_str(&format!(" password={token}"));
    }
    conninfo
}

/// The `compute_spec.conf` text for `settings`.
pub fn spec_settings_text(settings: &BTreeMap<String, String>) -> String {
    let mut text = String::from("# Settings from the compute spec, written by compute_ctl.\n");
    for (name, value) in settings {
        let _ = writeln!(text, "{name} = {}", quote_conf(value));
    }
    text
}

/// `pg_hba.conf`: the superuser without password from loopback (compute_ctl,
/// the walproposer and the local control plane), everyone else with a
/// SCRAM password.
pub fn hba_text() -> String {
    let su = compute_api::spec::SUPERUSER;
    format!(
        "# Written by compute_ctl.\n\
         # TYPE  DATABASE     USER  ADDRESS       METHOD\n\
         host    all          {su}  127.0.0.1/32  trust\n\
         host    replication  {su}  127.0.0.1/32  trust\n\
         host    all          {su}  ::1/128       trust\n\
         host    all          {su}  all           reject\n\
         host    replication  all   all           reject\n\
         host    all          all   all           scram-sha-256\n"
    )
}

/// Writes the configuration into `pgdata` (a fresh base backup).
pub fn write_config(pgdata: &Path, spec: &ComputeSpec) -> anyhow::Result<()> {
    let write = |name: &str, text: &str| {
        let path = pgdata.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    };
    write(SPEC_SETTINGS_FILE, &spec_settings_text(&spec.settings))?;
    write("pg_hba.conf", &hba_text())?;
    let mut text = String::from("\n# Added by compute_ctl; later lines win.\n");
    let _ = writeln!(text, "include_if_exists {}", quote_conf(SPEC_SETTINGS_FILE));
    for (name, value) in mandatory_settings(spec) {
        let _ = writeln!(text, "{name} = {value}");
    }
    let conf = pgdata.join("postgresql.conf");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&conf)
        .with_context(|| format!("opening {}", conf.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", conf.display()))?;
    if matches!(spec.mode, ComputeMode::Static(_) | ComputeMode::Replica) {
        // A hot standby: it refuses writes whatever a session sets. A
        // static one has no WAL source and stays at the base backup's LSN.
        write("standby.signal", "")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_and_settings() {
        assert_eq!(quote_conf("it's"), "'it''s'");
        let mut settings = BTreeMap::new();
        settings.insert("work_mem".to_owned(), "8MB".to_owned());
        settings.insert("search_path".to_owned(), "'$user', public".to_owned());
        let text = spec_settings_text(&settings);
        assert!(text.contains("work_mem = '8MB'\n"), "{text}");
        assert!(
            text.contains("search_path = '''$user'', public'\n"),
            "{text}"
        );
    }

    #[test]
    fn hba_never_trusts_other_users() {
        let hba = hba_text();
        for line in hba.lines().filter(|l| l.contains("trust")) {
            assert!(line.contains("cloud_admin"), "{line}");
        }
    }
}
