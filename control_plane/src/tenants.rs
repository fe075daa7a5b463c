//! `tenant` and `timeline` commands: the pageserver does the work,
//! neon_local remembers the default tenant and the branch names.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use pageserver_api::models::{TimelineCreateRequest, TimelineInfo};
use utils::{Lsn, TenantId, TimelineId};

use crate::endpoint::Endpoint;
use crate::local_env::LocalEnv;
use crate::state::{check_name, State};
use crate::storage_clients::{quorum_flush_lsn, PageserverClient, SafekeeperClient};

/// The name of a tenant's first timeline.
pub const DEFAULT_BRANCH: &str = "main";

/// How long branching at the end of a timeline waits for the pageserver to
/// have what the safekeepers committed.
/// How long `timeline branch` waits for the pageserver to ingest what was
/// committed on the ancestor.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(120);

/// After the pageserver starts: attach from remote storage every tenant
/// neon_local knows (the default tenant and those with named branches)
/// that the pageserver does not have, e.g. because its directory was
/// wiped. Returns the tenants attached.
pub fn reattach_missing(repo: &Path, env: &LocalEnv) -> anyhow::Result<Vec<TenantId>> {
    let state = State::load(repo)?;
    let mut known: Vec<TenantId> = state.branches.iter().map(|b| b.tenant_id).collect();
    known.extend(state.default_tenant_id);
    known.sort();
    known.dedup();
    if known.is_empty() {
        return Ok(Vec::new());
    }
    let pageserver = PageserverClient::new(env)?;
    let present: std::collections::HashSet<TenantId> = pageserver
        .tenants()
        .context("listing the pageserver's tenants")?
        .into_iter()
        .map(|t| t.tenant_id)
        .collect();
    let mut attached = Vec::new();
    for tenant_id in known.into_iter().filter(|t| !present.contains(t)) {
        pageserver
            .attach_tenant(tenant_id)
            .with_context(|| format!("re-attaching tenant {tenant_id} from remote storage"))?;
        println!("tenant {tenant_id} re-attached from remote storage");
        attached.push(tenant_id);
    }
    Ok(attached)
}

/// `tenant create`: the tenant, then its initial timeline named `main`.
pub fn tenant_create(
    repo: &Path,
    env: &LocalEnv,
    tenant_id: Option<TenantId>,
    timeline_id: Option<TimelineId>,
    pg_version: u32,
    set_default: bool,
) -> anyhow::Result<TenantId> {
    let mut state = State::load(repo)?;
    let pageserver = PageserverClient::new(env)?;
    let tenant_id = pageserver.create_tenant(tenant_id)?;
    println!("tenant {tenant_id} successfully created on the pageserver");
    let timeline = pageserver
        .create_timeline(
            tenant_id,
            &TimelineCreateRequest {
                new_timeline_id: timeline_id,
                pg_version: Some(pg_version),
                ..Default::default()
            },
        )
        .context("creating the initial timeline")?;
    state.add_branch(tenant_id, DEFAULT_BRANCH, timeline.timeline_id);
    println!(
        "Created an initial timeline '{}' at Lsn {} for tenant: {tenant_id}",
        timeline.timeline_id, timeline.last_record_lsn
    );
    if set_default {
        println!("Setting tenant {tenant_id} as a default one");
        state.default_tenant_id = Some(tenant_id);
    }
    state.save(repo)?;
    Ok(tenant_id)
}

pub fn tenant_list(repo: &Path, env: &LocalEnv) -> anyhow::Result<()> {
    let state = State::load(repo)?;
    let mut tenants = PageserverClient::new(env)?.tenants()?;
    tenants.sort_by_key(|t| t.tenant_id.to_string());
    for t in tenants {
        let default = if state.default_tenant_id == Some(t.tenant_id) {
            " (default)"
        } else {
            ""
        };
        println!("{} {}{default}", t.tenant_id, t.state);
    }
    Ok(())
}

