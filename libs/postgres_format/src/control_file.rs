//! `global/pg_control` (`ControlFileData`, PostgreSQL 15 layout on 64-bit
//! platforms): read, check and write with its CRC.

use crate::constants::*;
use crate::PgMajorVersion;
use utils::bytes_reader::{Reader, ShortInput};
use utils::Lsn;

/// Size of the `pg_control` file; the struct is at its start, zeros follow.
pub const PG_CONTROL_FILE_SIZE: usize = 8192;
/// Size of `CheckPoint` as stored in WAL and in the control file.
pub const SIZE_OF_CHECKPOINT: usize = 88;
/// Offset of the CRC in `ControlFileData`; it covers the bytes before it.
const CONTROL_CRC_OFFSET: usize = 288;
const FLOAT_FORMAT: f64 = 1234567.0;

/// `DBState`: what the control file says about the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum DbState {
    Startup = 0,
    Shutdowned = 1,
    ShutdownedInRecovery = 2,
    Shutdowning = 3,
    InCrashRecovery = 4,
    InArchiveRecovery = 5,
    InProduction = 6,
}

impl DbState {
    fn from_u32(value: u32) -> Option<DbState> {
        use DbState::*;
        [
            Startup,
            Shutdowned,
            ShutdownedInRecovery,
            Shutdowning,
            InCrashRecovery,
            InArchiveRecovery,
            InProduction,
        ]
        .get(value as usize)
        .copied()
    }
}

/// The checkpoint state (`CheckPoint`), in WAL and in the control file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckPoint {
    pub redo: Lsn,
    pub this_timeline: u32,
    pub prev_timeline: u32,
    pub full_page_writes: bool,
    /// `FullTransactionId`: epoch in the high 32 bits.
    pub next_xid: u64,
    pub next_oid: u32,
    pub next_multi: u32,
    pub next_multi_offset: u32,
    pub oldest_xid: u32,
    pub oldest_xid_db: u32,
    pub oldest_multi: u32,
    pub oldest_multi_db: u32,
    pub time: i64,
    pub oldest_commit_ts_xid: u32,
    pub newest_commit_ts_xid: u32,
    pub oldest_active_xid: u32,
}

impl CheckPoint {
    pub fn decode(bytes: &[u8]) -> Result<CheckPoint, ShortInput> {
        let mut r = Reader::new(bytes, "checkpoint");
        Self::read(&mut r)
    }

    fn read(r: &mut Reader<'_>) -> Result<CheckPoint, ShortInput> {
        let redo = Lsn(r.u64()?);
        let this_timeline = r.u32()?;
        let prev_timeline = r.u32()?;
        let full_page_writes = r.bool()?;
        r.skip(7)?;
        let next_xid = r.u64()?;
        let next_oid = r.u32()?;
        let next_multi = r.u32()?;
        let next_multi_offset = r.u32()?;
        let oldest_xid = r.u32()?;
        let oldest_xid_db = r.u32()?;
        let oldest_multi = r.u32()?;
        let oldest_multi_db = r.u32()?;
        r.skip(4)?;
        let time = r.i64()?;
        let oldest_commit_ts_xid = r.u32()?;
        let newest_commit_ts_xid = r.u32()?;
        let oldest_active_xid = r.u32()?;
        r.skip(4)?;
        Ok(CheckPoint {
            redo,
            this_timeline,
            prev_timeline,
            full_page_writes,
            next_xid,
            next_oid,
            next_multi,
            next_multi_offset,
            oldest_xid,
            oldest_xid_db,
            oldest_multi,
            oldest_multi_db,
            time,
            oldest_commit_ts_xid,
            newest_commit_ts_xid,
            oldest_active_xid,
        })
    }

    pub fn encode(&self) -> [u8; SIZE_OF_CHECKPOINT] {
        let mut w = Writer::default();
        w.u64(self.redo.0);
        w.u32(self.this_timeline);
        w.u32(self.prev_timeline);
        w.u8(self.full_page_writes as u8);
        w.pad(7);
        w.u64(self.next_xid);
        w.u32(self.next_oid);
        w.u32(self.next_multi);
        w.u32(self.next_multi_offset);
        w.u32(self.oldest_xid);
        w.u32(self.oldest_xid_db);
        w.u32(self.oldest_multi);
        w.u32(self.oldest_multi_db);
        w.pad(4);
        w.u64(self.time as u64);
        w.u32(self.oldest_commit_ts_xid);
        w.u32(self.newest_commit_ts_xid);
        w.u32(self.oldest_active_xid);
        w.pad(4);
        w.0.try_into().expect("CheckPoint is 88 bytes")
    }
}

