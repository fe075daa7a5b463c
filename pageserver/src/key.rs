//! The pageserver's key space.
//!
//! Everything the pageserver stores is a `(Key, Lsn) → Value`. A [`Key`] is a
//! fixed-size, totally ordered value of [`Key::SIZE`] = 19 bytes. Its
//! serialised form is big-endian, so comparing the bytes compares the keys:
//! layer files, their names and their indexes can treat keys as opaque bytes.
//!
//! # Layout
//!
//! ```text
//! byte  0      kind   u8    what the key names (the constants below)
//! bytes 1..5   f1     u32
//! bytes 5..9   f2     u32
//! bytes 9..13  f3     u32
//! byte  13     f4     u8
//! byte  14     f5     u8
//! bytes 15..19 f6     u32
//! ```
//!
//! | kind | f1 | f2 | f3 | f4 | f5 | f6 | value |
//! |---|---|---|---|---|---|---|---|
//! | `0x00` relation data | spc | db | relfilenode | fork | 0 = size, 1 = block | block | size: 4-byte block count; block: 8 KiB page |
//! | `0x01` relation directory | spc | db | | | | | the relations of one database |
//! | `0x02` relmapper file | spc | db | | | | | `pg_filenode.map` (`spc` = 1664, `db` = 0 for the global one) |
//! | `0x03` database directory | | | | | | | the databases |
//! | `0x04` SLRU directory | SLRU kind | | | | | | the segments of one SLRU |
//! | `0x05` SLRU data | SLRU kind | segment | | | 0 = size, 1 = page | block in segment | size: 4-byte page count; page: 8 KiB |
//! | `0x06` two-phase directory | | | | | | | the prepared transactions |
//! | `0x07` two-phase file | xid | | | | | | the state file |
//! | `0x08` control file | | | | | | | `pg_control` |
//! | `0x09` checkpoint | | | | | | | the latest checkpoint |
//!
//! Unused fields are zero. Kind `0xFF` is reserved: [`Key::MAX`] (all bytes
//! `0xFF`) is never a stored key, so it can be the exclusive end of a range.
//!
//! # Why this order
//!
//! * **All of one relation fork is contiguous, with its size just before its
//!   block 0**, and all forks of a relation, then all relations of a
//!   database, follow each other. A relation's size changes whenever its
//!   blocks do (extension, truncation), and a reader that needs a block
//!   usually needs the size too (`nblocks`), so both land in the same layer
//!   partitions and the same index region; a relation, fork or database is
//!   one key range ([`Key::rel_fork_range`], [`Key::rel_range`],
//!   [`Key::db_rel_range`]), which makes drop and truncate range operations,
//!   and a base backup streams each fork's size before its blocks. A separate
//!   sub-field (`f5`) tells the size from blocks, so no block number (not
//!   even `0xFFFFFFFF`, PostgreSQL's `InvalidBlockNumber`) can alias a size.
//! * **Relation data comes first and the small metadata last** (directories,
//!   relmapper files, SLRU, two-phase, control file, checkpoint): metadata is
//!   small and updated by most transactions, so it is one short key range
//!   that compaction can keep in a few small layers, apart from bulk pages.
//! * SLRU segments follow the same rule as relations: a segment's size just
//!   before its pages.

use std::fmt;
use std::str::FromStr;

use postgres_format::relfile::{ForkNumber, RelFileNode, RelTag};
use utils::bytes_reader::{Reader, ShortInput};

/// Pages per SLRU segment file (`SLRU_PAGES_PER_SEGMENT`).
pub const SLRU_PAGES_PER_SEGMENT: u32 = 32;

/// What a key names (its first byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KeyKind {
    RelBlock,
    RelSize,
    RelDir,
    RelMap,
    DbDir,
    SlruDir,
    SlruSegmentSize,
    SlruPage,
    TwoPhaseDir,
    TwoPhaseFile,
    ControlFile,
    Checkpoint,
    ShutdownCheckpoint,
    /// A key this version does not know (never made by the constructors).
    Unknown,
}

