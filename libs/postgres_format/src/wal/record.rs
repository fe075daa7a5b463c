//! Decoding one WAL record into header, block references and main data
//! (the layout `DecodeXLogRecord` reads).

use bytes::Bytes;

use crate::compression::{decompress, DecompressError, ImageCompression};
use crate::constants::*;
use crate::relfile::{ForkNumber, RelFileNode, RelTag};
use utils::bytes_reader::{Reader, ShortInput};
use utils::Lsn;

/// The fixed part of every record (`XLogRecord`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub total_length: u32,
    pub xid: u32,
    pub prev: Lsn,
    pub info: u8,
    pub rmid: u8,
    pub crc: u32,
}

impl RecordHeader {
    /// The rmgr-specific bits of `xl_info`.
    pub fn rmgr_info(&self) -> u8 {
        self.info & XLR_RMGR_INFO_MASK
    }
}

/// A full-page image attached to a block reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockImage {
    /// The image as stored: compressed, or with the hole removed.
    pub data: Bytes,
    pub hole_offset: u16,
    pub hole_length: u16,
    /// `bimg_info` flags.
    pub info: u8,
}

impl BlockImage {
    /// True if redo restores the page from this image; false if it was
    /// attached only for `wal_consistency_checking`.
    pub fn apply(&self) -> bool {
        self.info & BKPIMAGE_APPLY != 0
    }

    pub fn compression(&self) -> Option<ImageCompression> {
        if self.info & BKPIMAGE_COMPRESS_PGLZ != 0 {
            Some(ImageCompression::Pglz)
        } else if self.info & BKPIMAGE_COMPRESS_LZ4 != 0 {
            Some(ImageCompression::Lz4)
        } else if self.info & BKPIMAGE_COMPRESS_ZSTD != 0 {
            Some(ImageCompression::Zstd)
        } else {
            None
        }
    }

    /// The 8 KiB page: decompressed, with its hole filled with zeros.
    pub fn restore(&self) -> Result<Vec<u8>, DecompressError> {
        let stored_len = BLCKSZ - self.hole_length as usize;
        let mut page = vec![0u8; BLCKSZ];
        let decompressed;
        let stored: &[u8] = match self.compression() {
            Some(method) => {
                let mut buf = vec![0u8; stored_len];
                decompress(method, &self.data, &mut buf)?;
                decompressed = buf;
                &decompressed
            }
            None => &self.data,
        };
        // Decoding checked that hole and stored bytes fit the page.
        let hole_start = self.hole_offset as usize;
        let hole_end = hole_start + self.hole_length as usize;
        page[..hole_start].copy_from_slice(&stored[..hole_start]);
        page[hole_end..].copy_from_slice(&stored[hole_start..]);
        Ok(page)
    }
}

/// A block the record modifies or reads (`DecodedBkpBlock`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockReference {
    /// The block id within the record (0 to 32).
    pub id: u8,
    pub rel: RelFileNode,
    pub fork: ForkNumber,
    pub block: u32,
    /// `fork_flags` as written.
    pub flags: u8,
    pub image: Option<BlockImage>,
    /// Rmgr-specific data for this block.
    pub data: Option<Bytes>,
}

impl BlockReference {
    pub fn tag(&self) -> RelTag {
        RelTag {
            node: self.rel,
            fork: self.fork,
        }
    }

    /// Redo initialises the page from scratch; its previous content is not needed.
    pub fn will_init(&self) -> bool {
        self.flags & BKPBLOCK_WILL_INIT != 0
    }
}

