//! The page service: libpq connections from computes and tools.
//!
//! * `pagestream <tenant_id> <timeline_id>`: CopyBoth; each CopyData is a
//!   [`pageserver_api::pagestream::Request`] answered by one `Response`.
//!   Reads wait (up to [`WAIT_LSN_TIMEOUT`]) until WAL up to the request's
//!   LSN is ingested; GetLatestPage then reads at the last record ingested. A failed request gets an error response and the
//!   stream goes on; a malformed one ends the stream with an error.
//! * `basebackup <tenant_id> <timeline_id> [lsn] [lazy]`: CopyOut of a tar
//!   of PGDATA at the LSN (default: the last record ingested); with `lazy`,
//!   logged relations are listed with their sizes instead of sent. The tar
//!   is streamed as it is produced, in CopyData chunks of at most
//!   [`STREAM_CHUNK_SIZE`] bytes; a failure after the COPY began ends it
//!   with an ErrorResponse instead of CopyDone.
//!
//! With authentication on, a connection sends a token as its password (a
//! bad one is refused, `FATAL 28P01`) and a command on a tenant the token
//! does not open fails with `42501`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use auth::{Access, Claims, JwtVerifier};
use pageserver_api::pagestream::{RelSpec, Request, Response};
use postgres_format::relfile::{ForkNumber, RelFileNode, RelTag};
use pq_proto::{
    BeMessage, ErrorFields, FeMessage, Format, PostgresBackend, QueryError, QueryHandler,
    QueryOutcome, ServerConfig, StartupParams,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, Instrument};
use utils::{Lsn, TenantId, TimelineId};

use crate::basebackup::{BasebackupStream, RelationData, STREAM_CHUNK_SIZE, STREAM_QUEUE_DEPTH};
use crate::key::SlruKind;
use crate::tenant::timeline::Timeline;

/// How long a request may wait for WAL up to its LSN.
pub const WAIT_LSN_TIMEOUT: Duration = Duration::from_secs(60);

/// Finds timelines for the page service.
pub trait TimelineLookup: Send + Sync + 'static {
    fn get_timeline(
        &self,
        tenant_id: TenantId,
        timeline_id: TimelineId,
    ) -> anyhow::Result<Arc<Timeline>>;
}

/// Produces base backups; [`crate::basebackup::basebackup_at`] in the
/// pageserver, a stand-in in tests.
pub type BasebackupFn =
    fn(&Timeline, Option<Lsn>, RelationData, &mut dyn std::io::Write) -> anyhow::Result<()>;

#[derive(Debug, PartialEq, Eq)]
enum Command {
    Pagestream {
        tenant_id: TenantId,
        timeline_id: TimelineId,
    },
    Basebackup {
        tenant_id: TenantId,
        timeline_id: TimelineId,
        lsn: Option<Lsn>,
        data: RelationData,
    },
}

fn parse_command(query: &str) -> anyhow::Result<Command> {
    let words: Vec<&str> = query
        .trim()
        .trim_end_matches(';')
        .split_whitespace()
        .collect();
    let ids = |t: &str, l: &str| -> anyhow::Result<(TenantId, TimelineId)> {
        Ok((
            t.parse().context("tenant id")?,
            l.parse().context("timeline id")?,
        ))
    };
    match words.as_slice() {
        ["pagestream", t, l] => {
            let (tenant_id, timeline_id) = ids(t, l)?;
            Ok(Command::Pagestream { tenant_id, timeline_id })
        }
        ["basebackup", t, l, rest @ ..] if rest.len() <= 2 => {
            let (tenant_id, timeline_id) = ids(t, l)?;
            let (lsn, data) = match rest {
                [] => (None, RelationData::Full),
                ["lazy"] => (None, RelationData::SizesOnly),
                [lsn] => (Some(lsn.parse().context("LSN")?), RelationData::Full),
                [lsn, "lazy"] => (Some(lsn.parse().context("LSN")?), RelationData::SizesOnly),
                [_, other] => bail!("unknown base backup option {other:?} (the one option is 'lazy')"),
                _ => unreachable!("at most two words"),
            };
            Ok(Command::Basebackup { tenant_id, timeline_id, lsn, data })
        }
        _ => bail!("unsupported command {query:?}: this is a pageserver; it accepts 'pagestream <tenant> <timeline>' and 'basebackup <tenant> <timeline> [lsn] [lazy]'"),
    }
}

/// Serve the page service until `cancel` fires, `max_connections` at once,
/// with the default timeouts.
pub async fn serve(
    listener: TcpListener,
    timelines: Arc<dyn TimelineLookup>,
    basebackup: BasebackupFn,
    max_connections: usize,
    auth: Option<Arc<JwtVerifier>>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let config = ServerConfig::new(SERVICE_NAME, max_connections);
    serve_with(listener, timelines, basebackup, config, auth, cancel).await
}

/// Names the page service in refusals ("too many connections to this pageserver").
pub const SERVICE_NAME: &str = "pageserver";

