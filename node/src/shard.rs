//! One shard on this node: its Raft group, a reader of its state machine, and its
//! proposer, which turns concurrent requests into few log entries.
//!
//! The proposer is a task per shard fed by a bounded queue. It takes every request
//! waiting (up to `entry_ops_max` operations) into one `ShardRequest`, proposes it
//! as one Raft entry, and hands each request its results. At most
//! `shard_entries_in_flight_max` entries are in flight; while that bound holds the
//! proposer back, new requests wait in the queue and join the next entry, so the
//! busier the shard, the larger its entries. A full queue refuses at once
//! (RATE_LIMITED) instead of growing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use openraft::errors::{ClientWriteError, RaftError};
use tokio::sync::{Semaphore, broadcast, mpsc, oneshot};

use crate::config::{ClusterConfig, ShardConfig};
use crate::error::Error;
use crate::inventory::{OpGroup, OpResult, Retention, ShardRequest};
use crate::raft::Raft;
use crate::storage::ShardReader;

/// Counters of the proposal path, shared by a node's shards.
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

struct Proposal {
    group: OpGroup,
    reply: oneshot::Sender<Result<Proposed, Error>>,
}

pub struct Shard {
    pub config: ShardConfig,
    pub raft: Raft,
    pub reader: ShardReader,
    node_id: u64,
    cluster: Arc<ClusterConfig>,
    proposals: mpsc::Sender<Proposal>,
    /// The state machine's earliest-timer hint (`u64::MAX` none, 0 unknown).
    next_timer_ms: Arc<AtomicU64>,
}

