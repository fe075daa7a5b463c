//! pagebench: GetPage@LSN load on a pageserver's `pagestream` protocol.
//!
//! Opens `--connections` page service connections, each sending GetPage
//! requests for random blocks of one relation one at a time (a compute's
//! access pattern: a request, then its answer), and prints a JSON line with
//! the request count, pages per second and latency percentiles.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use pageserver_api::pagestream::{RelSpec, Request, Response};
use rand::{Rng, SeedableRng};
use utils::{Lsn, TenantId, TimelineId};

#[derive(Parser, Debug)]
#[command(name = "pagebench", version)]
struct Cli {
    /// Page service address
    #[arg(long, default_value = "127.0.0.1:64000")]
    pageserver: String,
    #[arg(long)]
    tenant_id: TenantId,
    #[arg(long)]
    timeline_id: TimelineId,
    /// Read the pages as of this LSN
    #[arg(long)]
    lsn: Lsn,
    /// The relation: tablespace/database/relfilenode (main fork)
    #[arg(long, value_name = "SPC/DB/REL")]
    rel: String,
    /// How long to send requests, in seconds
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Concurrent connections
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Seed of the random block choice
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn parse_rel(text: &str) -> anyhow::Result<RelSpec> {
    let parts: Vec<&str> = text.split('/').collect();
    let [spc, db, rel] = parts[..] else {
        bail!("--rel must be SPC/DB/REL, not {text:?}");
    };
    Ok(RelSpec {
        spc_oid: spc.parse().context("parsing the tablespace OID")?,
        db_oid: db.parse().context("parsing the database OID")?,
        rel_node: rel.parse().context("parsing the relfilenode")?,
        fork: 0,
    })
}

async fn request(
    copy: &mut pq_proto::client::CopyBoth<'_>,
    request: &Request,
) -> anyhow::Result<Response> {
    copy.send(&request.encode()).await?;
    copy.flush().await?;
    let data = copy
        .recv()
        .await?
        .context("the page service ended the stream")?;
    match Response::decode(&data)? {
        Response::Error(message) => bail!("the page service answered an error: {message}"),
        response => Ok(response),
    }
}

/// One connection's run: the latencies of its requests.
async fn worker(
    cli: &Cli,
    rel: RelSpec,
    seed: u64,
    until: Instant,
) -> anyhow::Result<Vec<Duration>> {
    let mut client = pq_proto::client::connect(
        cli.pageserver.as_str(),
        &[("user", "pagebench"), ("database", "postgres")],
        auth::token_from_env().as_deref(),
    )
    .await
    .with_context(|| format!("connecting to the page service at {}", cli.pageserver))?;
    let mut copy = client
        .copy_both(&format!("pagestream {} {}", cli.tenant_id, cli.timeline_id))
        .await?;
    let lsn = cli.lsn;
    let nblocks = match request(&mut copy, &Request::Nblocks { lsn, rel }).await? {
        Response::Nblocks(0) => bail!("the relation has no blocks at {lsn}"),
        Response::Nblocks(n) => n,
        other => bail!("unexpected answer to Nblocks: {other:?}"),
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut latencies = Vec::new();
    while Instant::now() < until {
        let block = rng.random_range(0..nblocks);
        let started = Instant::now();
        match request(&mut copy, &Request::GetPage { lsn, rel, block }).await? {
            Response::Page(page) if page.len() == postgres_format::constants::BLCKSZ => {}
            other => bail!("unexpected answer to GetPage of block {block}: {other:?}"),
        }
        latencies.push(started.elapsed());
    }
    Ok(latencies)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rel = parse_rel(&cli.rel)?;
    let started = Instant::now();
    let seconds = Duration::try_from_secs_f64(cli.seconds).map_err(|_| {
        anyhow::anyhow!(
            "--seconds must be a non-negative number, not {}",
            cli.seconds
        )
    })?;
    let until = started
        .checked_add(seconds)
        .context("--seconds is too large")?;
    let workers =
        (0..cli.connections.max(1)).map(|i| worker(&cli, rel, cli.seed + i as u64, until));
    let results = futures_util::future::join_all(workers).await;
    let elapsed = started.elapsed().as_secs_f64();
    let mut latencies = Vec::new();
    for result in results {
        latencies.extend(result?);
    }
    latencies.sort();
    let report = serde_json::json!({
        "requests": latencies.len(),
        "seconds": elapsed,
        "connections": cli.connections,
        "pages_per_second": latencies.len() as f64 / elapsed,
        "p50_us": percentile(&latencies, 0.50),
        "p99_us": percentile(&latencies, 0.99),
        "max_us": percentile(&latencies, 1.0),
    });
    println!("{report}");
    Ok(())
}