/// A decoded WAL record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodedRecord {
    pub lsn: Lsn,
    pub header: RecordHeader,
    /// Block references in order of block id (ids may skip numbers).
    pub blocks: Vec<BlockReference>,
    pub main_data: Bytes,
    pub origin: Option<u16>,
    pub toplevel_xid: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordDecodeError {
    #[error("record at {lsn} is truncated: {source}")]
    Short { lsn: Lsn, source: ShortInput },
    #[error("record at {lsn} says it is {stated} bytes long, but {actual} bytes were given")]
    LengthMismatch {
        lsn: Lsn,
        stated: u32,
        actual: usize,
    },
    #[error("invalid block_id {id} at {lsn}")]
    InvalidBlockId { lsn: Lsn, id: u8 },
    #[error("out-of-order block_id {id} at {lsn}")]
    OutOfOrderBlockId { lsn: Lsn, id: u8 },
    #[error("invalid fork number {fork} for block {id} at {lsn}")]
    InvalidFork { lsn: Lsn, id: u8, fork: u8 },
    #[error("BKPBLOCK_SAME_REL set but no previous rel at {lsn}")]
    NoPreviousRel { lsn: Lsn },
    #[error("block {id} at {lsn}: {reason}")]
    InvalidBlock { lsn: Lsn, id: u8, reason: String },
    #[error("record at {lsn}: headers announce {announced} bytes of data, {actual} remain")]
    DataLengthMismatch {
        lsn: Lsn,
        announced: u64,
        actual: usize,
    },
}

struct PendingBlock {
    reference: BlockReference,
    image_len: usize,
    data_len: usize,
}

impl DecodedRecord {
    /// Decode the record that begins at `lsn` from its bytes (as
    /// [`RawRecord::bytes`](super::RawRecord) gives them).
    pub fn decode(lsn: Lsn, record: Bytes) -> Result<DecodedRecord, RecordDecodeError> {
        let short = |source| RecordDecodeError::Short { lsn, source };
        let mut r = Reader::new(&record, "WAL record");
        let header = RecordHeader {
            total_length: r.u32().map_err(short)?,
            xid: r.u32().map_err(short)?,
            prev: Lsn(r.u64().map_err(short)?),
            info: r.u8().map_err(short)?,
            rmid: r.u8().map_err(short)?,
            crc: {
                r.skip(2).map_err(short)?;
                r.u32().map_err(short)?
            },
        };
        if header.total_length as usize != record.len() {
            return Err(RecordDecodeError::LengthMismatch {
                lsn,
                stated: header.total_length,
                actual: record.len(),
            });
        }

        let mut pending: Vec<PendingBlock> = Vec::new();
        let mut main_data_len = 0usize;
        let mut origin = None;
        let mut toplevel_xid = None;
        let mut last_rel: Option<RelFileNode> = None;
        // Bytes announced by the headers read so far (block data, images, main data).
        let mut announced: u64 = 0;
        while r.remaining() as u64 > announced {
            let id = r.u8().map_err(short)?;
            match id {
                XLR_BLOCK_ID_DATA_SHORT => {
                    main_data_len = r.u8().map_err(short)? as usize;
                    announced += main_data_len as u64;
                }
                XLR_BLOCK_ID_DATA_LONG => {
                    main_data_len = r.u32().map_err(short)? as usize;
                    announced += main_data_len as u64;
                }
                XLR_BLOCK_ID_ORIGIN => origin = Some(r.u16().map_err(short)?),
                XLR_BLOCK_ID_TOPLEVEL_XID => toplevel_xid = Some(r.u32().map_err(short)?),
                id if id <= XLR_MAX_BLOCK_ID => {
                    if pending.last().is_some_and(|b| b.reference.id >= id) {
                        return Err(RecordDecodeError::OutOfOrderBlockId { lsn, id });
                    }
                    let block = read_block_header(&mut r, lsn, id, &mut last_rel)?;
                    announced += (block.image_len + block.data_len) as u64;
                    pending.push(block);
                }
                id => return Err(RecordDecodeError::InvalidBlockId { lsn, id }),
            }
        }
        if r.remaining() as u64 != announced {
            return Err(RecordDecodeError::DataLengthMismatch {
                lsn,
                announced,
                actual: r.remaining(),
            });
        }

        // The payloads follow the headers: per block its image, then its data; main data last.
        let mut offset = r.position();
        let mut take = |len: usize| {
            let out = record.slice(offset..offset + len);
            offset += len;
            out
        };
        let mut blocks = Vec::with_capacity(pending.len());
        for mut block in pending {
            if let Some(image) = &mut block.reference.image {
                image.data = take(block.image_len);
            }
            if block.data_len > 0 {
                block.reference.data = Some(take(block.data_len));
            }
            blocks.push(block.reference);
        }
        let main_data = take(main_data_len);
        Ok(DecodedRecord {
            lsn,
            header,
            blocks,
            main_data,
            origin,
            toplevel_xid,
        })
    }