/// Milliseconds since the Unix epoch on this node's clock, plus the test-only skew
/// (`STOCKPILE_TEST_CLOCK_SKEW_MS`, read once at start; see docs/CONFIG.md).
pub fn wall_clock_ms() -> u64 {
    static SKEW_MS: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    let skew = *SKEW_MS.get_or_init(|| {
        std::env::var("STOCKPILE_TEST_CLOCK_SKEW_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    });
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    now.saturating_add(skew).max(0) as u64
}

impl Shard {
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        config: ShardConfig,
        raft: Raft,
        reader: ShardReader,
        node_id: u64,
        cluster: Arc<ClusterConfig>,
        stats: Arc<ProposeStats>,
        next_timer_ms: Arc<AtomicU64>,
        shutdown: &broadcast::Sender<()>,
    ) -> Arc<Shard> {
        let (tx, rx) = mpsc::channel(cluster.server.shard_queue_max);
        let shard = Arc::new(Shard {
            config,
            raft: raft.clone(),
            reader,
            node_id,
            cluster: cluster.clone(),
            proposals: tx,
            next_timer_ms,
        });
        tokio::spawn(run_proposer(
            shard.config.id,
            raft,
            rx,
            cluster.clone(),
            stats,
            shutdown.subscribe(),
        ));
        shard
    }

    pub fn id(&self) -> u64 {
        self.config.id
    }

    /// The leader as this node's Raft instance knows it.
    pub fn leader_id(&self) -> Option<u64> {
        crate::raft::current_leader(&self.raft)
    }

    pub fn is_leader(&self) -> bool {
        self.leader_id() == Some(self.node_id)
    }

    fn not_leader(&self, leader: Option<u64>) -> Error {
        let leader = leader
            .filter(|l| *l != self.node_id)
            .and_then(|id| self.cluster.node(id).map(|n| (id, n.addr.clone())));
        Error::NotLeader {
            shard_id: self.id(),
            leader,
        }
    }

    /// NOT_LEADER unless this node leads the shard now (as far as it knows).
    pub fn check_leader(&self) -> Result<(), Error> {
        match self.leader_id() {
            Some(l) if l == self.node_id => Ok(()),
            other => Err(self.not_leader(other)),
        }
    }

    /// Proposes `group` and waits for its results. Refuses at once, with nothing
    /// proposed, when this node is not the leader or the shard's queue is full.
    pub async fn propose(&self, group: OpGroup) -> Result<Proposed, Error> {
        self.check_leader()?;
        #[cfg(feature = "planted-bugs")]
        if crate::planted::active() == crate::planted::Bug::AckBeforeCommit && !group.ops.is_empty()
        {
            return self.answer_before_commit(group);
        }
        let (reply, rx) = oneshot::channel();
        match self.proposals.try_send(Proposal { group, reply }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                return Err(Error::RateLimited {
                    what: format!("shard {} proposal queue is full", self.id()),
                    retry_after_ms: 50,
                });
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Err(Error::ShardUnavailable {
                    shard_id: self.id(),
                    reason: "the shard is shutting down".into(),
                });
            }
        }
        rx.await.map_err(|_| Error::OutcomeUnknown {
            shard_id: self.id(),
            reason: "the proposer stopped".into(),
        })?
    }

    /// Asks the Raft group to hand leadership to `to` and waits (up to `timeout`) until
    /// this node sees `to` as leader. Returns the leader seen last. NOT_LEADER when this
    /// node is not the leader.
    pub async fn transfer_leadership(
        &self,
        to: u64,
        timeout: Duration,
    ) -> Result<Option<u64>, Error> {
        if self.leader_id() == Some(to) {
            return Ok(Some(to));
        }
        self.check_leader()?;
        self.raft
            .trigger()
            .transfer_leader(to)
            .await
            .map_err(|e| Error::ShardUnavailable {
                shard_id: self.id(),
                reason: e.to_string(),
            })?;
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if self.leader_id() == Some(to) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(self.leader_id())
    }

    /// Planted bug `ack-before-commit`: answers from the local state at once and
    /// proposes in the background, whatever becomes of it.
    #[cfg(feature = "planted-bugs")]
    fn answer_before_commit(&self, group: OpGroup) -> Result<Proposed, Error> {
        let mut scratch =
            crate::planted::scratch::Scratch::new(&self.reader).map_err(Error::internal)?;
        let request = ShardRequest {
            now_ms: wall_clock_ms(),
            retention: self.cluster.retention.to_retention(),
            groups: vec![group.clone()],
        };
        let response = crate::inventory::apply(&mut scratch, &request).map_err(Error::internal)?;
        let (reply, _rx) = oneshot::channel();
        let _ = self.proposals.try_send(Proposal { group, reply });
        let results = response.groups.into_iter().next().unwrap_or_default();
        Ok(Proposed {
            results,
            log_index: 0,
        })
    }

    /// Waits until a read of the local state machine is linearizable: this node is
    /// confirmed leader (read index or lease, per config) and has applied up to the
    /// read point.
    pub async fn linearize(&self) -> Result<(), Error> {
        if crate::planted::active() == crate::planted::Bug::LocalReads {
            return Ok(());
        }
        let timeout = Duration::from_millis(self.cluster.server.read_timeout_ms);
        let policy = crate::raft::read_policy(&self.cluster);
        match tokio::time::timeout(timeout, self.raft.ensure_linearizable(policy)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(
                openraft::errors::LinearizableReadError::ForwardToLeader(f),
            ))) => Err(self.not_leader(f.leader_id)),
            Ok(Err(RaftError::APIError(
                openraft::errors::LinearizableReadError::QuorumNotEnough(q),
            ))) => Err(Error::ShardUnavailable {
                shard_id: self.id(),
                reason: format!("leadership not confirmed by a quorum: {q}"),
            }),
            Ok(Err(RaftError::Fatal(f))) => Err(Error::ShardUnavailable {
                shard_id: self.id(),
                reason: f.to_string(),
            }),
            Err(_) => Err(Error::ShardUnavailable {
                shard_id: self.id(),
                reason: format!("leadership not confirmed within {} ms", timeout.as_millis()),
            }),
        }
    }
}

