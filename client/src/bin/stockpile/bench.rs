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

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;
use stockpile_client::{Client, Consistency, Error, Item, Mutation};

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

/// Whether a run's stock changes add up: every acknowledged sale took a unit, and
/// no more units left than acknowledged plus unknown outcomes.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DrainCheck {
    pub initial: u64,
    #[serde(rename = "final")]
    pub final_: u64,
    pub acked: u64,
    pub unknown: u64,
    pub ok: bool,
    pub message: String,
}

pub fn drain_check(initial: u64, final_: u64, acked: u64, unknown: u64) -> DrainCheck {
    let (ok, message) = if final_ > initial {
        (
            false,
            format!("stock grew from {initial} to {final_}: units appeared"),
        )
    } else {
        let taken = initial - final_;
        if taken > acked + unknown {
            (
                false,
                format!(
                    "OVERSOLD: {taken} units left but only {acked} sales were acknowledged (+{unknown} unknown)"
                ),
            )
        } else if taken < acked {
            (
                false,
                format!("LOST: {acked} sales were acknowledged but only {taken} units left"),
            )
        } else if taken == initial && initial > 0 {
            (
                true,
                format!(
                    "drained: {acked} acknowledged sales == initial stock {initial}, final stock 0"
                ),
            )
        } else {
            (
                true,
                format!("{taken} units left for {acked} acknowledged sales (+{unknown} unknown)"),
            )
        }
    };
    DrainCheck {
        initial,
        final_,
        acked,
        unknown,
        ok,
        message,
    }
}

#[derive(Default)]
struct Counters {
    attempted: AtomicU64,
    succeeded: AtomicU64,
    /// Decrements and confirms acknowledged: units that left the shelf.
    sold: AtomicU64,
    /// Sales whose outcome is unknown.
    sold_unknown: AtomicU64,
}

struct Shared {
    counters: Counters,
    errors: Mutex<BTreeMap<String, u64>>,
    /// Latency of every op, µs.
    latency: Mutex<Histogram<u64>>,
    /// Per-second latency, µs (2 significant digits).
    per_second: Mutex<Vec<Histogram<u64>>>,
    started: Instant,
}

impl Shared {
    fn record(&self, latency: Duration, n: u64) {
        let us = latency.as_micros().clamp(1, 60_000_000) as u64;
        if let Ok(mut h) = self.latency.lock() {
            let _ = h.record_n(us, n);
        }
        let sec = self.started.elapsed().as_secs() as usize;
        if let Ok(mut ps) = self.per_second.lock() {
            while ps.len() <= sec {
                match Histogram::new_with_bounds(1, 60_000_000, 2) {
                    Ok(h) => ps.push(h),
                    Err(_) => return,
                }
            }
            let _ = ps[sec].record_n(us, n);
        }
    }

    fn error(&self, e: &Error, n: u64) {
        if let Ok(mut m) = self.errors.lock() {
            *m.entry(e.reason().to_string()).or_default() += n;
        }
    }
}

async fn setup(client: &Client, args: &BenchArgs) -> Result<Vec<String>, Error> {
    let skus: Vec<String> = match args.workload {
        Workload::Hot => vec![hot_sku(&args.prefix)],
        _ => (0..args.skus.max(1))
            .map(|i| sku(&args.prefix, i))
            .collect(),
    };
    for chunk in skus.chunks(1_000) {
        let ops = chunk
            .iter()
            .map(|s| Mutation::SetStock {
                sku: s.clone(),
                on_hand: args.stock,
            })
            .collect();
        for r in client.batch(ops).await? {
            r?;
        }
    }
    Ok(skus)
}

async fn total_on_hand(client: &Client, skus: &[String]) -> Result<u64, Error> {
    let mut total = 0u64;
    for chunk in skus.chunks(1_000) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        for r in client.get(&refs, Consistency::Linearizable).await? {
            total += r.stock.map(|s| s.on_hand).unwrap_or(0);
        }
    }
    Ok(total)
}

enum Op {
    Decrement,
    Read,
    ReserveConfirm,
}

fn pick(workload: Workload, rng: &mut impl rand::Rng) -> Op {
    match workload {
        Workload::Hot | Workload::Uniform => Op::Decrement,
        Workload::Read => Op::Read,
        Workload::ReserveConfirm => Op::ReserveConfirm,
        Workload::Mixed => match rng.random_range(0..100) {
            0..80 => Op::Read,
            80..95 => Op::Decrement,
            _ => Op::ReserveConfirm,
        },
    }
}