/// `timeline create`: a new timeline from initdb, with a branch name.
pub fn timeline_create(
    repo: &Path,
    env: &LocalEnv,
    tenant_id: Option<TenantId>,
    timeline_id: Option<TimelineId>,
    branch_name: &str,
    pg_version: u32,
) -> anyhow::Result<()> {
    let mut state = State::load(repo)?;
    let tenant_id = state.tenant(tenant_id)?;
    check_new_branch(&state, tenant_id, branch_name)?;
    let timeline = PageserverClient::new(env)?.create_timeline(
        tenant_id,
        &TimelineCreateRequest {
            new_timeline_id: timeline_id,
            pg_version: Some(pg_version),
            ..Default::default()
        },
    )?;
    state.add_branch(tenant_id, branch_name, timeline.timeline_id);
    state.save(repo)?;
    println!(
        "Created timeline '{}' at Lsn {} for tenant: {tenant_id}",
        timeline.timeline_id, timeline.last_record_lsn
    );
    Ok(())
}

fn check_new_branch(state: &State, tenant_id: TenantId, name: &str) -> anyhow::Result<()> {
    check_name("branch", name)?;
    if let Some(id) = state.timeline(tenant_id, name) {
        bail!("branch '{name}' already exists in tenant {tenant_id} (timeline {id})");
    }
    Ok(())
}

/// Wait until the pageserver has ingested `branch` up to `committed`,
/// saying so on stderr if that takes a while; an error after
/// [`CATCH_UP_TIMEOUT`].
fn wait_for_ingest(
    pageserver: &PageserverClient,
    tenant_id: TenantId,
    timeline_id: TimelineId,
    branch: &str,
    committed: Lsn,
) -> anyhow::Result<()> {
    if pageserver.wait_for_lsn(tenant_id, timeline_id, committed, Duration::from_secs(2))? {
        return Ok(());
    }
    let at = pageserver.timeline(tenant_id, timeline_id)?.last_record_lsn;
    eprintln!(
        "waiting for the pageserver to ingest '{branch}' up to the safekeepers' commit LSN {committed} (it is at {at})..."
    );
    if pageserver.wait_for_lsn(tenant_id, timeline_id, committed, CATCH_UP_TIMEOUT)? {
        return Ok(());
    }
    let at = pageserver.timeline(tenant_id, timeline_id)?.last_record_lsn;
    bail!(
        "the pageserver has ingested '{branch}' only up to {at}, not yet up to the safekeepers' commit LSN {committed}, after {CATCH_UP_TIMEOUT:?}; a branch cut now would miss committed transactions. Try again later, or give --ancestor-start-lsn to branch at an earlier LSN"
    )
}

/// `timeline branch`: a branch of another branch at an LSN, or at its end.
pub fn timeline_branch(
    repo: &Path,
    env: &LocalEnv,
    tenant_id: Option<TenantId>,
    branch_name: &str,
    ancestor_branch_name: &str,
    ancestor_start_lsn: Option<Lsn>,
) -> anyhow::Result<()> {
    let mut state = State::load(repo)?;
    let tenant_id = state.tenant(tenant_id)?;
    check_new_branch(&state, tenant_id, branch_name)?;
    let ancestor = state.require_timeline(tenant_id, ancestor_branch_name)?;
    let pageserver = PageserverClient::new(env)?;
    let timeline = create_branch_timeline(
        env,
        &pageserver,
        tenant_id,
        (ancestor, ancestor_branch_name),
        ancestor_start_lsn,
    )?;
    state.add_branch(tenant_id, branch_name, timeline.timeline_id);
    state.save(repo)?;
    let lsn = timeline.ancestor_lsn.unwrap_or(timeline.last_record_lsn);
    println!(
        "Created timeline '{}' at Lsn {lsn} for tenant: {tenant_id}. Ancestor timeline: '{ancestor_branch_name}'",
        timeline.timeline_id
    );
    Ok(())
}

/// `timeline list`: the tenant's timelines as a tree.
pub fn timeline_list(
    repo: &Path,
    env: &LocalEnv,
    tenant_id: Option<TenantId>,
) -> anyhow::Result<()> {
    let state = State::load(repo)?;
    let tenant_id = state.tenant(tenant_id)?;
    let timelines = PageserverClient::new(env)?.timelines(tenant_id)?;
    print!(
        "{}",
        timeline_tree(&timelines, |id| state.branch_name(tenant_id, id))
    );
    Ok(())
}

