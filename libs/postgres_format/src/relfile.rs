//! Relations, forks and the files that hold them.

use std::fmt;

use crate::constants::{DEFAULTTABLESPACE_OID, GLOBALTABLESPACE_OID};

/// The forks of a relation (`ForkNumber`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ForkNumber {
    Main = 0,
    Fsm = 1,
    VisibilityMap = 2,
    Init = 3,
}

impl ForkNumber {
    pub fn from_u8(value: u8) -> Option<ForkNumber> {
        match value {
            0 => Some(ForkNumber::Main),
            1 => Some(ForkNumber::Fsm),
            2 => Some(ForkNumber::VisibilityMap),
            3 => Some(ForkNumber::Init),
            _ => None,
        }
    }

    /// The name PostgreSQL uses (`forkNames`): main, fsm, vm, init.
    pub fn name(self) -> &'static str {
        match self {
            ForkNumber::Main => "main",
            ForkNumber::Fsm => "fsm",
            ForkNumber::VisibilityMap => "vm",
            ForkNumber::Init => "init",
        }
    }
}

/// A relation's physical identity (`RelFileNode`): tablespace, database
/// and relfilenode oids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct RelFileNode {
    pub spc_oid: u32,
    pub db_oid: u32,
    pub rel_node: u32,
}

impl fmt::Display for RelFileNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.spc_oid, self.db_oid, self.rel_node)
    }
}

/// A relation fork.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct RelTag {
    pub node: RelFileNode,
    pub fork: ForkNumber,
}

impl RelTag {
    /// Path of the fork's segment `segno` relative to the data directory,
    /// as PostgreSQL names it: `base/<db>/<relfilenode>[_fsm|_vm|_init][.N]`,
    /// `global/<relfilenode>…`, or `pg_tblspc/<spc>/PG_15_<catversion>/<db>/…`.
    pub fn segment_path(&self, segno: u32, tablespace_version_dir: &str) -> String {
        let node = &self.node;
        let mut path = match node.spc_oid {
            GLOBALTABLESPACE_OID => format!("global/{}", node.rel_node),
            DEFAULTTABLESPACE_OID => format!("base/{}/{}", node.db_oid, node.rel_node),
            spc => format!(
                "pg_tblspc/{spc}/{tablespace_version_dir}/{}/{}",
                node.db_oid, node.rel_node
            ),
        };
        if self.fork != ForkNumber::Main {
            path.push('_');
            path.push_str(self.fork.name());
        }
        if segno > 0 {
            path.push_str(&format!(".{segno}"));
        }
        path
    }
}

/// Parse a relation file name (the last path component, like `16384_vm.2`)
/// into relfilenode, fork and segment number.
pub fn parse_relation_file_name(name: &str) -> Option<(u32, ForkNumber, u32)> {
    let (stem, segno) = match name.split_once('.') {
        Some((stem, seg)) => (stem, parse_decimal(seg)?),
        None => (name, 0),
    };
    let (rel, fork) = match stem.split_once('_') {
        Some((rel, "fsm")) => (rel, ForkNumber::Fsm),
        Some((rel, "vm")) => (rel, ForkNumber::VisibilityMap),
        Some((rel, "init")) => (rel, ForkNumber::Init),
        Some(_) => return None,
        None => (stem, ForkNumber::Main),
    };
    Some((parse_decimal(rel)?, fork, segno))
}

fn parse_decimal(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let node = RelFileNode {
            spc_oid: 1663,
            db_oid: 5,
            rel_node: 16384,
        };
        let main = RelTag {
            node,
            fork: ForkNumber::Main,
        };
        assert_eq!(main.segment_path(0, ""), "base/5/16384");
        let vm = RelTag {
            node,
            fork: ForkNumber::VisibilityMap,
        };
        assert_eq!(vm.segment_path(2, ""), "base/5/16384_vm.2");
        let global = RelTag {
            node: RelFileNode {
                spc_oid: 1664,
                db_oid: 0,
                rel_node: 1262,
            },
            fork: ForkNumber::Main,
        };
        assert_eq!(global.segment_path(0, ""), "global/1262");
        let spc = RelTag {
            node: RelFileNode {
                spc_oid: 16500,
                db_oid: 5,
                rel_node: 7,
            },
            fork: ForkNumber::Init,
        };
        assert_eq!(
            spc.segment_path(0, "PG_15_202209061"),
            "pg_tblspc/16500/PG_15_202209061/5/7_init"
        );
    }

    #[test]
    fn file_names() {
        assert_eq!(
            parse_relation_file_name("16384"),
            Some((16384, ForkNumber::Main, 0))
        );
        assert_eq!(
            parse_relation_file_name("16384_fsm"),
            Some((16384, ForkNumber::Fsm, 0))
        );
        assert_eq!(
            parse_relation_file_name("16384_vm.3"),
            Some((16384, ForkNumber::VisibilityMap, 3))
        );
        for bad in [
            "",
            "x",
            "16384_foo",
            "16384.",
            "16384.x",
            "016384",
            "pg_filenode.map",
        ] {
            assert_eq!(parse_relation_file_name(bad), None, "{bad}");
        }
    }
}