/// Serve the page service until `cancel` fires, within the connection
/// limits and timeouts of `config`. The idle timeout applies between
/// queries only: a `pagestream` connection may be quiet for long.
pub async fn serve_with(
    listener: TcpListener,
    timelines: Arc<dyn TimelineLookup>,
    basebackup: BasebackupFn,
    config: ServerConfig,
    auth: Option<Arc<JwtVerifier>>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let handler = Arc::new(PageService {
        timelines,
        basebackup,
        auth,
    });
    pq_proto::query_server::serve(listener, handler, config, cancel).await
}

/// The page service's queries.
struct PageService {
    timelines: Arc<dyn TimelineLookup>,
    basebackup: BasebackupFn,
    /// Verifies the token each connection sends as its password.
    auth: Option<Arc<JwtVerifier>>,
}

impl<S> QueryHandler<S> for PageService
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// The caller's claims, when the page service authenticates.
    type Session = Option<Claims>;

    fn startup(&self, _params: &StartupParams) -> Result<Option<Claims>, QueryError> {
        Ok(None)
    }

    async fn authenticate(
        &self,
        session: &mut Option<Claims>,
        pgb: &mut PostgresBackend<S>,
    ) -> Result<(), QueryError> {
        if let Some(verifier) = &self.auth {
            *session = Some(pq_proto::authenticate_with_token(pgb, verifier).await?);
        }
        Ok(())
    }

    async fn query(
        &self,
        session: &mut Option<Claims>,
        pgb: &mut PostgresBackend<S>,
        query: &str,
    ) -> Result<QueryOutcome<S>, QueryError> {
        let command = parse_command(query)?;
        let (tenant_id, timeline_id) = match &command {
            Command::Pagestream {
                tenant_id,
                timeline_id,
            }
            | Command::Basebackup {
                tenant_id,
                timeline_id,
                ..
            } => (*tenant_id, *timeline_id),
        };
        if let Some(claims) = session {
            claims
                .check(&Access::Tenant(tenant_id))
                .map_err(pq_proto::auth_refusal)?;
        }
        let timeline = self.timelines.get_timeline(tenant_id, timeline_id)?;
        match command {
            Command::Pagestream { .. } => Ok(QueryOutcome::take_over(move |pgb, cancel| {
                let span = info_span!("pagestream", %tenant_id, %timeline_id);
                pagestream(pgb, timeline, cancel).instrument(span)
            })),
            Command::Basebackup { lsn, data, .. } => {
                let span = info_span!("basebackup", %tenant_id, %timeline_id);
                send_basebackup(pgb, timeline, lsn, data, self.basebackup)
                    .instrument(span)
                    .await?;
                Ok(QueryOutcome::Done)
            }
        }
    }
}

async fn send_basebackup<S>(
    pgb: &mut PostgresBackend<S>,
    timeline: Arc<Timeline>,
    lsn: Option<Lsn>,
    data: RelationData,
    basebackup: BasebackupFn,
) -> anyhow::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    if let Some(lsn) = lsn {
        timeline.wait_lsn(lsn, WAIT_LSN_TIMEOUT).await?;
    }
    // The tar is produced off the runtime and sent a chunk at a time as it
    // is produced; the producer waits while the client is slow to read.
    let mut stream = BasebackupStream::spawn(STREAM_CHUNK_SIZE, STREAM_QUEUE_DEPTH, move |out| {
        basebackup(&timeline, lsn, data, out)
    });
    // The COPY begins with the first chunk: a backup refused before it
    // (an LSN out of range, below the GC horizon) is a plain error.
    let mut next = stream.next_chunk().await?;
    pgb.write_message(&BeMessage::CopyOutResponse(Format::Binary))
        .await?;
    let mut sent = 0u64;
    while let Some(chunk) = next {
        pgb.write_message(&BeMessage::CopyData(&chunk)).await?;
        sent += chunk.len() as u64;
        // A failure from here on ends the COPY with an error response (no
        // CopyDone): the client never takes what it got for a whole tar.
        next = stream
            .next_chunk()
            .await
            .with_context(|| format!("base backup failed after {sent} bytes were sent"))?;
    }
    info!("sent a base backup of {sent} bytes");
    pgb.write_message(&BeMessage::CopyDone).await?;
    pgb.write_message(&BeMessage::CommandComplete("COPY 0"))
        .await?;
    Ok(())
}

