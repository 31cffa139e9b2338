//! A shard's proposer: a task fed by a bounded queue, turning concurrent requests into
//! few log entries.
//!
//! It takes every request waiting into one `ShardRequest` (up to `entry_ops_max`
//! operations and `raft.entry_bytes_max` bytes), proposes it as one Raft entry, and
//! hands each request its results. At most `shard_entries_in_flight_max` entries are in
//! flight; while that bound holds the proposer back, new requests wait in the queue and
//! join the next entry, so the busier the shard, the larger its entries. A full queue
//! refuses at once (RATE_LIMITED, in `Shard::propose`) instead of growing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, broadcast, mpsc, oneshot};

use crate::clock::Clock;
use crate::config::ClusterConfig;
use crate::error::Error;
use crate::inventory::{OpGroup, OpResult, ShardRequest};
use crate::raft::{ShardRaft, WriteError};
use crate::router::{LiveMap, ShardId};
use crate::telemetry::names;

/// Counters of the proposal path, shared by a node's shards: the one source of these
/// counts (status reads them, telemetry publishes them).
#[derive(Debug, Default)]
pub struct ProposeStats {
    /// Requests (groups of operations) handed to proposers.
    pub requests: AtomicU64,
    /// Raft entries proposed for them.
    pub entries: AtomicU64,
    /// Requests refused because a shard's queue was full.
    pub queue_full: AtomicU64,
}

/// What a proposal came back with.
#[derive(Debug)]
pub struct Proposed {
    pub results: Vec<OpResult>,
    pub log_index: u64,
}

pub(super) struct Proposal {
    pub group: OpGroup,
    pub reply: oneshot::Sender<Result<Proposed, Error>>,
}

/// How much one entry may carry.
#[derive(Clone, Copy, Debug)]
pub(super) struct EntryBounds {
    pub ops_max: usize,
    pub bytes_max: usize,
}

/// Where a proposer's entries go and what it needs to build them.
pub(super) struct ProposerContext {
    pub shard_id: ShardId,
    pub node_id: u64,
    pub raft: ShardRaft,
    pub cluster: Arc<ClusterConfig>,
    /// Builds NOT_LEADER with the leader's address.
    pub map: LiveMap,
    pub clock: Clock,
    pub stats: Arc<ProposeStats>,
}

pub(super) async fn run(
    ctx: ProposerContext,
    mut rx: mpsc::Receiver<Proposal>,
    mut shutdown: broadcast::Receiver<()>,
) {
    let ProposerContext {
        shard_id,
        node_id,
        raft,
        cluster,
        map,
        clock,
        stats,
    } = ctx;
    let in_flight = Arc::new(Semaphore::new(cluster.server.shard_entries_in_flight_max));
    let bounds = EntryBounds {
        ops_max: cluster.server.entry_ops_max,
        bytes_max: usize::try_from(cluster.raft.entry_bytes_max).unwrap_or(usize::MAX),
    };
    let timeout = Duration::from_millis(cluster.server.propose_timeout_ms);
    // A request taken from the queue that did not fit the last entry: it opens the next.
    let mut carried: Option<Proposal> = None;
    loop {
        let first = match carried.take() {
            Some(p) => p,
            None => tokio::select! {
                p = rx.recv() => match p { Some(p) => p, None => return },
                _ = shutdown.recv() => return,
            },
        };
        let first_bytes = first.group.encoded_bytes_max();
        if first_bytes > bounds.bytes_max {
            // Cannot happen with a valid config (entry_bytes_max >= 2 x request_bytes_max).
            let _ = first.reply.send(Err(Error::RequestTooLarge {
                what: format!("shard {shard_id}'s part of the request"),
                size_bytes: first_bytes as u64,
                limit_bytes: bounds.bytes_max as u64,
            }));
            continue;
        }
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        // Drain after the permit: requests that queued while we waited join this entry.
        let (batch, ops) = fill_entry(first, first_bytes, &mut rx, bounds, &mut carried);
        let (groups, replies): (Vec<OpGroup>, Vec<_>) =
            batch.into_iter().map(|p| (p.group, p.reply)).unzip();
        stats
            .requests
            .fetch_add(groups.len() as u64, Ordering::Relaxed);
        stats.entries.fetch_add(1, Ordering::Relaxed);
        metrics::histogram!(names::RAFT_ENTRY_OPS).record(ops as f64);
        let request = ShardRequest {
            now_ms: clock.now_ms(),
            retention: cluster.retention.to_retention(),
            groups,
        };
        let gauge =
            metrics::gauge!(names::PROPOSALS_IN_FLIGHT, names::SHARD_ID => shard_id.to_string());
        let (raft, map) = (raft.clone(), map.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let _in_flight = InFlight::new(gauge);
            let outcome = propose(&raft, request, timeout).await;
            let outcome = outcome.map_err(|e| match e {
                // Rejected before it was appended: certainly not applied.
                WriteError::NotLeader { leader } => map.get().not_leader(shard_id, leader, node_id),
                WriteError::Unknown(reason) => Error::OutcomeUnknown { shard_id, reason },
            });
            answer(shard_id, outcome, replies);
        });
    }
}