const KIND_REL: u8 = 0x00;
const KIND_REL_DIR: u8 = 0x01;
const KIND_RELMAP: u8 = 0x02;
const KIND_DB_DIR: u8 = 0x03;
const KIND_SLRU_DIR: u8 = 0x04;
const KIND_SLRU: u8 = 0x05;
const KIND_TWOPHASE_DIR: u8 = 0x06;
const KIND_TWOPHASE: u8 = 0x07;
const KIND_CONTROL_FILE: u8 = 0x08;
const KIND_CHECKPOINT: u8 = 0x09;
const KIND_SHUTDOWN_CHECKPOINT: u8 = 0x0A;

const SUB_SIZE: u8 = 0;
const SUB_DATA: u8 = 1;

/// The SLRUs whose pages the pageserver keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SlruKind {
    Clog = 0,
    MultiXactOffsets = 1,
    MultiXactMembers = 2,
}

impl SlruKind {
    pub const ALL: [SlruKind; 3] = [
        SlruKind::Clog,
        SlruKind::MultiXactOffsets,
        SlruKind::MultiXactMembers,
    ];

    pub fn from_u32(v: u32) -> Option<SlruKind> {
        match v {
            0 => Some(SlruKind::Clog),
            1 => Some(SlruKind::MultiXactOffsets),
            2 => Some(SlruKind::MultiXactMembers),
            _ => None,
        }
    }

    /// The directory of the SLRU in a data directory.
    pub fn dir_name(self) -> &'static str {
        match self {
            SlruKind::Clog => "pg_xact",
            SlruKind::MultiXactOffsets => "pg_multixact/offsets",
            SlruKind::MultiXactMembers => "pg_multixact/members",
        }
    }
}

/// A key of the pageserver's key space; see the module documentation.
///
/// The derived order (fields in declaration order, unsigned) equals the
/// order of the big-endian serialisation.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    kind: u8,
    f1: u32,
    f2: u32,
    f3: u32,
    f4: u8,
    f5: u8,
    f6: u32,
}

/// A string or byte slice that is not a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid key {0:?}: expected {n} hexadecimal digits", n = Key::SIZE * 2)]
pub struct KeyParseError(pub String);

impl Key {
    /// Bytes of a serialised key.
    pub const SIZE: usize = 19;

    /// The smallest key (all zero bytes).
    pub const MIN: Key = Key {
        kind: 0,
        f1: 0,
        f2: 0,
        f3: 0,
        f4: 0,
        f5: 0,
        f6: 0,
    };

    /// The greatest key (all `0xFF` bytes); never a stored key.
    pub const MAX: Key = Key {
        kind: 0xFF,
        f1: u32::MAX,
        f2: u32::MAX,
        f3: u32::MAX,
        f4: 0xFF,
        f5: 0xFF,
        f6: u32::MAX,
    };

    const fn new(kind: u8, f1: u32, f2: u32, f3: u32, f4: u8, f5: u8, f6: u32) -> Key {
        Key {
            kind,
            f1,
            f2,
            f3,
            f4,
            f5,
            f6,
        }
    }

    // ---- constructors ----

    /// Block `block` of a relation fork.
    pub fn rel_block(rel: RelTag, block: u32) -> Key {
        let n = rel.node;
        Key::new(
            KIND_REL,
            n.spc_oid,
            n.db_oid,
            n.rel_node,
            rel.fork as u8,
            SUB_DATA,
            block,
        )
    }

    /// The size (in blocks) of a relation fork.
    pub fn rel_size(rel: RelTag) -> Key {
        let n = rel.node;
        Key::new(
            KIND_REL,
            n.spc_oid,
            n.db_oid,
            n.rel_node,
            rel.fork as u8,
            SUB_SIZE,
            0,
        )
    }

    /// The list of relations of database `db` in tablespace `spc`.
    pub fn rel_dir(spc: u32, db: u32) -> Key {
        Key::new(KIND_REL_DIR, spc, db, 0, 0, 0, 0)
    }

    /// The relmapper file (`pg_filenode.map`) of a database, or the global one
    /// (`spc` 1664, `db` 0).
    pub fn relmap_file(spc: u32, db: u32) -> Key {
        Key::new(KIND_RELMAP, spc, db, 0, 0, 0, 0)
    }