    /// Bytes of full-page images in the record.
    pub fn image_bytes(&self) -> usize {
        self.blocks
            .iter()
            .filter_map(|b| b.image.as_ref())
            .map(|i| i.data.len())
            .sum()
    }

    pub fn block(&self, id: u8) -> Option<&BlockReference> {
        self.blocks.iter().find(|b| b.id == id)
    }
}

fn read_block_header(
    r: &mut Reader<'_>,
    lsn: Lsn,
    id: u8,
    last_rel: &mut Option<RelFileNode>,
) -> Result<PendingBlock, RecordDecodeError> {
    let short = |source| RecordDecodeError::Short { lsn, source };
    let invalid = |reason: String| RecordDecodeError::InvalidBlock { lsn, id, reason };
    let flags = r.u8().map_err(short)?;
    let fork_number = flags & BKPBLOCK_FORK_MASK;
    let fork = ForkNumber::from_u8(fork_number).ok_or(RecordDecodeError::InvalidFork {
        lsn,
        id,
        fork: fork_number,
    })?;
    let data_len = r.u16().map_err(short)? as usize;
    let has_data = flags & BKPBLOCK_HAS_DATA != 0;
    if has_data && data_len == 0 {
        return Err(invalid(
            "BKPBLOCK_HAS_DATA set, but no data included".into(),
        ));
    }
    if !has_data && data_len != 0 {
        return Err(invalid(format!(
            "BKPBLOCK_HAS_DATA not set, but data length is {data_len}"
        )));
    }
    let mut image = None;
    let mut image_len = 0;
    if flags & BKPBLOCK_HAS_IMAGE != 0 {
        image_len = r.u16().map_err(short)? as usize;
        let hole_offset = r.u16().map_err(short)?;
        let info = r.u8().map_err(short)?;
        let compressed =
            info & (BKPIMAGE_COMPRESS_PGLZ | BKPIMAGE_COMPRESS_LZ4 | BKPIMAGE_COMPRESS_ZSTD) != 0;
        let has_hole = info & BKPIMAGE_HAS_HOLE != 0;
        let hole_length = if compressed {
            if has_hole {
                r.u16().map_err(short)?
            } else {
                0
            }
        } else {
            BLCKSZ.saturating_sub(image_len) as u16
        };
        if has_hole && (hole_offset == 0 || hole_length == 0 || image_len == BLCKSZ) {
            return Err(invalid(format!(
                "BKPIMAGE_HAS_HOLE set, but hole offset {hole_offset} length {hole_length} block image length {image_len}"
            )));
        }
        if !has_hole && (hole_offset != 0 || hole_length != 0) {
            return Err(invalid(format!(
                "BKPIMAGE_HAS_HOLE not set, but hole offset {hole_offset} length {hole_length}"
            )));
        }
        if compressed && image_len == BLCKSZ {
            return Err(invalid(format!(
                "BKPIMAGE_COMPRESSED set, but block image length {image_len}"
            )));
        }
        if !has_hole && !compressed && image_len != BLCKSZ {
            return Err(invalid(format!(
                "neither BKPIMAGE_HAS_HOLE nor BKPIMAGE_COMPRESSED set, but block image length is {image_len}"
            )));
        }
        if image_len > BLCKSZ || hole_offset as usize + hole_length as usize > BLCKSZ {
            return Err(invalid(format!(
                "image of {image_len} bytes with hole at {hole_offset} of {hole_length} bytes does not fit a page"
            )));
        }
        image = Some(BlockImage {
            data: Bytes::new(),
            hole_offset,
            hole_length,
            info,
        });
    }
    let rel = if flags & BKPBLOCK_SAME_REL != 0 {
        last_rel.ok_or(RecordDecodeError::NoPreviousRel { lsn })?
    } else {
        let rel = RelFileNode {
            spc_oid: r.u32().map_err(short)?,
            db_oid: r.u32().map_err(short)?,
            rel_node: r.u32().map_err(short)?,
        };
        *last_rel = Some(rel);
        rel
    };
    let block = r.u32().map_err(short)?;
    Ok(PendingBlock {
        reference: BlockReference {
            id,
            rel,
            fork,
            block,
            flags,
            image,
            data: None,
        },
        image_len,
        data_len,
    })
}
