//! Bootstrapping a timeline from a PostgreSQL data directory.
//!
//! The directory must be cleanly shut down (what `initdb` leaves, or a
//! cluster stopped with `pg_ctl stop -m fast`): its files then hold every
//! change up to the end of its WAL, so they are the timeline's state at that
//! LSN. [`end_of_wal`] finds that LSN; [`import_datadir`] stores:
//!
//! * every relation fork (`global/…`, `base/<db>/…`, segment files of 1 GiB
//!   joined into block numbers) as page images, with its size;
//! * the relmapper files (`pg_filenode.map`) of each database and the
//!   global one;
//! * the SLRU segments of `pg_xact`, `pg_multixact/offsets` and
//!   `pg_multixact/members`;
//! * the two-phase state files of `pg_twophase`;
//! * `global/pg_control`, and its checkpoint under [`Key::checkpoint`].
//!
//! Everything else in the directory (statistics, `pg_internal.init`
//! relcache files, configuration, `pg_wal`) is not part of a timeline: a
//! base backup writes its own. Tablespaces other than `pg_default` and
//! `pg_global` are refused.

use std::fs;
use std::io::Read;
use std::path::Path;

use anyhow::{bail, ensure, Context};
use bytes::Bytes;
use postgres_format::constants::{
    BLCKSZ, DEFAULTTABLESPACE_OID, GLOBALTABLESPACE_OID, RELSEG_SIZE,
};
use postgres_format::control_file::{ControlFile, DbState};
use postgres_format::relfile::{parse_relation_file_name, RelFileNode, RelTag};
use postgres_format::wal::read_wal_directory;
use tracing::{debug, info, warn};
use utils::Lsn;

use crate::key::{Key, SlruKind, SLRU_PAGES_PER_SEGMENT};
use crate::pgdatadir::DatadirModification;
use crate::tenant::timeline::{RecordLsn, Timeline};
use crate::value::Value;

/// Pages written to the timeline in one batch while importing a relation.
const IMPORT_BATCH_PAGES: usize = 1024;

/// Read and check `global/pg_control` of a data directory.
pub fn read_control_file(
    pgdata: &Path,
    timeline_version: postgres_format::PgMajorVersion,
) -> anyhow::Result<(Vec<u8>, ControlFile)> {
    let path = pgdata.join("global/pg_control");
    let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let control = ControlFile::decode(&bytes, timeline_version)
        .with_context(|| format!("decoding {}", path.display()))?;
    Ok((bytes, control))
}

/// The last record of a data directory's WAL: `(start, end)` of the record
/// that ends it, read from the latest checkpoint on (for a cleanly shut
/// down directory, the shutdown checkpoint itself).
pub fn end_of_wal(pgdata: &Path) -> anyhow::Result<(Lsn, Lsn)> {
    let (_, control) = read_control_file(pgdata, postgres_format::PgMajorVersion::V15)?;
    let wal_dir = pgdata.join("pg_wal");
    let mut last: Option<(Lsn, Lsn)> = None;
    let end = read_wal_directory(
        &wal_dir,
        postgres_format::PgMajorVersion::V15,
        Some(control.checkpoint),
        Some(control.xlog_seg_size as usize),
        1 << 20,
        |record| {
            last = Some((record.start_lsn, record.end_lsn));
            Ok(())
        },
    )
    .with_context(|| format!("reading the WAL of {}", wal_dir.display()))?;
    if let Some(error) = &end.error {
        if !error.is_end_of_wal() {
            return Err(anyhow::anyhow!("{error}")).with_context(|| {
                format!("WAL in {} is corrupt at {}", wal_dir.display(), end.lsn)
            });
        }
    }
    last.with_context(|| {
        format!(
            "no WAL record at the checkpoint location {} in {}",
            control.checkpoint,
            wal_dir.display()
        )
    })
}

