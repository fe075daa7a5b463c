//! B-tree index tuples (`IndexTupleData`, `nbtree.h`) and the posting-list
//! operations redo repeats: `_bt_swap_posting`, `_bt_update_posting`,
//! `_bt_form_posting` and the deduplication of a page (`nbtdedup.c`).

use crate::bufpage::{self, corrupt, maxalign, Page};
use crate::RedoError;

const INDEX_SIZE_MASK: u16 = 0x1FFF;
const INDEX_ALT_TID_MASK: u16 = 0x2000;
const BT_OFFSET_MASK: u16 = 0x0FFF;
const BT_IS_POSTING: u16 = 0x2000;
/// `sizeof(ItemPointerData)`.
pub(crate) const TID_SIZE: usize = 6;
/// `sizeof(IndexTupleData)`.
pub(crate) const INDEX_TUPLE_HEADER: usize = 8;

fn u16_at(t: &[u8], pos: usize) -> Result<u16, RedoError> {
    bufpage::read_u16(t, pos)
}

/// `t_info`.
pub(crate) fn info(t: &[u8]) -> Result<u16, RedoError> {
    u16_at(t, 6)
}

pub(crate) fn set_info(t: &mut [u8], v: u16) -> Result<(), RedoError> {
    bufpage::write_u16(t, 6, v)
}

/// `IndexTupleSize`.
pub(crate) fn size(t: &[u8]) -> Result<usize, RedoError> {
    Ok((info(t)? & INDEX_SIZE_MASK) as usize)
}

/// The block number of `t_tid` (downlink, top parent, posting offset).
pub(crate) fn tid_block(t: &[u8]) -> Result<u32, RedoError> {
    Ok(((u16_at(t, 0)? as u32) << 16) | u16_at(t, 2)? as u32)
}

pub(crate) fn set_tid_block(t: &mut [u8], block: u32) -> Result<(), RedoError> {
    bufpage::write_u16(t, 0, (block >> 16) as u16)?;
    bufpage::write_u16(t, 2, block as u16)
}

fn tid_offset(t: &[u8]) -> Result<u16, RedoError> {
    u16_at(t, 4)
}

fn set_tid_offset(t: &mut [u8], v: u16) -> Result<(), RedoError> {
    bufpage::write_u16(t, 4, v)
}

/// `BTreeTupleIsPosting`.
pub(crate) fn is_posting(t: &[u8]) -> Result<bool, RedoError> {
    Ok(info(t)? & INDEX_ALT_TID_MASK != 0 && tid_offset(t)? & BT_IS_POSTING != 0)
}

/// The posting list of a posting tuple: (offset of the list, heap TIDs).
fn posting(t: &[u8]) -> Result<(usize, usize), RedoError> {
    let offset = tid_block(t)? as usize;
    let n = (tid_offset(t)? & BT_OFFSET_MASK) as usize;
    if offset + n * TID_SIZE > t.len() {
        return Err(corrupt("posting list beyond its tuple"));
    }
    Ok((offset, n))
}

/// The tuple's bytes, `IndexTupleSize` long, from the start of `bytes`.
pub(crate) fn tuple(bytes: &[u8]) -> Result<&[u8], RedoError> {
    let n = size(bytes)?;
    if n < INDEX_TUPLE_HEADER {
        return Err(corrupt(format!("index tuple of {n} bytes")));
    }
    bytes
        .get(..n)
        .ok_or_else(|| corrupt(format!("index tuple of {n} bytes in {}", bytes.len())))
}

/// The index tuple at `offnum` on `page` (its `IndexTupleSize` bytes).
pub(crate) fn on_page(page: &Page, offnum: u16) -> Result<&[u8], RedoError> {
    tuple(&page[bufpage::item_range(page, offnum)?])
}

/// Pad to MAXALIGN with zeroes.
pub(crate) fn padded(mut t: Vec<u8>) -> Vec<u8> {
    t.resize(maxalign(t.len()), 0);
    t
}

/// `_bt_swap_posting`: the posting tuple `oposting` with `newitem`'s heap
/// TID put in at `postingoff`; `newitem` gets the old last TID.
pub(crate) fn swap_posting(
    newitem: &mut [u8],
    oposting: &[u8],
    postingoff: u16,
) -> Result<Vec<u8>, RedoError> {
    let (base, n) = posting(oposting)?;
    let postingoff = postingoff as usize;
    if !is_posting(oposting)? || postingoff == 0 || postingoff >= n {
        return Err(corrupt(format!("posting split at {postingoff} of {n}")));
    }
    let mut nposting = oposting.to_vec();
    let at = base + postingoff * TID_SIZE;
    nposting.copy_within(at..base + (n - 1) * TID_SIZE, at + TID_SIZE);
    let new_tid = newitem
        .get(..TID_SIZE)
        .ok_or_else(|| corrupt("short new item"))?;
    nposting[at..at + TID_SIZE].copy_from_slice(new_tid);
    let last = base + (n - 1) * TID_SIZE;
    newitem[..TID_SIZE].copy_from_slice(&oposting[last..last + TID_SIZE]);
    Ok(nposting)
}

