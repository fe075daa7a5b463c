//! Consensus messages and their encoding: a tag byte, then fixed-size
//! little-endian fields; WAL bytes last. Decoding checks every length.

use bytes::{BufMut, Bytes, BytesMut};
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
    #[error(
        "message {tag:?} is truncated: needed {needed} bytes at offset {offset}, {len} in all"
    )]
    Truncated {
        tag: char,
        offset: usize,
        needed: usize,
        len: usize,
    },
    #[error("message {tag:?} has {extra} unexpected trailing bytes")]
    TrailingBytes { tag: char, extra: usize },
    #[error("term history of {0} entries is too long")]
    TermHistoryTooLong(u64),
    #[error("append request carries {actual} bytes of WAL for {begin}..{end}")]
    WalLengthMismatch { begin: Lsn, end: Lsn, actual: usize },
}

struct Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
    tag: char,
}

impl<'a> Decoder<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], MessageError> {
        if self.buf.len() - self.pos < n {
            return Err(MessageError::Truncated {
                tag: self.tag,
                offset: self.pos,
                needed: n,
                len: self.buf.len(),
            });
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, MessageError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, MessageError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, MessageError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn lsn(&mut self) -> Result<Lsn, MessageError> {
        self.u64().map(Lsn)
    }
    fn id16(&mut self) -> Result<[u8; 16], MessageError> {
        Ok(self.take(16)?.try_into().expect("16 bytes"))
    }
    fn term_history(&mut self) -> Result<TermHistory, MessageError> {
        let count = self.u32()? as u64;
        if count as usize > MAX_TERM_HISTORY_ENTRIES {
            return Err(MessageError::TermHistoryTooLong(count));
        }
        let mut entries = Vec::with_capacity(count as usize);
        for _ in 0..count {
            entries.push(TermLsn {
                term: self.u64()?,
                lsn: self.lsn()?,
            });
        }
        Ok(TermHistory(entries))
    }
    fn finish(self) -> Result<(), MessageError> {
        match self.buf.len() - self.pos {
            0 => Ok(()),
            extra => Err(MessageError::TrailingBytes {
                tag: self.tag,
                extra,
            }),
        }
    }
}

fn put_term_history(out: &mut BytesMut, history: &TermHistory) {
    out.put_u32_le(history.0.len() as u32);
    for entry in &history.0 {
        out.put_u64_le(entry.term);
        out.put_u64_le(entry.lsn.0);
    }
}

fn start(buf: &[u8]) -> Result<(u8, Decoder<'_>), MessageError> {
    let (&tag, _) = buf.split_first().ok_or(MessageError::Empty)?;
    Ok((
        tag,
        Decoder {
            buf,
            pos: 1,
            tag: tag as char,
        },
    ))
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
        let (tag, mut d) = start(buf)?;
        let message = match tag {
            b'g' => ProposerMessage::Greeting(ProposerGreeting {
                protocol_version: d.u32()?,
                pg_version: d.u32()?,
                proposer_id: d.id16()?,
                system_id: d.u64()?,
                tenant_id: TenantId::from_bytes(d.id16()?),
                timeline_id: TimelineId::from_bytes(d.id16()?),
                wal_seg_size: d.u32()?,
            }),
            b'v' => ProposerMessage::VoteRequest { term: d.u64()? },
            b'e' => ProposerMessage::Elected(ProposerElected {
                term: d.u64()?,
                start_streaming_at: d.lsn()?,
                term_history: d.term_history()?,
                timeline_start_lsn: d.lsn()?,
            }),
            b'a' => {
                let (term, begin_lsn, end_lsn) = (d.u64()?, d.lsn()?, d.lsn()?);
                let (commit_lsn, truncate_lsn) = (d.lsn()?, d.lsn()?);
                let data = buf.slice(d.pos..);
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
        d.finish()?;
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
            }
        }
        out.freeze()
    }

    pub fn decode(buf: &[u8]) -> Result<AcceptorMessage, MessageError> {
        let (tag, mut d) = start(buf)?;
        let message = match tag {
            b'g' => AcceptorMessage::Greeting {
                term: d.u64()?,
                node_id: NodeId(d.u64()?),
            },
            b'v' => AcceptorMessage::Vote(VoteResponse {
                term: d.u64()?,
                vote_given: d.u8()? != 0,
                flush_lsn: d.lsn()?,
                truncate_lsn: d.lsn()?,
                term_history: d.term_history()?,
                timeline_start_lsn: d.lsn()?,
            }),
            b'a' => AcceptorMessage::Append(AppendResponse {
                term: d.u64()?,
                flush_lsn: d.lsn()?,
                commit_lsn: d.lsn()?,
            }),
            other => return Err(MessageError::UnknownTag(other)),
        };
        d.finish()?;
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
                let _ = ProposerMessage::decode(&bytes.slice(..cut));
            }
            let mut longer = bytes.to_vec();
            longer.push(0);
            assert!(ProposerMessage::decode(&Bytes::from(longer)).is_err());
        }
        for m in acceptor {
            let bytes = m.encode();
            assert!(AcceptorMessage::decode(&bytes[..bytes.len() - 1]).is_err());
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
