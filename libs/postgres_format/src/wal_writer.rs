//! Writing WAL: the start point of a compute.
//!
//! A compute starts from a base backup taken at some LSN. Stock PostgreSQL
//! starts without recovery only from a clean shutdown checkpoint, so the
//! base backup carries a fabricated WAL segment that holds exactly one
//! shutdown-checkpoint record at that LSN (valid page headers, `xl_prev`
//! and CRC), and a `pg_control` that points at it in state "shut down".

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::constants::*;
use crate::control_file::{CheckPoint, ControlFile, DbState, Writer};
use crate::wal::{record_crc, WalPageHeader};
use crate::wal_names::{wal_file_name, PgTimeLineId};
use crate::PgMajorVersion;
use utils::Lsn;

/// The LSN at which a record written after `end` (the end of the previous
/// record) begins: MAXALIGNed, and past the page header at a page boundary.
pub fn next_record_lsn(end: Lsn, segment_size: usize) -> Lsn {
    let aligned = end
        .checked_align_up(MAXALIGN as u64)
        .expect("a record written by this process ends below the greatest LSN");
    if aligned.block_offset(XLOG_BLCKSZ as u64) != 0 {
        aligned
    } else if aligned.segment_offset(segment_size as u64) == 0 {
        aligned + SIZE_OF_XLOG_LONG_PHD as u64
    } else {
        aligned + SIZE_OF_XLOG_SHORT_PHD as u64
    }
}

/// Where a record of `length` bytes that begins at `start` ends, page
/// headers on the way included.
pub fn record_end(start: Lsn, length: usize, segment_size: usize) -> Lsn {
    let mut pos = start;
    let mut left = length as u64;
    while left > 0 {
        if pos.block_offset(XLOG_BLCKSZ as u64) == 0 {
            pos = next_record_lsn(pos, segment_size);
        }
        let n = (XLOG_BLCKSZ as u64 - pos.block_offset(XLOG_BLCKSZ as u64)).min(left);
        pos += n;
        left -= n;
    }
    pos
}

