//! Consensus messages and their encoding: a tag byte, then fixed-size
//! little-endian fields; WAL bytes last. Decoding checks every length
//! ([`utils::bytes_reader::Reader`]).

use bytes::{BufMut, Bytes, BytesMut};
use utils::bytes_reader::{Reader, ShortInput, TrailingBytes};
use utils::{Lsn, NodeId, TenantId, TimelineId};

use crate::term_history::{Term, TermHistory, TermLsn};

/// Version of this protocol; a greeting with another is refused.
pub const PROTOCOL_VERSION: u32 = 1;
/// More term history entries than this is malformed.
pub const MAX_TERM_HISTORY_ENTRIES: usize = 100_000;

/// The proposer's first message: who it is and what it writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProposerGreeting {
    pub protocol_version: u32,
    /// `PG_VERSION_NUM` of the compute, like 150018.
    pub pg_version: u32,
    pub proposer_id: [u8; 16],
    pub system_id: u64,
    pub tenant_id: TenantId,
    pub timeline_id: TimelineId,
    pub wal_seg_size: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProposerElected {
    pub term: Term,
    /// Where the acceptor's log and the proposer's agree: the acceptor
    /// truncates after it and receives WAL from here.
    pub start_streaming_at: Lsn,
    /// The proposer's history, including its own term.
    pub term_history: TermHistory,
    pub timeline_start_lsn: Lsn,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendRequest {
    pub term: Term,
    pub begin_lsn: Lsn,
    pub end_lsn: Lsn,
    pub commit_lsn: Lsn,
    /// WAL before this LSN is no longer needed by the proposer.
    pub truncate_lsn: Lsn,
    pub wal_data: Bytes,
}

/// Proposer → acceptor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProposerMessage {
    Greeting(ProposerGreeting),
    VoteRequest { term: Term },
    Elected(ProposerElected),
    Append(AppendRequest),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VoteResponse {
    /// The acceptor's term after the request.
    pub term: Term,
    pub vote_given: bool,
    /// End of the last complete record the acceptor has flushed.
    pub flush_lsn: Lsn,
    pub truncate_lsn: Lsn,
    pub term_history: TermHistory,
    pub timeline_start_lsn: Lsn,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendResponse {
    pub term: Term,
    pub flush_lsn: Lsn,
    pub commit_lsn: Lsn,
    /// The last record the pageserver reported having ingested from this
    /// safekeeper (invalid if none has): the walproposer's backpressure.
    pub pageserver_last_record_lsn: Lsn,
}

/// Acceptor → proposer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AcceptorMessage {
    Greeting { term: Term, node_id: NodeId },
    Vote(VoteResponse),
    Append(AppendResponse),
}

/// A message that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("empty message")]
    Empty,
    #[error("unknown message tag {0:#04x}")]
    UnknownTag(u8),
    #[error("message is truncated: {0}")]
    Truncated(#[from] ShortInput),
    #[error("message has unexpected trailing bytes: {0}")]
    TrailingBytes(#[from] TrailingBytes),
    #[error("term history of {0} entries is too long")]
    TermHistoryTooLong(u64),
    #[error("append request carries {actual} bytes of WAL for {begin}..{end}")]
    WalLengthMismatch { begin: Lsn, end: Lsn, actual: usize },
}

fn read_lsn(r: &mut Reader<'_>) -> Result<Lsn, ShortInput> {
    r.u64().map(Lsn)
}

fn read_term_history(r: &mut Reader<'_>) -> Result<TermHistory, MessageError> {
    let count = r.u32()?;
    if count as usize > MAX_TERM_HISTORY_ENTRIES {
        return Err(MessageError::TermHistoryTooLong(count.into()));
    }
    let mut entries = Vec::with_capacity(count as usize);
    for _ in 0..count {
        entries.push(TermLsn {
            term: r.u64()?,
            lsn: read_lsn(r)?,
        });
    }
    Ok(TermHistory(entries))
}

fn put_term_history(out: &mut BytesMut, history: &TermHistory) {
    out.put_u32_le(history.0.len() as u32);
    for entry in &history.0 {
        out.put_u64_le(entry.term);
        out.put_u64_le(entry.lsn.0);
    }
}

/// The tag and a reader after it; `names` gives the message's name by
/// tag, for errors.
fn start<'a>(
    buf: &'a [u8],
    names: fn(u8) -> &'static str,
) -> Result<(u8, Reader<'a>), MessageError> {
    let (&tag, _) = buf.split_first().ok_or(MessageError::Empty)?;
    let mut r = Reader::new(buf, names(tag));
    r.skip(1)?;
    Ok((tag, r))
}

impl ProposerMessage {
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        match self {
            ProposerMessage::Greeting(g) => {
                out.put_u8(b'g');
                out.put_u32_le(g.protocol_version);
                out.put_u32_le(g.pg_version);
                out.put_slice(&g.proposer_id);
                out.put_u64_le(g.system_id);
                out.put_slice(g.tenant_id.as_bytes());
                out.put_slice(g.timeline_id.as_bytes());
                out.put_u32_le(g.wal_seg_size);
            }
            ProposerMessage::VoteRequest { term } => {
                out.put_u8(b'v');
                out.put_u64_le(*term);
            }
            ProposerMessage::Elected(e) => {
                out.put_u8(b'e');
                out.put_u64_le(e.term);
                out.put_u64_le(e.start_streaming_at.0);
                put_term_history(&mut out, &e.term_history);
                out.put_u64_le(e.timeline_start_lsn.0);
            }
            ProposerMessage::Append(a) => {
                out.reserve(41 + a.wal_data.len());
                out.put_u8(b'a');
                for v in [
                    a.term,
                    a.begin_lsn.0,
                    a.end_lsn.0,
                    a.commit_lsn.0,
                    a.truncate_lsn.0,
                ] {
                    out.put_u64_le(v);
                }
                out.put_slice(&a.wal_data);
            }
        }
        out.freeze()
    }

    /// Decode a message; `buf` is the whole CopyData payload.
    pub fn decode(buf: &Bytes) -> Result<ProposerMessage, MessageError> {
        let (tag, mut r) = start(buf, |tag| match tag {
            b'g' => "proposer greeting 'g'",
            b'v' => "vote request 'v'",
            b'e' => "elected message 'e'",
            b'a' => "append request 'a'",
            _ => "proposer message",
        })?;
        let message = match tag {
            b'g' => ProposerMessage::Greeting(ProposerGreeting {
                protocol_version: r.u32()?,
                pg_version: r.u32()?,
                proposer_id: r.array()?,
                system_id: r.u64()?,
                tenant_id: TenantId::from_bytes(r.array()?),
                timeline_id: TimelineId::from_bytes(r.array()?),
                wal_seg_size: r.u32()?,
            }),
            b'v' => ProposerMessage::VoteRequest { term: r.u64()? },
            b'e' => ProposerMessage::Elected(ProposerElected {
                term: r.u64()?,
                start_streaming_at: read_lsn(&mut r)?,
                term_history: read_term_history(&mut r)?,
                timeline_start_lsn: read_lsn(&mut r)?,
            }),
            b'a' => {
                let (term, begin_lsn) = (r.u64()?, read_lsn(&mut r)?);
                let (end_lsn, commit_lsn) = (read_lsn(&mut r)?, read_lsn(&mut r)?);
                let truncate_lsn = read_lsn(&mut r)?;
                let data = buf.slice(r.position()..);
                if end_lsn.checked_sub(begin_lsn) != Some(data.len() as u64) {
                    return Err(MessageError::WalLengthMismatch {
                        begin: begin_lsn,
                        end: end_lsn,
                        actual: data.len(),
                    });
                }
                return Ok(ProposerMessage::Append(AppendRequest {
                    term,
                    begin_lsn,
                    end_lsn,
                    commit_lsn,
                    truncate_lsn,
                    wal_data: data,
                }));
            }
            other => return Err(MessageError::UnknownTag(other)),
        };
        r.finish()?;
        Ok(message)
    }
}

