//! The compute monitor: polls `pg_stat_activity` for the last client
//! activity (and the current WAL position) while postgres runs.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use utils::Lsn;

use crate::pg;

/// What one poll saw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    /// Client sessions connected, busy or idle: an open connection counts
    /// as activity, so a compute is never suspended under a client.
    pub active: u64,
    /// Sessions ever started, all databases (grows when a client connects).
    pub sessions: u64,
    /// The latest state change of a client session, seconds since the epoch.
    pub last_change: Option<f64>,
    pub lsn: Option<Lsn>,
}

/// Client backends only: not compute_ctl's own sessions, nor the
/// walproposer's (a walsender), nor background workers. The proxy's
/// pooled connections count while busy, not while idle (their state
/// changes still count as activity).
const QUERY: &str = "\
SELECT \
  (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' \
     AND pid <> pg_backend_pid() AND application_name NOT LIKE 'compute_ctl%' \
     AND NOT (application_name = 'neon_serverless_pool' AND state = 'idle')), \
  (SELECT coalesce(sum(sessions), 0) FROM pg_stat_database), \
  (SELECT extract(epoch FROM max(state_change)) FROM pg_stat_activity \
     WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() \
     AND application_name NOT LIKE 'compute_ctl%'), \
  CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_insert_lsn() END";

async fn observe(client: &mut pq_proto::Client) -> anyhow::Result<Observation> {
    let rows = client.simple_query(QUERY).await?;
    let row = rows
        .first()
        .ok_or_else(|| anyhow::anyhow!("no row from the monitor query"))?;
    Ok(Observation {
        active: row.get(0).and_then(|v| v.parse().ok()).unwrap_or(0),
        sessions: row.get(1).and_then(|v| v.parse().ok()).unwrap_or(0),
        last_change: row.get(2).and_then(|v| v.parse().ok()),
        lsn: row.get(3).and_then(|v| v.parse().ok()),
    })
}

/// Decides the new "last active" time from an observation: now if a
/// client is connected (busy or idle) or a new session started since the
/// previous poll (one that came and went between polls), else the latest
/// state change of a client session if it is newer.
pub fn last_active_after(
    previous: SystemTime,
    previous_sessions: Option<u64>,
    seen: &Observation,
    now: SystemTime,
) -> SystemTime {
    if seen.active > 0 || previous_sessions.is_some_and(|n| seen.sessions > n) {
        return now;
    }
    match seen.last_change {
        Some(secs) if secs.is_finite() && secs > 0.0 => {
            let changed = UNIX_EPOCH + Duration::from_secs_f64(secs);
            previous.max(changed.min(now))
        }
        _ => previous,
    }
}

/// Polls every `interval` until `cancel`, calling `report` with each
/// observation. Reconnects when the connection breaks.
pub async fn run(
    port: u16,
    interval: Duration,
    cancel: CancellationToken,
    mut report: impl FnMut(Observation),
) {
    let mut client: Option<pq_proto::Client> = None;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        if client.is_none() {
            match pg::connect(port, "postgres", "compute_ctl_monitor").await {
                Ok(c) => client = Some(c),
                Err(e) => {
                    if !warned {
                        warn!("monitor cannot connect to postgres: {e}");
                        warned = true;
                    }
                    continue;
                }
            }
        }
        let Some(c) = client.as_mut() else { continue };
        match observe(c).await {
            Ok(seen) => {
                debug!(?seen, "monitor");
                warned = false;
                report(seen);
            }
            Err(e) => {
                if !warned {
                    warn!("monitor query failed: {e:#}");
                    warned = true;
                }
                client = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxy_pool_is_named_as_the_proxy_names_it() {
        let skipped = format!(
            "application_name = '{}' AND state = 'idle'",
            compute_api::spec::SERVERLESS_APPLICATION_NAME
        );
        assert!(QUERY.contains(&skipped), "{QUERY}");
    }

    #[test]
    fn activity_rules() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1000);
        let now = UNIX_EPOCH + Duration::from_secs(2000);
        let idle = Observation {
            active: 0,
            sessions: 5,
            last_change: None,
            lsn: None,
        };
        assert_eq!(last_active_after(t0, Some(5), &idle, now), t0);
        // A new session since the last poll.
        assert_eq!(last_active_after(t0, Some(4), &idle, now), now);
        // A client connected (busy or idle).
        let busy = Observation { active: 1, ..idle };
        assert_eq!(last_active_after(t0, Some(5), &busy, now), now);
        // An idle session changed state at 1500.
        let changed = Observation {
            last_change: Some(1500.0),
            ..idle
        };
        assert_eq!(
            last_active_after(t0, Some(5), &changed, now),
            UNIX_EPOCH + Duration::from_secs(1500)
        );
    }
}
