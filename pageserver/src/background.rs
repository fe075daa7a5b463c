//! Background work on every timeline: flush what ingest left in memory,
//! compact into image layers when deltas pile up, and garbage-collect
//! layers below the PITR window.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use utils::{Lsn, TenantId, TimelineId};

use crate::tenant::timeline::Timeline;
use crate::tenant::Tenant;
use crate::tenant_manager::TenantManager;

/// Settings of the background loop (in the pageserver's config).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackgroundConf {
    /// How often each timeline is looked at, in seconds.
    pub interval_seconds: f64,
    /// Write an image layer of a key partition when this many delta layers
    /// with values in the partition lie above its newest image layer.
    pub compaction_threshold: usize,
    /// History kept for branching and reads in the past, in bytes of WAL
    /// below the last record; GC removes what only older LSNs need.
    pub pitr_bytes: u64,
    /// History kept, in seconds: GC also keeps every LSN reached in the
    /// last this many seconds. Unset: the window is set by bytes only.
    pub pitr_seconds: Option<f64>,
}

impl Default for BackgroundConf {
    fn default() -> Self {
        BackgroundConf {
            interval_seconds: 10.0,
            compaction_threshold: 4,
            pitr_bytes: 256 * 1024 * 1024,
            pitr_seconds: None,
        }
    }
}

/// The longest interval or PITR window the config may set: a year.
const MAX_CONF_SECONDS: f64 = 365.0 * 24.0 * 3600.0;

impl BackgroundConf {
    /// Refuse settings no duration can hold (negative, NaN, infinite or
    /// absurdly large seconds), before anything runs with them.
    pub fn check(&self) -> anyhow::Result<()> {
        let mut fields = vec![("background.interval_seconds", self.interval_seconds)];
        if let Some(pitr) = self.pitr_seconds {
            fields.push(("background.pitr_seconds", pitr));
        }
        for (name, value) in fields {
            if !(0.0..=MAX_CONF_SECONDS).contains(&value) {
                anyhow::bail!(
                    "{name} must be between 0 and {MAX_CONF_SECONDS} seconds, not {value}"
                );
            }
        }
        Ok(())
    }
}

/// When each timeline reached which LSN, sampled once per iteration: the
/// PITR window by time maps a time to an LSN with it. In memory only, so
/// after a restart the window by time starts again (GC is late, never
/// early).
#[derive(Default)]
struct LsnTimes {
    samples: HashMap<(TenantId, TimelineId), VecDeque<(Instant, Lsn)>>,
}

impl LsnTimes {
    /// Record `lsn` now; forget samples older than `keep`, except the
    /// newest of them.
    fn record(&mut self, id: (TenantId, TimelineId), lsn: Lsn, keep: Duration) {
        let now = Instant::now();
        let samples = self.samples.entry(id).or_default();
        if samples.back().is_none_or(|(_, l)| *l != lsn) {
            samples.push_back((now, lsn));
        }
        while samples.len() > 1 && now.duration_since(samples[1].0) > keep {
            samples.pop_front();
        }
    }

    /// The newest LSN reached at least `window` ago.
    fn lsn_before(&self, id: (TenantId, TimelineId), window: Duration) -> Option<Lsn> {
        let now = Instant::now();
        self.samples
            .get(&id)?
            .iter()
            .rev()
            .find(|(at, _)| now.duration_since(*at) >= window)
            .map(|(_, lsn)| *lsn)
    }
}

pub async fn run(manager: Arc<TenantManager>, conf: BackgroundConf, cancel: CancellationToken) {
    // Checked at start (`BackgroundConf::check`): finite and in range.
    let interval = Duration::try_from_secs_f64(conf.interval_seconds.max(0.01))
        .unwrap_or(Duration::from_secs(10));
    let mut lsn_times = LsnTimes::default();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        for tenant in manager.list() {
            for timeline in tenant.timelines() {
                let id = (timeline.tenant_id, timeline.timeline_id);
                let time_horizon = conf.pitr_seconds.map(|seconds| {
                    let window =
                        Duration::try_from_secs_f64(seconds.max(0.0)).unwrap_or(Duration::ZERO);
                    lsn_times.record(id, timeline.last_record_lsn(), window);
                    lsn_times.lsn_before(id, window).unwrap_or(Lsn::INVALID)
                });
                let (tenant, conf) = (tenant.clone(), conf.clone());
                let result = tokio::task::spawn_blocking(move || {
                    iteration(&tenant, &timeline, &conf, time_horizon)
                })
                .await;
                match result {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => warn!("background work: {e:#}"),
                    Err(e) => warn!("background task: {e}"),
                }
            }
        }
    }
}

/// One look at a timeline: flush, compact, and GC at the PITR window's
/// lower end (`time_horizon`: where the window by time begins, if set).
fn iteration(
    tenant: &Tenant,
    timeline: &Arc<Timeline>,
    conf: &BackgroundConf,
    time_horizon: Option<Lsn>,
) -> anyhow::Result<()> {
    let (tenant_id, timeline_id) = (timeline.tenant_id, timeline.timeline_id);
    if timeline.open_layer_size() > 0 && timeline.last_record_lsn() > timeline.disk_consistent_lsn()
    {
        timeline.flush()?;
    }
    let images = timeline.compact(conf.compaction_threshold)?;
    if !images.is_empty() {
        let at = timeline.disk_consistent_lsn();
        info!(%tenant_id, %timeline_id, %at, "compaction wrote {} image layers", images.len());
    }
    let last = timeline.last_record_lsn();
    let mut horizon =
        Lsn(last.0.saturating_sub(conf.pitr_bytes)).min(timeline.disk_consistent_lsn());
    if let Some(by_time) = time_horizon {
        horizon = horizon.min(by_time);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_no_duration_can_hold_are_refused() {
        assert!(BackgroundConf::default().check().is_ok());
        for bad in [f64::INFINITY, f64::NAN, 1e20, -1.0] {
            let conf = BackgroundConf {
                interval_seconds: bad,
                ..BackgroundConf::default()
            };
            let err = conf.check().unwrap_err().to_string();
            assert!(err.contains("background.interval_seconds"), "{err}");
            let conf = BackgroundConf {
                pitr_seconds: Some(bad),
                ..BackgroundConf::default()
            };
            let err = conf.check().unwrap_err().to_string();
            assert!(err.contains("background.pitr_seconds"), "{err}");
        }
    }
}
