//! `status`: every tenant's branches, with their sizes and endpoints, in
//! one table (what a staging setup's "databases" and "dbsizes" show).

use std::collections::HashMap;
use std::path::Path;

use utils::{TenantId, TimelineId};

use crate::endpoint::{format_table, Endpoint};
use crate::local_env::LocalEnv;
use crate::state::State;
use crate::storage_clients::PageserverClient;

/// Sizes in bytes, binary units, one decimal: `0 B`, `812 B`, `7.6 MiB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// The table: a row per branch, tenants in id order (the default one
/// marked), `main` first and the other branches by name, each with its
/// parent and branch point; then a line per tenant with its size on the
/// pageserver.
pub fn status_table(repo: &Path, env: &LocalEnv) -> anyhow::Result<String> {
    let state = State::load(repo)?;
    let pageserver = PageserverClient::new(env)?;
    let mut tenants = pageserver.tenants()?;
    tenants.sort_by_key(|t| t.tenant_id.to_string());
    let endpoints = Endpoint::list(repo)?;
    let mut on_timeline: HashMap<(TenantId, TimelineId), Vec<String>> = HashMap::new();
    for e in &endpoints {
        let what = if e.conf.replica {
            format!("{} ({}, replica)", e.conf.name, e.status(env))
        } else {
            format!("{} ({})", e.conf.name, e.status(env))
        };
        on_timeline
            .entry((e.conf.tenant_id, e.conf.timeline_id))
            .or_default()
            .push(what);
    }
    let mut rows = vec![[
        "TENANT".to_owned(),
        "BRANCH".to_owned(),
        "PARENT".to_owned(),
        "LAST LSN".to_owned(),
        "LOGICAL SIZE".to_owned(),
        "PHYSICAL SIZE".to_owned(),
        "ENDPOINTS".to_owned(),
    ]];
    let mut totals = Vec::new();
    for tenant in &tenants {
        let tenant_id = tenant.tenant_id;
        let name = |id: TimelineId| state.branch_name(tenant_id, id).unwrap_or("<no name>");
        let mut listed = pageserver.timelines(tenant_id)?;
        // `main` first, then the others by name.
        listed.sort_by_key(|t| {
            (
                name(t.timeline_id) != "main",
                name(t.timeline_id).to_owned(),
            )
        });
        let mut physical_total = 0u64;
        let mut branches = 0usize;
        for id in listed.iter().map(|t| t.timeline_id) {
            // The detail has the logical size (the list leaves it out).
            let detail = pageserver.timeline(tenant_id, id)?;
            physical_total = physical_total.saturating_add(detail.physical_size);
            let parent = match (detail.ancestor_timeline_id, detail.ancestor_lsn) {
                (Some(parent), Some(lsn)) => format!("{}@{lsn}", name(parent)),
                _ => "-".to_owned(),
            };
            let tenant_cell = if branches == 0 {
                let default = state.default_tenant_id == Some(tenant_id);
                format!("{tenant_id}{}", if default { " (default)" } else { "" })
            } else {
                String::new()
            };
            branches += 1;
            rows.push([
                tenant_cell,
                name(id).to_owned(),
                parent,
                detail.last_record_lsn.to_string(),
                detail.logical_size.map_or("?".to_owned(), human_size),
                human_size(detail.physical_size),
                on_timeline
                    .get(&(tenant_id, id))
                    .map_or("-".to_owned(), |list| list.join(", ")),
            ]);
        }
        totals.push(format!(
            "tenant {tenant_id}: {branches} branch{}, {} of layers on the pageserver",
            if branches == 1 { "" } else { "es" },
            human_size(physical_total)
        ));
    }
    let mut out = format_table(&rows);
    if !totals.is_empty() {
        out.push('\n');
        for line in totals {
            out.push_str(&line);
            out.push('\n');
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_people_write_them() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1024), "1.0 KiB");
        assert_eq!(human_size(7_969_177), "7.6 MiB");
        assert_eq!(human_size(3 << 30), "3.0 GiB");
        assert_eq!(human_size(u64::MAX), "16384.0 PiB");
    }
}
