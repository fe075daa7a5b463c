//! Inspect PostgreSQL WAL and control files with this project's decoder.
//!
//! `dump` prints every record of a `pg_wal` directory as a JSON line (the
//! oracle test compares them with `pg_waldump`); `control` prints a
//! `pg_control`; `fabricate-start` gives a cleanly shut down data directory
//! the fabricated start point computes boot from.

use std::fs;
use std::io::{BufWriter, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use serde_json::json;

use postgres_format::constants::rmgr_name;
use postgres_format::control_file::{ControlFile, DbState};
use postgres_format::page::{is_new_page, PageHeader};
use postgres_format::records::parse_record;
use postgres_format::wal::{read_wal_directory, DecodedRecord};
use postgres_format::wal_names::parse_wal_file_name;
use postgres_format::wal_writer::fabricate_start;
use postgres_format::PgMajorVersion;
use utils::Lsn;

#[derive(Parser)]
#[command(version, about = "Inspect PostgreSQL 15 WAL and control files")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Decode every record of a pg_wal directory; one JSON object per line,
    /// then a summary line.
    Dump {
        /// The pg_wal directory.
        wal_dir: PathBuf,
        /// Start here instead of at the beginning of the oldest segment.
        #[arg(long)]
        start: Option<Lsn>,
        /// WAL segment size, if the oldest segment has no long header to say it.
        #[arg(long)]
        wal_seg_size: Option<usize>,
        /// Feed the decoder this many bytes at a time.
        #[arg(long, default_value_t = 65536)]
        chunk_size: usize,
        /// Print only the summary line.
        #[arg(long)]
        summary_only: bool,
        /// Do not decompress and check page images.
        #[arg(long)]
        no_image_check: bool,
    },
    /// Print a pg_control file as JSON.
    Control { file: PathBuf },
    /// Replace the WAL and pg_control of a cleanly shut down data directory
    /// with a fabricated shutdown checkpoint right after its last record.
    FabricateStart {
        #[arg(short = 'D', long)]
        pgdata: PathBuf,
        /// Place the checkpoint after this LSN instead of right after the
        /// last record (it must not be before the end of the last record).
        #[arg(long)]
        after: Option<Lsn>,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Dump {
            wal_dir,
            start,
            wal_seg_size,
            chunk_size,
            summary_only,
            no_image_check,
        } => dump(
            &wal_dir,
            start,
            wal_seg_size,
            chunk_size,
            summary_only,
            !no_image_check,
        ),
        Command::Control { file } => show_control(&file),
        Command::FabricateStart { pgdata, after } => fabricate(&pgdata, after),
    };
    if let Err(err) = result {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}

const VERSION: PgMajorVersion = PgMajorVersion::V15;

fn dump(
    wal_dir: &Path,
    start: Option<Lsn>,
    segment_size: Option<usize>,
    chunk_size: usize,
    summary_only: bool,
    check_images: bool,
) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let (mut records, mut images, mut bad_images, mut parse_errors) = (0u64, 0u64, 0u64, 0u64);
    let end = read_wal_directory(wal_dir, VERSION, start, segment_size, chunk_size, |raw| {
        let record = DecodedRecord::decode(raw.start_lsn, raw.bytes.clone())?;
        records += 1;
        let mut blocks = Vec::new();
        for block in &record.blocks {
            let mut entry = json!({
                "id": block.id,
                "rel": block.rel.to_string(),
                "fork": block.fork.name(),
                "blk": block.block,
                "will_init": block.will_init(),
                "data_len": block.data.as_ref().map_or(0, |d| d.len()),
            });
            if let Some(image) = &block.image {
                images += 1;
                let check = if check_images {
                    image
                        .restore()
                        .map_err(|e| e.to_string())
                        .and_then(|page| check_page(&page))
                } else {
                    Ok(())
                };
                if let Err(e) = &check {
                    bad_images += 1;
                    eprintln!(
                        "bad image in record at {}, block {}: {e}",
                        record.lsn, block.id
                    );
                }
                entry["image"] = json!({
                    "apply": image.apply(),
                    "hole_offset": image.hole_offset,
                    "hole_length": image.hole_length,
                    "length": image.data.len(),
                    "compression": image.compression().map(|c| c.name()),
                    "page_ok": check.is_ok(),
                });
            }
            blocks.push(entry);
        }
        let parsed = match parse_record(&record) {
            Ok(parsed) => serde_json::to_value(parsed)?,
            Err(e) => {
                parse_errors += 1;
                eprintln!("cannot parse record at {}: {e}", record.lsn);
                json!({ "error": e.to_string() })
            }
        };
        if !summary_only {
            let line = json!({
                "lsn": record.lsn.to_string(),
                "end": raw.end_lsn.to_string(),
                "prev": record.header.prev.to_string(),
                "rmgr": rmgr_name(record.header.rmid).unwrap_or("custom"),
                "info": record.header.info,
                "xid": record.header.xid,
                "tot_len": record.header.total_length,
                "rec_len": record.header.total_length as usize - record.image_bytes(),
                "main_data_len": record.main_data.len(),
                "toplevel_xid": record.toplevel_xid,
                "blocks": blocks,
                "parsed": parsed,
            });
            writeln!(out, "{line}")?;
        }
        Ok(())
    })?;
    let summary = json!({
        "summary": {
            "records": records,
            "images": images,
            "bad_images": bad_images,
            "parse_errors": parse_errors,
            "end_lsn": end.lsn.to_string(),
            "end_reason": end.error.as_ref().map_or_else(
                || "next segment file is missing".to_owned(),
                |e| e.to_string(),
            ),
            "end_of_wal": end.error.as_ref().is_none_or(|e| e.is_end_of_wal()),
        }
    });
    writeln!(out, "{summary}")?;
    out.flush()?;
    Ok(())
}