async fn worker(
    client: Client,
    args: Arc<BenchArgs>,
    skus: Arc<Vec<String>>,
    shared: Arc<Shared>,
    until: Instant,
) {
    use rand::Rng;
    // A Send rng: the task moves between threads across awaits.
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_rng(&mut rand::rng());
    let consistency = match args.consistency {
        ConsistencyArg::Linearizable => Consistency::Linearizable,
        ConsistencyArg::Stale => Consistency::Stale,
    };
    let c = &shared.counters;
    while Instant::now() < until {
        match pick(args.workload, &mut rng) {
            Op::Decrement if args.batch > 1 => {
                let n = args.batch as u64;
                let ops = (0..args.batch)
                    .map(|_| Mutation::Decrement {
                        sku: skus[rng.random_range(0..skus.len())].clone(),
                        quantity: 1,
                    })
                    .collect();
                c.attempted.fetch_add(n, Ordering::Relaxed);
                let t = Instant::now();
                match client.batch(ops).await {
                    Ok(results) => {
                        shared.record(t.elapsed(), n);
                        for r in results {
                            match r {
                                Ok(_) => {
                                    c.succeeded.fetch_add(1, Ordering::Relaxed);
                                    c.sold.fetch_add(1, Ordering::Relaxed);
                                }
                                Err(e) => {
                                    if !e.is_definite() {
                                        c.sold_unknown.fetch_add(1, Ordering::Relaxed);
                                    }
                                    shared.error(&e, 1);
                                }
                            }
                        }
                    }
                    Err(e) => shared.error(&e, n),
                }
            }
            Op::Decrement => {
                let s = &skus[rng.random_range(0..skus.len())];
                c.attempted.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                let r = client.decrement(s, 1).await;
                shared.record(t.elapsed(), 1);
                match r {
                    Ok(_) => {
                        c.succeeded.fetch_add(1, Ordering::Relaxed);
                        c.sold.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        if !e.is_definite() {
                            c.sold_unknown.fetch_add(1, Ordering::Relaxed);
                        }
                        shared.error(&e, 1);
                    }
                }
            }
            Op::Read => {
                let s = &skus[rng.random_range(0..skus.len())];
                c.attempted.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                let r = client.get(&[s.as_str()], consistency).await;
                shared.record(t.elapsed(), 1);
                match r {
                    Ok(_) => {
                        c.succeeded.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => shared.error(&e, 1),
                }
            }
            Op::ReserveConfirm => {
                let s = &skus[rng.random_range(0..skus.len())];
                c.attempted.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                let r = match client
                    .reserve(&[Item::new(s.clone(), 1)], Duration::from_secs(30))
                    .await
                {
                    Ok(held) => {
                        client
                            .confirm(&held.reservation.reservation_id, Some(s))
                            .await
                    }
                    Err(e) => Err(e),
                };
                shared.record(t.elapsed(), 1);
                match r {
                    Ok(_) => {
                        c.succeeded.fetch_add(1, Ordering::Relaxed);
                        c.sold.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        if !e.is_definite() {
                            c.sold_unknown.fetch_add(1, Ordering::Relaxed);
                        }
                        shared.error(&e, 1);
                    }
                }
            }
        }
    }
}

pub async fn run(
    endpoints: Vec<String>,
    region: Option<String>,
    args: BenchArgs,
    json_out: bool,
) -> Result<bool, Error> {
    let mut b = Client::builder()
        .seeds(endpoints)
        .request_timeout(Duration::from_secs(10))
        .identity("stockpile-bench");
    if let Some(r) = region {
        b = b.region(r);
    }
    if args.coalesce == OnOff::Off {
        b = b.no_coalescing();
    }
    let client = b.build().await?;
    let quiet = json_out || !std::io::stderr().is_terminal();
    if !quiet {
        eprintln!(
            "setting up {} SKU(s) with stock {} ...",
            if args.workload == Workload::Hot {
                1
            } else {
                args.skus
            },
            args.stock
        );
    }
    let skus = Arc::new(setup(&client, &args).await?);
    let sells = !matches!(args.workload, Workload::Read);
    let initial = if sells {
        total_on_hand(&client, &skus).await?
    } else {
        0
    };

    let shared = Arc::new(Shared {
        counters: Counters::default(),
        errors: Mutex::new(BTreeMap::new()),
        latency: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3).map_err(|e| {
            Error::Config {
                message: e.to_string(),
            }
        })?),
        per_second: Mutex::new(Vec::new()),
        started: Instant::now(),
    });
    let duration = Duration::from_secs(args.duration.max(1));
    let until = Instant::now() + duration;
    let args = Arc::new(args);
    let tasks: Vec<_> = (0..args.clients.max(1))
        .map(|_| {
            tokio::spawn(worker(
                client.clone(),
                args.clone(),
                skus.clone(),
                shared.clone(),
                until,
            ))
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
        tokio::time::sleep(
            Duration::from_millis(500).min(until.saturating_duration_since(Instant::now())),
        )
        .await;
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
    let elapsed = shared.started.elapsed().as_secs_f64();

    let c = &shared.counters;
    let (attempted, succeeded) = (
        c.attempted.load(Ordering::Relaxed),
        c.succeeded.load(Ordering::Relaxed),
    );
    let drain = if sells {
        let final_ = total_on_hand(&client, &skus).await?;
        Some(drain_check(
            initial,
            final_,
            c.sold.load(Ordering::Relaxed),
            c.sold_unknown.load(Ordering::Relaxed),
        ))
    } else {
        None
    };
    let h = shared
        .latency
        .lock()
        .map(|h| h.clone())
        .map_err(|_| Error::Internal {
            message: "histogram lock".into(),
        })?;
    let q = |p: f64| h.value_at_quantile(p);
    let errors = shared.errors.lock().map(|m| m.clone()).unwrap_or_default();
    let summary = json!({
        "workload": args.workload,
        "clients": args.clients,
        "duration_s": elapsed,
        "skus": if args.workload == Workload::Hot { 1 } else { args.skus },
        "batch": args.batch,
        "coalesce": args.coalesce == OnOff::On,
        "consistency": format!("{:?}", args.consistency).to_lowercase(),
        "attempted": attempted,
        "succeeded": succeeded,
        "attempted_per_s": (attempted as f64 / elapsed).round(),
        "succeeded_per_s": (succeeded as f64 / elapsed).round(),
        "latency_us": { "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999), "max": h.max() },
        "errors": errors,
        "drain_check": drain,
    });
    if json_out {
        println!("{summary}");
    } else {
        println!(
            "workload {:?}, {} clients, {:.1} s, batch {}, coalescing {}",
            args.workload,
            args.clients,
            elapsed,
            args.batch,
            if args.coalesce == OnOff::On {
                "on"
            } else {
                "off"
            }
        );
        println!(
            "ops/s: {:.0} attempted, {:.0} successful ({attempted} attempted, {succeeded} successful)",
            attempted as f64 / elapsed,
            succeeded as f64 / elapsed
        );
        println!(
            "latency: p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms",
            q(0.5) as f64 / 1e3,
            q(0.9) as f64 / 1e3,
            q(0.99) as f64 / 1e3,
            q(0.999) as f64 / 1e3,
            h.max() as f64 / 1e3
        );
        if errors.is_empty() {
            println!("errors: none");
        } else {
            println!(
                "errors: {}",
                errors
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if let Some(d) = &drain {
            println!(
                "drain check: {} — {}",
                if d.ok { "ok" } else { "FAILED" },
                d.message
            );
        }
    }
    if let Some(path) = &args.plot {
        let per_second = shared
            .per_second
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default();
        let title = format!(
            "stockpile bench --workload {:?} --clients {}",
            args.workload, args.clients
        )
        .to_lowercase();
        std::fs::write(path, crate::svg::plot(&title, &per_second, &h)).map_err(|e| {
            Error::Config {
                message: format!("{}: {e}", path.display()),
            }
        })?;
        if !json_out {
            println!("plot written to {}", path.display());
        }
    }
    Ok(drain.map(|d| d.ok).unwrap_or(true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drain_check_catches_an_oversell_and_a_lost_sale() {
        assert!(drain_check(100, 0, 100, 0).ok);
        assert!(drain_check(100, 0, 100, 0).message.contains("drained"));
        assert!(
            drain_check(1_000, 900, 95, 5).ok,
            "unknown outcomes may or may not have applied"
        );
        let oversold = drain_check(100, 0, 98, 1);
        assert!(
            !oversold.ok && oversold.message.contains("OVERSOLD"),
            "{oversold:?}"
        );
        let lost = drain_check(100, 10, 95, 0);
        assert!(!lost.ok && lost.message.contains("LOST"), "{lost:?}");
        assert!(!drain_check(100, 101, 0, 0).ok);
    }

    #[test]
    fn skus_spread_over_every_shard() {
        let first: std::collections::BTreeSet<char> = (0..26)
            .map(|i| sku("bench", i).chars().next().unwrap())
            .collect();
        assert_eq!(first.len(), 26);
    }
}
