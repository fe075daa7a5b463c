//! WAL ingest: one WAL record at a time into a timeline.
//!
//! Computes run with `wal_consistency_checking = all` (docs/design.md), so
//! every page-modifying record carries an image of each page it registers,
//! as the page is after the change. The images are stored with `pd_lsn` set
//! to the record's end (as redo would leave the page). What changes without
//! an image is applied here, as PostgreSQL's redo does:
//!
//! * visibility-map bits cleared by heap and heap2 records
//!   ([`RustRecord::VmClearBits`]), unless the record carries the VM page;
//! * CLOG: zeroed pages, commit and abort status of a transaction and its
//!   subtransactions ([`RustRecord::ClogSetStatus`]), truncation;
//! * multixacts: zeroed pages, new multixacts (offset and members), truncation;
//! * relations created (`XLOG_SMGR_CREATE`), truncated (`XLOG_SMGR_TRUNCATE`,
//!   with the FSM and VM truncated as `FreeSpaceMapPrepareTruncateRel` and
//!   `visibilitymap_prepare_truncate` do), and dropped at commit or abort;
//! * two-phase state files (prepare, commit or abort prepared);
//! * relmapper files;
//! * databases created (`wal_log` strategy: an empty database whose pages
//!   follow; `file_copy`: a copy of the source database as of this record)
//!   and dropped;
//! * the checkpoint values a base backup needs (next xid, oid, multixact
//!   and offset, oldest xid and multixact), advanced as redo advances them.
//!
//! The dispatch is by record family, each in its own module, working on an
//! [`IngestContext`] (the timeline before the record, and the modification
//! that holds the record's changes):
//!
//! * [`heap`]: page images, pages made unreadable, heap flags (VM bits);
//! * [`transactions`]: commit, abort, prepare;
//! * [`slru`]: CLOG and multixact pages;
//! * [`smgr`]: relations and databases created, truncated, dropped;
//! * [`relmapper`]: relation mapper files;
//! * [`checkpoint`]: the counters a base backup needs.
//!
//! A block reference without an image is a change the pageserver cannot
//! reconstruct: it is counted in [`WalIngest::unhandled_records`], logged
//! at ERROR, and stored as an unreadable version of each page it changes
//! ([`crate::value::Value::Unreadable`]), so reads of those pages fail until
//! a newer image instead of returning the older version.

use anyhow::Context;
use bytes::Bytes;
use postgres_format::constants::*;
use postgres_format::control_file::CheckPoint;
use postgres_format::records::{parse_record, ParsedRecord};
use postgres_format::wal::{DecodedRecord, RawRecord};
use tracing::error;
use utils::Lsn;

use crate::pgdatadir::{DatadirModification, RelSizeCache};
use crate::tenant::timeline::{RecordLsn, Timeline};

mod checkpoint;
mod heap;
mod relmapper;
mod slru;
mod smgr;
mod transactions;

/// Ingests WAL records into a timeline, keeping the checkpoint values
/// that redo advances.
pub struct WalIngest {
    checkpoint: CheckPoint,
    /// `pg_control` as imported (its checkpoint copy is updated by base
    /// backups from [`Self::checkpoint`]).
    control_file: Bytes,
    /// Page-modifying records (or block references) that had neither an
    /// image nor a Rust redo. Must stay 0.
    pub unhandled_records: u64,
    /// Block references stored for Rust redo (without an image).
    pub redo_blocks: u64,
    /// Records ingested.
    pub records: u64,
    /// Relation sizes at the last record ingested.
    rel_sizes: RelSizeCache,
    /// Set while ingesting a shutdown checkpoint record.
    shutdown_checkpoint: bool,
}

/// What one record's ingest works on: the timeline as it was before the
/// record, and the modification that holds the record's changes at `end`.
struct IngestContext<'a, 'm> {
    timeline: &'a Timeline,
    m: &'a mut DatadirModification<'m>,
    /// Where the record ends: its changes are stored at this LSN.
    end: Lsn,
}

impl IngestContext<'_, '_> {
    /// The LSN that shows the state before the record.
    fn before(&self) -> Lsn {
        Lsn(self.end.0.saturating_sub(1)).max(self.timeline.start_lsn())
    }
}

impl WalIngest {
    /// Start ingesting after the timeline's last record.
    pub fn new(timeline: &Timeline) -> anyhow::Result<WalIngest> {
        let lsn = timeline.last_record_lsn();
        let checkpoint = timeline.get_checkpoint(lsn)?.with_context(|| {
            format!(
                "timeline {} has no checkpoint at {lsn}",
                timeline.timeline_id
            )
        })?;
        let checkpoint = CheckPoint::decode(&checkpoint)
            .with_context(|| format!("decoding the stored checkpoint at {lsn}"))?;
        let control_file = timeline.get_control_file(lsn)?.with_context(|| {
            format!(
                "timeline {} has no pg_control at {lsn}",
                timeline.timeline_id
            )
        })?;
        Ok(WalIngest {
            checkpoint,
            control_file,
            unhandled_records: 0,
            redo_blocks: 0,
            records: 0,
            rel_sizes: RelSizeCache::default(),
            shutdown_checkpoint: false,
        })
    }