/// `ControlFileData`.
#[derive(Clone, Debug, PartialEq)]
pub struct ControlFile {
    pub system_identifier: u64,
    pub pg_control_version: u32,
    pub catalog_version_no: u32,
    pub state: DbState,
    pub time: i64,
    pub checkpoint: Lsn,
    pub checkpoint_copy: CheckPoint,
    pub unlogged_lsn: Lsn,
    pub min_recovery_point: Lsn,
    pub min_recovery_point_timeline: u32,
    pub backup_start_point: Lsn,
    pub backup_end_point: Lsn,
    pub backup_end_required: bool,
    pub wal_level: i32,
    pub wal_log_hints: bool,
    pub max_connections: i32,
    pub max_worker_processes: i32,
    pub max_wal_senders: i32,
    pub max_prepared_xacts: i32,
    pub max_locks_per_xact: i32,
    pub track_commit_timestamp: bool,
    pub max_align: u32,
    pub float_format: f64,
    pub blcksz: u32,
    pub relseg_size: u32,
    pub xlog_blcksz: u32,
    pub xlog_seg_size: u32,
    pub name_data_len: u32,
    pub index_max_keys: u32,
    pub toast_max_chunk_size: u32,
    pub loblksize: u32,
    pub float8_by_val: bool,
    pub data_checksum_version: u32,
    pub mock_authentication_nonce: [u8; 32],
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ControlFileError {
    #[error("control file is truncated: {0}")]
    Short(#[from] ShortInput),
    #[error(
        "incorrect checksum in control file: stored {stored:#010x}, computed {computed:#010x}"
    )]
    BadChecksum { stored: u32, computed: u32 },
    #[error("control file has version {found}, expected {expected} (PostgreSQL {version})")]
    WrongVersion {
        found: u32,
        expected: u32,
        version: PgMajorVersion,
    },
    #[error("control file has invalid database state {0}")]
    BadState(u32),
    #[error("control file was written by an incompatible build: {0}")]
    Incompatible(String),
}

impl ControlFile {
    /// Decode and check a control file (at least the struct; the file is 8 KiB).
    pub fn decode(bytes: &[u8], version: PgMajorVersion) -> Result<ControlFile, ControlFileError> {
        if bytes.len() < CONTROL_CRC_OFFSET + 4 {
            return Err(ShortInput {
                what: "control file",
                offset: 0,
                needed: CONTROL_CRC_OFFSET + 4,
                available: bytes.len(),
            }
            .into());
        }
        let stored = u32::from_le_bytes(
            bytes[CONTROL_CRC_OFFSET..CONTROL_CRC_OFFSET + 4]
                .try_into()
                .expect("4 bytes"),
        );
        let computed = crc32c::crc32c(&bytes[..CONTROL_CRC_OFFSET]);
        if stored != computed {
            return Err(ControlFileError::BadChecksum { stored, computed });
        }
        let mut r = Reader::new(bytes, "control file");
        let system_identifier = r.u64()?;
        let pg_control_version = r.u32()?;
        if pg_control_version != version.control_file_version() {
            return Err(ControlFileError::WrongVersion {
                found: pg_control_version,
                expected: version.control_file_version(),
                version,
            });
        }
        let catalog_version_no = r.u32()?;
        let state_raw = r.u32()?;
        let state = DbState::from_u32(state_raw).ok_or(ControlFileError::BadState(state_raw))?;
        r.skip(4)?;
        let control = ControlFile {
            system_identifier,
            pg_control_version,
            catalog_version_no,
            state,
            time: r.i64()?,
            checkpoint: Lsn(r.u64()?),
            checkpoint_copy: CheckPoint::read(&mut r)?,
            unlogged_lsn: Lsn(r.u64()?),
            min_recovery_point: Lsn(r.u64()?),
            min_recovery_point_timeline: {
                let tli = r.u32()?;
                r.skip(4)?;
                tli
            },
            backup_start_point: Lsn(r.u64()?),
            backup_end_point: Lsn(r.u64()?),
            backup_end_required: {
                let v = r.bool()?;
                r.skip(3)?;
                v
            },
            wal_level: r.i32()?,
            wal_log_hints: {
                let v = r.bool()?;
                r.skip(3)?;
                v
            },
            max_connections: r.i32()?,
            max_worker_processes: r.i32()?,
            max_wal_senders: r.i32()?,
            max_prepared_xacts: r.i32()?,
            max_locks_per_xact: r.i32()?,
            track_commit_timestamp: {
                let v = r.bool()?;
                r.skip(3)?;
                v
            },
            max_align: r.u32()?,
            float_format: r.f64()?,
            blcksz: r.u32()?,
            relseg_size: r.u32()?,
            xlog_blcksz: r.u32()?,
            xlog_seg_size: r.u32()?,
            name_data_len: r.u32()?,
            index_max_keys: r.u32()?,
            toast_max_chunk_size: r.u32()?,
            loblksize: r.u32()?,
            float8_by_val: {
                let v = r.bool()?;
                r.skip(3)?;
                v
            },
            data_checksum_version: r.u32()?,
            mock_authentication_nonce: r.array()?,
        };
        debug_assert_eq!(r.position(), CONTROL_CRC_OFFSET);
        control.check_compatible()?;
        Ok(control)
    }

