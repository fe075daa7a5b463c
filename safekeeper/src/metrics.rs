//! The safekeeper's own metrics, served at `/metrics` beside the standard ones.

use std::sync::OnceLock;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Registry};

pub struct Metrics {
    pub wal_bytes_written: IntCounter,
    pub wal_flushes: IntCounter,
    pub wal_flush_seconds: Histogram,
    pub walproposer_connections: IntGauge,
    pub walsender_connections: IntGauge,
    pub timelines: IntGauge,
    pub wal_backup_bytes: IntCounter,
    pub wal_backup_segments: IntCounter,
    pub wal_backup_failures: IntCounter,
    pub wal_segments_removed: IntCounter,
    pub wal_segments_downloaded: IntCounter,
    pub wal_download_failures: IntCounter,
}

impl Metrics {
    fn new() -> Metrics {
        let counter = |name: &str, help: &str| IntCounter::new(name, help).expect("valid metric");
        let gauge = |name: &str, help: &str| IntGauge::new(name, help).expect("valid metric");
        Metrics {
            wal_bytes_written: counter("safekeeper_wal_bytes_written_total", "WAL bytes written"),
            wal_flushes: counter("safekeeper_wal_flushes_total", "WAL fsync rounds"),
            wal_flush_seconds: Histogram::with_opts(
                HistogramOpts::new("safekeeper_wal_flush_seconds", "Time to fsync WAL").buckets(
                    vec![0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0],
                ),
            )
            .expect("valid metric"),
            walproposer_connections: gauge(
                "safekeeper_walproposer_connections",
                "Connected walproposers",
            ),
            walsender_connections: gauge(
                "safekeeper_walsender_connections",
                "Connected WAL readers",
            ),
            timelines: gauge("safekeeper_timelines", "Timelines on this safekeeper"),
            wal_backup_bytes: counter(
                "safekeeper_wal_backup_bytes_total",
                "WAL bytes uploaded to remote storage",
            ),
            wal_backup_segments: counter(
                "safekeeper_wal_backup_segments_total",
                "WAL segments uploaded to remote storage",
            ),
            wal_backup_failures: counter(
                "safekeeper_wal_backup_failures_total",
                "Failed attempts to upload a WAL segment (each is retried)",
            ),
            wal_segments_removed: counter(
                "safekeeper_wal_segments_removed_total",
                "Local WAL segments removed once offloaded and below the pageserver's remote consistent LSN",
            ),
            wal_segments_downloaded: counter(
                "safekeeper_wal_segments_downloaded_total",
                "WAL segments downloaded from remote storage for WAL readers",
            ),
            wal_download_failures: counter(
                "safekeeper_wal_download_failures_total",
                "Failed downloads of WAL segments for WAL readers",
            ),
        }
    }

    /// Serve these metrics from `registry`.
    pub fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.wal_bytes_written.clone()))?;
        registry.register(Box::new(self.wal_flushes.clone()))?;
        registry.register(Box::new(self.wal_flush_seconds.clone()))?;
        registry.register(Box::new(self.walproposer_connections.clone()))?;
        registry.register(Box::new(self.walsender_connections.clone()))?;
        registry.register(Box::new(self.timelines.clone()))?;
        for counter in [
            &self.wal_backup_bytes,
            &self.wal_backup_segments,
            &self.wal_backup_failures,
            &self.wal_segments_removed,
            &self.wal_segments_downloaded,
            &self.wal_download_failures,
        ] {
            registry.register(Box::new(counter.clone()))?;
        }
        Ok(())
    }
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}
