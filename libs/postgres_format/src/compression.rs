//! Decompression of full-page images: pglz, LZ4 and zstd, as PostgreSQL
//! writes them with `wal_compression`.

use std::io::Read;

/// How a full-page image is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageCompression {
    Pglz,
    Lz4,
    Zstd,
}

impl ImageCompression {
    pub fn name(self) -> &'static str {
        match self {
            ImageCompression::Pglz => "pglz",
            ImageCompression::Lz4 => "lz4",
            ImageCompression::Zstd => "zstd",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt {method} data: {reason}")]
pub struct DecompressError {
    pub method: &'static str,
    pub reason: String,
}

/// Decompress `src` into exactly `dst.len()` bytes.
pub fn decompress(
    method: ImageCompression,
    src: &[u8],
    dst: &mut [u8],
) -> Result<(), DecompressError> {
    let err = |reason: String| DecompressError {
        method: method.name(),
        reason,
    };
    match method {
        ImageCompression::Pglz => pglz_decompress(src, dst).map_err(|r| err(r.to_owned())),
        ImageCompression::Lz4 => {
            let n = lz4_flex::block::decompress_into(src, dst).map_err(|e| err(e.to_string()))?;
            if n != dst.len() {
                return Err(err(format!(
                    "{n} bytes decompressed, {} expected",
                    dst.len()
                )));
            }
            Ok(())
        }
        ImageCompression::Zstd => {
            let mut decoder =
                ruzstd::decoding::StreamingDecoder::new(src).map_err(|e| err(e.to_string()))?;
            let mut filled = 0;
            while filled < dst.len() {
                match decoder.read(&mut dst[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) => return Err(err(e.to_string())),
                }
            }
            if filled != dst.len() {
                return Err(err(format!(
                    "{filled} bytes decompressed, {} expected",
                    dst.len()
                )));
            }
            let mut extra = [0u8; 1];
            match decoder.read(&mut extra) {
                Ok(0) => Ok(()),
                Ok(_) => Err(err(format!("more than {} bytes decompressed", dst.len()))),
                Err(e) => Err(err(e.to_string())),
            }
        }
    }
}

/// PostgreSQL's pglz format: groups of eight items, each announced by one
/// bit of a control byte: a literal byte (bit 0), or a back-reference of
/// 2 or 3 bytes (bit 1) with a 12-bit offset and a length of 3 to 273.
/// Like PostgreSQL with `check_complete`, the input must fill `dst` exactly
/// and be used up.
fn pglz_decompress(src: &[u8], dst: &mut [u8]) -> Result<(), &'static str> {
    let mut sp = 0;
    let mut dp = 0;
    while sp < src.len() && dp < dst.len() {
        let mut control = src[sp];
        sp += 1;
        for _ in 0..8 {
            if sp >= src.len() || dp >= dst.len() {
                break;
            }
            if control & 1 != 0 {
                if sp + 2 > src.len() {
                    return Err("truncated back-reference");
                }
                let mut len = (src[sp] & 0x0f) as usize + 3;
                let offset = (((src[sp] & 0xf0) as usize) << 4) | src[sp + 1] as usize;
                sp += 2;
                if len == 18 {
                    if sp >= src.len() {
                        return Err("truncated back-reference length");
                    }
                    len += src[sp] as usize;
                    sp += 1;
                }
                if offset == 0 || offset > dp {
                    return Err("back-reference points before the start of the output");
                }
                let len = len.min(dst.len() - dp);
                // Overlapping copies repeat the pattern, byte by byte.
                for i in 0..len {
                    dst[dp + i] = dst[dp + i - offset];
                }
                dp += len;
            } else {
                dst[dp] = src[sp];
                dp += 1;
                sp += 1;
            }
            control >>= 1;
        }
    }
    if dp != dst.len() {
        return Err("output shorter than expected");
    }
    if sp != src.len() {
        return Err("trailing input after the expected output");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pglz_literals_and_references() {
        // control 0b0000_0010: literal 'a', then a reference (offset 1, length 5).
        let src = [0b0000_0010, b'a', 0x02, 0x01];
        let mut dst = [0u8; 6];
        pglz_decompress(&src, &mut dst).unwrap();
        assert_eq!(&dst, b"aaaaaa");
    }

    #[test]
    fn pglz_rejects_bad_offsets_and_lengths() {
        let mut dst = [0u8; 6];
        assert!(pglz_decompress(&[0b0000_0001, 0x02, 0x01], &mut dst).is_err());
        assert!(pglz_decompress(&[0, b'a'], &mut dst).is_err());
        let mut one = [0u8; 1];
        assert!(pglz_decompress(&[0, b'a', b'b'], &mut one).is_err());
    }

    #[test]
    fn lz4_round_trip() {
        let data: Vec<u8> = (0..8192u32).map(|i| (i % 7) as u8).collect();
        let compressed = lz4_flex::block::compress(&data);
        let mut out = vec![0u8; 8192];
        decompress(ImageCompression::Lz4, &compressed, &mut out).unwrap();
        assert_eq!(out, data);
        let mut short = vec![0u8; 100];
        assert!(decompress(ImageCompression::Lz4, &compressed, &mut short).is_err());
    }

    #[test]
    fn zstd_rejects_garbage() {
        let mut out = vec![0u8; 8192];
        assert!(decompress(ImageCompression::Zstd, b"not zstd", &mut out).is_err());
    }
}