/// An image must be a sane page, or (rarely, for some index metapages) all zeros.
fn check_page(page: &[u8]) -> Result<(), String> {
    if is_new_page(page) {
        return Ok(());
    }
    let header = PageHeader::read(page).map_err(|e| e.to_string())?;
    header.check_sane().map_err(|e| e.to_string())
}

fn show_control(file: &Path) -> anyhow::Result<()> {
    let bytes = fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let control = ControlFile::decode(&bytes, VERSION)
        .with_context(|| format!("decoding {}", file.display()))?;
    let c = &control.checkpoint_copy;
    let out = json!({
        "system_identifier": control.system_identifier.to_string(),
        "pg_control_version": control.pg_control_version,
        "catalog_version_no": control.catalog_version_no,
        "state": format!("{:?}", control.state),
        "checkpoint": control.checkpoint.to_string(),
        "redo": c.redo.to_string(),
        "timeline": c.this_timeline,
        "full_page_writes": c.full_page_writes,
        "next_xid": format!("{}:{}", c.next_xid >> 32, c.next_xid as u32),
        "next_oid": c.next_oid,
        "next_multi": c.next_multi,
        "next_multi_offset": c.next_multi_offset,
        "oldest_xid": c.oldest_xid,
        "oldest_xid_db": c.oldest_xid_db,
        "oldest_multi": c.oldest_multi,
        "oldest_active_xid": c.oldest_active_xid,
        "wal_level": control.wal_level,
        "max_connections": control.max_connections,
        "max_wal_senders": control.max_wal_senders,
        "max_prepared_xacts": control.max_prepared_xacts,
        "xlog_seg_size": control.xlog_seg_size,
        "data_checksum_version": control.data_checksum_version,
        "mock_authentication_nonce": hex_string(&control.mock_authentication_nonce),
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn fabricate(pgdata: &Path, after: Option<Lsn>) -> anyhow::Result<()> {
    let control_path = pgdata.join("global/pg_control");
    let bytes =
        fs::read(&control_path).with_context(|| format!("reading {}", control_path.display()))?;
    let control = ControlFile::decode(&bytes, VERSION)
        .with_context(|| format!("decoding {}", control_path.display()))?;
    if control.state != DbState::Shutdowned {
        bail!(
            "{} is in state {:?}: shut the cluster down cleanly first",
            pgdata.display(),
            control.state
        );
    }
    // The shutdown checkpoint is the last record: find its end.
    let wal_dir = pgdata.join("pg_wal");
    let mut last = None;
    read_wal_directory(
        &wal_dir,
        VERSION,
        Some(control.checkpoint),
        Some(control.xlog_seg_size as usize),
        65536,
        |raw| {
            last = Some((raw.start_lsn, raw.end_lsn));
            Ok(())
        },
    )?;
    let Some((prev_record, prev_end)) = last else {
        bail!(
            "no record at the checkpoint location {}",
            control.checkpoint
        );
    };
    let prev_end = match after {
        Some(after) if after < prev_end => {
            bail!("--after {after} is before the end of the last record, {prev_end}")
        }
        Some(after) => after,
        None => prev_end,
    };
    let start = fabricate_start(&control, VERSION, prev_record, prev_end);

    let owner = fs::metadata(pgdata)?;
    for entry in fs::read_dir(&wal_dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if parse_wal_file_name(&name.to_string_lossy(), control.xlog_seg_size as usize).is_some() {
            fs::remove_file(entry.path())?;
        }
    }
    for (name, contents) in &start.wal_segments {
        write_owned(&wal_dir.join(name), contents, &owner)?;
    }
    write_owned(&control_path, &start.control_file, &owner)?;
    println!(
        "fabricated shutdown checkpoint at {} (previous record at {}, ending at {}); new WAL starts at {}",
        start.checkpoint_lsn, prev_record, prev_end, start.end_lsn
    );
    Ok(())
}

/// Write a file durably (temporary file, fsync, rename), owned like `owner`.
fn write_owned(path: &Path, contents: &[u8], owner: &fs::Metadata) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(contents)?;
    file.sync_all()?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600))?;
    std::os::unix::fs::chown(&tmp, Some(owner.uid()), Some(owner.gid()))
        .with_context(|| format!("changing the owner of {}", tmp.display()))?;
    fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
