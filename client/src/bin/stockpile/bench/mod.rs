//! `stockpile bench`: drives a workload against a cluster and reports throughput,
//! latency percentiles (HDR histogram), errors by reason and a drain check.
//!
//! Workloads (kept exactly so; they are compared with other systems):
//! - `hot`: one SKU with stock 10^12; every op a conditional decrement of 1;
//! - `uniform`: K SKUs (default 10,000) with stock 10^12 each; each op a decrement of 1
//!   of a uniformly random SKU;
//! - `reserve-confirm`: reserve 1 unit with a 30 s TTL, then confirm it (one op);
//! - `read`: a `Get` of a random SKU (linearizable unless `--consistency stale`);
//! - `mixed`: 80% read, 15% decrement, 5% reserve/confirm.

mod load;
mod report;

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use stockpile_client::{Client, ClientBuilder, Error};

use load::Shared;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    Hot,
    Uniform,
    ReserveConfirm,
    Read,
    Mixed,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnOff {
    On,
    Off,
}

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    #[arg(long, value_enum, default_value = "uniform")]
    pub workload: Workload,
    /// Concurrent client tasks.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// SKUs of the uniform, reserve-confirm, read and mixed workloads.
    #[arg(long, default_value_t = 10_000)]
    pub skus: usize,
    /// Send decrements in explicit batches of B operations (1 = one operation per call).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Client-side coalescing of concurrent operations into Batch RPCs.
    #[arg(long, value_enum, default_value = "on")]
    pub coalesce: OnOff,
    #[arg(long, value_enum, default_value = "linearizable")]
    pub consistency: ConsistencyArg,
    /// Initial stock per SKU (the workloads' 10^12 unless a drain is wanted).
    #[arg(long, default_value_t = 1_000_000_000_000)]
    pub stock: u64,
    /// Prefix of the bench's SKUs (change it to run on fresh SKUs).
    #[arg(long, default_value = "bench")]
    pub prefix: String,
    /// Write a latency-over-time and latency-distribution plot here (SVG).
    #[arg(long)]
    pub plot: Option<std::path::PathBuf>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsistencyArg {
    Linearizable,
    Stale,
}

/// The SKU names of a run: spread over the alphabet so that they land on every shard.
fn sku(prefix: &str, i: usize) -> String {
    let letter = (b'a' + (i % 26) as u8) as char;
    format!("{letter}{prefix}-{i:06}")
}

fn hot_sku(prefix: &str) -> String {
    format!("k{prefix}-hot")
}

/// Runs the benchmark with a client from `b` (seeds, region and credentials set).
pub async fn run(b: ClientBuilder, args: BenchArgs, json_out: bool) -> Result<bool, Error> {
    let mut b = b
        .request_timeout(Duration::from_secs(10))
        .identity("stockpile-bench");
    if args.coalesce == OnOff::Off {
        b = b.no_coalescing();
    }
    let client = b.build().await?;
    let quiet = json_out || !std::io::stderr().is_terminal();
    if !quiet {
        let n = if args.workload == Workload::Hot {
            1
        } else {
            args.skus
        };
        eprintln!("setting up {n} SKU(s) with stock {} ...", args.stock);
    }
    let skus = Arc::new(load::setup(&client, &args).await?);
    let sells = !matches!(args.workload, Workload::Read);
    let initial = if sells {
        load::total_on_hand(&client, &skus).await?
    } else {
        0
    };
    let shared = Arc::new(Shared::new()?);
    let args = Arc::new(args);
    drive(&client, &args, &skus, &shared, quiet).await;
    let elapsed = shared.started.elapsed().as_secs_f64();
    let drain = if sells {
        let c = &shared.counters;
        Some(report::drain_check(
            initial,
            load::total_on_hand(&client, &skus).await?,
            c.sold.load(Ordering::Relaxed),
            c.sold_unknown.load(Ordering::Relaxed),
        ))
    } else {
        None
    };
    let outcome = report::Outcome {
        args: &args,
        shared: &shared,
        elapsed,
        drain,
    };
    if json_out {
        println!("{}", outcome.summary()?);
    } else {
        outcome.print()?;
    }
    if let Some(path) = &args.plot {
        outcome.plot(path)?;
        if !json_out {
            println!("plot written to {}", path.display());
        }
    }
    Ok(outcome.drain.map(|d| d.ok).unwrap_or(true))
}

/// Runs the client tasks for the duration, showing progress unless `quiet`.
async fn drive(
    client: &Client,
    args: &Arc<BenchArgs>,
    skus: &Arc<Vec<String>>,
    shared: &Arc<Shared>,
    quiet: bool,
) {
    let until = Instant::now() + Duration::from_secs(args.duration.max(1));
    let tasks: Vec<_> = (0..args.clients.max(1))
        .map(|_| {
            let (client, args, skus, shared) =
                (client.clone(), args.clone(), skus.clone(), shared.clone());
            tokio::spawn(load::worker(client, args, skus, shared, until))
        })
        .collect();
    let bar = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(args.duration.max(1))
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let mut last = (Instant::now(), 0u64);
    while Instant::now() < until {
        let step = Duration::from_millis(500).min(until.saturating_duration_since(Instant::now()));
        tokio::time::sleep(step).await;
        let ok = shared.counters.succeeded.load(Ordering::Relaxed);
        let now = Instant::now();
        let rate = (ok - last.1) as f64 / now.duration_since(last.0).as_secs_f64().max(0.001);
        last = (now, ok);
        bar.set_position(shared.started.elapsed().as_secs());
        bar.set_message(format!("{rate:>9.0} ops/s  ({ok} ok)"));
    }
    for t in tasks {
        let _ = t.await;
    }
    bar.finish_and_clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skus_spread_over_every_shard() {
        let first: std::collections::BTreeSet<char> = (0..26)
            .map(|i| sku("bench", i).chars().next().unwrap())
            .collect();
        assert_eq!(first.len(), 26);
    }
}
