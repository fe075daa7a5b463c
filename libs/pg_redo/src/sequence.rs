//! Redo of sequences (`seq_redo` in `sequence.c`): the one record type
//! rewrites the sequence's only page from the tuple it carries.

use utils::bytes_reader::Reader;

use crate::bufpage::{self, AddItem, Page};
use crate::{read_for_redo, ReadMode, Redo, RedoError};

/// `XLOG_SEQ_LOG`.
pub(crate) const XLOG_SEQ_LOG: u8 = 0x00;
/// `SEQ_MAGIC`, in the special space of a sequence page.
const SEQ_MAGIC: u32 = 0x1717;
/// `sizeof(xl_seq_rec)`: the relation's `RelFileNode` before the tuple.
const SIZE_OF_SEQ_REC: usize = 12;

/// The page is built anew: header, magic, and the logged tuple at offset 1.
/// An image of the block, if any, is overwritten as PostgreSQL does.
pub(crate) fn redo(rec: &Redo<'_>, page: &mut Page) -> Result<(), RedoError> {
    let mut r = Reader::new(&rec.record.main_data, "xl_seq_rec");
    r.skip(SIZE_OF_SEQ_REC)?;
    let item = r.rest();
    read_for_redo(rec, ReadMode::ZeroAndLock, page)?;
    let mut local: Box<Page> = Box::new([0; crate::BLCKSZ]);
    bufpage::init(&mut local, 4);
    let special = bufpage::special(&local);
    bufpage::write_u32(&mut local[..], special, SEQ_MAGIC)?;
    bufpage::add_item(&mut local, item, 1, AddItem::default())
        .map_err(|e| rec.malformed("seq_redo", format!("failed to add item: {e}")))?;
    bufpage::set_lsn(&mut local, rec.end_lsn);
    page.copy_from_slice(&local[..]);
    Ok(())
}