/// Import a cleanly shut down data directory into `timeline` as its state
/// at `lsn` (the end of the directory's WAL, aligned: where the next record
/// may begin), with `prev` the start of the last record.
///
/// `timeline` must be a new root timeline that begins at `lsn`
/// (`Timeline::new_root(.., RecordLsn { last: lsn, prev })`).
pub fn import_datadir(
    timeline: &Timeline,
    pgdata: &Path,
    lsn: Lsn,
    prev: Lsn,
) -> anyhow::Result<()> {
    ensure!(
        timeline.start_lsn() == lsn && timeline.ancestor().is_none(),
        "import at {lsn} needs a new root timeline starting there (this one starts at {})",
        timeline.start_lsn()
    );
    ensure!(
        timeline.get_control_file(lsn)?.is_none(),
        "timeline {} already holds a data directory at {lsn}",
        timeline.timeline_id
    );
    let (control_bytes, control) = read_control_file(pgdata, timeline.pg_version)?;
    if control.state != DbState::Shutdowned {
        bail!(
            "{} was not shut down cleanly (state {:?}): import needs a cleanly shut down data directory",
            pgdata.display(),
            control.state
        );
    }
    if control.data_checksum_version != 0 {
        // Pages are stored with `pd_lsn` set to their record's end, which
        // would invalidate every page checksum.
        bail!(
            "{} has data checksums enabled (version {}): the pageserver supports clusters without data checksums only (initdb without --data-checksums)",
            pgdata.display(),
            control.data_checksum_version
        );
    }
    let version = fs::read_to_string(pgdata.join("PG_VERSION"))
        .with_context(|| format!("reading {}/PG_VERSION", pgdata.display()))?;
    ensure!(
        version.trim() == timeline.pg_version.as_str(),
        "{} is a PostgreSQL {} data directory, the timeline is for PostgreSQL {}",
        pgdata.display(),
        version.trim(),
        timeline.pg_version
    );
    check_no_tablespaces(pgdata)?;

    let mut m = timeline.begin_modification(lsn);
    let mut stats = ImportStats::default();

    // Shared catalogs.
    import_db_dir(
        timeline,
        &mut m,
        &pgdata.join("global"),
        GLOBALTABLESPACE_OID,
        0,
        &mut stats,
    )?;
    // Databases.
    let base = pgdata.join("base");
    for entry in fs::read_dir(&base).with_context(|| format!("reading {}", base.display()))? {
        let entry = entry.with_context(|| format!("reading {}", base.display()))?;
        let name = entry.file_name();
        let Some(db) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            warn!(
                "skipping {}: not a database directory",
                entry.path().display()
            );
            continue;
        };
        if !entry.file_type()?.is_dir() {
            warn!("skipping {}: not a directory", entry.path().display());
            continue;
        }
        m.put_db_creation(DEFAULTTABLESPACE_OID, db)?;
        import_db_dir(
            timeline,
            &mut m,
            &entry.path(),
            DEFAULTTABLESPACE_OID,
            db,
            &mut stats,
        )?;
    }
    // SLRUs.
    for kind in SlruKind::ALL {
        import_slru(&mut m, pgdata, kind)?;
    }
    import_twophase(&mut m, pgdata)?;

    m.put_control_file(Bytes::from(control_bytes))?;
    m.put_checkpoint(Bytes::copy_from_slice(&control.checkpoint_copy.encode()))?;
    m.commit(RecordLsn { last: lsn, prev })?;
    info!(
        "imported {} at {lsn}: {} relation forks, {} pages",
        pgdata.display(),
        stats.forks,
        stats.pages
    );
    Ok(())
}

#[derive(Default)]
struct ImportStats {
    forks: u64,
    pages: u64,
}