    /// The list of databases.
    pub const fn db_dir() -> Key {
        Key::new(KIND_DB_DIR, 0, 0, 0, 0, 0, 0)
    }

    /// The list of segments of an SLRU.
    pub fn slru_dir(kind: SlruKind) -> Key {
        Key::new(KIND_SLRU_DIR, kind as u32, 0, 0, 0, 0, 0)
    }

    /// The size (in pages) of an SLRU segment.
    pub fn slru_segment_size(kind: SlruKind, segment: u32) -> Key {
        Key::new(KIND_SLRU, kind as u32, segment, 0, 0, SUB_SIZE, 0)
    }

    /// Page `block` (0..32) of an SLRU segment.
    pub fn slru_page(kind: SlruKind, segment: u32, block: u32) -> Key {
        Key::new(KIND_SLRU, kind as u32, segment, 0, 0, SUB_DATA, block)
    }

    /// The SLRU page with absolute page number `pageno`.
    pub fn slru_page_no(kind: SlruKind, pageno: u32) -> Key {
        Key::slru_page(
            kind,
            pageno / SLRU_PAGES_PER_SEGMENT,
            pageno % SLRU_PAGES_PER_SEGMENT,
        )
    }

    /// The list of prepared transactions.
    pub const fn twophase_dir() -> Key {
        Key::new(KIND_TWOPHASE_DIR, 0, 0, 0, 0, 0, 0)
    }

    /// The state file of prepared transaction `xid`.
    pub fn twophase_file(xid: u32) -> Key {
        Key::new(KIND_TWOPHASE, xid, 0, 0, 0, 0, 0)
    }

    /// `pg_control`.
    pub const fn control_file() -> Key {
        Key::new(KIND_CONTROL_FILE, 0, 0, 0, 0, 0, 0)
    }

    /// The latest checkpoint.
    pub const fn checkpoint() -> Key {
        Key::new(KIND_CHECKPOINT, 0, 0, 0, 0, 0, 0)
    }

    /// Where the latest shutdown checkpoint record begins (8 bytes, little
    /// endian): a point where a hot standby can start from a base backup.
    pub const fn shutdown_checkpoint() -> Key {
        Key::new(KIND_SHUTDOWN_CHECKPOINT, 0, 0, 0, 0, 0, 0)
    }

    // ---- ranges ----

    /// Size and every block of one relation fork.
    pub fn rel_fork_range(rel: RelTag) -> KeyRange {
        KeyRange::new(Key::rel_size(rel), Key::rel_block(rel, u32::MAX).next())
    }

    /// Every fork (sizes and blocks) of one relation.
    pub fn rel_range(node: RelFileNode) -> KeyRange {
        let start = Key::new(KIND_REL, node.spc_oid, node.db_oid, node.rel_node, 0, 0, 0);
        let last = Key::new(
            KIND_REL,
            node.spc_oid,
            node.db_oid,
            node.rel_node,
            0xFF,
            0xFF,
            u32::MAX,
        );
        KeyRange::new(start, last.next())
    }

    /// Every relation (sizes and blocks) of one database.
    pub fn db_rel_range(spc: u32, db: u32) -> KeyRange {
        let start = Key::new(KIND_REL, spc, db, 0, 0, 0, 0);
        let last = Key::new(KIND_REL, spc, db, u32::MAX, 0xFF, 0xFF, u32::MAX);
        KeyRange::new(start, last.next())
    }

    /// All relation data of all databases.
    pub fn all_rel_data_range() -> KeyRange {
        KeyRange::new(Key::MIN, Key::new(KIND_REL_DIR, 0, 0, 0, 0, 0, 0))
    }

    /// Sizes and pages of every segment of one SLRU.
    pub fn slru_range(kind: SlruKind) -> KeyRange {
        let start = Key::new(KIND_SLRU, kind as u32, 0, 0, 0, 0, 0);
        let last = Key::new(
            KIND_SLRU,
            kind as u32,
            u32::MAX,
            u32::MAX,
            0xFF,
            0xFF,
            u32::MAX,
        );
        KeyRange::new(start, last.next())
    }

