//! Transaction records: commit and abort (CLOG status of the transaction
//! and its subtransactions, relations dropped, the two-phase file of a
//! prepared transaction), and prepare (its two-phase state file).

use std::collections::BTreeMap;

use bytes::Bytes;
use postgres_format::records::{TransactionRecord, TransactionStatus};

use super::{IngestContext, WalIngest};
use crate::key::{SlruKind, SLRU_PAGES_PER_SEGMENT};
use crate::value::{ClogStatus, RustRecord, CLOG_XACTS_PER_PAGE};

impl WalIngest {
    pub(super) fn ingest_transaction(
        &mut self,
        cx: &mut IngestContext<'_, '_>,
        record: TransactionRecord,
    ) -> anyhow::Result<()> {
        match record {
            TransactionRecord::Finish {
                status,
                xid,
                subxacts,
                dropped_rels,
                twophase_xid,
                ..
            } => {
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
                    cx.m.put_slru_delta(
                        SlruKind::Clog,
                        page / SLRU_PAGES_PER_SEGMENT,
                        page % SLRU_PAGES_PER_SEGMENT,
                        RustRecord::ClogSetStatus { xids, status },
                    )?;
                }
                for node in dropped_rels {
                    cx.drop_relation(node)?;
                }
                if let Some(xid) = twophase_xid {
                    cx.m.drop_twophase_file(xid)?;
                }
            }
            TransactionRecord::Prepare(prepared) => {
                let mut file = prepared.state_file;
                let crc = crc32c::crc32c(&file);
                file.extend_from_slice(&crc.to_le_bytes());
                cx.m.put_twophase_file(prepared.xid, Bytes::from(file))?;
            }
            TransactionRecord::Other => {}
        }
        Ok(())
    }
}
