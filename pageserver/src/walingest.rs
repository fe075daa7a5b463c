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
//! A block reference without an image is a change the pageserver cannot
//! reconstruct: it is counted in [`WalIngest::unhandled_records`], logged
//! at ERROR, and stored as an unreadable version of each page it changes
//! ([`crate::value::Value::Unreadable`]), so reads of those pages fail until
//! a newer image instead of returning the older version.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, ensure, Context};
use bytes::Bytes;
use postgres_format::constants::*;
use postgres_format::control_file::CheckPoint;
use postgres_format::page::set_page_lsn;
use postgres_format::records::{parse_record, ParsedRecord, TransactionRecord, TransactionStatus};
use postgres_format::relfile::{ForkNumber, RelFileNode, RelTag};
use postgres_format::wal::{DecodedRecord, RawRecord};
use tracing::{error, warn};
use utils::Lsn;

use crate::key::{SlruKind, SLRU_PAGES_PER_SEGMENT};
use crate::pgdatadir::DatadirModification;
use crate::timeline::{RecordLsn, Timeline};
use crate::value::{
    ClogStatus, MultiXactStatus, RustRecord, UnreadableRecord, CLOG_XACTS_PER_PAGE,
    MULTIXACT_MEMBERS_PER_PAGE, MULTIXACT_OFFSETS_PER_PAGE, VM_HEAPBLOCKS_PER_PAGE, VM_MAP_OFFSET,
};

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
    /// Records ingested.
    pub records: u64,
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
            records: 0,
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
        let end = record.end_lsn;
        let decoded = DecodedRecord::decode(start, record.bytes.clone())
            .with_context(|| format!("decoding the WAL record at {start}"))?;
        let before = self.checkpoint;
        let mut m = timeline.begin_modification(end);
        self.apply(timeline, &mut m, &decoded, end)
            .with_context(|| {
                format!(
                    "ingesting the WAL record at {start} (rmgr {}, info {:#04x})",
                    rmgr_name(decoded.header.rmid).unwrap_or("custom"),
                    decoded.header.info
                )
            })
            .inspect_err(|_| self.checkpoint = before)?;
        if self.checkpoint != before {
            m.put_checkpoint(Bytes::copy_from_slice(&self.checkpoint.encode()))?;
        }
        m.commit(RecordLsn {
            last: end.align_up(MAXALIGN as u64),
            prev: start,
        })
        .with_context(|| format!("storing the WAL record at {start}"))?;
        self.records += 1;
        Ok(())
    }

    fn apply(
        &mut self,
        timeline: &Timeline,
        m: &mut DatadirModification<'_>,
        record: &DecodedRecord,
        end: Lsn,
    ) -> anyhow::Result<()> {
        // As redo: nextXid moves past every xid a record carries.
        self.advance_next_xid(record.header.xid);

        // Page images.
        let mut imaged: BTreeSet<(RelTag, u32)> = BTreeSet::new();
        for block in &record.blocks {
            let tag = block.tag();
            match &block.image {
                Some(image) => {
                    let mut page = image.restore().with_context(|| {
                        format!(
                            "restoring the image of block {} of {}",
                            block.block, tag.node
                        )
                    })?;
                    set_page_lsn(&mut page, end)?;
                    m.put_rel_page_image(tag, block.block, Bytes::from(page))?;
                    imaged.insert((tag, block.block));
                }
                None => {
                    // Never serve the older version: the page is unreadable
                    // until a newer image.
                    self.unhandled_records += 1;
                    crate::metrics::get().unhandled_wal_records.inc();
                    error!(
                        "WAL record at {} (rmgr {}, info {:#04x}) changes block {} of {} fork {} without an image, and the pageserver has no redo for it: the page cannot be read until a newer image (run computes with wal_consistency_checking = all)",
                        record.lsn,
                        rmgr_name(record.header.rmid).unwrap_or("custom"),
                        record.header.info,
                        block.block,
                        tag.node,
                        tag.fork.name()
                    );
                    m.put_rel_unreadable(
                        tag,
                        block.block,
                        UnreadableRecord {
                            lsn: record.lsn,
                            rmgr: record.header.rmid,
                            info: record.header.info,
                        },
                    )?;
                }
            }
        }

        let parsed = parse_record(record)?;
        match parsed {
            ParsedRecord::Transaction(TransactionRecord::Finish {
                status,
                xid,
                subxacts,
                dropped_rels,
                twophase_xid,
                ..
            }) => {
                self.advance_next_xid(xid);
                for &sub in &subxacts {
                    self.advance_next_xid(sub);
                }
                let status = match status {
                    TransactionStatus::Committed => ClogStatus::Committed,
                    TransactionStatus::Aborted => ClogStatus::Aborted,
                };
                let mut by_page: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
                for x in std::iter::once(xid).chain(subxacts) {
                    by_page.entry(x / CLOG_XACTS_PER_PAGE).or_default().push(x);
                }
                for (page, xids) in by_page {
                    m.put_slru_delta(
                        SlruKind::Clog,
                        page / SLRU_PAGES_PER_SEGMENT,
                        page % SLRU_PAGES_PER_SEGMENT,
                        RustRecord::ClogSetStatus { xids, status },
                    )?;
                }
                for node in dropped_rels {
                    drop_relation(m, node)?;
                }
                if let Some(xid) = twophase_xid {
                    m.drop_twophase_file(xid)?;
                }
            }
            ParsedRecord::Transaction(TransactionRecord::Prepare(prepared)) => {
                let mut file = prepared.state_file;
                let crc = crc32c::crc32c(&file);
                file.extend_from_slice(&crc.to_le_bytes());
                m.put_twophase_file(prepared.xid, Bytes::from(file))?;
            }
            ParsedRecord::Transaction(TransactionRecord::Other) => {}
            ParsedRecord::ClogZeroPage { page } => zero_slru_page(m, SlruKind::Clog, page)?,
            ParsedRecord::ClogTruncate { page, .. } => {
                truncate_slru(timeline, m, end, SlruKind::Clog, page, clog_page_precedes)?;
            }
            ParsedRecord::MultiXactZeroOffsetPage { page } => {
                zero_slru_page(m, SlruKind::MultiXactOffsets, page)?
            }
            ParsedRecord::MultiXactZeroMemberPage { page } => {
                zero_slru_page(m, SlruKind::MultiXactMembers, page)?
            }
            ParsedRecord::MultiXactCreate {
                multi,
                offset,
                members,
            } => self.multixact_create(m, multi, offset, &members)?,
            ParsedRecord::MultiXactTruncate {
                oldest_multi_db,
                start_offset: _,
                end_offset: end_multi,
                start_member,
                end_member,
            } => {
                // The offsets SLRU is truncated before the page of the
                // multixact preceding the new oldest one.
                let mut prev_multi = end_multi.wrapping_sub(1);
                if prev_multi == 0 {
                    prev_multi = u32::MAX;
                }
                truncate_slru(
                    timeline,
                    m,
                    end,
                    SlruKind::MultiXactOffsets,
                    prev_multi / MULTIXACT_OFFSETS_PER_PAGE,
                    multixact_offset_page_precedes,
                )?;
                truncate_members(timeline, m, end, start_member, end_member)?;
                if multi_precedes(self.checkpoint.oldest_multi, end_multi) {
                    self.checkpoint.oldest_multi = end_multi;
                    self.checkpoint.oldest_multi_db = oldest_multi_db;
                }
            }
            ParsedRecord::RelmapUpdate {
                db_oid,
                spc_oid,
                data,
            } => m.put_relmap_file(spc_oid, db_oid, Bytes::from(data))?,
            ParsedRecord::SmgrCreate { rel, fork } => {
                let tag = RelTag { node: rel, fork };
                if m.rel_size(tag)?.is_none() {
                    m.put_rel_creation(tag, 0)?;
                }
            }
            ParsedRecord::SmgrTruncate {
                rel,
                blocks,
                heap,
                visibility_map,
                fsm,
            } => {
                if heap {
                    let main = RelTag {
                        node: rel,
                        fork: ForkNumber::Main,
                    };
                    if m.rel_size(main)?.is_none() {
                        m.put_rel_creation(main, 0)?;
                    } else {
                        m.put_rel_truncation(main, blocks)?;
                    }
                }
                if fsm {
                    truncate_fsm(timeline, m, end, rel, blocks)?;
                }
                if visibility_map {
                    truncate_vm(timeline, m, end, rel, blocks)?;
                }
            }
            ParsedRecord::DatabaseCreateFileCopy {
                db_oid,
                spc_oid,
                src_db_oid,
                src_spc_oid,
            } => copy_database(
                timeline,
                m,
                end,
                (src_spc_oid, src_db_oid),
                (spc_oid, db_oid),
            )?,
            ParsedRecord::DatabaseCreateWalLog { db_oid, spc_oid } => {
                m.put_db_creation(spc_oid, db_oid)?
            }
            ParsedRecord::DatabaseDrop { db_oid, spc_oids } => {
                for spc in spc_oids {
                    m.put_db_drop(spc, db_oid)?;
                }
            }
            ParsedRecord::Checkpoint { shutdown, .. } => {
                let cp = CheckPoint::decode(&record.main_data)
                    .context("decoding the checkpoint record")?;
                self.apply_checkpoint(&cp, shutdown);
            }
            ParsedRecord::NextOid { oid } => self.checkpoint.next_oid = oid,
            ParsedRecord::RunningXacts { next_xid, .. } => {
                // No xid at or after the running-xacts record's nextXid was assigned.
                if next_xid >= FIRST_NORMAL_TRANSACTION_ID {
                    self.advance_next_xid(next_xid.wrapping_sub(1));
                }
            }
            ParsedRecord::Heap(heap) => {
                let mut by_vm_page: BTreeMap<(RelFileNode, u32, bool), Vec<u32>> = BTreeMap::new();
                for clear in heap.clears {
                    let vm_block = clear.heap_block / VM_HEAPBLOCKS_PER_PAGE;
                    let vm = RelTag {
                        node: clear.rel,
                        fork: ForkNumber::VisibilityMap,
                    };
                    if imaged.contains(&(vm, vm_block)) {
                        continue;
                    }
                    by_vm_page
                        .entry((clear.rel, vm_block, clear.all_visible))
                        .or_default()
                        .push(clear.heap_block);
                }
                for ((node, vm_block, all_visible), heap_blocks) in by_vm_page {
                    let vm = RelTag {
                        node,
                        fork: ForkNumber::VisibilityMap,
                    };
                    m.put_rel_delta(
                        vm,
                        vm_block,
                        RustRecord::VmClearBits {
                            heap_blocks,
                            all_visible,
                        },
                    )?;
                }
            }
            ParsedRecord::Other => {
                if record.header.rmid == RM_TBLSPC_ID {
                    self.unhandled_records += 1;
                    crate::metrics::get().unhandled_wal_records.inc();
                    error!(
                        "WAL record at {} (rmgr Tablespace, info {:#04x}): tablespaces are not supported; the timeline does not follow this change",
                        record.lsn, record.header.info
                    );
                }
            }
        }
        Ok(())
    }

    /// `AdvanceNextFullTransactionIdPastXid`.
    fn advance_next_xid(&mut self, xid: u32) {
        if xid < FIRST_NORMAL_TRANSACTION_ID {
            return;
        }
        let next = self.checkpoint.next_xid;
        let next32 = next as u32;
        if !xid_follows_or_equals(xid, next32) {
            return;
        }
        let mut new32 = xid.wrapping_add(1);
        if new32 < FIRST_NORMAL_TRANSACTION_ID {
            new32 = FIRST_NORMAL_TRANSACTION_ID;
        }
        let mut epoch = next >> 32;
        if new32 < next32 {
            epoch += 1;
        }
        self.checkpoint.next_xid = (epoch << 32) | new32 as u64;
    }

    fn apply_checkpoint(&mut self, cp: &CheckPoint, shutdown: bool) {
        let c = &mut self.checkpoint;
        if shutdown {
            // Redo of a shutdown checkpoint sets the counters.
            c.next_xid = cp.next_xid;
            c.next_oid = cp.next_oid;
            c.next_multi = cp.next_multi;
            c.next_multi_offset = cp.next_multi_offset;
            c.oldest_xid = cp.oldest_xid;
            c.oldest_xid_db = cp.oldest_xid_db;
            c.oldest_multi = cp.oldest_multi;
            c.oldest_multi_db = cp.oldest_multi_db;
        } else {
            // An online checkpoint's counters were read at its start: only advance.
            if cp.next_xid > c.next_xid {
                c.next_xid = cp.next_xid;
            }
            if multi_precedes(c.next_multi, cp.next_multi) {
                c.next_multi = cp.next_multi;
            }
            if (cp.next_multi_offset.wrapping_sub(c.next_multi_offset) as i32) > 0 {
                c.next_multi_offset = cp.next_multi_offset;
            }
            if xid_precedes(c.oldest_xid, cp.oldest_xid) {
                c.oldest_xid = cp.oldest_xid;
                c.oldest_xid_db = cp.oldest_xid_db;
            }
            if multi_precedes(c.oldest_multi, cp.oldest_multi) {
                c.oldest_multi = cp.oldest_multi;
                c.oldest_multi_db = cp.oldest_multi_db;
            }
        }
        c.redo = cp.redo;
        c.this_timeline = cp.this_timeline;
        c.prev_timeline = cp.prev_timeline;
        c.full_page_writes = cp.full_page_writes;
        c.time = cp.time;
        c.oldest_commit_ts_xid = cp.oldest_commit_ts_xid;
        c.newest_commit_ts_xid = cp.newest_commit_ts_xid;
        c.oldest_active_xid = cp.oldest_active_xid;
    }

    /// `RecordNewMultiXact` and the counters `multixact_redo` advances.
    fn multixact_create(
        &mut self,
        m: &mut DatadirModification<'_>,
        multi: u32,
        offset: u32,
        members: &[(u32, u32)],
    ) -> anyhow::Result<()> {
        let page = multi / MULTIXACT_OFFSETS_PER_PAGE;
        m.put_slru_delta(
            SlruKind::MultiXactOffsets,
            page / SLRU_PAGES_PER_SEGMENT,
            page % SLRU_PAGES_PER_SEGMENT,
            RustRecord::MultixactOffset { multi, offset },
        )?;
        // Members, split where they cross a page (or wrap around).
        let mut run: Vec<(u32, MultiXactStatus)> = Vec::new();
        let mut run_start = offset;
        for (i, &(xid, status)) in members.iter().enumerate() {
            let status = u8::try_from(status)
                .ok()
                .and_then(MultiXactStatus::from_u8)
                .with_context(|| format!("multixact {multi}: invalid member status {status}"))?;
            let at = offset.wrapping_add(i as u32);
            let new_page =
                at / MULTIXACT_MEMBERS_PER_PAGE != run_start / MULTIXACT_MEMBERS_PER_PAGE;
            // A new page, or the offsets wrapped around past u32::MAX.
            if !run.is_empty() && (new_page || at < run_start) {
                put_members(m, run_start, std::mem::take(&mut run))?;
            }
            if run.is_empty() {
                run_start = at;
            }
            run.push((xid, status));
            self.advance_next_xid(xid);
        }
        if !run.is_empty() {
            put_members(m, run_start, run)?;
        }
        // MultiXactAdvanceNextMXact.
        let mut next_multi = multi.wrapping_add(1);
        if next_multi == 0 {
            next_multi = 1;
        }
        if multi_precedes(self.checkpoint.next_multi, next_multi) {
            self.checkpoint.next_multi = next_multi;
        }
        let next_offset = offset.wrapping_add(members.len() as u32);
        if (next_offset.wrapping_sub(self.checkpoint.next_multi_offset) as i32) > 0 {
            self.checkpoint.next_multi_offset = next_offset;
        }
        Ok(())
    }
}

