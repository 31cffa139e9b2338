//! The slow-link scenario (`--scenario slow-link`): every link between nodes is rate
//! limited with nftables (each direction of each pair on its own meter), and the
//! largest legal Batch (just under `limits.request_bytes_max`, one Raft entry of one
//! shard) is sent again and again while a writer keeps making small writes to the same
//! shard. Replication deadlines grow with the payload, so the big entry must get
//! through and the shard must keep committing: every batch and every small write is
//! acknowledged, and afterwards every replica of the shard holds the same state.
//!
//! Exit status as for every run: 0 passed, 1 the shard stalled (an anomaly), 2 the run
//! could not be carried out.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use prost::Message;
use stockpile_client::proto as pb;
use stockpile_client::{Client, Item, Mutation};

use crate::Args;
use crate::cluster::wait_ready;
use crate::cluster::{self, Cluster, Net};
use crate::fail_run;

/// The rate of every node-to-node link: slower than the loopback by far, above the
/// node's default `raft.link_bytes_per_s_min` (1 MiB/s).
const LINK_BYTES_PER_S: u64 = 2 << 20;
/// Largest legal Batches sent, one after another.
const BIG_BATCHES: usize = 3;
/// The node's default request limit.
const REQUEST_BYTES_MAX: usize = 4 << 20;
/// A big batch must be acknowledged within this (the deadline grows with its bytes).
const BIG_BATCH_DEADLINE: Duration = Duration::from_secs(60);

fn long_skus() -> Vec<String> {
    (0..100)
        .map(|i| {
            let s = format!("tomato-slow-{i:03}-");
            format!("{s}{}", "x".repeat(128 - s.len()))
        })
        .collect()
}

fn reserve(skus: &[String]) -> Mutation {
    Mutation::Reserve {
        reservation_id: None,
        items: skus
            .iter()
            .map(|s| Item {
                sku: s.clone(),
                quantity: 1,
            })
            .collect(),
        ttl: Duration::from_secs(600),
    }
}

/// How many 100-item reservations fit one request of `REQUEST_BYTES_MAX`.
fn ops_in_largest_batch(skus: &[String]) -> usize {
    let one = pb::Operation {
        op: Some(reserve(skus).to_pb(&[1; 16])),
    }
    .encoded_len()
        + 6;
    (REQUEST_BYTES_MAX - 1024) / one
}

async fn client(nodes: u64, timeout: Duration) -> Result<Client, String> {
    let b = Client::builder()
        .seeds((1..=nodes).map(cluster::addr))
        .no_coalescing()
        .request_timeout(timeout)
        .attempt_timeout(timeout);
    match cluster::client_tls() {
        Some(tls) => b.tls(tls),
        None => b,
    }
    .build()
    .await
    .map_err(|e| format!("client: {e}"))
}

/// Small writes to the shard until `stop`; returns (writes, failures, slowest).
async fn small_writes(client: Client, stop: Arc<AtomicBool>) -> (u64, Vec<String>, Duration) {
    let (mut n, mut failures, mut slowest) = (0u64, Vec::new(), Duration::ZERO);
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        if let Err(e) = client.set_stock("tomato-slow-alive", n).await {
            failures.push(format!("write {n}: {e}"));
        }
        slowest = slowest.max(started.elapsed());
        n += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (n, failures, slowest)
}

pub async fn inside(args: Args) -> ExitCode {
    let Some(dir) = args.run_dir.clone() else {
        return fail_run("no run directory");
    };
    let net = match Net::init() {
        Ok(n) => n,
        Err(e) => return fail_run(&format!("network namespace setup: {e}")),
    };
    let nodes = match Cluster::start_scenario(&args, &dir) {
        Ok(c) => c,
        Err(e) => return fail_run(&e),
    };
    println!(
        "run {}: scripts/jepsen.sh --scenario slow-link --nodes {}",
        dir.display(),
        args.nodes
    );
    match scenario(&args, &net, &nodes).await {
        Ok(summary) => {
            println!("{summary}");
            println!("slow-link: VALID");
            ExitCode::SUCCESS
        }
        Err(Outcome::Stalled(why)) => {
            println!("slow-link: INVALID: {why}");
            ExitCode::from(1)
        }
        Err(Outcome::NotRun(why)) => fail_run(&why),
    }
}

