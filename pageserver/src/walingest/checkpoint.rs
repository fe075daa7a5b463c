//! The counters a base backup's checkpoint needs (next xid, oid,
//! multixact and offset, oldest xid and multixact), advanced as redo
//! advances them: by checkpoint, next-oid and running-xacts records, and by
//! every xid a record carries.

use anyhow::{bail, Context};
use postgres_format::constants::*;
use postgres_format::control_file::CheckPoint;
use postgres_format::records::ParsedRecord;
use postgres_format::wal::DecodedRecord;

use super::WalIngest;

impl WalIngest {
    pub(super) fn ingest_counters(
        &mut self,
        record: &DecodedRecord,
        parsed: ParsedRecord,
    ) -> anyhow::Result<()> {
        match parsed {
            ParsedRecord::Checkpoint { shutdown, .. } => {
                let cp = CheckPoint::decode(&record.main_data)
                    .context("decoding the checkpoint record")?;
                self.apply_checkpoint(&cp, shutdown);
                self.shutdown_checkpoint = shutdown;
            }
            ParsedRecord::NextOid { oid } => self.checkpoint.next_oid = oid,
            ParsedRecord::RunningXacts { next_xid, .. } => {
                // No xid at or after the running-xacts record's nextXid was assigned.
                if next_xid >= FIRST_NORMAL_TRANSACTION_ID {
                    self.advance_next_xid(next_xid.wrapping_sub(1));
                }
            }
            other => bail!("not a counter record: {other:?}"),
        }
        Ok(())
    }

    /// `AdvanceNextFullTransactionIdPastXid`.
    pub(super) fn advance_next_xid(&mut self, xid: u32) {
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
}

/// `TransactionIdPrecedes`.
pub(super) fn xid_precedes(a: u32, b: u32) -> bool {
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
pub(super) fn multi_precedes(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::walingest::slru::{clog_page_precedes, multixact_offset_page_precedes};

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
            redo_blocks: 0,
            records: 0,
            rel_sizes: Default::default(),
            shutdown_checkpoint: false,
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
