//! PostgreSQL's on-disk and WAL formats, read and written in Rust.
//!
//! Everything here treats its input as untrusted: a malformed WAL record,
//! page or control file gives an error, never a panic. PostgreSQL 15 is the
//! version implemented; every format is tagged with [`PgMajorVersion`] so
//! that others can be added beside it.
//!
//! * [`wal`]: WAL page headers, the streaming record decoder, record
//!   decoding with block references and full-page images.
//! * [`records`]: the rmgr-specific records the pageserver applies itself.
//! * [`wal_writer`]: a WAL segment holding one shutdown checkpoint.
//! * [`control_file`]: the `global/pg_control` file.
//! * [`page`], [`relfile`], [`wal_names`]: pages, relation files, WAL file names.

pub mod compression;
pub mod constants;
pub mod control_file;
pub mod page;
pub mod records;
pub mod relfile;
pub mod wal;
pub mod wal_names;
pub mod wal_writer;

/// The error of every decoder here that meets too few bytes.
pub use utils::bytes_reader::ShortInput;

use std::fmt;

/// The PostgreSQL major versions whose formats this crate knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum PgMajorVersion {
    #[serde(rename = "15")]
    V15,
}

impl PgMajorVersion {
    /// The `xlp_magic` of WAL pages written by this version.
    pub fn wal_page_magic(self) -> u16 {
        match self {
            PgMajorVersion::V15 => constants::XLOG_PAGE_MAGIC_V15,
        }
    }

    /// `PG_CONTROL_VERSION` of this version.
    pub fn control_file_version(self) -> u32 {
        match self {
            PgMajorVersion::V15 => constants::PG_CONTROL_VERSION_V15,
        }
    }

    /// The content of `PG_VERSION`.
    pub fn as_str(self) -> &'static str {
        match self {
            PgMajorVersion::V15 => "15",
        }
    }
}

impl fmt::Display for PgMajorVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for PgMajorVersion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "15" => Ok(PgMajorVersion::V15),
            other => Err(format!(
                "unsupported PostgreSQL major version {other:?}: only 15 is supported"
            )),
        }
    }
}