enum Outcome {
    Stalled(String),
    NotRun(String),
}

async fn scenario(args: &Args, net: &Net, nodes: &Cluster) -> Result<String, Outcome> {
    wait_ready(Duration::from_secs(60))
        .await
        .map_err(Outcome::NotRun)?;
    let big = client(args.nodes, BIG_BATCH_DEADLINE)
        .await
        .map_err(Outcome::NotRun)?;
    let skus = long_skus();
    for sku in &skus {
        big.set_stock(sku, 1_000_000)
            .await
            .map_err(|e| Outcome::NotRun(format!("stocking {sku}: {e}")))?;
    }
    let ops = ops_in_largest_batch(&skus);
    net.rate_limit(&nodes.ids(), LINK_BYTES_PER_S)
        .map_err(Outcome::NotRun)?;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(small_writes(
        client(args.nodes, Duration::from_secs(30))
            .await
            .map_err(Outcome::NotRun)?,
        stop.clone(),
    ));
    let mut lines = vec![format!(
        "{BIG_BATCHES} batches of {ops} reservations x 100 items (128-byte SKUs, < {REQUEST_BYTES_MAX} bytes each) over links of {LINK_BYTES_PER_S} bytes/s"
    )];
    let mut stalled = Vec::new();
    for b in 0..BIG_BATCHES {
        let started = Instant::now();
        let results = big.batch((0..ops).map(|_| reserve(&skus)).collect()).await;
        let took = started.elapsed();
        match results {
            Ok(rs) if rs.iter().all(|r| r.is_ok()) => {
                lines.push(format!("batch {b}: {ops} reservations applied in {took:?}"));
            }
            Ok(rs) => {
                let failed: Vec<String> = rs
                    .iter()
                    .filter_map(|r| r.as_ref().err().map(|e| e.to_string()))
                    .take(3)
                    .collect();
                stalled.push(format!("batch {b} after {took:?}: {failed:?}"));
            }
            Err(e) => stalled.push(format!("batch {b} after {took:?}: {e}")),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (writes, failures, slowest) = writer
        .await
        .map_err(|e| Outcome::NotRun(format!("writer: {e}")))?;
    lines.push(format!(
        "{writes} small writes to the same shard meanwhile, {} failed, slowest {slowest:?}",
        failures.len()
    ));
    stalled.extend(failures.into_iter().take(5));
    net.heal().map_err(Outcome::NotRun)?;
    if let Err(e) = converged(&big, nodes, Duration::from_secs(60)).await {
        stalled.push(e);
    }
    if stalled.is_empty() {
        lines.push("replicas converged after healing".into());
        Ok(lines.join("\n"))
    } else {
        Err(Outcome::Stalled(format!(
            "{}\n{}",
            lines.join("\n"),
            stalled.join("\n")
        )))
    }
}

/// Every node reports the same applied index and digest for every shard.
async fn converged(client: &Client, nodes: &Cluster, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    loop {
        let mut views = std::collections::BTreeMap::<u64, Vec<(u64, u64)>>::new();
        for id in nodes.ids() {
            if let Ok(ds) = client.shard_digests(id).await {
                for d in ds {
                    views
                        .entry(d.shard_id)
                        .or_default()
                        .push((d.applied_index, d.digest));
                }
            }
        }
        let n = nodes.ids().len();
        if !views.is_empty()
            && views
                .values()
                .all(|v| v.len() == n && v.windows(2).all(|w| w[0] == w[1]))
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("replicas did not converge: {views:?}"));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