    /// Every two-phase state file.
    pub fn twophase_range() -> KeyRange {
        KeyRange::new(
            Key::twophase_file(0),
            Key::new(KIND_TWOPHASE + 1, 0, 0, 0, 0, 0, 0),
        )
    }

    // ---- accessors ----

    pub fn kind(&self) -> KeyKind {
        match (self.kind, self.f5) {
            (KIND_REL, SUB_SIZE) => KeyKind::RelSize,
            (KIND_REL, SUB_DATA) => KeyKind::RelBlock,
            (KIND_REL_DIR, _) => KeyKind::RelDir,
            (KIND_RELMAP, _) => KeyKind::RelMap,
            (KIND_DB_DIR, _) => KeyKind::DbDir,
            (KIND_SLRU_DIR, _) => KeyKind::SlruDir,
            (KIND_SLRU, SUB_SIZE) => KeyKind::SlruSegmentSize,
            (KIND_SLRU, SUB_DATA) => KeyKind::SlruPage,
            (KIND_TWOPHASE_DIR, _) => KeyKind::TwoPhaseDir,
            (KIND_TWOPHASE, _) => KeyKind::TwoPhaseFile,
            (KIND_CONTROL_FILE, _) => KeyKind::ControlFile,
            (KIND_CHECKPOINT, _) => KeyKind::Checkpoint,
            (KIND_SHUTDOWN_CHECKPOINT, _) => KeyKind::ShutdownCheckpoint,
            _ => KeyKind::Unknown,
        }
    }

    pub fn is_rel_block(&self) -> bool {
        self.kind() == KeyKind::RelBlock
    }

    pub fn is_rel_size(&self) -> bool {
        self.kind() == KeyKind::RelSize
    }

    pub fn is_slru_page(&self) -> bool {
        self.kind() == KeyKind::SlruPage
    }

    /// The relation fork of a relation block or size key.
    pub fn rel_tag(&self) -> Option<RelTag> {
        match self.kind() {
            KeyKind::RelBlock | KeyKind::RelSize => Some(RelTag {
                node: RelFileNode {
                    spc_oid: self.f1,
                    db_oid: self.f2,
                    rel_node: self.f3,
                },
                fork: ForkNumber::from_u8(self.f4)?,
            }),
            _ => None,
        }
    }

    /// The block number of a relation block key.
    pub fn rel_block_number(&self) -> Option<u32> {
        self.is_rel_block().then_some(self.f6)
    }

    /// `(spc, db)` of a relation directory or relmapper key.
    pub fn db_of(&self) -> Option<(u32, u32)> {
        matches!(self.kind(), KeyKind::RelDir | KeyKind::RelMap).then_some((self.f1, self.f2))
    }

    /// The SLRU of an SLRU directory, segment size or page key.
    pub fn slru_kind(&self) -> Option<SlruKind> {
        match self.kind() {
            KeyKind::SlruDir | KeyKind::SlruSegmentSize | KeyKind::SlruPage => {
                SlruKind::from_u32(self.f1)
            }
            _ => None,
        }
    }

    /// The segment of an SLRU segment size or page key.
    pub fn slru_segment(&self) -> Option<u32> {
        matches!(self.kind(), KeyKind::SlruSegmentSize | KeyKind::SlruPage).then_some(self.f2)
    }

    /// The block inside its segment of an SLRU page key.
    pub fn slru_block(&self) -> Option<u32> {
        self.is_slru_page().then_some(self.f6)
    }

    /// The xid of a two-phase file key.
    pub fn twophase_xid(&self) -> Option<u32> {
        (self.kind() == KeyKind::TwoPhaseFile).then_some(self.f1)
    }

    // ---- order and bytes ----

    /// The smallest key greater than this one; [`Key::MAX`] stays `MAX`.
    pub fn next(&self) -> Key {
        let mut bytes = self.to_bytes();
        for b in bytes.iter_mut().rev() {
            if *b == 0xFF {
                *b = 0;
            } else {
                *b += 1;
                return Key::from_array(bytes);
            }
        }
        Key::MAX
    }