impl AcceptorMessage {
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        match self {
            AcceptorMessage::Greeting { term, node_id } => {
                out.put_u8(b'g');
                out.put_u64_le(*term);
                out.put_u64_le(node_id.0);
            }
            AcceptorMessage::Vote(v) => {
                out.put_u8(b'v');
                out.put_u64_le(v.term);
                out.put_u8(v.vote_given as u8);
                out.put_u64_le(v.flush_lsn.0);
                out.put_u64_le(v.truncate_lsn.0);
                put_term_history(&mut out, &v.term_history);
                out.put_u64_le(v.timeline_start_lsn.0);
            }
            AcceptorMessage::Append(a) => {
                out.put_u8(b'a');
                out.put_u64_le(a.term);
                out.put_u64_le(a.flush_lsn.0);
                out.put_u64_le(a.commit_lsn.0);
                out.put_u64_le(a.pageserver_last_record_lsn.0);
            }
        }
        out.freeze()
    }

    pub fn decode(buf: &[u8]) -> Result<AcceptorMessage, MessageError> {
        let (tag, mut r) = start(buf, |tag| match tag {
            b'g' => "acceptor greeting 'g'",
            b'v' => "vote response 'v'",
            b'a' => "append response 'a'",
            _ => "acceptor message",
        })?;
        let message = match tag {
            b'g' => AcceptorMessage::Greeting {
                term: r.u64()?,
                node_id: NodeId(r.u64()?),
            },
            b'v' => AcceptorMessage::Vote(VoteResponse {
                term: r.u64()?,
                vote_given: r.bool()?,
                flush_lsn: read_lsn(&mut r)?,
                truncate_lsn: read_lsn(&mut r)?,
                term_history: read_term_history(&mut r)?,
                timeline_start_lsn: read_lsn(&mut r)?,
            }),
            b'a' => AcceptorMessage::Append(AppendResponse {
                term: r.u64()?,
                flush_lsn: read_lsn(&mut r)?,
                commit_lsn: read_lsn(&mut r)?,
                pageserver_last_record_lsn: read_lsn(&mut r)?,
            }),
            other => return Err(MessageError::UnknownTag(other)),
        };
        r.finish()?;
        Ok(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn samples() -> (Vec<ProposerMessage>, Vec<AcceptorMessage>) {
        let history = TermHistory(vec![
            TermLsn {
                term: 1,
                lsn: Lsn(0x100),
            },
            TermLsn {
                term: 3,
                lsn: Lsn(0x200),
            },
        ]);
        let proposer = vec![
            ProposerMessage::Greeting(ProposerGreeting {
                protocol_version: PROTOCOL_VERSION,
                pg_version: 150018,
                proposer_id: [7; 16],
                system_id: 42,
                tenant_id: TenantId::generate(),
                timeline_id: TimelineId::generate(),
                wal_seg_size: 16 << 20,
            }),
            ProposerMessage::VoteRequest { term: 9 },
            ProposerMessage::Elected(ProposerElected {
                term: 9,
                start_streaming_at: Lsn(0x180),
                term_history: history.clone(),
                timeline_start_lsn: Lsn(0x100),
            }),
            ProposerMessage::Append(AppendRequest {
                term: 9,
                begin_lsn: Lsn(0x180),
                end_lsn: Lsn(0x185),
                commit_lsn: Lsn(0x170),
                truncate_lsn: Lsn(0x100),
                wal_data: Bytes::from_static(b"abcde"),
            }),
        ];
        let acceptor = vec![
            AcceptorMessage::Greeting {
                term: 4,
                node_id: NodeId(2),
            },
            AcceptorMessage::Vote(VoteResponse {
                term: 9,
                vote_given: true,
                flush_lsn: Lsn(0x250),
                truncate_lsn: Lsn(0),
                term_history: history,
                timeline_start_lsn: Lsn(0x100),
            }),
            AcceptorMessage::Append(AppendResponse {
                term: 9,
                flush_lsn: Lsn(1),
                commit_lsn: Lsn(2),
                pageserver_last_record_lsn: Lsn(3),
            }),
        ];
        (proposer, acceptor)
    }

    #[test]
    fn round_trip() {
        let (proposer, acceptor) = samples();
        for m in proposer {
            assert_eq!(ProposerMessage::decode(&m.encode()).unwrap(), m);
        }
        for m in acceptor {
            assert_eq!(AcceptorMessage::decode(&m.encode()).unwrap(), m);
        }
    }

    #[test]
    fn malformed_messages_are_errors() {
        assert_eq!(
            ProposerMessage::decode(&Bytes::new()),
            Err(MessageError::Empty)
        );
        assert_eq!(
            ProposerMessage::decode(&Bytes::from_static(b"z")),
            Err(MessageError::UnknownTag(b'z'))
        );
        let (proposer, acceptor) = samples();
        for m in proposer {
            let bytes = m.encode();
            for cut in 0..bytes.len() {
                let result = ProposerMessage::decode(&bytes.slice(..cut));
                // An append request cut inside its WAL is a length mismatch.
                if !(bytes[0] == b'a' && cut >= 41) {
                    assert!(
                        cut == 0 || matches!(result, Err(MessageError::Truncated(_))),
                        "cut {cut}: {result:?}"
                    );
                }
            }
            let mut longer = bytes.to_vec();
            longer.push(0);
            assert!(ProposerMessage::decode(&Bytes::from(longer)).is_err());
        }
        for m in acceptor {
            let bytes = m.encode();
            for cut in 1..bytes.len() {
                let e = AcceptorMessage::decode(&bytes[..cut]).unwrap_err();
                assert!(matches!(e, MessageError::Truncated(_)), "cut {cut}: {e}");
                assert!(e.to_string().contains("is truncated"), "{e}");
            }
            let mut longer = bytes.to_vec();
            longer.extend_from_slice(&[0, 0]);
            let e = AcceptorMessage::decode(&longer).unwrap_err();
            assert!(matches!(e, MessageError::TrailingBytes(_)), "{e}");
        }
        // A huge term history count is refused before allocating.
        let mut vote = vec![b'e'];
        vote.extend_from_slice(&[0; 16]);
        vote.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            ProposerMessage::decode(&Bytes::from(vote)),
            Err(MessageError::TermHistoryTooLong(_))
        ));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..20_000 {
            let len = rng.random_range(0..80);
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            if let Some(first) = bytes.first_mut() {
                *first = *b"gvea".get(rng.random_range(0..4)).unwrap_or(&b'g');
            }
            let _ = ProposerMessage::decode(&Bytes::from(bytes.clone()));
            let _ = AcceptorMessage::decode(&bytes);
        }
    }
}
