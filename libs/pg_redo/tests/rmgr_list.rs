//! The list computes put in `wal_consistency_checking` names exactly the
//! page-modifying resource managers without a Rust redo here.

use pg_redo::{can_redo, RMGRS_WITHOUT_REDO};
use postgres_format::constants::*;

#[test]
fn the_image_list_is_the_rmgrs_without_redo() {
    // Resource managers whose records change relation pages (the others
    // change SLRUs, files or nothing, and the pageserver handles them).
    let page_rmgrs = [
        RM_HEAP2_ID,
        RM_HEAP_ID,
        RM_BTREE_ID,
        RM_HASH_ID,
        RM_GIN_ID,
        RM_GIST_ID,
        RM_SEQ_ID,
        RM_SPGIST_ID,
        RM_BRIN_ID,
        RM_GENERIC_ID,
    ];
    for rmid in page_rmgrs {
        let name = rmgr_name(rmid).unwrap().to_lowercase();
        // Some record type of the rmgr has a redo, or none does.
        let redone = (0..=0xF0u8).step_by(0x10).any(|info| can_redo(rmid, info));
        let listed = RMGRS_WITHOUT_REDO.contains(&name.as_str());
        assert_eq!(
            !redone, listed,
            "{name}: redo {redone}, listed for images {listed}"
        );
    }
    assert_eq!(RMGRS_WITHOUT_REDO.len(), 6);
    assert_eq!(
        pg_redo::wal_consistency_checking(),
        "hash,gin,gist,spgist,brin,generic"
    );
}