async fn run_proposer(
    shard_id: u64,
    raft: Raft,
    mut rx: mpsc::Receiver<Proposal>,
    cluster: Arc<ClusterConfig>,
    stats: Arc<ProposeStats>,
    mut shutdown: broadcast::Receiver<()>,
) {
    let in_flight = Arc::new(Semaphore::new(cluster.server.shard_entries_in_flight_max));
    let retention: Retention = cluster.retention.to_retention();
    let timeout = Duration::from_millis(cluster.server.propose_timeout_ms);
    let bounds = EntryBounds {
        ops_max: cluster.server.entry_ops_max,
        bytes_max: usize::try_from(cluster.raft.entry_bytes_max).unwrap_or(usize::MAX),
    };
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
        metrics::histogram!("stockpile_raft_entry_ops").record(ops as f64);
        let in_flight =
            metrics::gauge!("stockpile_proposals_in_flight", "shard" => shard_id.to_string());
        in_flight.increment(1.0);
        let request = ShardRequest {
            now_ms: wall_clock_ms(),
            retention,
            groups,
        };
        let raft = raft.clone();
        let cluster = cluster.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _in_flight = scopeguard(in_flight);
            let result = tokio::time::timeout(timeout, raft.client_write(request)).await;
            let outcome: Result<(Vec<Vec<OpResult>>, u64), Error> = match result {
                Ok(Ok(resp)) => Ok((resp.data.groups, resp.log_id.index)),
                Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                    // Rejected before it was appended: certainly not applied.
                    let leader = f
                        .leader_id
                        .and_then(|id| cluster.node(id).map(|n| (id, n.addr.clone())));
                    Err(Error::NotLeader { shard_id, leader })
                }
                Ok(Err(e)) => Err(Error::OutcomeUnknown {
                    shard_id,
                    reason: e.to_string(),
                }),
                Err(_) => Err(Error::OutcomeUnknown {
                    shard_id,
                    reason: format!("not applied within {} ms", timeout.as_millis()),
                }),
            };
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
        });
    }
}

/// How much one entry may carry.
#[derive(Clone, Copy, Debug)]
struct EntryBounds {
    ops_max: usize,
    bytes_max: usize,
}

/// Adds queued proposals to `first` while the entry stays within `bounds`; the first
/// proposal that would not fit is left in `carried` for the next entry. Returns the
/// entry's proposals and operation count.
fn fill_entry(
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

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

fn scopeguard(g: metrics::Gauge) -> InFlight {
    InFlight(g)
}

/// The eager half of reservation expiry, one task per node: for every shard this node
/// leads, propose an empty entry (a tick) when a reservation timer is due, so that
/// expired holds return their stock without anyone asking. The due time comes from the
/// state machine's in-memory hint; the timer index is read only when it is unknown.
pub fn spawn_sweeper(
    shards: Vec<Arc<Shard>>,
    interval_ms: u64,
    mut shutdown: broadcast::Receiver<()>,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(interval_ms.max(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.recv() => return,
            }
            let now = wall_clock_ms();
            for shard in &shards {
                if !shard.is_leader() {
                    continue;
                }
                let due = match shard.next_timer_ms.load(Ordering::Relaxed) {
                    u64::MAX => continue,
                    0 => match shard.reader.earliest_timer_ms() {
                        Ok(Some(t)) => t,
                        Ok(None) => continue,
                        Err(e) => {
                            tracing::warn!(shard_id = shard.id(), error = %e, "cannot read the timer index");
                            continue;
                        }
                    },
                    t => t,
                };
                if due <= now {
                    let shard = shard.clone();
                    tokio::spawn(async move {
                        if let Err(e) = shard
                            .propose(OpGroup {
                                atomic: false,
                                ops: Vec::new(),
                            })
                            .await
                        {
                            tracing::debug!(shard_id = shard.id(), error = %e, "expiry tick not applied");
                        }
                    });
                }
            }
        }
    });
}
