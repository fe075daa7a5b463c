//! The relation sizes of a lazy base backup.
//!
//! A lazy base backup (`basebackup <tenant> <timeline> <lsn> lazy`) carries
//! no relation data for logged relations: in their place, the file
//! [`RELATION_SIZES_FILE`] at the root of the tar lists every relation fork
//! and its size in blocks at the backup's LSN, one per line:
//! `<tablespace> <database> <relfilenode> <fork> <blocks>`. The compute
//! reads the blocks from the pageserver (GetPage at that LSN) on first use.

use std::fmt::Write as _;

use crate::pagestream::RelSpec;

/// The name of the list in the tar, at its root.
pub const RELATION_SIZES_FILE: &str = "lazy_relation_sizes";

/// One relation fork and its size at the backup's LSN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelationSize {
    pub rel: RelSpec,
    pub blocks: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line} of {RELATION_SIZES_FILE}: {problem}")]
pub struct ParseError {
    pub line: usize,
    pub problem: String,
}

/// The file's text for `sizes`.
pub fn format(sizes: &[RelationSize]) -> String {
    let mut text = String::with_capacity(sizes.len() * 32);
    for s in sizes {
        let _ = writeln!(
            text,
            "{} {} {} {} {}",
            s.rel.spc_oid, s.rel.db_oid, s.rel.rel_node, s.rel.fork, s.blocks
        );
    }
    text
}

/// Parses the file's text; every field is checked.
pub fn parse(text: &str) -> Result<Vec<RelationSize>, ParseError> {
    let mut sizes = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let error = |problem: String| ParseError {
            line: index + 1,
            problem,
        };
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split_ascii_whitespace().collect();
        let [spc, db, node, fork, blocks] = fields.as_slice() else {
            return Err(error(format!("expected 5 fields, found {}", fields.len())));
        };
        let number = |name: &str, text: &str| -> Result<u32, ParseError> {
            text.parse()
                .map_err(|_| error(format!("{name} {text:?} is not a 32-bit number")))
        };
        let fork = number("fork", fork)?;
        if fork > 3 {
            return Err(error(format!("fork {fork} is not 0 to 3")));
        }
        sizes.push(RelationSize {
            rel: RelSpec {
                spc_oid: number("tablespace", spc)?,
                db_oid: number("database", db)?,
                rel_node: number("relfilenode", node)?,
                fork: fork as u8,
            },
            blocks: number("block count", blocks)?,
        });
    }
    Ok(sizes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bad_lines() {
        let sizes = vec![
            RelationSize {
                rel: RelSpec {
                    spc_oid: 1663,
                    db_oid: 5,
                    rel_node: 16384,
                    fork: 0,
                },
                blocks: 131_073,
            },
            RelationSize {
                rel: RelSpec {
                    spc_oid: 1664,
                    db_oid: 0,
                    rel_node: 1262,
                    fork: 2,
                },
                blocks: 0,
            },
        ];
        assert_eq!(parse(&format(&sizes)).unwrap(), sizes);
        assert_eq!(parse("").unwrap(), vec![]);
        for bad in [
            "1663 5 16384 0",
            "1663 5 16384 4 1",
            "1663 5 x 0 1",
            "1663 5 16384 0 -1",
            "1663 5 16384 0 1 9",
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.line, 1, "{bad}: {e}");
        }
    }
}
