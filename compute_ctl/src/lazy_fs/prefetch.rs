//! The system catalogs, fetched before the mounts are offered to postgres.
//!
//! Every query plans against the catalogs, and every DDL writes them; a
//! cold compute would otherwise fetch their pages one round trip at a time
//! while planning, and could not run DDL at all while the pageserver does
//! not answer. They are small next to user data (initdb's are about 8 MiB)
//! and grow with the schema, not with the data, so they are fetched whole,
//! pipelined on every pageserver connection, up to [`CATALOG_LIMIT`]
//! (past it, the rest is read on demand like any relation). The template
//! databases' catalogs are left to be read on demand.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{anyhow, Context};
use postgres_format::constants::BLCKSZ;

use super::page_client::{PageClient, MAX_BATCH};
use super::store::{materialize, LazyFile};

/// Relation file nodes below this one are initdb's: the system catalogs
/// and their indexes (`FirstNormalObjectId`).
pub const FIRST_NORMAL_OBJECT_ID: u32 = 16384;
/// The most bytes of catalogs fetched before the mount.
pub const CATALOG_LIMIT: u64 = 64 << 20;
/// The template databases (fixed OIDs since PostgreSQL 15): nobody
/// connects to them, only `CREATE DATABASE` reads them.
const TEMPLATE_DATABASES: [u32; 2] = [1, 4];

struct Job {
    mount: &'static str,
    path: PathBuf,
    blocks: Vec<u32>,
}

/// What was fetched.
#[derive(Debug, Default, Clone, Copy)]
pub struct Prefetched {
    pub blocks: u64,
    /// Catalog blocks left to be read on demand (over the limit).
    pub skipped: u64,
}

/// Fetches the catalog files of `lazy` (per mount, by path under
/// `store/<mount>`) into the store with `threads` threads (creating their
/// files), and marks their blocks present. Returns what it fetched, and
/// the files it created.
pub fn prefetch_catalogs(
    store: &Path,
    lazy: &mut HashMap<&'static str, HashMap<PathBuf, LazyFile>>,
    pages: &PageClient,
    threads: usize,
) -> anyhow::Result<(Prefetched, Vec<(&'static str, PathBuf)>)> {
    let mut jobs = Vec::new();
    let mut budget = CATALOG_LIMIT / BLCKSZ as u64;
    let mut result = Prefetched::default();
    let mut created = Vec::new();
    let mut files: Vec<(&'static str, &PathBuf, &LazyFile)> = lazy
        .iter()
        .flat_map(|(mount, files)| files.iter().map(move |(path, file)| (*mount, path, file)))
        .filter(|(_, _, file)| {
            file.rel.rel_node < FIRST_NORMAL_OBJECT_ID
                && !TEMPLATE_DATABASES.contains(&file.rel.db_oid)
        })
        .collect();
    // Smallest first: under the limit, as many catalogs as possible whole.
    files.sort_by_key(|(_, path, file)| (file.remote_blocks, (*path).clone()));
    for (mount, path, file) in files {
        let blocks = file.remote_blocks as u64;
        if blocks > budget {
            result.skipped += blocks;
            continue;
        }
        budget -= blocks;
        let full = store.join(mount).join(path);
        materialize(&full, blocks * BLCKSZ as u64)
            .with_context(|| format!("creating {}", full.display()))?;
        created.push((mount, path.clone()));
        let all: Vec<u32> = (0..file.remote_blocks).collect();
        for chunk in all.chunks(MAX_BATCH) {
            jobs.push(Job {
                mount,
                path: path.clone(),
                blocks: chunk.to_vec(),
            });
        }
    }
    let view: &HashMap<&'static str, HashMap<PathBuf, LazyFile>> = lazy;
    let queue = Mutex::new(jobs);
    let done: Mutex<Vec<Job>> = Mutex::new(Vec::new());
    let failure: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| loop {
                let job = queue.lock().unwrap_or_else(|e| e.into_inner()).pop();
                let Some(job) = job else { return };
                match fetch_job(store, lazy_rel(view, &job), &job, pages) {
                    Ok(()) => done.lock().unwrap_or_else(|e| e.into_inner()).push(job),
                    Err(e) => {
                        failure
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert(e);
                        return;
                    }
                }
            });
        }
    });
    if let Some(e) = failure.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    for job in done.into_inner().unwrap_or_else(|e| e.into_inner()) {
        if let Some(file) = lazy.get_mut(job.mount).and_then(|m| m.get_mut(&job.path)) {
            for &block in &job.blocks {
                file.set_present(block);
            }
            result.blocks += job.blocks.len() as u64;
        }
    }
    Ok((result, created))
}

fn lazy_rel<'a>(
    lazy: &'a HashMap<&'static str, HashMap<PathBuf, LazyFile>>,
    job: &Job,
) -> Option<&'a LazyFile> {
    lazy.get(job.mount).and_then(|m| m.get(&job.path))
}

fn fetch_job(
    store: &Path,
    file: Option<&LazyFile>,
    job: &Job,
    pages: &PageClient,
) -> anyhow::Result<()> {
    let file = file.with_context(|| format!("no lazy file {}", job.path.display()))?;
    let numbers = job.blocks.iter().map(|b| file.first_block + b).collect();
    let fetched = pages
        .get_pages(file.rel, numbers)
        .map_err(|e| anyhow!("prefetching {}: {e}", job.path.display()))?;
    let full = store.join(job.mount).join(&job.path);
    let out = OpenOptions::new()
        .write(true)
        .open(&full)
        .with_context(|| format!("opening {}", full.display()))?;
    for (&block, page) in job.blocks.iter().zip(fetched) {
        out.write_all_at(&page, block as u64 * BLCKSZ as u64)
            .with_context(|| format!("writing {}", full.display()))?;
    }
    Ok(())
}
