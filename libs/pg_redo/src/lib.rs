//! Redo of PostgreSQL 15 WAL records on 8 KiB pages, written in Rust after
//! PostgreSQL's own redo routines, so that the pageserver can reconstruct
//! pages without page images in the WAL.
//!
//! * [`redo_block`]: apply one record to one block it references (the page
//!   as it was before the record) — what the pageserver calls at read time.
//! * [`can_redo`]: whether a record of a resource manager has a Rust redo
//!   here (else the compute must attach page images for it).
//! * `bufpage`: PostgreSQL's page primitives (`PageAddItem`,
//!   `PageRepairFragmentation`, `PageIndexMultiDelete`, …).
//! * `heap`, `btree`, `sequence`: the redo of each resource manager.
//! * [`mask`]: PostgreSQL's `heap_mask`, `btree_mask`, `seq_mask`: the
//!   parts of a page that redo need not reproduce exactly (hint bits, LSN,
//!   unused space), masked before pages are compared.
//! * [`oracle`]: replays a WAL stream written with
//!   `wal_consistency_checking = all` and compares the Rust redo of each
//!   record with the page image PostgreSQL attached to it.
//!
//! Input is untrusted: a malformed record gives a [`RedoError`], never a
//! panic.

mod btree;
mod btree_tuple;
pub mod bufpage;
mod heap;
mod heap2;
pub mod mask;
pub mod oracle;
mod sequence;
#[cfg(test)]
mod test_util;

use postgres_format::constants::{
    RM_BTREE_ID, RM_HEAP2_ID, RM_HEAP_ID, RM_SEQ_ID, RM_XLOG_ID, XLOG_FPI, XLOG_FPI_FOR_HINT,
};
use postgres_format::wal::{BlockReference, DecodedRecord};
use utils::bytes_reader::ShortInput;
use utils::Lsn;

use bufpage::Page;

/// PostgreSQL's page size.
pub const BLCKSZ: usize = 8192;

/// A record that cannot be applied to a page.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedoError {
    /// No Rust redo for this resource manager and record type.
    #[error("no redo for resource manager {rmid} record type {info:#04x}")]
    Unsupported { rmid: u8, info: u8 },
    /// The record does not reference the block.
    #[error("the record has no block {0}")]
    NoSuchBlock(u8),
    /// The record or the page is not what the redo expects.
    #[error("{record}: {reason}")]
    Malformed {
        record: &'static str,
        reason: String,
    },
}

impl From<ShortInput> for RedoError {
    fn from(e: ShortInput) -> Self {
        RedoError::Malformed {
            record: e.what,
            reason: e.to_string(),
        }
    }
}

/// The resource managers without a Rust redo here, by the names
/// PostgreSQL's `wal_consistency_checking` takes: computes attach page images
/// to their records (and only theirs), so the pageserver stores an image
/// where it cannot redo. Every other page-modifying resource manager has a
/// redo in this crate (checked by a test).
pub const RMGRS_WITHOUT_REDO: &[&str] = &["hash", "gin", "gist", "spgist", "brin", "generic"];

/// `wal_consistency_checking` for computes: [`RMGRS_WITHOUT_REDO`].
pub fn wal_consistency_checking() -> String {
    RMGRS_WITHOUT_REDO.join(",")
}

/// Whether records of `rmid` with `info` (the rmgr bits of `xl_info`) have a
/// Rust redo here.
///
/// Covered: XLOG `FPI` and `FPI_FOR_HINT`; every heap, heap2 and B-tree
/// record type; sequence `LOG`. Some change no page (heap `TRUNCATE`,
/// heap2 `NEW_CID` and `REWRITE`, whose redo only touches files outside
/// the relation, B-tree `REUSE_PAGE`): they reference no blocks, so there
/// is nothing for [`redo_block`] to do.
pub fn can_redo(rmid: u8, info: u8) -> bool {
    match rmid {
        RM_XLOG_ID => matches!(info, XLOG_FPI | XLOG_FPI_FOR_HINT),
        // Every heap and heap2 operation code has a redo here.
        RM_HEAP_ID | RM_HEAP2_ID => true,
        RM_BTREE_ID => btree::can_redo(info),
        RM_SEQ_ID => info == sequence::XLOG_SEQ_LOG,
        _ => false,
    }
}

