//! The pageserver's own metrics, served at `/metrics` beside the standard
//! ones.

use std::sync::OnceLock;

use prometheus::{IntCounter, IntGauge, Registry};

pub struct Metrics {
    /// Timelines whose ingest waits for a failed flush to succeed.
    pub ingest_paused_timelines: IntGauge,
    /// WAL records that change a page with neither an image nor a Rust redo.
    pub unhandled_wal_records: IntCounter,
    /// Reads that failed on a version such a record made unreadable.
    pub unreadable_page_reads: IntCounter,
    pub wal_records_ingested: IntCounter,
    /// Deltas stored as page images because their chain reached the bound.
    pub delta_chains_ended: IntCounter,
    pub remote_bytes_uploaded: IntCounter,
    pub remote_index_uploads: IntCounter,
    pub remote_upload_failures: IntCounter,
    /// Layers deleted from remote storage (after an index without them).
    pub remote_layers_deleted: IntCounter,
    pub remote_bytes_downloaded: IntCounter,
    /// Tenants found to have a newer generation attached elsewhere.
    pub remote_stale_tenants: IntCounter,
}

impl Metrics {
    fn new() -> Metrics {
        let counter = |name: &str, help: &str| IntCounter::new(name, help).expect("valid metric");
        Metrics {
            ingest_paused_timelines: IntGauge::new(
                "pageserver_ingest_paused_timelines",
                "Timelines whose WAL ingest is paused because writing a layer file failed (a full disk, say)",
            )
            .expect("valid metric"),
            unhandled_wal_records: counter(
                "pageserver_unhandled_wal_records_total",
                "WAL records changing a page with neither an image nor a Rust redo (the page becomes unreadable)",
            ),
            unreadable_page_reads: counter(
                "pageserver_unreadable_page_reads_total",
                "Reads that failed because a record without image or redo made the page unreadable",
            ),
            wal_records_ingested: counter(
                "pageserver_wal_records_ingested_total",
                "WAL records ingested",
            ),
            delta_chains_ended: counter(
                "pageserver_delta_chains_ended_total",
                "Page images stored in place of a delta whose chain reached max_delta_chain",
            ),
            remote_bytes_uploaded: counter(
                "pageserver_remote_bytes_uploaded_total",
                "Layer bytes uploaded to remote storage",
            ),
            remote_index_uploads: counter(
                "pageserver_remote_index_uploads_total",
                "Timeline indexes uploaded to remote storage",
            ),
            remote_upload_failures: counter(
                "pageserver_remote_operation_failures_total",
                "Remote storage operations that failed (and were retried)",
            ),
            remote_layers_deleted: counter(
                "pageserver_remote_layers_deleted_total",
                "Layers deleted from remote storage once an uploaded index no longer names them",
            ),
            remote_bytes_downloaded: counter(
                "pageserver_remote_bytes_downloaded_total",
                "Layer bytes downloaded from remote storage (attach)",
            ),
            remote_stale_tenants: counter(
                "pageserver_remote_stale_tenants_total",
                "Tenants found to have a newer generation attached elsewhere: this pageserver stopped uploading and deleting anything of them",
            ),
        }
    }

    /// Serve these metrics from `registry`.
    pub fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        for c in [
            &self.unhandled_wal_records,
            &self.unreadable_page_reads,
            &self.wal_records_ingested,
            &self.delta_chains_ended,
            &self.remote_bytes_uploaded,
            &self.remote_index_uploads,
            &self.remote_upload_failures,
            &self.remote_layers_deleted,
            &self.remote_bytes_downloaded,
            &self.remote_stale_tenants,
        ] {
            registry.register(Box::new(c.clone()))?;
        }
        registry.register(Box::new(self.ingest_paused_timelines.clone()))?;
        Ok(())
    }
}

/// The process's metrics.
pub fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}
