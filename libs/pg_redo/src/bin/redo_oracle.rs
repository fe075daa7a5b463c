//! `redo_oracle`: check the Rust redo against the page images of WAL
//! written with `wal_consistency_checking = all`.
//!
//! Prints counts per record type (records, redone, matched, mismatched, no
//! Rust redo yet, unchecked), the total and the first mismatches; `--json`
//! prints the same as one JSON object. Exits with 1 if any redone block
//! did not match, 2 if the WAL could not be read.

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;

use pg_redo::oracle::{run_oracle, OracleStats, TypeStats};
use utils::Lsn;

#[derive(Parser)]
#[command(about = "Check the Rust redo against PostgreSQL's page images in WAL")]
struct Cli {
    /// The pg_wal directory (WAL written with wal_consistency_checking = all).
    wal_dir: PathBuf,
    /// Start here instead of at the beginning of the oldest segment.
    #[arg(long)]
    start: Option<Lsn>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// How many mismatches the table shows.
    #[arg(long, default_value_t = 20)]
    show_mismatches: usize,
}

fn main() {
    let cli = Cli::parse();
    let started = Instant::now();
    let stats = match run_oracle(&cli.wal_dir, cli.start) {
        Ok(stats) => stats,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::exit(2);
        }
    };
    let elapsed = started.elapsed().as_secs_f64();
    if cli.json {
        let mut report = stats.report();
        report["elapsed_s"] = serde_json::json!(elapsed);
        println!("{report}");
    } else {
        print_table(&stats, cli.show_mismatches, elapsed);
    }
    if stats.total().mismatched > 0 {
        std::process::exit(1);
    }
}

fn row(name: &str, s: &TypeStats) -> String {
    format!(
        "{name:<28} {:>9} {:>9} {:>9} {:>10} {:>9} {:>9} {:>9}",
        s.records, s.redone, s.matched, s.mismatched, s.no_redo, s.unchecked, s.blocks_compared
    )
}

fn print_table(stats: &OracleStats, show: usize, elapsed: f64) {
    println!(
        "{:<28} {:>9} {:>9} {:>9} {:>10} {:>9} {:>9} {:>9}",
        "record type",
        "records",
        "redone",
        "matched",
        "mismatched",
        "no redo",
        "unchecked",
        "blocks"
    );
    for (name, s) in &stats.by_type {
        println!("{}", row(name, s));
    }
    println!("{}", row("TOTAL", &stats.total()));
    println!();
    println!(
        "{} records read in {elapsed:.1}s, {} undecodable, {} bad images; stopped at {} ({})",
        stats.records,
        stats.decode_errors,
        stats.bad_images,
        stats.end_lsn.map_or("?".to_owned(), |l| l.to_string()),
        match (&stats.end_error, stats.end_of_wal) {
            (None, _) => "no next segment".to_owned(),
            (Some(e), true) => format!("end of WAL: {e}"),
            (Some(e), false) => format!("ERROR: {e}"),
        }
    );
    let redo = stats.redo_throughput();
    println!(
        "redo alone: {} records ({} blocks, {:.1} MB without images) in {:.2}s = {:.0} records/s, {:.1} MB/s",
        redo["records"],
        redo["blocks"],
        stats.redone_bytes as f64 / 1e6,
        redo["seconds"].as_f64().unwrap_or(0.0),
        redo["records_per_second"].as_f64().unwrap_or(0.0),
        redo["megabytes_per_second"].as_f64().unwrap_or(0.0),
    );
    let total = stats.total().blocks_mismatched;
    if total > 0 {
        println!();
        println!(
            "{total} mismatched blocks; the first {}:",
            show.min(stats.mismatches.len())
        );
        for m in stats.mismatches.iter().take(show) {
            println!("  {}", m.describe());
        }
    }
}