/// A new timeline branched from `ancestor` (its id and name) at `lsn`,
/// or at its end: what its computes committed, once the pageserver has
/// all of it from the safekeepers (never whatever it happens to have
/// ingested).
fn create_branch_timeline(
    env: &LocalEnv,
    pageserver: &PageserverClient,
    tenant_id: TenantId,
    (ancestor, ancestor_name): (TimelineId, &str),
    lsn: Option<Lsn>,
) -> anyhow::Result<TimelineInfo> {
    if lsn.is_none() {
        if let Some(committed) = quorum_flush_lsn(env, tenant_id, ancestor)? {
            wait_for_ingest(pageserver, tenant_id, ancestor, ancestor_name, committed)?;
        }
    }
    pageserver.create_timeline(
        tenant_id,
        &TimelineCreateRequest {
            ancestor_timeline_id: Some(ancestor),
            ancestor_start_lsn: lsn,
            ..Default::default()
        },
    )
}

/// Deletes a timeline on the pageserver, then on the safekeepers (a
/// safekeeper that does not answer keeps its WAL, with a warning).
fn delete_timeline_everywhere(
    env: &LocalEnv,
    pageserver: &PageserverClient,
    tenant_id: TenantId,
    timeline_id: TimelineId,
) -> anyhow::Result<()> {
    pageserver.delete_timeline(tenant_id, timeline_id)?;
    for sk in &env.safekeepers {
        let deleted = SafekeeperClient::new(env, &sk.listen_http_addr)
            .and_then(|client| client.delete_timeline(tenant_id, timeline_id));
        if let Err(e) = deleted {
            eprintln!(
                "warning: safekeeper {} keeps the WAL of timeline {timeline_id}: {e:#}",
                sk.id
            );
        }
    }
    Ok(())
}

/// An error naming the branches whose parent is the timeline, if any
/// (they would lose their ancestor).
fn refuse_if_children(
    state: &State,
    pageserver: &PageserverClient,
    (tenant_id, timeline_id): (TenantId, TimelineId),
    branch_name: &str,
) -> anyhow::Result<()> {
    let children: Vec<String> = pageserver
        .timelines(tenant_id)?
        .iter()
        .filter(|t| t.ancestor_timeline_id == Some(timeline_id))
        .map(|t| {
            state
                .branch_name(tenant_id, t.timeline_id)
                .map_or_else(|| t.timeline_id.to_string(), str::to_owned)
        })
        .collect();
    if !children.is_empty() {
        bail!(
            "branch '{branch_name}' has children ({}): delete them first",
            children.join(", ")
        );
    }
    Ok(())
}

/// The endpoints on a timeline, each locked (until the caller drops it),
/// after checking that none runs.
fn stopped_endpoints_on(
    repo: &Path,
    env: &LocalEnv,
    (tenant_id, timeline_id): (TenantId, TimelineId),
    branch_name: &str,
) -> anyhow::Result<Vec<(Endpoint, crate::lock::FileLock)>> {
    let mut out = Vec::new();
    for e in Endpoint::list(repo)? {
        if e.conf.tenant_id != tenant_id || e.conf.timeline_id != timeline_id {
            continue;
        }
        let lock = e.lock()?;
        let status = e.status(env);
        if status != "stopped" && status != "suspended" {
            bail!(
                "endpoint '{}' is {status} on branch '{branch_name}': stop it first (`neon_local endpoint stop {}`)",
                e.conf.name,
                e.conf.name
            );
        }
        out.push((e, lock));
    }
    Ok(out)
}

