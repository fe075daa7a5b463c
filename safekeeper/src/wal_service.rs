//! The WAL service: libpq connections from walproposers (`START_WAL_PUSH`)
//! and WAL readers (`IDENTIFY_SYSTEM`, `START_REPLICATION`).
//!
//! The timeline comes from the startup packet: parameters `tenant_id` and
//! `timeline_id`, or `options='-c tenant_id=<hex> -c timeline_id=<hex>'`
//! (the form a stock PostgreSQL standby can send in `primary_conninfo`).
//!
//! With authentication on, the password is a token: `START_WAL_PUSH` needs
//! one for the timeline's tenant; `IDENTIFY_SYSTEM` and `START_REPLICATION`
//! also admit `pageserver` and `safekeeper` tokens, and only a `pageserver`
//! token's feedback moves the remote consistent LSN. A bad token is refused
//! at connect (`28P01`), a token that does not open the timeline per
//! command (`42501`): nothing is read or written before that.

use std::sync::Arc;

use anyhow::{bail, Context};
use auth::{Access, Claims, JwtVerifier, Scope};
use pq_proto::{
    ColumnDesc, PostgresBackend, QueryError, QueryHandler, QueryOutcome, ServerConfig,
    StartupParams,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info_span, Instrument};
use utils::{Lsn, TenantId, TimelineId};

use crate::receive_wal::ReceiveConf;
use crate::timeline::{GlobalTimelines, Timeline};
use crate::{receive_wal, send_wal};

/// How a WAL reader wants WAL: up to the commit LSN (pageservers,
/// standbys), or up to the flush LSN (a walproposer recovering a lagging
/// safekeeper from this one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadLimit {
    Commit,
    Flush,
}

/// What a connection asked for in its startup packet.
pub struct ConnectionParams {
    pub tenant_id: Option<TenantId>,
    pub timeline_id: Option<TimelineId>,
    pub read_limit: ReadLimit,
    pub application_name: String,
    /// The caller's token, when the WAL service authenticates.
    pub claims: Option<Claims>,
}

