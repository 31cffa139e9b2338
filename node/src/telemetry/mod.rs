//! Metrics (Prometheus text at `http://<metrics_addr>/metrics`) and the per-request
//! observation the API wraps every RPC in. Every name, label and description is in
//! `names`; every count has one source: event counts are counted where they happen,
//! and totals the node also reports in its status (`NodeStatus`) are kept in the
//! node's atomics and published from them here.

pub mod console;
pub mod names;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use tokio::sync::broadcast;

use crate::admission::Kind;
use crate::error::Error;
use crate::node::Node;

#[derive(Debug, thiserror::Error)]
#[error("metrics exporter on {addr}: {message}")]
pub struct MetricsError {
    addr: String,
    message: String,
}

/// Serves Prometheus metrics on `addr`. Call once, inside the tokio runtime.
pub fn install_exporter(addr: &str) -> Result<(), MetricsError> {
    let err = |m: String| MetricsError {
        addr: addr.to_string(),
        message: m,
    };
    let sock: SocketAddr = addr.parse().map_err(|e| err(format!("{e}")))?;
    PrometheusBuilder::new()
        .with_http_listener(sock)
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".into()),
            &[
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0, 10.0,
            ],
        )
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Suffix("_ops".into()),
                &[
                    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
                ],
            )
        })
        .map_err(|e| err(e.to_string()))?
        .install()
        .map_err(|e| err(e.to_string()))?;
    names::describe();
    Ok(())
}

/// Records one answered RPC: count by outcome reason (from the typed error, before
/// it is encoded), latency.
pub fn observe<T>(rpc: &'static str, started: Instant, result: &Result<T, Error>) {
    let reason = match result {
        Ok(_) => "OK",
        Err(e) => crate::api::status::reason_name(e),
    };
    metrics::counter!(names::REQUESTS_TOTAL, "rpc" => rpc, "reason" => reason).increment(1);
    let elapsed = started.elapsed();
    metrics::histogram!(names::REQUEST_DURATION_SECONDS, "rpc" => rpc)
        .record(elapsed.as_secs_f64());
    console::record(rpc, reason, elapsed);
}

/// How often the Raft gauges and the node's totals are published: a fraction of usual
/// scrape intervals, and cheap even with a thousand shards.
pub const PUBLISH_INTERVAL: Duration = Duration::from_secs(2);

/// Publishes every shard's Raft state and the node's totals every `PUBLISH_INTERVAL`
/// until shutdown.
pub fn spawn_publisher(node: Arc<Node>, mut shutdown: broadcast::Receiver<()>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PUBLISH_INTERVAL);
        let mut published_asleep = std::collections::HashMap::new();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.recv() => return,
            }
            publish(&node, &mut published_asleep);
        }
    });
}

/// `published_asleep`: the replicas found asleep by the last publication, with their
/// count of wake-ups then (rebuilt each time, so replicas that left are forgotten).
/// Nothing of a sleeping replica changes until it wakes, so one is skipped while that
/// count stays: a replica that woke, served and fell asleep again between two
/// publications (quicker than `PUBLISH_INTERVAL`) is published again.
fn publish(
    node: &Node,
    published_asleep: &mut std::collections::HashMap<crate::router::ShardId, u64>,
) {
    let previous = std::mem::take(published_asleep);
    for shard in node.shards() {
        // The count first: a wake-up after it makes the next publication differ.
        let woken = shard.raft.woken();
        if shard.raft.is_asleep() {
            published_asleep.insert(shard.id(), woken);
            if previous.get(&shard.id()) == Some(&woken) {
                continue;
            }
        }
        let st = shard.raft.status();
        let label = shard.id().to_string();
        let g = |name: &'static str, v: u64| {
            metrics::gauge!(name, names::SHARD_ID => label.clone()).set(v as f64)
        };
        g(names::RAFT_IS_LEADER, u64::from(st.leader == Some(node.id)));
        g(names::RAFT_TERM, st.term);
        g(names::RAFT_LAST_LOG_INDEX, st.last_log_index);
        g(names::RAFT_COMMIT_INDEX, st.commit_index);
        g(names::RAFT_APPLIED_INDEX, st.applied_index);
        g(names::RAFT_SNAPSHOT_INDEX, st.snapshot_index);
        g(names::RAFT_PURGED_INDEX, st.purged_index);
        for (follower, matched) in st.matched.iter().flatten() {
            if *follower != node.id {
                let lag = st.last_log_index.saturating_sub(*matched);
                metrics::gauge!(names::RAFT_REPLICATION_LAG_ENTRIES, names::SHARD_ID => label.clone(), "follower" => follower.to_string())
                    .set(lag as f64);
            }
        }
    }
    let totals = node.totals();
    let c = |name: &'static str, v: u64| metrics::counter!(name).absolute(v);
    c(names::LOG_APPENDS_TOTAL, totals.log_appends);
    c(names::LOG_SYNCS_TOTAL, totals.log_syncs);
    c(names::PROPOSALS_TOTAL, totals.proposals);
    c(names::RAFT_ENTRIES_PROPOSED_TOTAL, totals.entries_proposed);
    c(names::PROPOSAL_QUEUE_FULL_TOTAL, totals.proposal_queue_full);
    c(names::OPS_APPLIED_TOTAL, totals.ops_applied);
    c(names::OPS_REPLAYED_TOTAL, totals.ops_replayed);
    c(names::ENTRIES_APPLIED_TOTAL, totals.entries_applied);
    for kind in [Kind::Write, Kind::Read] {
        metrics::gauge!(names::REQUESTS_IN_FLIGHT, "kind" => kind.as_str())
            .set(node.admission.in_flight(kind) as f64);
    }
    publish_disk(&node.data_dir);
}

/// The data directory's free and total space (the disk-full alert reads these).
fn publish_disk(data_dir: &std::path::Path) {
    match rustix::fs::statvfs(data_dir) {
        Ok(st) => {
            let available = st.f_bavail.saturating_mul(st.f_frsize);
            let capacity = st.f_blocks.saturating_mul(st.f_frsize);
            metrics::gauge!(names::DATA_DIR_AVAILABLE_BYTES).set(available as f64);
            metrics::gauge!(names::DATA_DIR_CAPACITY_BYTES).set(capacity as f64);
        }
        Err(e) => tracing::debug!(error = %e, "cannot stat the data directory's filesystem"),
    }
}
