//! `index_part.json`: a timeline's index in remote storage, and its
//! parser. Kept apart from the uploader so that it builds on its own (the
//! fuzz targets in `fuzz/` compile this file with the layer and metadata
//! formats, without the rest of the pageserver).
//!
//! Version 2 (written) names each layer with the generation of the object
//! that holds it; version 1 (still read, from buckets written before
//! generations) has none, and its layers are generation 0.

use std::collections::BTreeMap;
use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use utils::Lsn;

use crate::tenant::layer::LayerName;
use crate::tenant::metadata::TimelineMetadata;

pub const INDEX_FILE_NAME: &str = "index_part.json";
/// The version written.
const INDEX_VERSION: u32 = 2;
/// The version of indexes without generations, still read.
const LEGACY_INDEX_VERSION: u32 = 1;

/// A tenant's attachment number: each attach takes a higher one, and
/// every object a pageserver uploads carries its own (as an 8-hex-digit
/// name suffix). Generation 0 is "before generations": objects without a
/// suffix.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Generation(pub u32);

impl Generation {
    /// Objects written before generations existed.
    pub const LEGACY: Generation = Generation(0);
    /// What a tenant created on a pageserver starts at.
    pub const FIRST: Generation = Generation(1);

    /// The name of the object holding `base` in this generation:
    /// `<base>-<8 hex digits>`, or `base` itself for generation 0.
    pub fn object_name(self, base: &str) -> String {
        if self == Generation::LEGACY {
            base.to_owned()
        } else {
            format!("{base}-{self}")
        }
    }

    /// Parse exactly 8 hex digits (what [`fmt::Display`] writes).
    pub fn parse_hex(s: &str) -> Option<Generation> {
        if s.len() != 8 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u32::from_str_radix(s, 16).ok().map(Generation)
    }

    /// The generation after this one (`None` past `u32::MAX`).
    pub fn next(self) -> Option<Generation> {
        self.0.checked_add(1).map(Generation)
    }
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

/// The generation of an index object from its name: `index_part.json` is
/// generation 0, `index_part.json-<8 hex digits>` that generation;
/// anything else is not an index (`None`).
pub fn index_generation(object_name: &str) -> Option<Generation> {
    let rest = object_name.strip_prefix(INDEX_FILE_NAME)?;
    if rest.is_empty() {
        return Some(Generation::LEGACY);
    }
    let hex = rest.strip_prefix('-')?;
    Generation::parse_hex(hex).filter(|g| *g != Generation::LEGACY)
}

#[derive(Serialize, Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct IndexPartJson {
    version: u32,
    /// The timeline's metadata file (128 bytes, CRC-checked), in hex.
    metadata: String,
    /// Informational: the metadata's disk-consistent LSN.
    disk_consistent_lsn: Lsn,
    layers: BTreeMap<String, LayerFileJson>,
}

#[derive(Serialize, Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct LayerFileJson {
    file_size: u64,
    /// Version 2 only: the generation of the object holding the layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    generation: Option<u32>,
}

/// A layer as an index names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerFile {
    pub file_size: u64,
    /// The generation of the object holding it (may be older than the
    /// index's own: a layer is uploaded once and named by later indexes).
    pub generation: Generation,
}

/// A timeline's `index_part.json`, parsed and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexPart {
    pub metadata: TimelineMetadata,
    pub layers: BTreeMap<LayerName, LayerFile>,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid {INDEX_FILE_NAME}: {0}")]
pub struct IndexError(String);

impl IndexError {
    /// An index that parses but does not fit where it was found.
    pub fn from_message(message: String) -> IndexError {
        IndexError(message)
    }
}

impl IndexPart {
    /// The version 2 encoding.
    pub fn to_bytes(&self) -> Bytes {
        let json = IndexPartJson {
            version: INDEX_VERSION,
            metadata: hex::encode(self.metadata.encode()),
            disk_consistent_lsn: self.metadata.disk_consistent.last,
            layers: self
                .layers
                .iter()
                .map(|(name, file)| {
                    (
                        name.to_string(),
                        LayerFileJson {
                            file_size: file.file_size,
                            generation: Some(file.generation.0),
                        },
                    )
                })
                .collect(),
        };
        Bytes::from(serde_json::to_vec_pretty(&json).expect("serializable"))
    }

    /// Parse untrusted bytes: the version (1 or 2), the metadata's
    /// checksum, every layer name, that each layer has a generation
    /// exactly when the version has them, and that no layer lies above the
    /// disk-consistent LSN.
    pub fn parse(bytes: &[u8]) -> Result<IndexPart, IndexError> {
        let json: IndexPartJson =
            serde_json::from_slice(bytes).map_err(|e| IndexError(e.to_string()))?;
        if json.version != INDEX_VERSION && json.version != LEGACY_INDEX_VERSION {
            return Err(IndexError(format!(
                "version {} (this pageserver reads versions {LEGACY_INDEX_VERSION} and {INDEX_VERSION})",
                json.version
            )));
        }
        let raw = hex::decode(&json.metadata)
            .map_err(|e| IndexError(format!("metadata is not hex: {e}")))?;
        let metadata =
            TimelineMetadata::decode(&raw).map_err(|e| IndexError(format!("metadata: {e}")))?;
        if metadata.disk_consistent.last != json.disk_consistent_lsn {
            return Err(IndexError(format!(
                "disk_consistent_lsn {} disagrees with the metadata's {}",
                json.disk_consistent_lsn, metadata.disk_consistent.last
            )));
        }
        let limit = metadata.disk_consistent.last.0.saturating_add(1);
        let mut layers = BTreeMap::new();
        for (name, file) in json.layers {
            let layer: LayerName = name
                .parse()
                .map_err(|e| IndexError(format!("layer {name:?}: {e}")))?;
            if layer.lsn_range().end.0 > limit {
                return Err(IndexError(format!(
                    "layer {name} lies above the disk-consistent LSN {}",
                    metadata.disk_consistent.last
                )));
            }
            if file.file_size == 0 {
                return Err(IndexError(format!("layer {name} has size 0")));
            }
            let generation = match (json.version, file.generation) {
                (LEGACY_INDEX_VERSION, None) => Generation::LEGACY,
                (LEGACY_INDEX_VERSION, Some(_)) => {
                    return Err(IndexError(format!(
                        "layer {name} has a generation in a version {LEGACY_INDEX_VERSION} index"
                    )))
                }
                (_, Some(g)) => Generation(g),
                (_, None) => {
                    return Err(IndexError(format!("layer {name} has no generation")));
                }
            };
            layers.insert(
                layer,
                LayerFile {
                    file_size: file.file_size,
                    generation,
                },
            );
        }
        Ok(IndexPart { metadata, layers })
    }
}