fn check_no_tablespaces(pgdata: &Path) -> anyhow::Result<()> {
    let dir = pgdata.join("pg_tblspc");
    match fs::read_dir(&dir) {
        Ok(mut entries) => {
            if let Some(entry) = entries.next() {
                let entry = entry?;
                bail!(
                    "{} has a tablespace ({}): tablespaces other than pg_default and pg_global are not supported",
                    pgdata.display(),
                    entry.file_name().to_string_lossy()
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("reading {}", dir.display())),
    }
}

/// Relation files and the relmapper file of one database directory
/// (`base/<db>`, or `global` with `spc` 1664 and `db` 0).
fn import_db_dir(
    timeline: &Timeline,
    m: &mut DatadirModification<'_>,
    dir: &Path,
    spc: u32,
    db: u32,
    stats: &mut ImportStats,
) -> anyhow::Result<()> {
    // relfilenode, fork -> segment numbers
    let mut forks: std::collections::BTreeMap<RelTag, Vec<u32>> = Default::default();
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        match name.as_ref() {
            "pg_filenode.map" => {
                let path = entry.path();
                let bytes =
                    fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
                m.put_relmap_file(spc, db, Bytes::from(bytes))?;
                continue;
            }
            // Not timeline state: written by the base backup or rebuilt by PostgreSQL.
            "PG_VERSION" | "pg_control" | "pg_internal.init" | "pgsql_tmp" => continue,
            _ => {}
        }
        let Some((rel_node, fork, segno)) = parse_relation_file_name(&name) else {
            debug!("skipping {}: not a relation file", entry.path().display());
            continue;
        };
        if !entry.file_type()?.is_file() {
            bail!("{} is not a regular file", entry.path().display());
        }
        let tag = RelTag {
            node: RelFileNode {
                spc_oid: spc,
                db_oid: db,
                rel_node,
            },
            fork,
        };
        forks.entry(tag).or_default().push(segno);
    }
    for (tag, mut segments) in forks {
        segments.sort_unstable();
        import_rel(timeline, m, dir, tag, &segments, stats)?;
    }
    Ok(())
}

/// One relation fork from its segment files.
fn import_rel(
    timeline: &Timeline,
    m: &mut DatadirModification<'_>,
    dir: &Path,
    tag: RelTag,
    segments: &[u32],
    stats: &mut ImportStats,
) -> anyhow::Result<()> {
    let lsn = m.lsn;
    let mut nblocks: u32 = 0;
    for (i, &segno) in segments.iter().enumerate() {
        // Segments are numbered from 0 without gaps; all but the last are full.
        ensure!(
            segno as usize == i,
            "relation {} has segment {segno} but no segment {i}",
            tag.segment_path(0, "")
        );
        let name = tag.segment_path(segno, "");
        let file_name = name.rsplit('/').next().unwrap_or(&name).to_owned();
        let path = dir.join(&file_name);
        let mut file =
            fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        let len = file
            .metadata()
            .with_context(|| format!("reading the size of {}", path.display()))?
            .len();
        ensure!(
            len % BLCKSZ as u64 == 0,
            "{} is {len} bytes, not a multiple of {BLCKSZ}",
            path.display()
        );
        let seg_blocks = len / BLCKSZ as u64;
        ensure!(
            seg_blocks <= RELSEG_SIZE as u64,
            "{} has {seg_blocks} blocks, more than a segment's {RELSEG_SIZE}",
            path.display()
        );
        if !nblocks.is_multiple_of(RELSEG_SIZE) {
            bail!(
                "{}: the segment before it is not full ({} blocks)",
                path.display(),
                nblocks % RELSEG_SIZE
            );
        }
        let mut batch = Vec::with_capacity(IMPORT_BATCH_PAGES);
        for i in 0..seg_blocks as u32 {
            let mut page = vec![0u8; BLCKSZ];
            file.read_exact(&mut page)
                .with_context(|| format!("reading block {i} of {}", path.display()))?;
            let block = segno * RELSEG_SIZE + i;
            batch.push((Key::rel_block(tag, block), Value::Image(Bytes::from(page))));
            if batch.len() == IMPORT_BATCH_PAGES {
                timeline.put_batch(lsn, std::mem::take(&mut batch))?;
            }
        }
        if !batch.is_empty() {
            timeline.put_batch(lsn, batch)?;
        }
        nblocks = segno * RELSEG_SIZE + seg_blocks as u32;
    }
    m.put_rel_creation(tag, nblocks)?;
    stats.forks += 1;
    stats.pages += nblocks as u64;
    Ok(())
}

fn import_slru(
    m: &mut DatadirModification<'_>,
    pgdata: &Path,
    kind: SlruKind,
) -> anyhow::Result<()> {
    let dir = pgdata.join(kind.dir_name());
    for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let segment = match (name.len(), u32::from_str_radix(&name, 16)) {
            (4..=6, Ok(segment)) if name.bytes().all(|b| b.is_ascii_hexdigit()) => segment,
            _ => {
                warn!("skipping {}: not an SLRU segment", entry.path().display());
                continue;
            }
        };
        let path = entry.path();
        let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        ensure!(
            bytes.len() % BLCKSZ == 0 && bytes.len() <= BLCKSZ * SLRU_PAGES_PER_SEGMENT as usize,
            "{} is {} bytes: not a whole number of pages, at most {SLRU_PAGES_PER_SEGMENT}",
            path.display(),
            bytes.len()
        );
        let bytes = Bytes::from(bytes);
        for (block, start) in (0..bytes.len()).step_by(BLCKSZ).enumerate() {
            m.put_slru_page_image(
                kind,
                segment,
                block as u32,
                bytes.slice(start..start + BLCKSZ),
            )?;
        }
    }
    Ok(())
}

fn import_twophase(m: &mut DatadirModification<'_>, pgdata: &Path) -> anyhow::Result<()> {
    let dir = pgdata.join("pg_twophase");
    for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let xid = match u32::from_str_radix(&name, 16) {
            Ok(xid) if name.len() == 8 => xid,
            _ => {
                warn!(
                    "skipping {}: not a two-phase state file",
                    entry.path().display()
                );
                continue;
            }
        };
        let path = entry.path();
        let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        m.put_twophase_file(xid, Bytes::from(bytes))?;
    }
    Ok(())
}