/// An `XLOG_CHECKPOINT_SHUTDOWN` record: header, short main-data header, `CheckPoint`.
pub fn encode_checkpoint_record(checkpoint: &CheckPoint, prev: Lsn) -> Vec<u8> {
    let body = checkpoint.encode();
    let total = SIZE_OF_XLOG_RECORD + 2 + body.len();
    let mut w = Writer::default();
    w.u32(total as u32);
    w.u32(INVALID_TRANSACTION_ID);
    w.u64(prev.0);
    w.u8(XLOG_CHECKPOINT_SHUTDOWN);
    w.u8(RM_XLOG_ID);
    w.u16(0);
    w.u32(0); // CRC, filled below
    w.u8(XLR_BLOCK_ID_DATA_SHORT);
    w.u8(body.len() as u8);
    w.0.extend_from_slice(&body);
    let crc = record_crc(&w.0);
    w.0[XLOG_RECORD_CRC_OFFSET..XLOG_RECORD_CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
    w.0
}

/// WAL segment files being assembled, keyed by segment number.
pub struct SegmentWriter {
    version: PgMajorVersion,
    segment_size: usize,
    system_id: u64,
    timeline: PgTimeLineId,
    segments: BTreeMap<u64, Vec<u8>>,
}

impl SegmentWriter {
    pub fn new(
        version: PgMajorVersion,
        segment_size: usize,
        system_id: u64,
        timeline: PgTimeLineId,
    ) -> Self {
        SegmentWriter {
            version,
            segment_size,
            system_id,
            timeline,
            segments: BTreeMap::new(),
        }
    }

    /// Write a record at `lsn` (a position [`next_record_lsn`] could give),
    /// with page headers for every page it touches; a page it continues on
    /// says so with `XLP_FIRST_IS_CONTRECORD`.
    pub fn write_record(&mut self, lsn: Lsn, record: &[u8]) {
        let mut pos = lsn;
        let mut written = 0;
        while written < record.len() {
            let page_offset = pos.block_offset(XLOG_BLCKSZ as u64) as usize;
            if page_offset == 0 {
                let remaining = (record.len() - written) as u32;
                let size = self.write_page_header(pos, XLP_FIRST_IS_CONTRECORD, remaining);
                pos += size as u64;
                continue;
            }
            if self.header_missing(pos) {
                self.write_page_header(pos - page_offset as u64, 0, 0);
            }
            let n = (XLOG_BLCKSZ - page_offset).min(record.len() - written);
            let segment_offset = pos.segment_offset(self.segment_size as u64) as usize;
            let segment = self.segment(pos);
            segment[segment_offset..segment_offset + n]
                .copy_from_slice(&record[written..written + n]);
            written += n;
            pos += n as u64;
        }
    }

    /// Mark everything from the start of `lsn`'s segment up to `lsn` as the
    /// tail of an earlier record: every page says `XLP_FIRST_IS_CONTRECORD`
    /// with the bytes left until `lsn`. A reader that starts at the segment
    /// or at any page before `lsn` then skips straight to the record at
    /// `lsn`, as PostgreSQL's `XLogFindNextRecord` and pg_waldump do.
    pub fn write_continuation_before(&mut self, lsn: Lsn) {
        let segment_start = lsn - lsn.segment_offset(self.segment_size as u64);
        let mut page = lsn - lsn.block_offset(XLOG_BLCKSZ as u64);
        let mut remaining = 0u64;
        loop {
            let header_size = if page == segment_start {
                SIZE_OF_XLOG_LONG_PHD
            } else {
                SIZE_OF_XLOG_SHORT_PHD
            } as u64;
            let data_end = if page + XLOG_BLCKSZ as u64 > lsn {
                lsn
            } else {
                page + XLOG_BLCKSZ as u64
            };
            remaining += data_end.0.saturating_sub(page.0 + header_size);
            if remaining > 0 {
                self.write_page_header(page, XLP_FIRST_IS_CONTRECORD, remaining as u32);
            } else {
                self.write_page_header(page, 0, 0);
            }
            if page == segment_start {
                break;
            }
            page = page - XLOG_BLCKSZ as u64;
        }
    }

    fn segment(&mut self, lsn: Lsn) -> &mut Vec<u8> {
        let size = self.segment_size;
        self.segments
            .entry(lsn.segment_number(size as u64))
            .or_insert_with(|| vec![0u8; size])
    }

    fn header_missing(&mut self, lsn: Lsn) -> bool {
        let page_start = lsn.segment_offset(self.segment_size as u64) as usize & !(XLOG_BLCKSZ - 1);
        self.segment(lsn)[page_start..page_start + 2] == [0, 0]
    }

    /// Write the header of the page at `page`; returns its size.
    fn write_page_header(&mut self, page: Lsn, flags: u16, remaining_length: u32) -> usize {
        let first_in_segment = page.segment_offset(self.segment_size as u64) == 0;
        let header = WalPageHeader {
            magic: self.version.wal_page_magic(),
            // PostgreSQL sets XLP_BKP_REMOVABLE whenever no base backup runs.
            info: flags | XLP_BKP_REMOVABLE | if first_in_segment { XLP_LONG_HEADER } else { 0 },
            timeline: self.timeline,
            page_address: page,
            remaining_length: if flags & XLP_FIRST_IS_CONTRECORD != 0 {
                remaining_length
            } else {
                0
            },
            long: first_in_segment.then_some((
                self.system_id,
                self.segment_size as u32,
                XLOG_BLCKSZ as u32,
            )),
        }
        .encode();
        let offset = page.segment_offset(self.segment_size as u64) as usize;
        let segment = self.segment(page);
        segment[offset..offset + header.len()].copy_from_slice(&header);
        // The first page of a segment always carries the long header.
        if !first_in_segment {
            let segment_start = page - offset as u64;
            if self.header_missing(segment_start) {
                self.write_page_header(segment_start, 0, 0);
            }
        }
        header.len()
    }

    /// The segment files: `(file name, contents)`.
    pub fn into_files(self) -> Vec<(String, Vec<u8>)> {
        let (timeline, size) = (self.timeline, self.segment_size);
        self.segments
            .into_iter()
            .map(|(segno, bytes)| (wal_file_name(timeline, segno, size), bytes))
            .collect()
    }
}

/// What a compute needs to start at an LSN: `pg_wal` segment files and `global/pg_control`.
pub struct FabricatedStart {
    /// Where the shutdown checkpoint record lies.
    pub checkpoint_lsn: Lsn,
    /// Where new WAL will begin (the end of the checkpoint record).
    pub end_lsn: Lsn,
    pub wal_segments: Vec<(String, Vec<u8>)>,
    pub control_file: Vec<u8>,
}

/// Fabricate a start point after the record that began at `prev_record`
/// and ended at `prev_end`, from the state in `control` (next xid and oid,
/// multixact and other horizons in its checkpoint copy), which the caller
/// brings up to date with the WAL up to `prev_end`.
pub fn fabricate_start(
    control: &ControlFile,
    version: PgMajorVersion,
    prev_record: Lsn,
    prev_end: Lsn,
) -> FabricatedStart {
    let segment_size = control.xlog_seg_size as usize;
    let checkpoint_lsn = next_record_lsn(prev_end, segment_size);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let timeline = 1;
    let checkpoint = CheckPoint {
        redo: checkpoint_lsn,
        this_timeline: timeline,
        prev_timeline: timeline,
        full_page_writes: true,
        time: now,
        oldest_active_xid: INVALID_TRANSACTION_ID,
        ..control.checkpoint_copy
    };
    let record = encode_checkpoint_record(&checkpoint, prev_record);
    let mut writer = SegmentWriter::new(version, segment_size, control.system_identifier, timeline);
    writer.write_continuation_before(checkpoint_lsn);
    writer.write_record(checkpoint_lsn, &record);
    let end_lsn = record_end(checkpoint_lsn, record.len(), segment_size);
    let control = ControlFile {
        state: DbState::Shutdowned,
        time: now,
        checkpoint: checkpoint_lsn,
        checkpoint_copy: checkpoint,
        min_recovery_point: Lsn::INVALID,
        min_recovery_point_timeline: 0,
        backup_start_point: Lsn::INVALID,
        backup_end_point: Lsn::INVALID,
        backup_end_required: false,
        ..control.clone()
    };
    FabricatedStart {
        checkpoint_lsn,
        end_lsn,
        wal_segments: writer.into_files(),
        control_file: control.encode(),
    }
}

/// A block reference for [`RecordBuilder`].
#[derive(Clone, Debug)]
pub struct BuiltBlock {
    pub id: u8,
    pub rel: crate::relfile::RelFileNode,
    pub fork: crate::relfile::ForkNumber,
    pub block: u32,
    pub will_init: bool,
    /// A full page to attach as an image, and whether redo applies it.
    pub image: Option<(Vec<u8>, bool)>,
    pub data: Vec<u8>,
}

/// Assembles WAL records the way `XLogRecordAssemble` lays them out, for
/// tests and tools: block headers (with `SAME_REL` where it applies),
/// images with their hole removed and optionally LZ4-compressed, block
/// data, then main data.
#[derive(Clone, Debug, Default)]
pub struct RecordBuilder {
    pub rmid: u8,
    pub info: u8,
    pub xid: u32,
    pub blocks: Vec<BuiltBlock>,
    pub main_data: Vec<u8>,
    pub compress_images: bool,
}

impl RecordBuilder {
    pub fn encode(&self, prev: Lsn) -> Vec<u8> {
        let mut headers = Writer::default();
        let mut payload = Vec::new();
        let mut last_rel = None;
        for block in &self.blocks {
            let mut flags = block.fork as u8;
            if block.will_init {
                flags |= BKPBLOCK_WILL_INIT;
            }
            if !block.data.is_empty() {
                flags |= BKPBLOCK_HAS_DATA;
            }
            let image = block
                .image
                .as_ref()
                .map(|(page, apply)| self.encode_image(page, *apply));
            if image.is_some() {
                flags |= BKPBLOCK_HAS_IMAGE;
            }
            if last_rel == Some(block.rel) {
                flags |= BKPBLOCK_SAME_REL;
            }
            headers.u8(block.id);
            headers.u8(flags);
            headers.u16(block.data.len() as u16);
            if let Some((stored, hole_offset, hole_length, info)) = &image {
                headers.u16(stored.len() as u16);
                headers.u16(*hole_offset);
                headers.u8(*info);
                let compressed = info & BKPIMAGE_COMPRESS_LZ4 != 0;
                if compressed && info & BKPIMAGE_HAS_HOLE != 0 {
                    headers.u16(*hole_length);
                }
                payload.extend_from_slice(stored);
            }
            if last_rel != Some(block.rel) {
                headers.u32(block.rel.spc_oid);
                headers.u32(block.rel.db_oid);
                headers.u32(block.rel.rel_node);
                last_rel = Some(block.rel);
            }
            headers.u32(block.block);
            payload.extend_from_slice(&block.data);
        }
        if !self.main_data.is_empty() {
            if self.main_data.len() < 256 {
                headers.u8(XLR_BLOCK_ID_DATA_SHORT);
                headers.u8(self.main_data.len() as u8);
            } else {
                headers.u8(XLR_BLOCK_ID_DATA_LONG);
                headers.u32(self.main_data.len() as u32);
            }
            payload.extend_from_slice(&self.main_data);
        }
        let total = SIZE_OF_XLOG_RECORD + headers.0.len() + payload.len();
        let mut w = Writer::default();
        w.u32(total as u32);
        w.u32(self.xid);
        w.u64(prev.0);
        w.u8(self.info);
        w.u8(self.rmid);
        w.u16(0);
        w.u32(0);
        w.0.extend_from_slice(&headers.0);
        w.0.extend_from_slice(&payload);
        let crc = record_crc(&w.0);
        w.0[XLOG_RECORD_CRC_OFFSET..XLOG_RECORD_CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
        w.0
    }

    /// `(stored bytes, hole offset, hole length, bimg_info)` of a page image.
    fn encode_image(&self, page: &[u8], apply: bool) -> (Vec<u8>, u16, u16, u8) {
        assert_eq!(page.len(), BLCKSZ, "an image is a whole page");
        let lower = u16::from_le_bytes([page[12], page[13]]) as usize;
        let upper = u16::from_le_bytes([page[14], page[15]]) as usize;
        let (hole_offset, hole_length) =
            if SIZE_OF_PAGE_HEADER_DATA <= lower && lower < upper && upper <= BLCKSZ {
                (lower, upper - lower)
            } else {
                (0, 0)
            };
        let mut stored = page[..hole_offset].to_vec();
        stored.extend_from_slice(&page[hole_offset + hole_length..]);
        let mut info = if apply { BKPIMAGE_APPLY } else { 0 };
        if hole_length > 0 {
            info |= BKPIMAGE_HAS_HOLE;
        }
        if self.compress_images {
            let compressed = lz4_flex::block::compress(&stored);
            if compressed.len() < stored.len() {
                return (
                    compressed,
                    hole_offset as u16,
                    hole_length as u16,
                    info | BKPIMAGE_COMPRESS_LZ4,
                );
            }
        }
        (stored, hole_offset as u16, hole_length as u16, info)
    }
}