    /// The big-endian serialisation: byte order is key order.
    pub fn to_bytes(&self) -> [u8; Key::SIZE] {
        let mut b = [0u8; Key::SIZE];
        b[0] = self.kind;
        b[1..5].copy_from_slice(&self.f1.to_be_bytes());
        b[5..9].copy_from_slice(&self.f2.to_be_bytes());
        b[9..13].copy_from_slice(&self.f3.to_be_bytes());
        b[13] = self.f4;
        b[14] = self.f5;
        b[15..19].copy_from_slice(&self.f6.to_be_bytes());
        b
    }

    /// The key whose serialisation is `b` (any 19 bytes are a key).
    pub fn from_array(b: [u8; Key::SIZE]) -> Key {
        let u = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Key {
            kind: b[0],
            f1: u(1),
            f2: u(5),
            f3: u(9),
            f4: b[13],
            f5: b[14],
            f6: u(15),
        }
    }

    /// The key serialised in `b`, which must be exactly [`Key::SIZE`] bytes.
    pub fn from_slice(b: &[u8]) -> Option<Key> {
        <[u8; Key::SIZE]>::try_from(b).ok().map(Key::from_array)
    }

    /// The next [`Key::SIZE`] bytes of `r`, as a key.
    pub fn read(r: &mut Reader<'_>) -> Result<Key, ShortInput> {
        r.array().map(Key::from_array)
    }
}

/// 38 upper-case hexadecimal digits of the serialisation.
impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.to_bytes() {
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

/// Parses exactly 38 hexadecimal digits (either case).
impl FromStr for Key {
    type Err = KeyParseError;

    fn from_str(s: &str) -> Result<Key, KeyParseError> {
        let err = || KeyParseError(s.to_owned());
        if s.len() != Key::SIZE * 2 || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(err());
        }
        let mut b = [0u8; Key::SIZE];
        for (i, out) in b.iter_mut().enumerate() {
            *out = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| err())?;
        }
        Ok(Key::from_array(b))
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fork = |f4: u8| ForkNumber::from_u8(f4).map_or("?", |x| x.name());
        match self.kind() {
            KeyKind::RelBlock => write!(
                f,
                "rel {}/{}/{} {} blk {}",
                self.f1,
                self.f2,
                self.f3,
                fork(self.f4),
                self.f6
            ),
            KeyKind::RelSize => write!(
                f,
                "rel {}/{}/{} {} size",
                self.f1,
                self.f2,
                self.f3,
                fork(self.f4)
            ),
            KeyKind::RelDir => write!(f, "reldir {}/{}", self.f1, self.f2),
            KeyKind::RelMap => write!(f, "relmap {}/{}", self.f1, self.f2),
            KeyKind::DbDir => write!(f, "dbdir"),
            KeyKind::SlruDir => write!(f, "slru {} dir", self.f1),
            KeyKind::SlruSegmentSize => write!(f, "slru {} seg {} size", self.f1, self.f2),
            KeyKind::SlruPage => write!(f, "slru {} seg {} blk {}", self.f1, self.f2, self.f6),
            KeyKind::TwoPhaseDir => write!(f, "twophase dir"),
            KeyKind::TwoPhaseFile => write!(f, "twophase {}", self.f1),
            KeyKind::ControlFile => write!(f, "control file"),
            KeyKind::Checkpoint => write!(f, "checkpoint"),
            KeyKind::ShutdownCheckpoint => write!(f, "shutdown checkpoint"),
            KeyKind::Unknown => write!(f, "key {self}"),
        }
    }
}

/// A half-open range of keys `[start, end)`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct KeyRange {
    pub start: Key,
    pub end: Key,
}

impl KeyRange {
    pub fn new(start: Key, end: Key) -> KeyRange {
        KeyRange { start, end }
    }

    /// Every key.
    pub fn all() -> KeyRange {
        KeyRange::new(Key::MIN, Key::MAX)
    }

    /// The range holding only `key`.
    pub fn singleton(key: Key) -> KeyRange {
        KeyRange::new(key, key.next())
    }

    pub fn is_empty(&self) -> bool {
        self.start >= self.end
    }

    pub fn contains(&self, key: &Key) -> bool {
        self.start <= *key && *key < self.end
    }

