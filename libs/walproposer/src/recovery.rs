//! Reading WAL a safekeeper lacks from another safekeeper (the donor),
//! through the donor's WAL sender, up to the donor's flush LSN.

use anyhow::{bail, Context};
use bytes::{Bytes, BytesMut};
use pq_proto::replication::PrimaryMessage;
use utils::{Lsn, TenantId, TimelineId};

/// Reads WAL `[from, to)` from the safekeeper at `address`. The caller
/// bounds the range (one recovery chunk).
pub(crate) async fn read_from_donor(
    address: &str,
    tenant_id: TenantId,
    timeline_id: TimelineId,
    token: Option<&str>,
    from: Lsn,
    to: Lsn,
) -> anyhow::Result<(Lsn, Bytes)> {
    let len = to
        .checked_sub(from)
        .with_context(|| format!("recovery range {from}..{to} is reversed"))?;
    let len = usize::try_from(len).context("recovery range too large")?;
    let options =
        format!("-c tenant_id={tenant_id} -c timeline_id={timeline_id} -c wal_read_limit=flush");
    let params = [
        ("user", "walproposer"),
        ("application_name", "walproposer_recovery"),
        ("options", options.as_str()),
    ];
    let mut client = pq_proto::connect(address, &params, token)
        .await
        .with_context(|| format!("connecting to donor {address}"))?;
    let mut copy = client
        .copy_both(&format!("START_REPLICATION PHYSICAL {from}"))
        .await
        .context("starting replication from the donor")?;
    let mut out = BytesMut::with_capacity(len);
    while out.len() < len {
        let Some(data) = copy.recv().await? else {
            bail!("donor ended the stream at {}", from + out.len() as u64)
        };
        if let PrimaryMessage::XLogData(x) = PrimaryMessage::decode(data)? {
            let expected = from + out.len() as u64;
            if x.wal_start != expected {
                bail!("donor sent WAL at {}, expected {expected}", x.wal_start);
            }
            let n = (len - out.len()).min(x.data.len());
            out.extend_from_slice(&x.data[..n]);
        }
    }
    Ok((from, out.freeze()))
}
