//! Constants of PostgreSQL's formats (PostgreSQL 15, default build options).

/// Size of a relation page (`BLCKSZ`).
pub const BLCKSZ: usize = 8192;
/// Size of a WAL page (`XLOG_BLCKSZ`).
pub const XLOG_BLCKSZ: usize = 8192;
/// Default WAL segment size (`initdb --wal-segsize` can change it).
pub const DEFAULT_WAL_SEGMENT_SIZE: usize = 16 * 1024 * 1024;
/// Blocks per relation segment file (`RELSEG_SIZE`): 1 GiB files.
pub const RELSEG_SIZE: u32 = 131072;
/// `MAXIMUM_ALIGNOF` on 64-bit platforms.
pub const MAXALIGN: usize = 8;

pub const XLOG_PAGE_MAGIC_V15: u16 = 0xD110;
pub const PG_CONTROL_VERSION_V15: u32 = 1300;
pub const CATALOG_VERSION_NO_V15: u32 = 202209061;

// WAL page header (xlog_internal.h).
pub const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
pub const XLP_LONG_HEADER: u16 = 0x0002;
pub const XLP_BKP_REMOVABLE: u16 = 0x0004;
pub const XLP_FIRST_IS_OVERWRITE_CONTRECORD: u16 = 0x0008;
pub const XLP_ALL_FLAGS: u16 = 0x000F;
pub const SIZE_OF_XLOG_SHORT_PHD: usize = 24;
pub const SIZE_OF_XLOG_LONG_PHD: usize = 40;

// WAL record (xlogrecord.h).
pub const SIZE_OF_XLOG_RECORD: usize = 24;
/// Offset of `xl_crc` in `XLogRecord`: the CRC covers the header up to here.
pub const XLOG_RECORD_CRC_OFFSET: usize = 20;
pub const XLR_INFO_MASK: u8 = 0x0F;
pub const XLR_RMGR_INFO_MASK: u8 = 0xF0;
pub const XLR_SPECIAL_REL_UPDATE: u8 = 0x01;
pub const XLR_CHECK_CONSISTENCY: u8 = 0x02;
pub const XLR_MAX_BLOCK_ID: u8 = 32;
pub const XLR_BLOCK_ID_DATA_SHORT: u8 = 255;
pub const XLR_BLOCK_ID_DATA_LONG: u8 = 254;
pub const XLR_BLOCK_ID_ORIGIN: u8 = 253;
pub const XLR_BLOCK_ID_TOPLEVEL_XID: u8 = 252;
/// `XLogRecordMaxSize`: no valid record is longer.
pub const XLOG_RECORD_MAX_SIZE: u32 = 1020 * 1024 * 1024;

pub const BKPBLOCK_FORK_MASK: u8 = 0x0F;
pub const BKPBLOCK_HAS_IMAGE: u8 = 0x10;
pub const BKPBLOCK_HAS_DATA: u8 = 0x20;
pub const BKPBLOCK_WILL_INIT: u8 = 0x40;
pub const BKPBLOCK_SAME_REL: u8 = 0x80;

pub const BKPIMAGE_HAS_HOLE: u8 = 0x01;
pub const BKPIMAGE_APPLY: u8 = 0x02;
pub const BKPIMAGE_COMPRESS_PGLZ: u8 = 0x04;
pub const BKPIMAGE_COMPRESS_LZ4: u8 = 0x08;
pub const BKPIMAGE_COMPRESS_ZSTD: u8 = 0x10;

// Resource manager ids (rmgrlist.h).
pub const RM_XLOG_ID: u8 = 0;
pub const RM_XACT_ID: u8 = 1;
pub const RM_SMGR_ID: u8 = 2;
pub const RM_CLOG_ID: u8 = 3;
pub const RM_DBASE_ID: u8 = 4;
pub const RM_TBLSPC_ID: u8 = 5;
pub const RM_MULTIXACT_ID: u8 = 6;
pub const RM_RELMAP_ID: u8 = 7;
pub const RM_STANDBY_ID: u8 = 8;
pub const RM_HEAP2_ID: u8 = 9;
pub const RM_HEAP_ID: u8 = 10;
pub const RM_BTREE_ID: u8 = 11;
pub const RM_HASH_ID: u8 = 12;
pub const RM_GIN_ID: u8 = 13;
pub const RM_GIST_ID: u8 = 14;
pub const RM_SEQ_ID: u8 = 15;
pub const RM_SPGIST_ID: u8 = 16;
pub const RM_BRIN_ID: u8 = 17;
pub const RM_COMMIT_TS_ID: u8 = 18;
pub const RM_REPLORIGIN_ID: u8 = 19;
pub const RM_GENERIC_ID: u8 = 20;
pub const RM_LOGICALMSG_ID: u8 = 21;
pub const RM_MAX_BUILTIN_ID: u8 = RM_LOGICALMSG_ID;
pub const RM_MIN_CUSTOM_ID: u8 = 128;

/// Resource manager names as `pg_waldump` prints them.
pub fn rmgr_name(rmid: u8) -> Option<&'static str> {
    const NAMES: [&str; 22] = [
        "XLOG",
        "Transaction",
        "Storage",
        "CLOG",
        "Database",
        "Tablespace",
        "MultiXact",
        "RelMap",
        "Standby",
        "Heap2",
        "Heap",
        "Btree",
        "Hash",
        "Gin",
        "Gist",
        "Sequence",
        "SPGist",
        "BRIN",
        "CommitTs",
        "ReplicationOrigin",
        "Generic",
        "LogicalMessage",
    ];
    NAMES.get(rmid as usize).copied()
}

// XLOG rmgr info codes (pg_control.h).
pub const XLOG_CHECKPOINT_SHUTDOWN: u8 = 0x00;
pub const XLOG_CHECKPOINT_ONLINE: u8 = 0x10;
pub const XLOG_NOOP: u8 = 0x20;
pub const XLOG_NEXTOID: u8 = 0x30;
pub const XLOG_SWITCH: u8 = 0x40;
pub const XLOG_BACKUP_END: u8 = 0x50;
pub const XLOG_PARAMETER_CHANGE: u8 = 0x60;
pub const XLOG_RESTORE_POINT: u8 = 0x70;
pub const XLOG_FPW_CHANGE: u8 = 0x80;
pub const XLOG_END_OF_RECOVERY: u8 = 0x90;
pub const XLOG_FPI_FOR_HINT: u8 = 0xA0;
pub const XLOG_FPI: u8 = 0xB0;
pub const XLOG_OVERWRITE_CONTRECORD: u8 = 0xD0;

// Page layout (bufpage.h).
pub const SIZE_OF_PAGE_HEADER_DATA: usize = 24;
pub const PG_PAGE_LAYOUT_VERSION: u8 = 4;

// Transaction ids (transam.h).
pub const INVALID_TRANSACTION_ID: u32 = 0;
pub const BOOTSTRAP_TRANSACTION_ID: u32 = 1;
pub const FROZEN_TRANSACTION_ID: u32 = 2;
pub const FIRST_NORMAL_TRANSACTION_ID: u32 = 3;

/// Tablespace oids.
pub const DEFAULTTABLESPACE_OID: u32 = 1663;
pub const GLOBALTABLESPACE_OID: u32 = 1664;
