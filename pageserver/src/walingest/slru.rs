//! CLOG and multixact records: pages zeroed, transaction status set (see
//! [`super::transactions`]), multixacts created (offsets and members,
//! split by page), and the SLRUs truncated as `SimpleLruTruncate` does.

use anyhow::{bail, Context};
use bytes::Bytes;
use postgres_format::constants::*;
use postgres_format::records::ParsedRecord;

use super::checkpoint::{multi_precedes, xid_precedes};
use super::{IngestContext, WalIngest};
use crate::key::{SlruKind, SLRU_PAGES_PER_SEGMENT};
use crate::value::{
    MultiXactStatus, RustRecord, CLOG_XACTS_PER_PAGE, MULTIXACT_MEMBERS_PER_PAGE,
    MULTIXACT_OFFSETS_PER_PAGE,
};

impl WalIngest {
    pub(super) fn ingest_slru(
        &mut self,
        cx: &mut IngestContext<'_, '_>,
        record: ParsedRecord,
    ) -> anyhow::Result<()> {
        match record {
            ParsedRecord::ClogZeroPage { page } => cx.zero_slru_page(SlruKind::Clog, page),
            ParsedRecord::ClogTruncate { page, .. } => {
                cx.truncate_slru(SlruKind::Clog, page, clog_page_precedes)
            }
            ParsedRecord::MultiXactZeroOffsetPage { page } => {
                cx.zero_slru_page(SlruKind::MultiXactOffsets, page)
            }
            ParsedRecord::MultiXactZeroMemberPage { page } => {
                cx.zero_slru_page(SlruKind::MultiXactMembers, page)
            }
            ParsedRecord::MultiXactCreate {
                multi,
                offset,
                members,
            } => self.multixact_create(cx, multi, offset, &members),
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
                cx.truncate_slru(
                    SlruKind::MultiXactOffsets,
                    prev_multi / MULTIXACT_OFFSETS_PER_PAGE,
                    multixact_offset_page_precedes,
                )?;
                cx.truncate_members(start_member, end_member)?;
                if multi_precedes(self.checkpoint.oldest_multi, end_multi) {
                    self.checkpoint.oldest_multi = end_multi;
                    self.checkpoint.oldest_multi_db = oldest_multi_db;
                }
                Ok(())
            }
            other => bail!("not an SLRU record: {other:?}"),
        }
    }

    /// `RecordNewMultiXact` and the counters `multixact_redo` advances.
    fn multixact_create(
        &mut self,
        cx: &mut IngestContext<'_, '_>,
        multi: u32,
        offset: u32,
        members: &[(u32, u32)],
    ) -> anyhow::Result<()> {
        let page = multi / MULTIXACT_OFFSETS_PER_PAGE;
        cx.m.put_slru_delta(
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
                cx.put_members(run_start, std::mem::take(&mut run))?;
            }
            if run.is_empty() {
                run_start = at;
            }
            run.push((xid, status));
            self.advance_next_xid(xid);
        }
        if !run.is_empty() {
            cx.put_members(run_start, run)?;
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

impl IngestContext<'_, '_> {
    fn put_members(
        &mut self,
        first_offset: u32,
        members: Vec<(u32, MultiXactStatus)>,
    ) -> anyhow::Result<()> {
        let page = first_offset / MULTIXACT_MEMBERS_PER_PAGE;
        self.m.put_slru_delta(
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

    fn zero_slru_page(&mut self, kind: SlruKind, page: u32) -> anyhow::Result<()> {
        self.m.put_slru_page_image(
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
        &mut self,
        kind: SlruKind,
        cutoff_page: u32,
        precedes: fn(u32, u32) -> bool,
    ) -> anyhow::Result<()> {
        let cutoff = cutoff_page - cutoff_page % SLRU_PAGES_PER_SEGMENT;
        for segment in self.timeline.list_slru_segments(kind, self.before())? {
            let first = segment.wrapping_mul(SLRU_PAGES_PER_SEGMENT);
            let last = first.wrapping_add(SLRU_PAGES_PER_SEGMENT - 1);
            if precedes(first, cutoff) && precedes(last, cutoff) {
                self.m.drop_slru_segment(kind, segment)?;
            }
        }
        Ok(())
    }

    /// `PerformMembersTruncation`: drop the member segments from the one of
    /// `start` up to, not including, the one of `end`.
    fn truncate_members(&mut self, start: u32, end: u32) -> anyhow::Result<()> {
        let segment_of = |offset: u32| offset / MULTIXACT_MEMBERS_PER_PAGE / SLRU_PAGES_PER_SEGMENT;
        let max_segment = segment_of(u32::MAX);
        let existing = self
            .timeline
            .list_slru_segments(SlruKind::MultiXactMembers, self.before())?;
        let (mut segment, end_segment) = (segment_of(start), segment_of(end));
        while segment != end_segment {
            if existing.contains(&segment) {
                self.m
                    .drop_slru_segment(SlruKind::MultiXactMembers, segment)?;
            }
            segment = if segment >= max_segment {
                0
            } else {
                segment + 1
            };
        }
        Ok(())
    }
}

/// `CLOGPagePrecedes`.
pub(super) fn clog_page_precedes(page1: u32, page2: u32) -> bool {
    let xid1 = page1
        .wrapping_mul(CLOG_XACTS_PER_PAGE)
        .wrapping_add(FIRST_NORMAL_TRANSACTION_ID + 1);
    let xid2 = page2
        .wrapping_mul(CLOG_XACTS_PER_PAGE)
        .wrapping_add(FIRST_NORMAL_TRANSACTION_ID + 1);
    xid_precedes(xid1, xid2) && xid_precedes(xid1, xid2.wrapping_add(CLOG_XACTS_PER_PAGE - 1))
}

/// `MultiXactOffsetPagePrecedes`.
pub(super) fn multixact_offset_page_precedes(page1: u32, page2: u32) -> bool {
    let m1 = page1
        .wrapping_mul(MULTIXACT_OFFSETS_PER_PAGE)
        .wrapping_add(1);
    let m2 = page2
        .wrapping_mul(MULTIXACT_OFFSETS_PER_PAGE)
        .wrapping_add(1);
    multi_precedes(m1, m2) && multi_precedes(m1, m2.wrapping_add(MULTIXACT_OFFSETS_PER_PAGE - 1))
}
