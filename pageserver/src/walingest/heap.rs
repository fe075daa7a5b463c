//! Heap-family records: the page images a record carries (or, without
//! image or redo, the pages it makes unreadable), and the visibility-map
//! bits heap and heap2 records clear without an image of the VM page.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context;
use bytes::Bytes;
use postgres_format::constants::*;
use postgres_format::page::set_page_lsn;
use postgres_format::records::HeapRecord;
use postgres_format::relfile::{ForkNumber, RelFileNode, RelTag};
use postgres_format::wal::DecodedRecord;
use tracing::error;

use super::{IngestContext, WalIngest};
use crate::value::{RustRecord, UnreadableRecord, VM_HEAPBLOCKS_PER_PAGE};

impl WalIngest {
    /// Stores the page images of `record`, at its end LSN with `pd_lsn`
    /// set as redo would leave it; a block without an image is stored as an
    /// unreadable version. Returns the blocks that got an image.
    pub(super) fn store_page_images(
        &mut self,
        cx: &mut IngestContext<'_, '_>,
        record: &DecodedRecord,
        raw: &Bytes,
    ) -> anyhow::Result<BTreeSet<(RelTag, u32)>> {
        let end = cx.end;
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
                    cx.m.put_rel_page_image(tag, block.block, Bytes::from(page))?;
                    imaged.insert((tag, block.block));
                }
                None if pg_redo::can_redo(record.header.rmid, record.header.rmgr_info()) => {
                    // Redone at read time, on the version before it.
                    self.redo_blocks += 1;
                    cx.m.put_rel_redo(
                        tag,
                        block.block,
                        RustRecord::WalRecord {
                            start_lsn: record.lsn,
                            end_lsn: end,
                            block_id: block.id,
                            will_init: block.will_init(),
                            record: raw.clone(),
                        },
                    )?;
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
                    cx.m.put_rel_unreadable(
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
        Ok(imaged)
    }
}

impl IngestContext<'_, '_> {
    /// Visibility-map bits cleared as a side effect of heap changes, one
    /// delta per VM page, unless the record carries that VM page's image.
    pub(super) fn clear_vm_bits(
        &mut self,
        heap: HeapRecord,
        imaged: &BTreeSet<(RelTag, u32)>,
    ) -> anyhow::Result<()> {
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
            self.m.put_rel_delta(
                vm,
                vm_block,
                RustRecord::VmClearBits {
                    heap_blocks,
                    all_visible,
                },
            )?;
        }
        Ok(())
    }
}