    /// The checkpoint values as of the last record ingested.
    pub fn checkpoint(&self) -> &CheckPoint {
        &self.checkpoint
    }

    pub fn control_file(&self) -> &Bytes {
        &self.control_file
    }

    /// Decode and apply one record, stored at its end LSN.
    pub fn ingest_record(&mut self, timeline: &Timeline, record: &RawRecord) -> anyhow::Result<()> {
        crate::metrics::get().wal_records_ingested.inc();
        let start = record.start_lsn;
        let decoded = DecodedRecord::decode(start, record.bytes.clone())
            .with_context(|| format!("decoding the WAL record at {start}"))?;
        let before = self.checkpoint;
        let mut rel_sizes = std::mem::take(&mut self.rel_sizes);
        let result = self.ingest_decoded(timeline, record, &decoded, &mut rel_sizes);
        self.rel_sizes = rel_sizes;
        if result.is_err() {
            self.checkpoint = before;
        }
        result
    }

    fn ingest_decoded(
        &mut self,
        timeline: &Timeline,
        record: &RawRecord,
        decoded: &DecodedRecord,
        rel_sizes: &mut RelSizeCache,
    ) -> anyhow::Result<()> {
        let (start, end) = (record.start_lsn, record.end_lsn);
        let before = self.checkpoint;
        let mut m = timeline.begin_cached_modification(end, rel_sizes);
        let mut cx = IngestContext {
            timeline,
            m: &mut m,
            end,
        };
        self.apply(&mut cx, decoded, &record.bytes)
            .with_context(|| {
                format!(
                    "ingesting the WAL record at {start} (rmgr {}, info {:#04x})",
                    rmgr_name(decoded.header.rmid).unwrap_or("custom"),
                    decoded.header.info
                )
            })?;
        if self.checkpoint != before {
            m.put_checkpoint(Bytes::copy_from_slice(&self.checkpoint.encode()))?;
        }
        if std::mem::take(&mut self.shutdown_checkpoint) {
            m.put_shutdown_checkpoint(start)?;
        }
        m.commit(RecordLsn {
            last: end
                .checked_align_up(MAXALIGN as u64)
                .with_context(|| format!("the record at {start} ends past the greatest LSN"))?,
            prev: start,
        })
        .with_context(|| format!("storing the WAL record at {start}"))?;
        self.records += 1;
        Ok(())
    }

    /// Applies one decoded record: its page images, then what it means by
    /// family.
    fn apply(
        &mut self,
        cx: &mut IngestContext<'_, '_>,
        record: &DecodedRecord,
        raw: &Bytes,
    ) -> anyhow::Result<()> {
        // As redo: nextXid moves past every xid a record carries.
        self.advance_next_xid(record.header.xid);
        let imaged = self.store_page_images(cx, record, raw)?;
        match parse_record(record)? {
            ParsedRecord::Transaction(t) => self.ingest_transaction(cx, t),
            parsed @ (ParsedRecord::ClogZeroPage { .. }
            | ParsedRecord::ClogTruncate { .. }
            | ParsedRecord::MultiXactZeroOffsetPage { .. }
            | ParsedRecord::MultiXactZeroMemberPage { .. }
            | ParsedRecord::MultiXactCreate { .. }
            | ParsedRecord::MultiXactTruncate { .. }) => self.ingest_slru(cx, parsed),
            ParsedRecord::RelmapUpdate {
                db_oid,
                spc_oid,
                data,
            } => cx.update_relmap(spc_oid, db_oid, data),
            parsed @ (ParsedRecord::SmgrCreate { .. }
            | ParsedRecord::SmgrTruncate { .. }
            | ParsedRecord::DatabaseCreateFileCopy { .. }
            | ParsedRecord::DatabaseCreateWalLog { .. }
            | ParsedRecord::DatabaseDrop { .. }) => cx.ingest_smgr(parsed),
            parsed @ (ParsedRecord::Checkpoint { .. }
            | ParsedRecord::NextOid { .. }
            | ParsedRecord::RunningXacts { .. }) => self.ingest_counters(record, parsed),
            ParsedRecord::Heap(heap) => cx.clear_vm_bits(heap, &imaged),
            ParsedRecord::Other => {
                if record.header.rmid == RM_TBLSPC_ID {
                    self.unhandled_records += 1;
                    crate::metrics::get().unhandled_wal_records.inc();
                    error!(
                        "WAL record at {} (rmgr Tablespace, info {:#04x}): tablespaces are not supported; the timeline does not follow this change",
                        record.lsn, record.header.info
                    );
                }
                Ok(())
            }
        }
    }
}
