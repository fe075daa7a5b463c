//! WAL page headers (`XLogPageHeaderData` and `XLogLongPageHeaderData`).

use crate::constants::*;
use crate::PgMajorVersion;
use utils::bytes_reader::{Reader, ShortInput};
use utils::Lsn;

/// A WAL page header; the long fields are present on the first page of a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalPageHeader {
    pub magic: u16,
    pub info: u16,
    pub timeline: u32,
    pub page_address: Lsn,
    /// Bytes of a continued record that remain, when `XLP_FIRST_IS_CONTRECORD`.
    pub remaining_length: u32,
    /// `(system identifier, segment size, WAL block size)` of a long header.
    pub long: Option<(u64, u32, u32)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageHeaderError {
    #[error(transparent)]
    Short(#[from] ShortInput),
    #[error("invalid magic number {found:#06x} in WAL page at {page}, expected {expected:#06x}")]
    BadMagic {
        page: Lsn,
        found: u16,
        expected: u16,
    },
    #[error("invalid info bits {info:#06x} in WAL page at {page}")]
    BadInfo { page: Lsn, info: u16 },
    #[error("unexpected page address {found} in WAL page at {page}")]
    WrongAddress { page: Lsn, found: Lsn },
    #[error("WAL segment at {page} lacks its long page header")]
    MissingLongHeader { page: Lsn },
    #[error("WAL page at {page} has a long header, but is not the first of a segment")]
    UnexpectedLongHeader { page: Lsn },
    #[error("WAL segment at {page} says segment size {found} and WAL block size {block}, expected {expected} and {XLOG_BLCKSZ}")]
    WrongSizes {
        page: Lsn,
        found: u32,
        block: u32,
        expected: usize,
    },
    #[error("WAL segment at {page} has system identifier {found}, expected {expected}")]
    WrongSystem {
        page: Lsn,
        found: u64,
        expected: u64,
    },
}

impl WalPageHeader {
    /// Size of this header in the page (MAXALIGNed).
    pub fn size(&self) -> usize {
        if self.info & XLP_LONG_HEADER != 0 {
            SIZE_OF_XLOG_LONG_PHD
        } else {
            SIZE_OF_XLOG_SHORT_PHD
        }
    }

    /// Size of the header a page whose first two info bytes are known will
    /// have; `bytes` must hold at least 4 bytes.
    pub fn size_from_prefix(bytes: &[u8]) -> usize {
        let info = u16::from_le_bytes([bytes[2], bytes[3]]);
        if info & XLP_LONG_HEADER != 0 {
            SIZE_OF_XLOG_LONG_PHD
        } else {
            SIZE_OF_XLOG_SHORT_PHD
        }
    }

    pub fn parse(bytes: &[u8]) -> Result<WalPageHeader, PageHeaderError> {
        let mut r = Reader::new(bytes, "WAL page header");
        let magic = r.u16()?;
        let info = r.u16()?;
        let timeline = r.u32()?;
        let page_address = Lsn(r.u64()?);
        let remaining_length = r.u32()?;
        let long = if info & XLP_LONG_HEADER != 0 {
            r.skip(4)?; // padding to 8 bytes
            Some((r.u64()?, r.u32()?, r.u32()?))
        } else {
            None
        };
        Ok(WalPageHeader {
            magic,
            info,
            timeline,
            page_address,
            remaining_length,
            long,
        })
    }

    /// Check the header of the page that starts at `page`, as PostgreSQL's
    /// `XLogReaderValidatePageHeader` does.
    pub fn validate(
        &self,
        page: Lsn,
        version: PgMajorVersion,
        segment_size: usize,
        system_id: Option<u64>,
    ) -> Result<(), PageHeaderError> {
        let expected = version.wal_page_magic();
        if self.magic != expected {
            return Err(PageHeaderError::BadMagic {
                page,
                found: self.magic,
                expected,
            });
        }
        if self.info & !XLP_ALL_FLAGS != 0 {
            return Err(PageHeaderError::BadInfo {
                page,
                info: self.info,
            });
        }
        let segment_start = page.segment_offset(segment_size as u64) == 0;
        match (segment_start, self.long) {
            (true, None) => return Err(PageHeaderError::MissingLongHeader { page }),
            (false, Some(_)) => return Err(PageHeaderError::UnexpectedLongHeader { page }),
            (true, Some((sysid, seg, block))) => {
                if seg as usize != segment_size || block as usize != XLOG_BLCKSZ {
                    return Err(PageHeaderError::WrongSizes {
                        page,
                        found: seg,
                        block,
                        expected: segment_size,
                    });
                }
                if let Some(expected) = system_id {
                    if sysid != expected {
                        return Err(PageHeaderError::WrongSystem {
                            page,
                            found: sysid,
                            expected,
                        });
                    }
                }
            }
            (false, None) => {}
        }
        if self.page_address != page {
            return Err(PageHeaderError::WrongAddress {
                page,
                found: self.page_address,
            });
        }
        Ok(())
    }

    /// Serialise; the long fields are written when present.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.size());
        out.extend_from_slice(&self.magic.to_le_bytes());
        out.extend_from_slice(&self.info.to_le_bytes());
        out.extend_from_slice(&self.timeline.to_le_bytes());
        out.extend_from_slice(&self.page_address.0.to_le_bytes());
        out.extend_from_slice(&self.remaining_length.to_le_bytes());
        out.extend_from_slice(&[0u8; 4]);
        if let Some((sysid, seg, block)) = self.long {
            out.extend_from_slice(&sysid.to_le_bytes());
            out.extend_from_slice(&seg.to_le_bytes());
            out.extend_from_slice(&block.to_le_bytes());
        }
        out
    }
}
