//! Storage-manager and database records: relations created and
//! truncated (with the FSM and VM truncated as
//! `FreeSpaceMapPrepareTruncateRel` and `visibilitymap_prepare_truncate`
//! do), relations dropped at commit or abort, databases created (`wal_log`:
//! empty, its pages follow; `file_copy`: a copy of the source as of this
//! record) and dropped.

use anyhow::{bail, ensure};
use bytes::Bytes;
use postgres_format::constants::*;
use postgres_format::records::ParsedRecord;
use postgres_format::relfile::{ForkNumber, RelFileNode, RelTag};
use tracing::warn;

use super::IngestContext;
use crate::value::{VM_HEAPBLOCKS_PER_PAGE, VM_MAP_OFFSET};

impl IngestContext<'_, '_> {
    pub(super) fn ingest_smgr(&mut self, record: ParsedRecord) -> anyhow::Result<()> {
        match record {
            ParsedRecord::SmgrCreate { rel, fork } => {
                let tag = RelTag { node: rel, fork };
                if self.m.rel_size(tag)?.is_none() {
                    self.m.put_rel_creation(tag, 0)?;
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
                    if self.m.rel_size(main)?.is_none() {
                        self.m.put_rel_creation(main, 0)?;
                    } else {
                        self.m.put_rel_truncation(main, blocks)?;
                    }
                }
                if fsm {
                    self.truncate_fsm(rel, blocks)?;
                }
                if visibility_map {
                    self.truncate_vm(rel, blocks)?;
                }
            }
            ParsedRecord::DatabaseCreateFileCopy {
                db_oid,
                spc_oid,
                src_db_oid,
                src_spc_oid,
            } => self.copy_database((src_spc_oid, src_db_oid), (spc_oid, db_oid))?,
            ParsedRecord::DatabaseCreateWalLog { db_oid, spc_oid } => {
                self.m.put_db_creation(spc_oid, db_oid)?
            }
            ParsedRecord::DatabaseDrop { db_oid, spc_oids } => {
                for spc in spc_oids {
                    self.m.put_db_drop(spc, db_oid)?;
                }
            }
            other => bail!("not a storage or database record: {other:?}"),
        }
        Ok(())
    }

    /// A relation dropped at commit or abort: every fork it has.
    pub(super) fn drop_relation(&mut self, node: RelFileNode) -> anyhow::Result<()> {
        for fork in [
            ForkNumber::Main,
            ForkNumber::Fsm,
            ForkNumber::VisibilityMap,
            ForkNumber::Init,
        ] {
            let tag = RelTag { node, fork };
            if self.m.rel_size(tag)?.is_some() {
                self.m.put_rel_drop(tag)?;
            }
        }
        Ok(())
    }

    /// `FreeSpaceMapPrepareTruncateRel` and the truncation that follows.
    fn truncate_fsm(&mut self, node: RelFileNode, heap_blocks: u32) -> anyhow::Result<()> {
        let fsm = RelTag {
            node,
            fork: ForkNumber::Fsm,
        };
        let Some(nblocks) = self.m.rel_size(fsm)? else {
            return Ok(());
        };
        let logical = heap_blocks / FSM_SLOTS_PER_PAGE;
        let slot = heap_blocks % FSM_SLOTS_PER_PAGE;
        let new_nblocks = if slot > 0 {
            let block = fsm_leaf_to_physical(logical);
            if block >= nblocks {
                return Ok(()); // the FSM is already smaller
            }
            let mut page = self
                .timeline
                .get_rel_page(fsm, block, self.before())?
                .to_vec();
            ensure!(
                page.len() == BLCKSZ,
                "FSM block {block} of {node} is {} bytes",
                page.len()
            );
            if !postgres_format::page::is_new_page(&page)
                && fsm_truncate_avail(&mut page, slot as usize)
            {
                self.m.put_rel_page_image(fsm, block, Bytes::from(page))?;
            }
            block + 1
        } else {
            fsm_leaf_to_physical(logical)
        };
        if new_nblocks < nblocks {
            self.m.put_rel_truncation(fsm, new_nblocks)?;
        }
        Ok(())
    }

    /// `visibilitymap_prepare_truncate` and the truncation that follows.
    fn truncate_vm(&mut self, node: RelFileNode, heap_blocks: u32) -> anyhow::Result<()> {
        let vm = RelTag {
            node,
            fork: ForkNumber::VisibilityMap,
        };
        let Some(nblocks) = self.m.rel_size(vm)? else {
            return Ok(());
        };
        let block = heap_blocks / VM_HEAPBLOCKS_PER_PAGE;
        let byte = (heap_blocks % VM_HEAPBLOCKS_PER_PAGE / 4) as usize;
        let shift = (heap_blocks % 4) * 2;
        let new_nblocks = if byte != 0 || shift != 0 {
            if block >= nblocks {
                return Ok(());
            }
            let mut page = self
                .timeline
                .get_rel_page(vm, block, self.before())?
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
                self.m.put_rel_page_image(vm, block, Bytes::from(page))?;
            }
            block + 1
        } else {
            block
        };
        if new_nblocks < nblocks {
            self.m.put_rel_truncation(vm, new_nblocks)?;
        }
        Ok(())
    }

    /// `CREATE DATABASE … STRATEGY file_copy`: the new database is a copy of
    /// the source's files (every fork of every relation, and its relmapper
    /// file) as of this record.
    fn copy_database(
        &mut self,
        (src_spc, src_db): (u32, u32),
        (spc, db): (u32, u32),
    ) -> anyhow::Result<()> {
        if spc != DEFAULTTABLESPACE_OID || src_spc != DEFAULTTABLESPACE_OID {
            bail!("CREATE DATABASE in tablespace {spc} from tablespace {src_spc}: tablespaces are not supported");
        }
        let at = self.before();
        self.m.put_db_creation(spc, db)?;
        for src in self.timeline.list_rels(src_spc, src_db, at)? {
            let dst = RelTag {
                node: RelFileNode {
                    spc_oid: spc,
                    db_oid: db,
                    rel_node: src.node.rel_node,
                },
                fork: src.fork,
            };
            let nblocks = self.timeline.get_rel_size(src, at)?.unwrap_or(0);
            self.m.put_rel_creation(dst, nblocks)?;
            for block in 0..nblocks {
                let page = self.timeline.get_rel_page(src, block, at)?;
                self.m.put_rel_page_image(dst, block, page)?;
            }
        }
        match self.timeline.get_relmap_file(src_spc, src_db, at)? {
            Some(map) if !map.is_empty() => self.m.put_relmap_file(spc, db, map)?,
            _ => warn!(
                "CREATE DATABASE {db}: the source database {src_db} has no relmapper file at {at}"
            ),
        }
        Ok(())
    }
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
}