/// `timeline reset`: the branch starts again from its parent's end. Its
/// name moves to a new timeline branched there, its stopped endpoints
/// follow (their next start sees the parent's data), and the old
/// timeline is deleted. Refused, with nothing changed, for a branch
/// without parent, with children, with a running endpoint or a read-only
/// one (which reads the old timeline at its LSN).
pub fn timeline_reset(
    repo: &Path,
    env: &LocalEnv,
    tenant_id: Option<TenantId>,
    branch_name: &str,
) -> anyhow::Result<()> {
    let _creation = Endpoint::lock_creation(repo)?;
    let mut state = State::load(repo)?;
    let tenant_id = state.tenant(tenant_id)?;
    let old = state.require_timeline(tenant_id, branch_name)?;
    let pageserver = PageserverClient::new(env)?;
    let Some(parent) = pageserver.timeline(tenant_id, old)?.ancestor_timeline_id else {
        bail!("branch '{branch_name}' has no parent to reset to");
    };
    let parent_name = state
        .branch_name(tenant_id, parent)
        .map_or_else(|| parent.to_string(), str::to_owned);
    refuse_if_children(&state, &pageserver, (tenant_id, old), branch_name)?;
    let mut endpoints = stopped_endpoints_on(repo, env, (tenant_id, old), branch_name)?;
    if let Some((e, _)) = endpoints
        .iter()
        .find(|(e, _)| e.conf.lsn.is_some() || e.conf.replica)
    {
        bail!(
            "read-only endpoint '{}' reads branch '{branch_name}' as it is: destroy it first (`neon_local endpoint stop {} --destroy`)",
            e.conf.name,
            e.conf.name
        );
    }
    let new = create_branch_timeline(env, &pageserver, tenant_id, (parent, &parent_name), None)?;
    for (e, _lock) in &mut endpoints {
        e.set_timeline(new.timeline_id)?;
    }
    state.remove_branch(tenant_id, branch_name);
    state.add_branch(tenant_id, branch_name, new.timeline_id);
    state.save(repo)?;
    drop(endpoints);
    delete_timeline_everywhere(env, &pageserver, tenant_id, old)?;
    let lsn = new.ancestor_lsn.unwrap_or(new.last_record_lsn);
    println!(
        "reset branch '{branch_name}' to '{parent_name}' at {lsn} (timeline {} replaces {old})",
        new.timeline_id
    );
    Ok(())
}

/// `timeline delete`: a branch, its data on the pageserver and the
/// safekeepers, and its stopped (or suspended) endpoints. Refused, with
/// nothing changed, while the branch has children or a running endpoint.
/// Endpoint creation is locked meanwhile, so the control plane cannot
/// start one on the branch halfway.
pub fn timeline_delete(
    repo: &Path,
    env: &LocalEnv,
    tenant_id: Option<TenantId>,
    branch_name: &str,
) -> anyhow::Result<()> {
    let _creation = Endpoint::lock_creation(repo)?;
    let mut state = State::load(repo)?;
    let tenant_id = state.tenant(tenant_id)?;
    let timeline_id = state.require_timeline(tenant_id, branch_name)?;
    let pageserver = PageserverClient::new(env)?;
    refuse_if_children(&state, &pageserver, (tenant_id, timeline_id), branch_name)?;
    // Each endpoint's lock is held from the check to the deletion.
    let endpoints = stopped_endpoints_on(repo, env, (tenant_id, timeline_id), branch_name)?;
    delete_timeline_everywhere(env, &pageserver, tenant_id, timeline_id)?;
    for (e, _lock) in &endpoints {
        std::fs::remove_dir_all(&e.dir).with_context(|| format!("removing {}", e.dir.display()))?;
        println!("deleted endpoint '{}'", e.conf.name);
    }
    drop(endpoints);
    state.remove_branch(tenant_id, branch_name);
    state.save(repo)?;
    println!("deleted branch '{branch_name}' (timeline {timeline_id})");
    Ok(())
}