/// Build a tuple with the key of `base` (its first `keysize` bytes) and
/// heap TIDs `htids`: a posting tuple when there are several
/// (`_bt_form_posting`, `_bt_update_posting`).
fn form_posting(base: &[u8], keysize: usize, htids: &[&[u8]]) -> Result<Vec<u8>, RedoError> {
    let key = base
        .get(..keysize)
        .filter(|k| k.len() >= INDEX_TUPLE_HEADER)
        .ok_or_else(|| corrupt(format!("key of {keysize} bytes")))?;
    let newsize = if htids.len() > 1 {
        maxalign(keysize + htids.len() * TID_SIZE)
    } else {
        keysize
    };
    if newsize > INDEX_SIZE_MASK as usize || htids.is_empty() {
        return Err(corrupt(format!("posting tuple of {} TIDs", htids.len())));
    }
    let mut t = vec![0u8; newsize];
    t[..keysize].copy_from_slice(key);
    let info = info(&t)?;
    set_info(&mut t, (info & !INDEX_SIZE_MASK) | newsize as u16)?;
    if htids.len() > 1 {
        set_info(
            &mut t,
            (info & !INDEX_SIZE_MASK) | newsize as u16 | INDEX_ALT_TID_MASK,
        )?;
        set_tid_offset(&mut t, htids.len() as u16 | BT_IS_POSTING)?;
        set_tid_block(&mut t, keysize as u32)?;
        for (i, tid) in htids.iter().enumerate() {
            bufpage::write_bytes(&mut t, keysize + i * TID_SIZE, tid)?;
        }
    } else {
        set_info(
            &mut t,
            (info & !INDEX_SIZE_MASK & !INDEX_ALT_TID_MASK) | newsize as u16,
        )?;
        bufpage::write_bytes(&mut t, 0, htids[0])?;
    }
    Ok(t)
}

/// The heap TIDs of a tuple: its own, or its posting list.
fn htids(t: &[u8]) -> Result<Vec<&[u8]>, RedoError> {
    if is_posting(t)? {
        let (base, n) = posting(t)?;
        Ok((0..n)
            .map(|i| &t[base + i * TID_SIZE..base + (i + 1) * TID_SIZE])
            .collect())
    } else {
        Ok(vec![&t[..TID_SIZE]])
    }
}

/// `_bt_update_posting`: `orig` without the posting-list entries at
/// `deleted` (ascending indexes).
pub(crate) fn update_posting(orig: &[u8], deleted: &[u16]) -> Result<Vec<u8>, RedoError> {
    if !is_posting(orig)? {
        return Err(corrupt("update of a tuple that is not a posting list"));
    }
    let (keysize, _) = posting(orig)?;
    let mut d = 0;
    let mut kept = Vec::new();
    for (i, tid) in htids(orig)?.into_iter().enumerate() {
        if deleted.get(d) == Some(&(i as u16)) {
            d += 1;
        } else {
            kept.push(tid);
        }
    }
    form_posting(orig, keysize, &kept)
}

/// One logged deduplication interval (`BTDedupInterval`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Interval {
    pub baseoff: u16,
    pub nitems: u16,
}

/// The pending posting list of a deduplication pass (`BTDedupState`).
struct Pending<'a> {
    base: &'a [u8],
    baseoff: u16,
    /// Key bytes of `base`: its size, or its posting-list offset.
    keysize: usize,
    htids: Vec<&'a [u8]>,
    nitems: u16,
}

/// `BTMaxItemSize` for 8 KiB pages.
const BT_MAX_ITEM_SIZE: usize = 2704;

impl<'a> Pending<'a> {
    fn start(base: &'a [u8], baseoff: u16) -> Result<Self, RedoError> {
        let keysize = if is_posting(base)? {
            posting(base)?.0
        } else {
            base.len()
        };
        Ok(Pending {
            base,
            baseoff,
            keysize,
            htids: htids(base)?,
            nitems: 1,
        })
    }

    /// `_bt_dedup_save_htid`.
    fn save(&mut self, t: &'a [u8]) -> Result<bool, RedoError> {
        let more = htids(t)?;
        let merged = maxalign(self.keysize + (self.htids.len() + more.len()) * TID_SIZE);
        if merged > BT_MAX_ITEM_SIZE {
            return Ok(false);
        }
        self.htids.extend(more);
        self.nitems += 1;
        Ok(true)
    }

    /// `_bt_dedup_finish_pending`: put the pending tuple on `newpage`.
    fn finish(self, newpage: &mut Page, intervals: &mut Vec<Interval>) -> Result<(), RedoError> {
        let offnum = bufpage::max_offset(newpage) + 1;
        let how = bufpage::AddItem::default();
        if self.nitems == 1 {
            bufpage::add_item(newpage, self.base, offnum, how)?;
        } else {
            let t = form_posting(self.base, self.keysize, &self.htids)?;
            intervals.push(Interval {
                baseoff: self.baseoff,
                nitems: self.nitems,
            });
            bufpage::add_item(newpage, &t, offnum, how)?;
        }
        Ok(())
    }
}

/// The data items of `page` from `minoff`, deduplicated into `newpage` as
/// the logged `intervals` say (the loop of `btree_xlog_dedup`).
pub(crate) fn dedup_items(
    page: &Page,
    newpage: &mut Page,
    minoff: u16,
    intervals: &[Interval],
) -> Result<(), RedoError> {
    let mut done = Vec::new();
    let mut pending: Option<Pending<'_>> = None;
    for offnum in minoff..=bufpage::max_offset(page) {
        let t = on_page(page, offnum)?;
        let Some(mut p) = pending.take() else {
            pending = Some(Pending::start(t, offnum)?);
            continue;
        };
        let next = intervals.get(done.len());
        let merge = next.is_some_and(|i| i.baseoff == p.baseoff && p.nitems < i.nitems);
        if merge {
            if !p.save(t)? {
                return Err(corrupt("deduplication failed to add heap tid"));
            }
            pending = Some(p);
        } else {
            p.finish(newpage, &mut done)?;
            pending = Some(Pending::start(t, offnum)?);
        }
    }
    if let Some(p) = pending {
        p.finish(newpage, &mut done)?;
    }
    if done != intervals {
        return Err(corrupt("deduplication intervals differ from the record"));
    }
    Ok(())
}
