//! Background work on every timeline: flush what ingest left in memory,
//! compact into image layers when deltas pile up, and garbage-collect
//! layers below the PITR window.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use utils::Lsn;

use crate::tenant::Tenant;
use crate::tenant_manager::TenantManager;
use crate::timeline::Timeline;

/// Settings of the background loop (in the pageserver's config).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackgroundConf {
    /// How often each timeline is looked at, in seconds.
    pub interval_seconds: f64,
    /// Write an image layer when this many delta layers lie above the
    /// newest image layer.
    pub compaction_threshold: usize,
    /// History kept for branching and reads in the past, in bytes of WAL
    /// below the last record; GC removes what only older LSNs need.
    pub pitr_bytes: u64,
}

impl Default for BackgroundConf {
    fn default() -> Self {
        BackgroundConf {
            interval_seconds: 10.0,
            compaction_threshold: 4,
            pitr_bytes: 256 * 1024 * 1024,
        }
    }
}

pub async fn run(manager: Arc<TenantManager>, conf: BackgroundConf, cancel: CancellationToken) {
    let interval = Duration::from_secs_f64(conf.interval_seconds.max(0.01));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        for tenant in manager.list() {
            for timeline in tenant.timelines() {
                let (tenant, conf) = (tenant.clone(), conf.clone());
                let result =
                    tokio::task::spawn_blocking(move || iteration(&tenant, &timeline, &conf)).await;
                match result {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => warn!("background work: {e:#}"),
                    Err(e) => warn!("background task: {e}"),
                }
            }
        }
    }
}

fn iteration(
    tenant: &Tenant,
    timeline: &Arc<Timeline>,
    conf: &BackgroundConf,
) -> anyhow::Result<()> {
    let (tenant_id, timeline_id) = (timeline.tenant_id, timeline.timeline_id);
    if timeline.open_layer_size() > 0 && timeline.last_record_lsn() > timeline.disk_consistent_lsn()
    {
        timeline.flush()?;
    }
    let names = timeline.layer_names();
    let newest_image = names
        .iter()
        .filter(|n| !n.is_delta())
        .map(|n| n.lsn_range().start)
        .max();
    let deltas_above = names
        .iter()
        .filter(|n| n.is_delta() && newest_image.is_none_or(|image| n.lsn_range().start >= image))
        .count();
    if deltas_above >= conf.compaction_threshold {
        let at = timeline.disk_consistent_lsn();
        if let Some(name) = timeline.compact_images(at)? {
            info!(%tenant_id, %timeline_id, %at, "compacted {deltas_above} delta layers into {name}");
        }
    }
    let last = timeline.last_record_lsn();
    let horizon = Lsn(last.0.saturating_sub(conf.pitr_bytes)).min(timeline.disk_consistent_lsn());
    if horizon > timeline.gc_horizon() && horizon > timeline.start_lsn() {
        let removed = tenant.gc_timeline(timeline_id, horizon)?;
        if !removed.is_empty() {
            info!(%tenant_id, %timeline_id, %horizon, "GC removed {} layers", removed.len());
        } else {
            debug!(%tenant_id, %timeline_id, %horizon, "GC removed nothing");
        }
    }
    Ok(())
}