/// Apply `record` to its block `block_id`: `page` holds the page as it was
/// before the record (zeroes for a block the record initialises) and holds
/// the page after it on return, with its LSN set to the record's end LSN
/// `end_lsn`. An image marked for apply replaces the page.
///
/// This is PostgreSQL's redo for that one block, except for the check in
/// `XLogReadBufferForRedo` that skips a record whose LSN is not past the
/// page's (`BLK_DONE`): the caller applies records in order to the page as
/// it was before each, so the record is always applied. As in PostgreSQL,
/// a record applied to an uninitialised page (`pd_upper == 0`) that it
/// neither initialises nor restores leaves the page alone (`BLK_NOTFOUND`).
pub fn redo_block(
    record: &DecodedRecord,
    end_lsn: Lsn,
    block_id: u8,
    page: &mut [u8; BLCKSZ],
) -> Result<(), RedoError> {
    let block = record
        .block(block_id)
        .ok_or(RedoError::NoSuchBlock(block_id))?;
    let info = record.header.rmgr_info();
    let rec = Redo {
        record,
        block,
        end_lsn,
    };
    match record.header.rmid {
        RM_XLOG_ID if matches!(info, XLOG_FPI | XLOG_FPI_FOR_HINT) => fpi(&rec, page),
        RM_HEAP_ID => heap::redo(&rec, page),
        RM_HEAP2_ID => heap2::redo(&rec, page),
        RM_BTREE_ID if btree::can_redo(info) => btree::redo(&rec, page),
        RM_SEQ_ID if info == sequence::XLOG_SEQ_LOG => sequence::redo(&rec, page),
        rmid => Err(RedoError::Unsupported { rmid, info }),
    }
}

/// One record applied to one of its blocks.
pub(crate) struct Redo<'a> {
    pub record: &'a DecodedRecord,
    pub block: &'a BlockReference,
    pub end_lsn: Lsn,
}

impl Redo<'_> {
    /// The rmgr bits of `xl_info`.
    pub fn info(&self) -> u8 {
        self.record.header.rmgr_info()
    }

    /// The transaction id of the record (`XLogRecGetXid`).
    pub fn xid(&self) -> u32 {
        self.record.header.xid
    }

    /// The block data, or nothing.
    pub fn data(&self) -> &[u8] {
        self.block.data.as_deref().unwrap_or(&[])
    }

    pub fn malformed(&self, name: &'static str, reason: impl Into<String>) -> RedoError {
        RedoError::Malformed {
            record: name,
            reason: reason.into(),
        }
    }
}

/// How a redo routine reads its block (`ReadBufferMode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReadMode {
    /// `RBM_NORMAL`: an uninitialised page is left alone.
    Normal,
    /// `RBM_ZERO_ON_ERROR`: the page is used as it is.
    ZeroOnError,
    /// `RBM_ZERO_AND_LOCK`: the redo initialises the page.
    ZeroAndLock,
}

/// What `XLogReadBufferForRedo` decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Apply the record to the page.
    NeedsRedo,
    /// The page was replaced by the record's image.
    Restored,
    /// The page is uninitialised: nothing to do.
    NotFound,
}

/// `XLogReadBufferForRedoExtended` for the page in hand: restore the
/// block's image if it is marked for apply (and set the LSN unless the
/// image is of an uninitialised page), else say whether to redo.
pub(crate) fn read_for_redo(
    rec: &Redo<'_>,
    mode: ReadMode,
    page: &mut Page,
) -> Result<Action, RedoError> {
    let zero = mode == ReadMode::ZeroAndLock;
    if rec.block.will_init() != zero {
        return Err(rec.malformed(
            "block reference",
            format!(
                "block {} has WILL_INIT {} but the redo {} it",
                rec.block.id,
                rec.block.will_init(),
                if zero { "initialises" } else { "reads" }
            ),
        ));
    }
    if let Some(image) = rec.block.image.as_ref().filter(|i| i.apply()) {
        let hole_end = image.hole_offset as usize + image.hole_length as usize;
        let stored_ok = image.compression().is_some()
            || image.data.len() + image.hole_length as usize == BLCKSZ;
        if hole_end > BLCKSZ || !stored_ok {
            return Err(rec.malformed("block image", "image does not fit a page"));
        }
        let restored = image
            .restore()
            .map_err(|e| rec.malformed("block image", e.to_string()))?;
        let restored: &Page = restored
            .as_slice()
            .try_into()
            .map_err(|_| rec.malformed("block image", "restored image is not one page"))?;
        page.copy_from_slice(restored);
        if !bufpage::is_new(page) {
            bufpage::set_lsn(page, rec.end_lsn);
        }
        return Ok(Action::Restored);
    }
    if zero {
        page.fill(0);
    } else if mode == ReadMode::Normal && bufpage::is_new(page) {
        return Ok(Action::NotFound);
    }
    Ok(Action::NeedsRedo)
}

/// `XLOG_FPI` and `XLOG_FPI_FOR_HINT`: restore the image. A hint record
/// may come without one (full-page writes off): nothing to do then.
fn fpi(rec: &Redo<'_>, page: &mut Page) -> Result<(), RedoError> {
    if rec.block.image.is_none() {
        if rec.info() == XLOG_FPI {
            return Err(rec.malformed("XLOG_FPI", "block without an image"));
        }
        return Ok(());
    }
    match read_for_redo(rec, ReadMode::Normal, page)? {
        Action::Restored => Ok(()),
        _ => Err(rec.malformed("XLOG_FPI", "image not marked for apply")),
    }
}