    /// Whether some key is in both ranges.
    pub fn overlaps(&self, other: &KeyRange) -> bool {
        !self.is_empty() && !other.is_empty() && self.start < other.end && other.start < self.end
    }

    /// Whether every key of `other` is in this range.
    pub fn covers(&self, other: &KeyRange) -> bool {
        other.is_empty() || (self.start <= other.start && other.end <= self.end)
    }
}

impl fmt::Display for KeyRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn tag(spc: u32, db: u32, rel: u32, fork: ForkNumber) -> RelTag {
        RelTag {
            node: RelFileNode {
                spc_oid: spc,
                db_oid: db,
                rel_node: rel,
            },
            fork,
        }
    }

    #[test]
    fn byte_order_is_key_order() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut keys: Vec<Key> = (0..5000)
            .map(|_| {
                let mut b = [0u8; Key::SIZE];
                // Small alphabets make equal prefixes likely.
                for x in b.iter_mut() {
                    *x = [0u8, 1, 0x7F, 0x80, 0xFF][rng.random_range(0..5)];
                }
                Key::from_array(b)
            })
            .collect();
        keys.sort();
        for w in keys.windows(2) {
            assert!(w[0].to_bytes() <= w[1].to_bytes());
            assert_eq!(w[0] == w[1], w[0].to_bytes() == w[1].to_bytes());
        }
        for k in &keys {
            assert_eq!(Key::from_array(k.to_bytes()), *k);
            assert_eq!(k.to_string().parse::<Key>().unwrap(), *k);
        }
    }

    #[test]
    fn constructors_and_accessors() {
        let t = tag(1663, 5, 16384, ForkNumber::VisibilityMap);
        let k = Key::rel_block(t, 42);
        assert!(k.is_rel_block());
        assert!(!k.is_rel_size());
        assert_eq!(k.rel_tag(), Some(t));
        assert_eq!(k.rel_block_number(), Some(42));
        let s = Key::rel_size(t);
        assert!(s.is_rel_size());
        assert_eq!(s.rel_tag(), Some(t));
        assert_eq!(s.rel_block_number(), None);
        // Block 0xFFFFFFFF does not alias the size key.
        assert_ne!(Key::rel_block(t, u32::MAX), s);
        assert!(Key::rel_block(t, u32::MAX).is_rel_block());

        let p = Key::slru_page_no(SlruKind::MultiXactMembers, 70);
        assert_eq!(p.slru_kind(), Some(SlruKind::MultiXactMembers));
        assert_eq!(p.slru_segment(), Some(2));
        assert_eq!(p.slru_block(), Some(6));
        assert_eq!(p.rel_tag(), None);
        let ss = Key::slru_segment_size(SlruKind::Clog, 3);
        assert_eq!(ss.kind(), KeyKind::SlruSegmentSize);
        assert_eq!(ss.slru_segment(), Some(3));
        assert_eq!(ss.slru_block(), None);
        assert_eq!(Key::slru_dir(SlruKind::Clog).kind(), KeyKind::SlruDir);
        assert_eq!(Key::twophase_file(99).twophase_xid(), Some(99));
        assert_eq!(Key::rel_dir(1663, 5).db_of(), Some((1663, 5)));
        assert_eq!(Key::relmap_file(1664, 0).db_of(), Some((1664, 0)));
        assert_eq!(Key::db_dir().kind(), KeyKind::DbDir);
        assert_eq!(Key::twophase_dir().kind(), KeyKind::TwoPhaseDir);
        assert_eq!(Key::control_file().kind(), KeyKind::ControlFile);
        assert_eq!(Key::checkpoint().kind(), KeyKind::Checkpoint);
        assert_eq!(Key::MAX.kind(), KeyKind::Unknown);
        // Debug output is readable.
        assert_eq!(format!("{k:?}"), "rel 1663/5/16384 vm blk 42");
    }

    #[test]
    fn relation_ordering() {
        let main = tag(1663, 5, 16384, ForkNumber::Main);
        let fsm = tag(1663, 5, 16384, ForkNumber::Fsm);
        // Size just before block 0; all of a fork before the next fork.
        assert!(Key::rel_size(main) < Key::rel_block(main, 0));
        assert!(Key::rel_block(main, u32::MAX) < Key::rel_size(fsm));
        let fork = Key::rel_fork_range(main);
        assert!(fork.contains(&Key::rel_size(main)));
        assert!(fork.contains(&Key::rel_block(main, u32::MAX)));
        assert!(!fork.contains(&Key::rel_size(fsm)));
        let rel = Key::rel_range(main.node);
        assert!(rel.covers(&fork));
        assert!(rel.contains(&Key::rel_block(tag(1663, 5, 16384, ForkNumber::Init), 9)));
        assert!(!rel.contains(&Key::rel_size(tag(1663, 5, 16385, ForkNumber::Main))));
        let db = Key::db_rel_range(1663, 5);
        assert!(db.covers(&rel));
        assert!(!db.contains(&Key::rel_size(tag(1663, 6, 1, ForkNumber::Main))));
        let all_rel = Key::all_rel_data_range();
        assert!(all_rel.covers(&db));
        // Metadata after all relation data.
        for meta in [
            Key::rel_dir(0, 0),
            Key::relmap_file(1664, 0),
            Key::db_dir(),
            Key::slru_dir(SlruKind::Clog),
            Key::slru_page(SlruKind::Clog, 0, 0),
            Key::twophase_dir(),
            Key::twophase_file(5),
            Key::control_file(),
            Key::checkpoint(),
        ] {
            assert!(!all_rel.contains(&meta), "{meta:?}");
            assert!(
                meta > Key::rel_block(
                    tag(u32::MAX, u32::MAX, u32::MAX, ForkNumber::Init),
                    u32::MAX
                )
            );
            assert!(meta < Key::MAX);
        }
        let slru = Key::slru_range(SlruKind::MultiXactOffsets);
        assert!(slru.contains(&Key::slru_segment_size(
            SlruKind::MultiXactOffsets,
            u32::MAX
        )));
        assert!(!slru.contains(&Key::slru_page(SlruKind::Clog, 0, 0)));
        assert!(Key::twophase_range().contains(&Key::twophase_file(u32::MAX)));
        assert!(!Key::twophase_range().contains(&Key::control_file()));
    }

    #[test]
    fn next_and_ranges() {
        assert_eq!(Key::MIN.next().to_bytes()[Key::SIZE - 1], 1);
        assert_eq!(Key::MAX.next(), Key::MAX);
        let t = tag(1, 2, 3, ForkNumber::Main);
        assert_eq!(Key::rel_block(t, 7).next(), Key::rel_block(t, 8));
        let k = Key::rel_block(t, u32::MAX).next();
        assert!(k > Key::rel_block(t, u32::MAX));
        let r = KeyRange::singleton(Key::rel_block(t, 7));
        assert!(r.contains(&Key::rel_block(t, 7)));
        assert!(!r.contains(&Key::rel_block(t, 8)));
        let a = KeyRange::new(Key::rel_block(t, 0), Key::rel_block(t, 10));
        let b = KeyRange::new(Key::rel_block(t, 10), Key::rel_block(t, 20));
        let c = KeyRange::new(Key::rel_block(t, 9), Key::rel_block(t, 11));
        assert!(!a.overlaps(&b));
        assert!(a.overlaps(&c) && c.overlaps(&b));
        let empty = KeyRange::new(Key::rel_block(t, 5), Key::rel_block(t, 5));
        assert!(empty.is_empty() && !empty.overlaps(&a) && !empty.contains(&Key::rel_block(t, 5)));
        assert!(KeyRange::all().covers(&a));
    }

    #[test]
    fn parse_rejects() {
        for s in [
            "",
            "00",
            &"0".repeat(37),
            &"0".repeat(39),
            &"G".repeat(38),
            &format!("+{}", "0".repeat(37)),
        ] {
            assert!(s.parse::<Key>().is_err(), "{s}");
        }
        assert!(Key::from_slice(&[0u8; 18]).is_none());
        assert_eq!(Key::from_slice(&[0u8; 19]), Some(Key::MIN));
    }
}