impl ConnectionParams {
    pub fn parse(params: &StartupParams) -> anyhow::Result<ConnectionParams> {
        let mut settings: Vec<(String, String)> = Vec::new();
        for (key, value) in params.iter() {
            settings.push((key.to_owned(), value.to_owned()));
        }
        if let Some(options) = params.get("options") {
            let mut words = options.split_whitespace();
            while let Some(word) = words.next() {
                let setting = match word {
                    "-c" => words.next().unwrap_or_default(),
                    w => w
                        .strip_prefix("--")
                        .or_else(|| w.strip_prefix("-c"))
                        .unwrap_or(w),
                };
                if let Some((k, v)) = setting.split_once('=') {
                    settings.push((k.replace('-', "_"), v.to_owned()));
                }
            }
        }
        let find = |name: &str| {
            settings
                .iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let tenant_id = find("tenant_id")
            .map(str::parse)
            .transpose()
            .context("in the startup packet")?;
        let timeline_id = find("timeline_id")
            .map(str::parse)
            .transpose()
            .context("in the startup packet")?;
        let read_limit = match find("wal_read_limit") {
            None | Some("commit") => ReadLimit::Commit,
            Some("flush") => ReadLimit::Flush,
            Some(other) => bail!("invalid wal_read_limit {other:?}: expected commit or flush"),
        };
        Ok(ConnectionParams {
            tenant_id,
            timeline_id,
            read_limit,
            application_name: params
                .get("application_name")
                .unwrap_or_default()
                .to_owned(),
            claims: None,
        })
    }

    /// Refuses (`42501`) a command the caller's token does not open:
    /// pushing WAL needs a token for the timeline's tenant, reading it also
    /// admits pageservers and safekeepers.
    fn check(&self, timeline: &Timeline, readers: bool) -> Result<(), QueryError> {
        let Some(claims) = &self.claims else {
            return Ok(());
        };
        const WAL_READERS: &[Scope] = &[Scope::Pageserver, Scope::Safekeeper];
        let access = if readers {
            Access::TenantOrScopes(timeline.tenant_id, WAL_READERS)
        } else {
            Access::Tenant(timeline.tenant_id)
        };
        claims.check(&access).map_err(pq_proto::auth_refusal)
    }

    /// Whether the reader's feedback is a pageserver's (it moves the remote
    /// consistent LSN): a `pageserver` token when authenticating, else
    /// `application_name=pageserver`.
    fn is_pageserver(&self) -> bool {
        match &self.claims {
            Some(claims) => claims.scope == Scope::Pageserver,
            None => self.application_name == "pageserver",
        }
    }

    pub fn timeline(&self, timelines: &GlobalTimelines) -> anyhow::Result<Arc<Timeline>> {
        let (Some(tenant_id), Some(timeline_id)) = (self.tenant_id, self.timeline_id) else {
            bail!("this command needs tenant_id and timeline_id in the startup packet, e.g. options='-c tenant_id=<hex> -c timeline_id=<hex>'");
        };
        Ok(timelines.get(tenant_id, timeline_id)?)
    }
}

/// A replication or WAL service command.
#[derive(Debug, PartialEq, Eq)]
enum Command {
    IdentifySystem,
    StartWalPush,
    StartReplication { start: Lsn },
}

fn parse_command(query: &str) -> anyhow::Result<Command> {
    let query = query.trim().trim_end_matches(';').trim();
    let words: Vec<&str> = query.split_whitespace().collect();
    match words.as_slice() {
        [w] if w.eq_ignore_ascii_case("IDENTIFY_SYSTEM") => Ok(Command::IdentifySystem),
        [w] if w.eq_ignore_ascii_case("START_WAL_PUSH") => Ok(Command::StartWalPush),
        [first, rest @ ..] if first.eq_ignore_ascii_case("START_REPLICATION") => {
            // START_REPLICATION [SLOT name] [PHYSICAL] X/Y [TIMELINE n]
            let mut rest = rest;
            if let [slot, _, tail @ ..] = rest {
                if slot.eq_ignore_ascii_case("SLOT") {
                    rest = tail;
                }
            }
            if let [physical, tail @ ..] = rest {
                if physical.eq_ignore_ascii_case("PHYSICAL") {
                    rest = tail;
                }
            }
            match rest {
                [lsn] | [lsn, _, _] => Ok(Command::StartReplication {
                    start: lsn.parse().context("parsing the start LSN")?,
                }),
                _ => bail!("invalid START_REPLICATION command {query:?}: expected START_REPLICATION [SLOT name] [PHYSICAL] X/Y [TIMELINE n]"),
            }
        }
        _ => bail!("unsupported command {query:?}: this is a safekeeper; it accepts IDENTIFY_SYSTEM, START_REPLICATION and START_WAL_PUSH"),
    }
}

/// Accept WAL service connections until `cancel` fires, within the
/// connection limits and timeouts of `server`.
pub async fn serve(
    listener: TcpListener,
    timelines: Arc<GlobalTimelines>,
    server: ServerConfig,
    receive: ReceiveConf,
    auth: Option<Arc<JwtVerifier>>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let handler = Arc::new(WalService {
        timelines,
        receive,
        auth,
    });
    pq_proto::query_server::serve(listener, handler, server, cancel).await
}

/// The WAL service's queries.
struct WalService {
    timelines: Arc<GlobalTimelines>,
    receive: ReceiveConf,
    /// Verifies the token each connection sends as its password.
    auth: Option<Arc<JwtVerifier>>,
}

impl QueryHandler<TcpStream> for WalService {
    type Session = ConnectionParams;

    fn startup(&self, params: &StartupParams) -> Result<ConnectionParams, QueryError> {
        let conn = ConnectionParams::parse(params)
            .map_err(|e| QueryError::fatal("08P01", format!("{e:#}")))?;
        debug!(application_name = conn.application_name, "connected");
        Ok(conn)
    }

    async fn authenticate(
        &self,
        conn: &mut ConnectionParams,
        pgb: &mut PostgresBackend<TcpStream>,
    ) -> Result<(), QueryError> {
        if let Some(verifier) = &self.auth {
            conn.claims = Some(pq_proto::authenticate_with_token(pgb, verifier).await?);
        }
        Ok(())
    }