/// Proposes one entry and waits for its results (one list per group).
async fn propose(
    raft: &ShardRaft,
    request: ShardRequest,
    timeout: Duration,
) -> Result<(Vec<Vec<OpResult>>, u64), WriteError> {
    match tokio::time::timeout(timeout, raft.write(request)).await {
        Ok(Ok((response, log_index))) => Ok((response.groups, log_index)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(WriteError::Unknown(format!(
            "not applied within {} ms",
            timeout.as_millis()
        ))),
    }
}

fn answer(
    shard_id: ShardId,
    outcome: Result<(Vec<Vec<OpResult>>, u64), Error>,
    replies: Vec<oneshot::Sender<Result<Proposed, Error>>>,
) {
    match outcome {
        Ok((groups, log_index)) => {
            assert_eq!(
                groups.len(),
                replies.len(),
                "shard {shard_id}: one result list per proposed group"
            );
            for (results, reply) in groups.into_iter().zip(replies) {
                let _ = reply.send(Ok(Proposed { results, log_index }));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

/// Adds queued proposals to `first` while the entry stays within `bounds`; the first
/// proposal that would not fit is left in `carried` for the next entry. Returns the
/// entry's proposals and operation count.
pub(super) fn fill_entry(
    first: Proposal,
    first_bytes: usize,
    rx: &mut mpsc::Receiver<Proposal>,
    bounds: EntryBounds,
    carried: &mut Option<Proposal>,
) -> (Vec<Proposal>, usize) {
    let mut ops = first.group.ops.len();
    let mut bytes = first_bytes;
    let mut batch = vec![first];
    // Bounded by ops_max: every proposal holds at least one op or is a tick.
    while ops < bounds.ops_max && batch.len() < bounds.ops_max {
        let Ok(p) = rx.try_recv() else { break };
        let b = p.group.encoded_bytes_max();
        if bytes + b > bounds.bytes_max || ops + p.group.ops.len() > bounds.ops_max {
            *carried = Some(p);
            break;
        }
        ops += p.group.ops.len();
        bytes += b;
        batch.push(p);
    }
    (batch, ops)
}

/// Decrements an in-flight gauge when dropped (the entry finished, however it ended).
struct InFlight(metrics::Gauge);

impl InFlight {
    fn new(gauge: metrics::Gauge) -> InFlight {
        gauge.increment(1.0);
        InFlight(gauge)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::{Command, Op};

    fn proposal(skus: &[&str]) -> (Proposal, oneshot::Receiver<Result<Proposed, Error>>) {
        let (reply, rx) = oneshot::channel();
        let ops = skus
            .iter()
            .map(|s| Op {
                request_id: [1; 16],
                command: Command::Decrement {
                    sku: s.to_string(),
                    qty: 1,
                },
            })
            .collect();
        (
            Proposal {
                group: OpGroup { atomic: false, ops },
                reply,
            },
            rx,
        )
    }

    fn queue(proposals: Vec<Proposal>) -> mpsc::Receiver<Proposal> {
        let (tx, rx) = mpsc::channel(proposals.len().max(1));
        for p in proposals {
            tx.try_send(p).map_err(|_| "room").unwrap();
        }
        rx
    }

    fn entry_of(first: Proposal, rest: Vec<Proposal>, bounds: EntryBounds) -> (usize, usize, bool) {
        let mut rx = queue(rest);
        let mut carried = None;
        let bytes = first.group.encoded_bytes_max();
        let (batch, ops) = fill_entry(first, bytes, &mut rx, bounds, &mut carried);
        (batch.len(), ops, carried.is_some())
    }

    #[test]
    fn waiting_requests_join_one_entry_until_a_bound() {
        let big = EntryBounds {
            ops_max: 100,
            bytes_max: 1 << 20,
        };
        let rest: Vec<_> = (0..5).map(|_| proposal(&["a", "b"]).0).collect();
        assert_eq!(entry_of(proposal(&["a"]).0, rest, big), (6, 11, false));
        // By operations: the proposal that would pass ops_max opens the next entry.
        let rest: Vec<_> = (0..5).map(|_| proposal(&["a", "b"]).0).collect();
        let few_ops = EntryBounds { ops_max: 4, ..big };
        assert_eq!(entry_of(proposal(&["a"]).0, rest, few_ops), (2, 3, true));
        // By bytes: likewise.
        let one = proposal(&["a"]).0.group.encoded_bytes_max();
        let rest: Vec<_> = (0..5).map(|_| proposal(&["a"]).0).collect();
        let few_bytes = EntryBounds {
            bytes_max: 3 * one,
            ..big
        };
        assert_eq!(entry_of(proposal(&["a"]).0, rest, few_bytes), (3, 3, true));
    }

    #[test]
    fn a_request_over_the_op_bound_still_goes_alone() {
        let bounds = EntryBounds {
            ops_max: 2,
            bytes_max: 1 << 20,
        };
        let rest = vec![proposal(&["x"]).0];
        assert_eq!(
            entry_of(proposal(&["a", "b", "c"]).0, rest, bounds),
            (1, 3, false)
        );
    }
}