/// Renders timelines as a tree:
///
/// ```text
/// (L) main [de200bd42b49cc1814412c7e592dd6e9]
/// (L) ┣━ @0/16F9A00: migration_check [b3b863fa45fa9e57e615f9f2d944e601]
/// (L) ┃  ┗━ @0/1700000: deeper [...]
/// (L) ┗━ @0/1710000: other [...]
/// ```
///
/// Roots by name; children by branch point, then name.
pub fn timeline_tree<'a>(
    timelines: &[TimelineInfo],
    name_of: impl Fn(TimelineId) -> Option<&'a str>,
) -> String {
    let ids: std::collections::HashSet<TimelineId> =
        timelines.iter().map(|t| t.timeline_id).collect();
    let mut children: HashMap<Option<TimelineId>, Vec<&TimelineInfo>> = HashMap::new();
    for t in timelines {
        let parent = t.ancestor_timeline_id.filter(|a| ids.contains(a));
        children.entry(parent).or_default().push(t);
    }
    let name = |t: &TimelineInfo| name_of(t.timeline_id).unwrap_or("<no name>").to_owned();
    for (parent, list) in children.iter_mut() {
        if parent.is_none() {
            list.sort_by_key(|t| (name(t) != "main", name(t)));
        } else {
            list.sort_by_key(|t| (t.ancestor_lsn, name(t)));
        }
    }
    fn walk(
        out: &mut String,
        t: &TimelineInfo,
        is_last: &mut Vec<bool>,
        children: &HashMap<Option<TimelineId>, Vec<&TimelineInfo>>,
        name: &dyn Fn(&TimelineInfo) -> String,
    ) {
        out.push_str("(L) ");
        if let Some((last, ancestors)) = is_last.split_last() {
            for &ended in ancestors {
                out.push_str(if ended { "   " } else { "┃  " });
            }
            let symbol = if *last { "┗━" } else { "┣━" };
            let lsn = t.ancestor_lsn.unwrap_or_default();
            let _ = write!(out, "{symbol} @{lsn}: ");
        }
        let _ = writeln!(out, "{} [{}]", name(t), t.timeline_id);
        if let Some(kids) = children.get(&Some(t.timeline_id)) {
            for (i, kid) in kids.iter().enumerate() {
                is_last.push(i + 1 == kids.len());
                walk(out, kid, is_last, children, name);
                is_last.pop();
            }
        }
    }
    let mut out = String::new();
    for root in children.get(&None).into_iter().flatten() {
        walk(&mut out, root, &mut Vec::new(), &children, &name);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: TimelineId, ancestor: Option<(TimelineId, u64)>) -> TimelineInfo {
        TimelineInfo {
            tenant_id: TenantId::generate(),
            timeline_id: id,
            ancestor_timeline_id: ancestor.map(|a| a.0),
            ancestor_lsn: ancestor.map(|a| Lsn(a.1)),
            last_record_lsn: Lsn(0x16F9A00),
            prev_record_lsn: Lsn(0),
            shutdown_checkpoint_lsn: None,
            disk_consistent_lsn: Lsn(0),
            remote_consistent_lsn: Lsn(0),
            gc_cutoff_lsn: Lsn(0),
            logical_size: None,
            physical_size: 0,
            pg_version: 15,
            ingest_paused: None,
        }
    }

    #[test]
    fn tree_like_the_readme() {
        let (main, mc, deep, other) = (
            TimelineId::generate(),
            TimelineId::generate(),
            TimelineId::generate(),
            TimelineId::generate(),
        );
        let names = HashMap::from([
            (main, "main"),
            (mc, "migration_check"),
            (deep, "deeper"),
            (other, "other"),
        ]);
        let one = vec![info(main, None), info(mc, Some((main, 0x16F9A00)))];
        let text = timeline_tree(&one, |id| names.get(&id).copied());
        assert_eq!(
            text,
            format!("(L) main [{main}]\n(L) ┗━ @0/16F9A00: migration_check [{mc}]\n")
        );
        let all = vec![
            info(other, Some((main, 0x1710000))),
            info(deep, Some((mc, 0x1700000))),
            info(main, None),
            info(mc, Some((main, 0x16F9A00))),
        ];
        let text = timeline_tree(&all, |id| names.get(&id).copied());
        assert_eq!(
            text,
            format!(
                "(L) main [{main}]\n\
                 (L) ┣━ @0/16F9A00: migration_check [{mc}]\n\
                 (L) ┃  ┗━ @0/1700000: deeper [{deep}]\n\
                 (L) ┗━ @0/1710000: other [{other}]\n"
            )
        );
    }
}
