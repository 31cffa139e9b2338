//! Metrics (Prometheus text at `http://<metrics_addr>/metrics`) and the per-request
//! observation the API wraps every RPC in. Metric names end in their unit.
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `stockpile_requests_total` | counter | `rpc`, `reason` ("OK" or the error reason) |
//! | `stockpile_request_duration_seconds` | histogram | `rpc` |
//! | `stockpile_batch_ops` | histogram | operations per Batch RPC |
//! | `stockpile_batch_operations_total` | counter | `reason` — each operation of a Batch by outcome |
//! | `stockpile_raft_entry_ops` | histogram | operations per proposed Raft entry |
//! | `stockpile_proposals_in_flight` | gauge | `shard` — entries proposed, not yet applied |
//! | `stockpile_raft_is_leader`, `_term`, `_last_log_index`, `_commit_index`, `_applied_index`, `_snapshot_index`, `_purged_index` | gauge | `shard` |
//! | `stockpile_raft_replication_lag_entries` | gauge | `shard`, `follower` (on the leader) |
//! | `stockpile_log_appends_total`, `stockpile_log_syncs_total` | counter | |
//! | `stockpile_log_append_duration_seconds` | histogram | writing an append (before its sync) |
//! | `stockpile_log_sync_duration_seconds` | histogram | |
//! | `stockpile_snapshot_builds_total`, `stockpile_snapshot_installs_total` | counter | |
//! | `stockpile_snapshot_bytes` | gauge | `shard` — size of the last built or installed snapshot |
//! | `stockpile_admission_rejections_total` | counter | `kind` (read/write), `bound` |
//! | `stockpile_requests_in_flight` | gauge | `kind` |
//! | `stockpile_ops_applied_total`, `stockpile_ops_replayed_total` | counter | |

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use prost::Message;
use tokio::sync::broadcast;

use crate::admission::Kind;
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
    describe();
    Ok(())
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "stockpile_requests_total",
        "RPCs answered, by RPC and outcome reason"
    );
    describe_histogram!("stockpile_request_duration_seconds", "RPC latency, by RPC");
    describe_histogram!("stockpile_batch_ops", "Operations per Batch RPC");
    describe_counter!(
        "stockpile_batch_operations_total",
        "Operations inside Batch RPCs, by outcome reason"
    );
    describe_histogram!(
        "stockpile_raft_entry_ops",
        "Operations per proposed Raft entry"
    );
    describe_gauge!(
        "stockpile_proposals_in_flight",
        "Raft entries proposed and not yet applied, per shard"
    );
    describe_gauge!(
        "stockpile_raft_is_leader",
        "1 when this node leads the shard"
    );
    describe_gauge!("stockpile_raft_term", "Current Raft term of the shard");
    describe_gauge!(
        "stockpile_raft_last_log_index",
        "Last log index of the shard on this node"
    );
    describe_gauge!(
        "stockpile_raft_commit_index",
        "Committed log index known to this node"
    );
    describe_gauge!(
        "stockpile_raft_applied_index",
        "Applied log index of the shard on this node"
    );
    describe_gauge!(
        "stockpile_raft_replication_lag_entries",
        "Leader's last log index minus a follower's matched index"
    );
    describe_counter!("stockpile_log_appends_total", "Raft log appends");
    describe_counter!(
        "stockpile_log_syncs_total",
        "WAL syncs (group commit: fewer than appends)"
    );
    describe_histogram!(
        "stockpile_log_append_duration_seconds",
        "Writing one log append to RocksDB, before its sync"
    );
    describe_histogram!(
        "stockpile_log_sync_duration_seconds",
        "Duration of one WAL sync"
    );
    describe_counter!("stockpile_snapshot_builds_total", "Snapshots built");
    describe_counter!("stockpile_snapshot_installs_total", "Snapshots installed");
    describe_counter!(
        "stockpile_admission_rejections_total",
        "Requests refused by admission control"
    );
    describe_gauge!(
        "stockpile_requests_in_flight",
        "Requests being served, by kind"
    );
}

/// Records one answered RPC: count by outcome reason, latency.
pub fn observe(rpc: &'static str, started: Instant, result: &Result<impl Sized, tonic::Status>) {
    let reason = match result {
        Ok(_) => "OK".to_string(),
        Err(status) => stockpile_proto::v1::ErrorDetail::decode(status.details())
            .ok()
            .map(|d| {
                d.reason()
                    .as_str_name()
                    .trim_start_matches("REASON_")
                    .to_string()
            })
            .unwrap_or_else(|| format!("{:?}", status.code()).to_uppercase()),
    };
    metrics::counter!("stockpile_requests_total", "rpc" => rpc, "reason" => reason).increment(1);
    metrics::histogram!("stockpile_request_duration_seconds", "rpc" => rpc)
        .record(started.elapsed().as_secs_f64());
}

/// How often the Raft gauges are refreshed: a fraction of usual scrape intervals,
/// and cheap even with a thousand shards.
pub const GAUGE_INTERVAL: Duration = Duration::from_secs(2);

/// Publishes every shard's Raft state as gauges every `GAUGE_INTERVAL` until shutdown.
pub fn spawn_raft_gauges(node: Arc<Node>, mut shutdown: broadcast::Receiver<()>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(GAUGE_INTERVAL);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.recv() => return,
            }
            for (id, shard) in &node.shards {
                let m = crate::raft::metrics(&shard.raft);
                let shard_label = id.to_string();
                let g = |name: &'static str, v: u64| {
                    metrics::gauge!(name, "shard" => shard_label.clone()).set(v as f64)
                };
                g(
                    "stockpile_raft_is_leader",
                    u64::from(m.current_leader == Some(node.id)),
                );
                g("stockpile_raft_term", m.current_term);
                let last = m.last_log_index.unwrap_or(0);
                g("stockpile_raft_last_log_index", last);
                g(
                    "stockpile_raft_commit_index",
                    m.local_committed.map(|l| l.index).unwrap_or(0),
                );
                g(
                    "stockpile_raft_applied_index",
                    m.last_applied.map(|l| l.index).unwrap_or(0),
                );
                g(
                    "stockpile_raft_snapshot_index",
                    m.snapshot.map(|l| l.index).unwrap_or(0),
                );
                g(
                    "stockpile_raft_purged_index",
                    m.purged.map(|l| l.index).unwrap_or(0),
                );
                if let Some(rep) = &m.replication {
                    for (follower, matched) in rep {
                        if *follower == node.id {
                            continue;
                        }
                        let lag = last.saturating_sub(matched.map(|l| l.index).unwrap_or(0));
                        metrics::gauge!("stockpile_raft_replication_lag_entries", "shard" => shard_label.clone(), "follower" => follower.to_string())
                            .set(lag as f64);
                    }
                }
            }
            metrics::gauge!("stockpile_requests_in_flight", "kind" => "write")
                .set(node.admission.in_flight(Kind::Write) as f64);
            metrics::gauge!("stockpile_requests_in_flight", "kind" => "read")
                .set(node.admission.in_flight(Kind::Read) as f64);
        }
    });
}