    fn check_compatible(&self) -> Result<(), ControlFileError> {
        let fail = |what: String| Err(ControlFileError::Incompatible(what));
        if self.float_format != FLOAT_FORMAT {
            return fail(format!("float format {}", self.float_format));
        }
        if self.max_align != MAXALIGN as u32 {
            return fail(format!("MAXALIGN {}", self.max_align));
        }
        if self.blcksz as usize != BLCKSZ || self.xlog_blcksz as usize != XLOG_BLCKSZ {
            return fail(format!(
                "BLCKSZ {}, XLOG_BLCKSZ {}",
                self.blcksz, self.xlog_blcksz
            ));
        }
        if !crate::wal_names::is_valid_segment_size(self.xlog_seg_size as usize) {
            return fail(format!("WAL segment size {}", self.xlog_seg_size));
        }
        Ok(())
    }

    /// The 8 KiB file, with its CRC.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u64(self.system_identifier);
        w.u32(self.pg_control_version);
        w.u32(self.catalog_version_no);
        w.u32(self.state as u32);
        w.pad(4);
        w.u64(self.time as u64);
        w.u64(self.checkpoint.0);
        w.0.extend_from_slice(&self.checkpoint_copy.encode());
        w.u64(self.unlogged_lsn.0);
        w.u64(self.min_recovery_point.0);
        w.u32(self.min_recovery_point_timeline);
        w.pad(4);
        w.u64(self.backup_start_point.0);
        w.u64(self.backup_end_point.0);
        w.u8(self.backup_end_required as u8);
        w.pad(3);
        w.u32(self.wal_level as u32);
        w.u8(self.wal_log_hints as u8);
        w.pad(3);
        for v in [
            self.max_connections,
            self.max_worker_processes,
            self.max_wal_senders,
            self.max_prepared_xacts,
            self.max_locks_per_xact,
        ] {
            w.u32(v as u32);
        }
        w.u8(self.track_commit_timestamp as u8);
        w.pad(3);
        w.u32(self.max_align);
        w.u64(self.float_format.to_bits());
        for v in [
            self.blcksz,
            self.relseg_size,
            self.xlog_blcksz,
            self.xlog_seg_size,
            self.name_data_len,
            self.index_max_keys,
            self.toast_max_chunk_size,
            self.loblksize,
        ] {
            w.u32(v);
        }
        w.u8(self.float8_by_val as u8);
        w.pad(3);
        w.u32(self.data_checksum_version);
        w.0.extend_from_slice(&self.mock_authentication_nonce);
        assert_eq!(w.0.len(), CONTROL_CRC_OFFSET, "ControlFileData layout");
        let crc = crc32c::crc32c(&w.0);
        w.u32(crc);
        w.0.resize(PG_CONTROL_FILE_SIZE, 0);
        w.0
    }
}

/// Little-endian serialisation into a growing buffer.
#[derive(Default)]
pub(crate) struct Writer(pub Vec<u8>);

impl Writer {
    pub fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn pad(&mut self, n: usize) {
        self.0.extend(std::iter::repeat_n(0u8, n));
    }
}
