//! Relation mapper records: a database's (or the shared) `pg_filenode.map`
//! rewritten whole.

use bytes::Bytes;

use super::IngestContext;

impl IngestContext<'_, '_> {
    pub(super) fn update_relmap(
        &mut self,
        spc_oid: u32,
        db_oid: u32,
        data: Vec<u8>,
    ) -> anyhow::Result<()> {
        self.m.put_relmap_file(spc_oid, db_oid, Bytes::from(data))?;
        Ok(())
    }
}