fn put_members(
    m: &mut DatadirModification<'_>,
    first_offset: u32,
    members: Vec<(u32, MultiXactStatus)>,
) -> anyhow::Result<()> {
    let page = first_offset / MULTIXACT_MEMBERS_PER_PAGE;
    m.put_slru_delta(
        SlruKind::MultiXactMembers,
        page / SLRU_PAGES_PER_SEGMENT,
        page % SLRU_PAGES_PER_SEGMENT,
        RustRecord::MultixactMembers {
            first_offset,
            members,
        },
    )?;
    Ok(())
}

/// `TransactionIdPrecedes`.
fn xid_precedes(a: u32, b: u32) -> bool {
    if a < FIRST_NORMAL_TRANSACTION_ID || b < FIRST_NORMAL_TRANSACTION_ID {
        return a < b;
    }
    (a.wrapping_sub(b) as i32) < 0
}

/// `TransactionIdFollowsOrEquals`.
fn xid_follows_or_equals(a: u32, b: u32) -> bool {
    !xid_precedes(a, b)
}

/// `MultiXactIdPrecedes`.
fn multi_precedes(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// `CLOGPagePrecedes`.
fn clog_page_precedes(page1: u32, page2: u32) -> bool {
    let xid1 = page1
        .wrapping_mul(CLOG_XACTS_PER_PAGE)
        .wrapping_add(FIRST_NORMAL_TRANSACTION_ID + 1);
    let xid2 = page2
        .wrapping_mul(CLOG_XACTS_PER_PAGE)
        .wrapping_add(FIRST_NORMAL_TRANSACTION_ID + 1);
    xid_precedes(xid1, xid2) && xid_precedes(xid1, xid2.wrapping_add(CLOG_XACTS_PER_PAGE - 1))
}

/// `MultiXactOffsetPagePrecedes`.
fn multixact_offset_page_precedes(page1: u32, page2: u32) -> bool {
    let m1 = page1
        .wrapping_mul(MULTIXACT_OFFSETS_PER_PAGE)
        .wrapping_add(1);
    let m2 = page2
        .wrapping_mul(MULTIXACT_OFFSETS_PER_PAGE)
        .wrapping_add(1);
    multi_precedes(m1, m2) && multi_precedes(m1, m2.wrapping_add(MULTIXACT_OFFSETS_PER_PAGE - 1))
}

/// The state before the record being ingested.
fn read_lsn(timeline: &Timeline, end: Lsn) -> Lsn {
    Lsn(end.0.saturating_sub(1)).max(timeline.start_lsn())
}

fn zero_slru_page(
    m: &mut DatadirModification<'_>,
    kind: SlruKind,
    page: u32,
) -> anyhow::Result<()> {
    m.put_slru_page_image(
        kind,
        page / SLRU_PAGES_PER_SEGMENT,
        page % SLRU_PAGES_PER_SEGMENT,
        Bytes::from(vec![0u8; BLCKSZ]),
    )?;
    Ok(())
}

/// `SimpleLruTruncate`: drop every segment all of whose pages precede
/// the segment of `cutoff_page`.
fn truncate_slru(
    timeline: &Timeline,
    m: &mut DatadirModification<'_>,
    end: Lsn,
    kind: SlruKind,
    cutoff_page: u32,
    precedes: fn(u32, u32) -> bool,
) -> anyhow::Result<()> {
    let cutoff = cutoff_page - cutoff_page % SLRU_PAGES_PER_SEGMENT;
    for segment in timeline.list_slru_segments(kind, read_lsn(timeline, end))? {
        let first = segment.wrapping_mul(SLRU_PAGES_PER_SEGMENT);
        let last = first.wrapping_add(SLRU_PAGES_PER_SEGMENT - 1);
        if precedes(first, cutoff) && precedes(last, cutoff) {
            m.drop_slru_segment(kind, segment)?;
        }
    }
    Ok(())
}

/// `PerformMembersTruncation`: drop the member segments from the one of
/// `start` up to, not including, the one of `end`.
fn truncate_members(
    timeline: &Timeline,
    m: &mut DatadirModification<'_>,
    end_lsn: Lsn,
    start: u32,
    end: u32,
) -> anyhow::Result<()> {
    let segment_of = |offset: u32| offset / MULTIXACT_MEMBERS_PER_PAGE / SLRU_PAGES_PER_SEGMENT;
    let max_segment = segment_of(u32::MAX);
    let existing =
        timeline.list_slru_segments(SlruKind::MultiXactMembers, read_lsn(timeline, end_lsn))?;
    let (mut segment, end_segment) = (segment_of(start), segment_of(end));
    while segment != end_segment {
        if existing.contains(&segment) {
            m.drop_slru_segment(SlruKind::MultiXactMembers, segment)?;
        }
        segment = if segment >= max_segment {
            0
        } else {
            segment + 1
        };
    }
    Ok(())
}

fn drop_relation(m: &mut DatadirModification<'_>, node: RelFileNode) -> anyhow::Result<()> {
    for fork in [
        ForkNumber::Main,
        ForkNumber::Fsm,
        ForkNumber::VisibilityMap,
        ForkNumber::Init,
    ] {
        let tag = RelTag { node, fork };
        if m.rel_size(tag)?.is_some() {
            m.put_rel_drop(tag)?;
        }
    }
    Ok(())
}

// ---- free space map (freespace.c, fsmpage.c) ----

/// `NodesPerPage`: the page less its header and `fp_next_slot`.
const FSM_NODES_PER_PAGE: usize = BLCKSZ - SIZE_OF_PAGE_HEADER_DATA - 4;
/// `NonLeafNodesPerPage`.
const FSM_NON_LEAF_NODES_PER_PAGE: usize = BLCKSZ / 2 - 1;
/// `SlotsPerFSMPage` (`LeafNodesPerPage`).
const FSM_SLOTS_PER_PAGE: u32 = (FSM_NODES_PER_PAGE - FSM_NON_LEAF_NODES_PER_PAGE) as u32;
/// `FSM_TREE_DEPTH` for 8 KiB pages.
const FSM_TREE_DEPTH: u32 = 3;
/// Offset of `fp_nodes` in an FSM page.
const FSM_NODES_OFFSET: usize = SIZE_OF_PAGE_HEADER_DATA + 4;

/// `fsm_logical_to_physical` for a bottom-level page.
fn fsm_leaf_to_physical(logical_page: u32) -> u32 {
    let mut leaf = logical_page as u64;
    let mut pages = 0u64;
    for _ in 0..FSM_TREE_DEPTH {
        pages += leaf + 1;
        leaf /= FSM_SLOTS_PER_PAGE as u64;
    }
    (pages - 1).min(u32::MAX as u64) as u32
}

/// `fsm_truncate_avail`: clear the slots from `first_slot` on and rebuild
/// the page's tree. False if nothing changed.
fn fsm_truncate_avail(page: &mut [u8], first_slot: usize) -> bool {
    let nodes = &mut page[FSM_NODES_OFFSET..FSM_NODES_OFFSET + FSM_NODES_PER_PAGE];
    let leaves = &mut nodes[FSM_NON_LEAF_NODES_PER_PAGE + first_slot..];
    if leaves.iter().all(|&b| b == 0) {
        return false;
    }
    leaves.fill(0);
    for node in (0..FSM_NON_LEAF_NODES_PER_PAGE).rev() {
        let left = 2 * node + 1;
        let right = left + 1;
        let mut value = 0;
        if left < FSM_NODES_PER_PAGE {
            value = nodes[left];
        }
        if right < FSM_NODES_PER_PAGE {
            value = value.max(nodes[right]);
        }
        nodes[node] = value;
    }
    true
}

/// `FreeSpaceMapPrepareTruncateRel` and the truncation that follows.
fn truncate_fsm(
    timeline: &Timeline,
    m: &mut DatadirModification<'_>,
    end: Lsn,
    node: RelFileNode,
    heap_blocks: u32,
) -> anyhow::Result<()> {
    let fsm = RelTag {
        node,
        fork: ForkNumber::Fsm,
    };
    let Some(nblocks) = m.rel_size(fsm)? else {
        return Ok(());
    };
    let logical = heap_blocks / FSM_SLOTS_PER_PAGE;
    let slot = heap_blocks % FSM_SLOTS_PER_PAGE;
    let new_nblocks = if slot > 0 {
        let block = fsm_leaf_to_physical(logical);
        if block >= nblocks {
            return Ok(()); // the FSM is already smaller
        }
        let mut page = timeline
            .get_rel_page(fsm, block, read_lsn(timeline, end))?
            .to_vec();
        ensure!(
            page.len() == BLCKSZ,
            "FSM block {block} of {node} is {} bytes",
            page.len()
        );
        if !postgres_format::page::is_new_page(&page)
            && fsm_truncate_avail(&mut page, slot as usize)
        {
            m.put_rel_page_image(fsm, block, Bytes::from(page))?;
        }
        block + 1
    } else {
        fsm_leaf_to_physical(logical)
    };
    if new_nblocks < nblocks {
        m.put_rel_truncation(fsm, new_nblocks)?;
    }
    Ok(())
}

/// `visibilitymap_prepare_truncate` and the truncation that follows.
fn truncate_vm(
    timeline: &Timeline,
    m: &mut DatadirModification<'_>,
    end: Lsn,
    node: RelFileNode,
    heap_blocks: u32,
) -> anyhow::Result<()> {
    let vm = RelTag {
        node,
        fork: ForkNumber::VisibilityMap,
    };
    let Some(nblocks) = m.rel_size(vm)? else {
        return Ok(());
    };
    let block = heap_blocks / VM_HEAPBLOCKS_PER_PAGE;
    let byte = (heap_blocks % VM_HEAPBLOCKS_PER_PAGE / 4) as usize;
    let shift = (heap_blocks % 4) * 2;
    let new_nblocks = if byte != 0 || shift != 0 {
        if block >= nblocks {
            return Ok(());
        }
        let mut page = timeline
            .get_rel_page(vm, block, read_lsn(timeline, end))?
            .to_vec();
        ensure!(
            page.len() == BLCKSZ,
            "VM block {block} of {node} is {} bytes",
            page.len()
        );
        let map = &mut page[VM_MAP_OFFSET..];
        let before = map.to_vec();
        map[byte + 1..].fill(0);
        map[byte] &= ((1u32 << shift) - 1) as u8;
        if map != before.as_slice() {
            m.put_rel_page_image(vm, block, Bytes::from(page))?;
        }
        block + 1
    } else {
        block
    };
    if new_nblocks < nblocks {
        m.put_rel_truncation(vm, new_nblocks)?;
    }
    Ok(())
}

/// `CREATE DATABASE … STRATEGY file_copy`: the new database is a copy of
/// the source's files (every fork of every relation, and its relmapper
/// file) as of this record.
fn copy_database(
    timeline: &Timeline,
    m: &mut DatadirModification<'_>,
    end: Lsn,
    (src_spc, src_db): (u32, u32),
    (spc, db): (u32, u32),
) -> anyhow::Result<()> {
    if spc != DEFAULTTABLESPACE_OID || src_spc != DEFAULTTABLESPACE_OID {
        bail!("CREATE DATABASE in tablespace {spc} from tablespace {src_spc}: tablespaces are not supported");
    }
    let at = read_lsn(timeline, end);
    m.put_db_creation(spc, db)?;
    for src in timeline.list_rels(src_spc, src_db, at)? {
        let dst = RelTag {
            node: RelFileNode {
                spc_oid: spc,
                db_oid: db,
                rel_node: src.node.rel_node,
            },
            fork: src.fork,
        };
        let nblocks = timeline.get_rel_size(src, at)?.unwrap_or(0);
        m.put_rel_creation(dst, nblocks)?;
        for block in 0..nblocks {
            let page = timeline.get_rel_page(src, block, at)?;
            m.put_rel_page_image(dst, block, page)?;
        }
    }
    match timeline.get_relmap_file(src_spc, src_db, at)? {
        Some(map) if !map.is_empty() => m.put_relmap_file(spc, db, map)?,
        _ => warn!(
            "CREATE DATABASE {db}: the source database {src_db} has no relmapper file at {at}"
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsm_layout() {
        assert_eq!(FSM_NODES_PER_PAGE, 8164);
        assert_eq!(FSM_SLOTS_PER_PAGE, 4069);
        // Root, first level-1 page, then its leaves; then the next level-1 page.
        assert_eq!(fsm_leaf_to_physical(0), 2);
        assert_eq!(fsm_leaf_to_physical(1), 3);
        assert_eq!(fsm_leaf_to_physical(4068), 4070);
        assert_eq!(fsm_leaf_to_physical(4069), 4072);
    }

    #[test]
    fn fsm_truncate_rebuilds_the_tree() {
        let mut page = vec![0u8; BLCKSZ];
        let leaf = |slot: usize| FSM_NODES_OFFSET + FSM_NON_LEAF_NODES_PER_PAGE + slot;
        page[leaf(3)] = 10;
        page[leaf(100)] = 200;
        // A consistent tree: every inner node the max of its children.
        for node in (0..FSM_NON_LEAF_NODES_PER_PAGE).rev() {
            let (l, r) = (2 * node + 1, 2 * node + 2);
            let get = |i: usize| {
                if i < FSM_NODES_PER_PAGE {
                    page[FSM_NODES_OFFSET + i]
                } else {
                    0
                }
            };
            page[FSM_NODES_OFFSET + node] = get(l).max(get(r));
        }
        assert_eq!(page[FSM_NODES_OFFSET], 200);
        assert!(fsm_truncate_avail(&mut page, 50));
        assert_eq!(page[leaf(100)], 0);
        assert_eq!(page[leaf(3)], 10);
        assert_eq!(page[FSM_NODES_OFFSET], 10, "the root is the new maximum");
        assert!(!fsm_truncate_avail(&mut page, 50), "nothing left to clear");
    }

    #[test]
    fn next_xid_advances_with_epoch() {
        let checkpoint = CheckPoint::decode(&[0u8; 88]).unwrap();
        let mut ingest = WalIngest {
            checkpoint: CheckPoint {
                next_xid: (1 << 32) | 100,
                ..checkpoint
            },
            control_file: Bytes::new(),
            unhandled_records: 0,
            records: 0,
        };
        ingest.advance_next_xid(50);
        assert_eq!(
            ingest.checkpoint.next_xid,
            (1 << 32) | 100,
            "older xids change nothing"
        );
        ingest.advance_next_xid(0);
        assert_eq!(ingest.checkpoint.next_xid, (1 << 32) | 100);
        ingest.advance_next_xid(100);
        assert_eq!(ingest.checkpoint.next_xid, (1 << 32) | 101);
        ingest.checkpoint.next_xid = (1 << 32) | (u32::MAX as u64 - 1);
        ingest.advance_next_xid(u32::MAX);
        // Past the end of the epoch: the next epoch, skipping the special xids.
        assert_eq!(ingest.checkpoint.next_xid, (2 << 32) | 3);
    }

    #[test]
    fn xid_comparisons_wrap() {
        assert!(xid_precedes(3, 4));
        assert!(
            xid_precedes(u32::MAX - 5, 10),
            "10 follows after wraparound"
        );
        assert!(xid_precedes(1, 3), "special xids compare as numbers");
        assert!(clog_page_precedes(0, 1));
        assert!(!clog_page_precedes(1, 1));
        assert!(multixact_offset_page_precedes(0, 1));
        assert!(multi_precedes(u32::MAX, 1));
    }
}