    async fn query(
        &self,
        conn: &mut ConnectionParams,
        pgb: &mut PostgresBackend<TcpStream>,
        query: &str,
    ) -> Result<QueryOutcome<TcpStream>, QueryError> {
        match parse_command(query)? {
            Command::IdentifySystem => {
                let timeline = conn.timeline(&self.timelines)?;
                conn.check(&timeline, true)?;
                identify_system(pgb, conn, &self.timelines).await?;
                Ok(QueryOutcome::Done)
            }
            Command::StartWalPush => {
                let timeline = conn.timeline(&self.timelines)?;
                conn.check(&timeline, false)?;
                let receive = self.receive;
                Ok(QueryOutcome::take_over(move |pgb, cancel| {
                    let span = info_span!("wal_push", tenant_id = %timeline.tenant_id, timeline_id = %timeline.timeline_id);
                    receive_wal::handle(pgb, timeline, receive, cancel).instrument(span)
                }))
            }
            Command::StartReplication { start } => {
                let timeline = conn.timeline(&self.timelines)?;
                conn.check(&timeline, true)?;
                let local_start = timeline.acceptor().state.local_start_lsn;
                let segment_size = timeline.segment_size() as u64;
                // Earlier in the segment where the WAL begins is served as
                // a record's tail (send_wal::wal_prefix): standbys ask for
                // WAL from segment starts.
                if start < local_start
                    && start.segment_number(segment_size)
                        != local_start.segment_number(segment_size)
                {
                    return Err(anyhow::anyhow!("requested WAL at {start} is not on this safekeeper, its WAL begins at {local_start}").into());
                }
                let span = info_span!("wal_send", tenant_id = %timeline.tenant_id, timeline_id = %timeline.timeline_id, app = conn.application_name);
                let from_pageserver = conn.is_pageserver();
                let read_limit = conn.read_limit;
                Ok(QueryOutcome::take_over(move |pgb, cancel| {
                    send_wal::handle(pgb, timeline, start, read_limit, from_pageserver, cancel)
                        .instrument(span)
                }))
            }
        }
    }
}

async fn identify_system(
    pgb: &mut PostgresBackend<TcpStream>,
    conn: &ConnectionParams,
    timelines: &GlobalTimelines,
) -> anyhow::Result<()> {
    let timeline = conn.timeline(timelines)?;
    let progress = *timeline.subscribe().borrow();
    let (system_id, lsn) = {
        let acceptor = timeline.acceptor();
        let lsn = match conn.read_limit {
            ReadLimit::Commit => progress.commit_lsn,
            ReadLimit::Flush => progress.flush_lsn,
        };
        (acceptor.state.server.system_id, lsn)
    };
    let columns = [
        ColumnDesc::text("systemid"),
        ColumnDesc::new("timeline", pq_proto::oid::INT4, 4),
        ColumnDesc::text("xlogpos"),
        ColumnDesc::text("dbname"),
    ];
    let row = vec![
        Some(system_id.to_string()),
        Some("1".to_owned()),
        Some(lsn.to_string()),
        None,
    ];
    pgb.send_query_result(&columns, &[row]).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands() {
        assert_eq!(
            parse_command("IDENTIFY_SYSTEM").unwrap(),
            Command::IdentifySystem
        );
        assert_eq!(
            parse_command("start_wal_push;").unwrap(),
            Command::StartWalPush
        );
        for q in [
            "START_REPLICATION 0/16B5A50",
            "START_REPLICATION PHYSICAL 0/16B5A50",
            "START_REPLICATION SLOT s PHYSICAL 0/16B5A50 TIMELINE 1",
            "START_REPLICATION 0/16B5A50 TIMELINE 1",
        ] {
            assert_eq!(
                parse_command(q).unwrap(),
                Command::StartReplication {
                    start: Lsn(0x16B5A50)
                },
                "{q}"
            );
        }
        for bad in [
            "",
            "SELECT 1",
            "START_REPLICATION",
            "START_REPLICATION x/y",
            "START_REPLICATION 0/1 2",
        ] {
            assert!(parse_command(bad).is_err(), "{bad}");
        }
    }
}
