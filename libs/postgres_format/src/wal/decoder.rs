//! The streaming WAL decoder.

use bytes::{Buf, Bytes, BytesMut};

use super::page_header::{PageHeaderError, WalPageHeader};
use super::record_crc;
use crate::constants::*;
use crate::PgMajorVersion;
use utils::Lsn;

/// One whole WAL record as it was written, CRC checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawRecord {
    /// Where the record begins.
    pub start_lsn: Lsn,
    /// Where it ends (PostgreSQL's `EndRecPtr`): the byte after its last
    /// byte, or the end of the segment for `XLOG_SWITCH`. The next record
    /// begins at the next MAXALIGNed position after any page header.
    pub end_lsn: Lsn,
    /// The record: `XLogRecord` header and body, without page headers.
    pub bytes: Bytes,
}

impl RawRecord {
    pub fn rmid(&self) -> u8 {
        self.bytes[17]
    }

    pub fn info(&self) -> u8 {
        self.bytes[16]
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalDecodeError {
    #[error(transparent)]
    PageHeader(#[from] PageHeaderError),
    #[error("invalid record length at {lsn}: wanted {SIZE_OF_XLOG_RECORD} to {XLOG_RECORD_MAX_SIZE}, got {length}")]
    InvalidRecordLength { lsn: Lsn, length: u32 },
    #[error("invalid resource manager ID {rmid} at {lsn}")]
    InvalidResourceManager { lsn: Lsn, rmid: u8 },
    #[error("record with incorrect prev-link {found} at {lsn}, expected {expected}")]
    WrongPrevLink { lsn: Lsn, found: Lsn, expected: Lsn },
    #[error("record with invalid prev-link {found} at {lsn}: not before the record")]
    InvalidPrevLink { lsn: Lsn, found: Lsn },
    #[error("incorrect resource manager data checksum in record at {lsn}: stored {stored:#010x}, computed {computed:#010x}")]
    BadChecksum {
        lsn: Lsn,
        stored: u32,
        computed: u32,
    },
    #[error("there is no contrecord flag at {page} for the record that began at {record}")]
    MissingContinuation { page: Lsn, record: Lsn },
    #[error("invalid contrecord length {found} at {page}, {expected} bytes of the record remain")]
    ContinuationMismatch {
        page: Lsn,
        found: u32,
        expected: u32,
    },
    #[error("WAL page at {page} continues a record, but no record is in progress")]
    UnexpectedContinuation { page: Lsn },
    #[error("cannot start decoding at {lsn}: it lies inside a WAL page header")]
    InvalidStart { lsn: Lsn },
    #[error("WAL at {lsn} runs past the greatest LSN")]
    LsnOverflow { lsn: Lsn },
}

impl WalDecodeError {
    /// True if this error is how valid WAL ends: zeros where the next
    /// record would be, or a page left over from a recycled segment.
    pub fn is_end_of_wal(&self) -> bool {
        matches!(
            self,
            WalDecodeError::InvalidRecordLength { length: 0, .. }
                | WalDecodeError::PageHeader(PageHeaderError::WrongAddress { .. })
                | WalDecodeError::PageHeader(PageHeaderError::BadMagic { found: 0, .. })
        )
    }
}

#[derive(Debug)]
enum State {
    /// The next record begins at the next MAXALIGNed position.
    BetweenRecords,
    /// Skipping the tail of a record that began before where decoding started.
    SkippingContinuation { remaining: u32 },
    /// After `XLOG_SWITCH`: the rest of the segment is unused.
    SkippingToSegmentEnd,
    /// Collecting the bytes of the record that began at `start`.
    InRecord {
        start: Lsn,
        total: u32,
        buf: Vec<u8>,
        header_checked: bool,
    },
}

/// Decodes WAL given in arbitrary chunks, in order, into records.
///
/// Feed bytes with [`feed_bytes`](Self::feed_bytes) and take records with
/// [`poll_decode`](Self::poll_decode) until it returns `Ok(None)` (more bytes
/// are needed). After an error the decoder stays failed: the WAL after a
/// broken record cannot be trusted.
#[derive(Debug)]
pub struct WalStreamDecoder {
    version: PgMajorVersion,
    segment_size: usize,
    system_id: Option<u64>,
    /// LSN of the first byte of `input`.
    lsn: Lsn,
    input: BytesMut,
    state: State,
    /// At the first page header: a continued record there is skipped.
    at_start: bool,
    prev_record: Option<Lsn>,
    failed: Option<WalDecodeError>,
}

impl WalStreamDecoder {
    /// A decoder for WAL from `start`: a page boundary (a record that
    /// continues there is skipped), the start of a record, or the end of a
    /// record (PostgreSQL's `EndRecPtr`: padding up to the next record is
    /// skipped).
    pub fn new(
        start: Lsn,
        version: PgMajorVersion,
        segment_size: usize,
    ) -> Result<Self, WalDecodeError> {
        let offset = start.block_offset(XLOG_BLCKSZ as u64) as usize;
        let header_size = if start.segment_offset(segment_size as u64) < XLOG_BLCKSZ as u64 {
            SIZE_OF_XLOG_LONG_PHD
        } else {
            SIZE_OF_XLOG_SHORT_PHD
        };
        if offset != 0 && offset < header_size {
            return Err(WalDecodeError::InvalidStart { lsn: start });
        }
        Ok(WalStreamDecoder {
            version,
            segment_size,
            system_id: None,
            lsn: start,
            input: BytesMut::new(),
            state: State::BetweenRecords,
            at_start: true,
            prev_record: None,
            failed: None,
        })
    }

    /// Require the first record to point back to `prev` (its `xl_prev`).
    pub fn set_prev_record(&mut self, prev: Lsn) {
        self.prev_record = Some(prev);
    }

    /// The LSN where the decoder stands: where the record being decoded
    /// began, or the first byte not yet consumed.
    pub fn position(&self) -> Lsn {
        match &self.state {
            State::InRecord { start, .. } => *start,
            _ => self.lsn,
        }
    }

    pub fn feed_bytes(&mut self, bytes: &[u8]) {
        self.input.extend_from_slice(bytes);
    }

    /// The next whole record, `Ok(None)` if more bytes are needed.
    pub fn poll_decode(&mut self) -> Result<Option<RawRecord>, WalDecodeError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        let result = self.decode_next();
        if let Err(err) = &result {
            self.failed = Some(err.clone());
        }
        result
    }

    fn consume(&mut self, n: usize) -> Result<(), WalDecodeError> {
        let lsn = self
            .lsn
            .checked_add(n as u64)
            .ok_or(WalDecodeError::LsnOverflow { lsn: self.lsn })?;
        self.input.advance(n);
        self.lsn = lsn;
        Ok(())
    }

    fn decode_next(&mut self) -> Result<Option<RawRecord>, WalDecodeError> {
        loop {
            let page_offset = self.lsn.block_offset(XLOG_BLCKSZ as u64) as usize;
            if page_offset == 0 && !matches!(self.state, State::SkippingToSegmentEnd) {
                if !self.read_page_header()? {
                    return Ok(None);
                }
                continue;
            }
            let page_left = XLOG_BLCKSZ - page_offset;
            match &mut self.state {
                State::SkippingToSegmentEnd => {
                    let segment_left = self.segment_size
                        - self.lsn.segment_offset(self.segment_size as u64) as usize;
                    let n = segment_left.min(self.input.len());
                    if n == 0 {
                        return Ok(None);
                    }
                    self.consume(n)?;
                    if n == segment_left {
                        self.state = State::BetweenRecords;
                    }
                }
                State::SkippingContinuation { remaining } => {
                    if *remaining == 0 {
                        self.state = State::BetweenRecords;
                        continue;
                    }
                    let n = (*remaining as usize).min(page_left).min(self.input.len());
                    if n == 0 {
                        return Ok(None);
                    }
                    *remaining -= n as u32;
                    self.consume(n)?;
                }
                State::BetweenRecords => {
                    let aligned = self
                        .lsn
                        .checked_align_up(MAXALIGN as u64)
                        .ok_or(WalDecodeError::LsnOverflow { lsn: self.lsn })?;
                    let padding = (aligned.0 - self.lsn.0) as usize;
                    if padding > 0 {
                        if self.input.len() < padding {
                            return Ok(None);
                        }
                        self.consume(padding)?;
                        continue;
                    }
                    // xl_tot_len: a MAXALIGNed position leaves at least 8 bytes on the page.
                    if self.input.len() < 4 {
                        return Ok(None);
                    }
                    let total = u32::from_le_bytes(self.input[..4].try_into().expect("4 bytes"));
                    if !(SIZE_OF_XLOG_RECORD as u32..=XLOG_RECORD_MAX_SIZE).contains(&total) {
                        return Err(WalDecodeError::InvalidRecordLength {
                            lsn: self.lsn,
                            length: total,
                        });
                    }
                    self.at_start = false;
                    self.state = State::InRecord {
                        start: self.lsn,
                        total,
                        buf: Vec::with_capacity((total as usize).min(64 * 1024)),
                        header_checked: false,
                    };
                }
                State::InRecord {
                    start,
                    total,
                    buf,
                    header_checked,
                } => {
                    let start = *start;
                    let need = *total as usize - buf.len();
                    let n = need.min(page_left).min(self.input.len());
                    if n == 0 {
                        return Ok(None);
                    }
                    buf.extend_from_slice(&self.input[..n]);
                    if !*header_checked && buf.len() >= SIZE_OF_XLOG_RECORD {
                        check_record_header(start, buf, self.prev_record)?;
                        *header_checked = true;
                    }
                    let complete = buf.len() == *total as usize;
                    self.consume(n)?;
                    if complete {
                        return self.finish_record().map(Some);
                    }
                }
            }
        }
    }

    /// Parse and check the page header at `self.lsn`; false if more bytes are needed.
    fn read_page_header(&mut self) -> Result<bool, WalDecodeError> {
        if self.input.len() < 4 {
            return Ok(false);
        }
        let size = WalPageHeader::size_from_prefix(&self.input);
        if self.input.len() < size {
            return Ok(false);
        }
        let page = self.lsn;
        let header = WalPageHeader::parse(&self.input[..size])?;
        header.validate(page, self.version, self.segment_size, self.system_id)?;
        if let Some((system_id, _, _)) = header.long {
            self.system_id.get_or_insert(system_id);
        }
        let continues = header.info & XLP_FIRST_IS_CONTRECORD != 0;
        match &mut self.state {
            State::InRecord {
                start, total, buf, ..
            } => {
                let expected = *total - buf.len() as u32;
                if !continues {
                    return Err(WalDecodeError::MissingContinuation {
                        page,
                        record: *start,
                    });
                }
                if header.remaining_length != expected {
                    return Err(WalDecodeError::ContinuationMismatch {
                        page,
                        found: header.remaining_length,
                        expected,
                    });
                }
            }
            State::SkippingContinuation { remaining } => {
                if !continues || header.remaining_length != *remaining {
                    return Err(WalDecodeError::ContinuationMismatch {
                        page,
                        found: header.remaining_length,
                        expected: *remaining,
                    });
                }
            }
            State::BetweenRecords if continues => {
                if !self.at_start {
                    return Err(WalDecodeError::UnexpectedContinuation { page });
                }
                self.state = State::SkippingContinuation {
                    remaining: header.remaining_length,
                };
            }
            State::BetweenRecords | State::SkippingToSegmentEnd => {}
        }
        self.at_start = false;
        self.consume(size)?;
        Ok(true)
    }

    fn finish_record(&mut self) -> Result<RawRecord, WalDecodeError> {
        let State::InRecord { start, buf, .. } =
            std::mem::replace(&mut self.state, State::BetweenRecords)
        else {
            unreachable!("finish_record outside a record");
        };
        let stored = u32::from_le_bytes(
            buf[XLOG_RECORD_CRC_OFFSET..XLOG_RECORD_CRC_OFFSET + 4]
                .try_into()
                .expect("4 bytes"),
        );
        let computed = record_crc(&buf);
        if stored != computed {
            return Err(WalDecodeError::BadChecksum {
                lsn: start,
                stored,
                computed,
            });
        }
        self.prev_record = Some(start);
        let mut end_lsn = self.lsn;
        let (info, rmid) = (buf[16], buf[17]);
        if rmid == RM_XLOG_ID && info & XLR_RMGR_INFO_MASK == XLOG_SWITCH {
            // The rest of the segment is unused; PostgreSQL counts it as
            // part of the switch record.
            let offset = end_lsn.segment_offset(self.segment_size as u64);
            if offset != 0 {
                end_lsn = end_lsn
                    .checked_add(self.segment_size as u64 - offset)
                    .ok_or(WalDecodeError::LsnOverflow { lsn: end_lsn })?;
                self.state = State::SkippingToSegmentEnd;
            }
        }
        Ok(RawRecord {
            start_lsn: start,
            end_lsn,
            bytes: Bytes::from(buf),
        })
    }
}

fn check_record_header(start: Lsn, header: &[u8], prev: Option<Lsn>) -> Result<(), WalDecodeError> {
    let rmid = header[17];
    if rmid > RM_MAX_BUILTIN_ID && rmid < RM_MIN_CUSTOM_ID {
        return Err(WalDecodeError::InvalidResourceManager { lsn: start, rmid });
    }
    let found = Lsn(u64::from_le_bytes(
        header[8..16].try_into().expect("8 bytes"),
    ));
    match prev {
        Some(expected) if found != expected => Err(WalDecodeError::WrongPrevLink {
            lsn: start,
            found,
            expected,
        }),
        None if found >= start => Err(WalDecodeError::InvalidPrevLink { lsn: start, found }),
        _ => Ok(()),
    }
}