async fn pagestream<S>(
    mut pgb: PostgresBackend<S>,
    timeline: Arc<Timeline>,
    cancel: CancellationToken,
) -> anyhow::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    pgb.write_message(&BeMessage::CopyBothResponse(Format::Binary))
        .await?;
    pgb.flush().await?;
    loop {
        let message = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            m = pgb.read_message() => m?,
        };
        let data = match message {
            Some(FeMessage::CopyData(data)) => data,
            None | Some(FeMessage::CopyDone) | Some(FeMessage::Terminate) => return Ok(()),
            Some(other) => bail!("unexpected message in pagestream: {other:?}"),
        };
        let request = match Request::decode(&data) {
            Ok(r) => r,
            Err(e) => {
                let fields =
                    ErrorFields::fatal("08P01", format!("malformed pagestream request: {e}"));
                pgb.write_message(&BeMessage::ErrorResponse(&fields))
                    .await?;
                pgb.flush().await?;
                bail!("malformed pagestream request: {e}");
            }
        };
        debug!(?request, "pagestream request");
        let response = match handle_request(&timeline, &request).await {
            Ok(r) => r,
            Err(e) => Response::Error(format!("{e:#}")),
        };
        pgb.write_message(&BeMessage::CopyData(&response.encode()))
            .await?;
        pgb.flush().await?;
    }
}

fn rel_tag(rel: &RelSpec) -> anyhow::Result<RelTag> {
    Ok(RelTag {
        node: RelFileNode {
            spc_oid: rel.spc_oid,
            db_oid: rel.db_oid,
            rel_node: rel.rel_node,
        },
        fork: ForkNumber::from_u8(rel.fork).context("invalid fork number")?,
    })
}

async fn handle_request(timeline: &Arc<Timeline>, request: &Request) -> anyhow::Result<Response> {
    let lsn = match request {
        Request::Exists { lsn, .. }
        | Request::Nblocks { lsn, .. }
        | Request::GetPage { lsn, .. }
        | Request::GetLatestPage {
            not_modified_since: lsn,
            ..
        }
        | Request::DbSize { lsn, .. }
        | Request::GetSlruSegment { lsn, .. } => *lsn,
    };
    timeline.wait_lsn(lsn, WAIT_LSN_TIMEOUT).await?;
    let timeline = timeline.clone();
    let request = request.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<Response> {
        // GetLatestPage reads at the newest LSN, never below the horizon.
        let read_lsn = match request {
            Request::GetLatestPage { .. } => timeline.last_record_lsn().max(lsn),
            _ => lsn,
        };
        // Before the read and again after it: a GC that raised the horizon
        // above it meanwhile may have removed layers it used.
        timeline.check_readable_at(read_lsn)?;
        let response = match request {
            Request::Exists { rel, .. } => {
                Response::Exists(timeline.rel_exists(rel_tag(&rel)?, lsn)?)
            }
            Request::Nblocks { rel, .. } => {
                let tag = rel_tag(&rel)?;
                let n = timeline
                    .get_rel_size(tag, lsn)?
                    .with_context(|| format!("relation {tag:?} does not exist at {lsn}"))?;
                Response::Nblocks(n)
            }
            Request::GetPage { rel, block, .. } => {
                Response::Page(timeline.get_rel_page(rel_tag(&rel)?, block, lsn)?)
            }
            Request::GetLatestPage { rel, block, .. } => {
                // At or after the requested LSN (waited for above).
                Response::Page(timeline.get_rel_page(rel_tag(&rel)?, block, read_lsn)?)
            }
            Request::DbSize { db_oid, .. } => Response::DbSize(timeline.db_size(db_oid, lsn)?),
            Request::GetSlruSegment { kind, segment, .. } => {
                let kind = SlruKind::from_u32(kind as u32).context("invalid SLRU kind")?;
                Response::SlruSegment(timeline.get_slru_segment(kind, segment, lsn)?)
            }
        };
        timeline.check_readable_at(read_lsn)?;
        Ok(response)
    })
    .await
    .context("page read task")?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands() {
        let (t, l) = (TenantId::generate(), TimelineId::generate());
        assert_eq!(
            parse_command(&format!("pagestream {t} {l}")).unwrap(),
            Command::Pagestream {
                tenant_id: t,
                timeline_id: l
            }
        );
        assert_eq!(
            parse_command(&format!("basebackup {t} {l} 0/16B5A50")).unwrap(),
            Command::Basebackup {
                tenant_id: t,
                timeline_id: l,
                lsn: Some(Lsn(0x16B5A50)),
                data: RelationData::Full,
            }
        );
        assert_eq!(
            parse_command(&format!("basebackup {t} {l} 0/16B5A50 lazy")).unwrap(),
            Command::Basebackup {
                tenant_id: t,
                timeline_id: l,
                lsn: Some(Lsn(0x16B5A50)),
                data: RelationData::SizesOnly,
            }
        );
        assert_eq!(
            parse_command(&format!("basebackup {t} {l} lazy")).unwrap(),
            Command::Basebackup {
                tenant_id: t,
                timeline_id: l,
                lsn: None,
                data: RelationData::SizesOnly,
            }
        );
        for bad in [
            "",
            "SELECT 1",
            "pagestream x y",
            &format!("basebackup {t} {l} nope"),
            &format!("basebackup {t} {l} 0/1 eager"),
            &format!("basebackup {t} {l} 0/1 lazy more"),
        ] {
            assert!(parse_command(bad).is_err(), "{bad}");
        }
    }
}
