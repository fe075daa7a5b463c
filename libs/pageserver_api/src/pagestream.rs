//! The pagestream sub-protocol: after the query `pagestream <tenant_id>
//! <timeline_id>`, the pageserver answers CopyBothResponse and the client
//! sends requests, each in one CopyData; each gets one response.
//!
//! Encoding: a tag byte, then fixed-size little-endian fields (decoded with
//! [`utils::bytes_reader::Reader`]). Every request carries the LSN to read
//! at; the pageserver waits (with a timeout) until WAL up to it is ingested.

use bytes::{BufMut, Bytes, BytesMut};
use postgres_format::constants::BLCKSZ;
use utils::bytes_reader::{Reader, ShortInput};
use utils::Lsn;

/// A relation fork as the protocol names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelSpec {
    pub spc_oid: u32,
    pub db_oid: u32,
    pub rel_node: u32,
    /// 0 main, 1 fsm, 2 visibility map, 3 init.
    pub fork: u8,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Exists {
        lsn: Lsn,
        rel: RelSpec,
    },
    Nblocks {
        lsn: Lsn,
        rel: RelSpec,
    },
    GetPage {
        lsn: Lsn,
        rel: RelSpec,
        block: u32,
    },
    /// The page as of the newest WAL the pageserver has ingested, which
    /// must reach `not_modified_since`: for a primary, whose blocks do not
    /// change in the timeline unless it writes them (and what it wrote it
    /// does not read back from the pageserver). Never below the GC horizon.
    GetLatestPage {
        not_modified_since: Lsn,
        rel: RelSpec,
        block: u32,
    },
    DbSize {
        lsn: Lsn,
        db_oid: u32,
    },
    /// `kind`: 0 CLOG, 1 multixact offsets, 2 multixact members.
    GetSlruSegment {
        lsn: Lsn,
        kind: u8,
        segment: u32,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    Exists(bool),
    Nblocks(u32),
    Page(Bytes),
    DbSize(u64),
    SlruSegment(Bytes),
    /// The request failed; the stream goes on.
    Error(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty pagestream message")]
    Empty,
    #[error("unknown pagestream message tag {0}")]
    UnknownTag(u8),
    #[error("pagestream message with tag {tag} has {len} bytes, expected {expected}")]
    Length {
        tag: u8,
        len: usize,
        expected: usize,
    },
    #[error("invalid {0} in a pagestream message")]
    Invalid(&'static str),
    /// Fields that do not fit in the message (the length checks above
    /// come first, so this only names a disagreement between them).
    #[error(transparent)]
    Short(#[from] ShortInput),
}

const REL_SIZE: usize = 13;

fn put_rel(out: &mut BytesMut, rel: &RelSpec) {
    out.put_u32_le(rel.spc_oid);
    out.put_u32_le(rel.db_oid);
    out.put_u32_le(rel.rel_node);
    out.put_u8(rel.fork);
}

fn read_rel(r: &mut Reader<'_>) -> Result<RelSpec, DecodeError> {
    let rel = RelSpec {
        spc_oid: r.u32()?,
        db_oid: r.u32()?,
        rel_node: r.u32()?,
        fork: r.u8()?,
    };
    if rel.fork > 3 {
        return Err(DecodeError::Invalid("fork number"));
    }
    Ok(rel)
}

impl Request {
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        match self {
            Request::Exists { lsn, rel } | Request::Nblocks { lsn, rel } => {
                out.put_u8(if matches!(self, Request::Exists { .. }) {
                    0
                } else {
                    1
                });
                out.put_u64_le(lsn.0);
                put_rel(&mut out, rel);
            }
            Request::GetPage { lsn, rel, block } => {
                out.put_u8(2);
                out.put_u64_le(lsn.0);
                put_rel(&mut out, rel);
                out.put_u32_le(*block);
            }
            Request::GetLatestPage {
                not_modified_since,
                rel,
                block,
            } => {
                out.put_u8(5);
                out.put_u64_le(not_modified_since.0);
                put_rel(&mut out, rel);
                out.put_u32_le(*block);
            }
            Request::DbSize { lsn, db_oid } => {
                out.put_u8(3);
                out.put_u64_le(lsn.0);
                out.put_u32_le(*db_oid);
            }
            Request::GetSlruSegment { lsn, kind, segment } => {
                out.put_u8(4);
                out.put_u64_le(lsn.0);
                out.put_u8(*kind);
                out.put_u32_le(*segment);
            }
        }
        out.freeze()
    }

    pub fn decode(b: &[u8]) -> Result<Request, DecodeError> {
        let mut r = Reader::new(b, "pagestream request");
        let tag = r.u8().map_err(|_| DecodeError::Empty)?;
        let expected = match tag {
            0 | 1 => 1 + 8 + REL_SIZE,
            2 | 5 => 1 + 8 + REL_SIZE + 4,
            3 => 1 + 8 + 4,
            4 => 1 + 8 + 1 + 4,
            other => return Err(DecodeError::UnknownTag(other)),
        };
        if b.len() != expected {
            return Err(DecodeError::Length {
                tag,
                len: b.len(),
                expected,
            });
        }
        let lsn = Lsn(r.u64()?);
        Ok(match tag {
            0 => Request::Exists {
                lsn,
                rel: read_rel(&mut r)?,
            },
            1 => Request::Nblocks {
                lsn,
                rel: read_rel(&mut r)?,
            },
            2 => Request::GetPage {
                lsn,
                rel: read_rel(&mut r)?,
                block: r.u32()?,
            },
            5 => Request::GetLatestPage {
                not_modified_since: lsn,
                rel: read_rel(&mut r)?,
                block: r.u32()?,
            },
            3 => Request::DbSize {
                lsn,
                db_oid: r.u32()?,
            },
            _ => {
                let kind = r.u8()?;
                if kind > 2 {
                    return Err(DecodeError::Invalid("SLRU kind"));
                }
                Request::GetSlruSegment {
                    lsn,
                    kind,
                    segment: r.u32()?,
                }
            }
        })
    }
}

impl Response {
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        match self {
            Response::Exists(v) => {
                out.put_u8(100);
                out.put_u8(*v as u8);
            }
            Response::Nblocks(n) => {
                out.put_u8(101);
                out.put_u32_le(*n);
            }
            Response::Page(p) => {
                out.put_u8(102);
                out.put_slice(p);
            }
            Response::DbSize(n) => {
                out.put_u8(103);
                out.put_u64_le(*n);
            }
            Response::SlruSegment(s) => {
                out.put_u8(104);
                out.put_slice(s);
            }
            Response::Error(message) => {
                out.put_u8(105);
                out.put_slice(message.as_bytes());
            }
        }
        out.freeze()
    }

    pub fn decode(b: &Bytes) -> Result<Response, DecodeError> {
        let mut r = Reader::new(b, "pagestream response");
        let tag = r.u8().map_err(|_| DecodeError::Empty)?;
        let exact = |n: usize| {
            if r.remaining() == n {
                Ok(())
            } else {
                Err(DecodeError::Length {
                    tag,
                    len: b.len(),
                    expected: n + 1,
                })
            }
        };
        Ok(match tag {
            100 => {
                exact(1)?;
                Response::Exists(r.bool()?)
            }
            101 => {
                exact(4)?;
                Response::Nblocks(r.u32()?)
            }
            102 => {
                exact(BLCKSZ)?;
                Response::Page(b.slice(r.position()..))
            }
            103 => {
                exact(8)?;
                Response::DbSize(r.u64()?)
            }
            104 => {
                if !r.remaining().is_multiple_of(BLCKSZ) {
                    return Err(DecodeError::Invalid("SLRU segment length"));
                }
                Response::SlruSegment(b.slice(r.position()..))
            }
            105 => Response::Error(String::from_utf8_lossy(r.rest()).into_owned()),
            other => return Err(DecodeError::UnknownTag(other)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    #[test]
    fn round_trips() {
        let rel = RelSpec {
            spc_oid: 1663,
            db_oid: 5,
            rel_node: 16384,
            fork: 2,
        };
        for r in [
            Request::Exists { lsn: Lsn(1), rel },
            Request::Nblocks { lsn: Lsn(2), rel },
            Request::GetPage {
                lsn: Lsn(3),
                rel,
                block: 7,
            },
            Request::GetLatestPage {
                not_modified_since: Lsn(6),
                rel,
                block: 8,
            },
            Request::DbSize {
                lsn: Lsn(4),
                db_oid: 5,
            },
            Request::GetSlruSegment {
                lsn: Lsn(5),
                kind: 1,
                segment: 9,
            },
        ] {
            assert_eq!(Request::decode(&r.encode()).unwrap(), r);
        }
        for r in [
            Response::Exists(true),
            Response::Nblocks(12),
            Response::Page(Bytes::from(vec![7u8; BLCKSZ])),
            Response::DbSize(1 << 40),
            Response::SlruSegment(Bytes::from(vec![1u8; BLCKSZ * 2])),
            Response::Error("no".into()),
        ] {
            assert_eq!(Response::decode(&r.encode()).unwrap(), r);
        }
    }

    #[test]
    fn malformed_is_an_error() {
        assert!(Request::decode(&[]).is_err());
        assert!(Request::decode(&[9]).is_err());
        let good = Request::GetPage {
            lsn: Lsn(3),
            rel: RelSpec {
                spc_oid: 1,
                db_oid: 2,
                rel_node: 3,
                fork: 0,
            },
            block: 1,
        }
        .encode();
        assert!(Request::decode(&good[..good.len() - 1]).is_err());
        let mut bad_fork = good.to_vec();
        bad_fork[21] = 9;
        assert!(matches!(
            Request::decode(&bad_fork),
            Err(DecodeError::Invalid(_))
        ));
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..20_000 {
            let len = rng.random_range(0..40);
            let bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            let _ = Request::decode(&bytes);
            let _ = Response::decode(&Bytes::from(bytes));
        }
    }
}
