//! The adapter to openraft. Outside this module and `storage`, nothing names openraft:
//! the rest of the node holds a [`ShardRaft`] and speaks in its terms (write, read
//! barrier, status, leadership), with errors of its own.
//!
//! - `types`: the type configuration (entries carry `ShardRequest`s);
//! - `network`: outgoing Raft traffic, one channel per peer node, byte-bounded calls;
//! - `inbound`: incoming Raft messages, decoded and checked by `guard` first;
//! - `snapshot_stream`: a snapshot's chunks on the wire, both directions;
//! - `guard`: validation of everything a peer sends;
//! - `replica_id`: the member ids of a group (never reused; they name their node);
//! - `membership`: replica moves' steps (learner, guarded replacement, removal);
//! - `quiet`: quiet shards, whose timers stop while nothing happens (hibernation).
//!
//! openraft speaks replica ids; everything `ShardRaft` returns speaks node ids (a
//! replica id names its node), so the rest of the node never sees a replica id.

pub mod guard;
pub mod inbound;
pub mod membership;
pub mod network;
pub mod quiet;
pub mod replica_id;
pub mod snapshot_stream;
pub mod types;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use openraft::errors::{ClientWriteError, LinearizableReadError, RaftError};
use openraft::type_config::async_runtime::WatchReceiver;

use crate::config::{ClusterConfig, ReadPolicyConfig};
use crate::inventory::{ShardRequest, ShardResponse};
use crate::router::ShardId;
use crate::storage::{LogStore, StateMachineStore};
use network::NetworkFactory;

type Inner = openraft::Raft<types::TypeConfig, StateMachineStore>;

/// One shard's Raft group on this node.
#[derive(Clone)]
pub struct ShardRaft {
    shard_id: ShardId,
    /// This replica's member id in the group (`replica_id`).
    replica_id: u64,
    inner: Inner,
    /// The leader's allocations in its current term: `(term, next seq)`.
    allocated: Arc<std::sync::Mutex<(u64, u64)>>,
    /// Whether the group's timer runs (`quiet`); every call that is work wakes it.
    quiet: Arc<quiet::Quiet>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("raft configuration for shard {shard_id}: {source}")]
    Config {
        shard_id: ShardId,
        source: openraft::ConfigError,
    },
    #[error("shard {shard_id}: raft failed to start: {message}")]
    Start { shard_id: ShardId, message: String },
}

/// Why a write has no result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteError {
    /// Refused before it was appended: certainly not applied.
    NotLeader { leader: Option<u64> },
    /// Proposed, fate unknown (leadership lost, shutdown).
    Unknown(String),
}

/// Why a read barrier did not complete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadError {
    NotLeader {
        leader: Option<u64>,
    },
    /// A quorum did not confirm the leadership.
    NoQuorum(String),
    Stopped(String),
}

/// What this node's replica knows of its shard's Raft state.
#[derive(Clone, Debug, Default)]
pub struct RaftStatus {
    pub role: &'static str,
    pub leader: Option<u64>,
    pub term: u64,
    pub last_log_index: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub snapshot_index: u64,
    pub purged_index: u64,
    /// Nodes holding a voter of the effective membership.
    pub voters: BTreeSet<u64>,
    /// Nodes holding a learner.
    pub learners: BTreeSet<u64>,
    /// The index of the effective membership's entry: the epoch's `conf_ver`.
    pub membership_index: u64,
    /// True while a joint membership (a change half done) is in effect.
    pub joint: bool,
    /// On the leader: each replica's matched index (0 when none yet).
    pub matched: Option<BTreeMap<u64, u64>>,
    /// The replica's timer is stopped (`quiet`).
    pub asleep: bool,
}

/// openraft's configuration for one shard, from the cluster config.
fn shard_config(
    cluster: &ClusterConfig,
    shard_id: ShardId,
) -> Result<Arc<openraft::Config>, StartError> {
    let t = &cluster.raft;
    let config = openraft::Config {
        cluster_name: format!("{}-shard-{shard_id}", cluster.cluster_name),
        heartbeat_interval: t.heartbeat_interval_ms,
        // No heartbeat to a follower that acknowledged an AppendEntries sent within
        // the last interval: under writes the entries prove what a heartbeat would,
        // and every awake shard's heartbeats otherwise cost as much as its traffic
        // (docs/PERFORMANCE.md). openraft refuses a config where a suppressed beat
        // could come later than `election_timeout_min` (checked at start).
        heartbeat_min_interval: Some(t.heartbeat_interval_ms),
        election_timeout_min: t.election_timeout_min_ms,
        election_timeout_max: t.election_timeout_max_ms,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(t.snapshot_after_entries),
        max_in_snapshot_log_to_keep: t.logs_kept_after_snapshot,
        snapshot_max_chunk_size: t.snapshot_chunk_bytes,
        max_payload_entries: t.append_entries_max,
        // Pre-vote keeps a node that was partitioned away from disrupting the leader
        // when it comes back with a higher term.
        enable_pre_vote: Some(true),
        // A restarted leader must win an election again: our state machine does not
        // sync before `apply` returns, which openraft's leader restore would require.
        enable_leader_restore: Some(false),
        // With quiet shards, every replica starts with its timer stopped: the node's
        // quiet loop starts the timers of those no beat vouches for, a bounded number
        // per round, so that a node starting thousands of shards does not tick them
        // all at once (`quiet`).
        enable_tick: t.quiet_after_ms == 0,
        ..Default::default()
    };
    config
        .validate()
        .map(Arc::new)
        .map_err(|source| StartError::Config { shard_id, source })
}

fn role(s: openraft::ServerState) -> &'static str {
    match s {
        openraft::ServerState::Leader => "leader",
        openraft::ServerState::Follower => "follower",
        openraft::ServerState::Candidate => "candidate",
        openraft::ServerState::Learner => "learner",
        openraft::ServerState::Shutdown => "shutdown",
    }
}

impl ShardRaft {
    /// Starts the shard's Raft group over its log and state machine.
    pub async fn start(
        replica_id: u64,
        shard_id: ShardId,
        cluster: &ClusterConfig,
        network: NetworkFactory,
        log: LogStore,
        sm: StateMachineStore,
        wakeups: Arc<quiet::Wakeups>,
    ) -> Result<ShardRaft, StartError> {
        let config = shard_config(cluster, shard_id)?;
        let inner = Inner::new(replica_id, config, network, log, sm)
            .await
            .map_err(|e| StartError::Start {
                shard_id,
                message: e.to_string(),
            })?;
        Ok(ShardRaft {
            shard_id,
            replica_id,
            inner,
            allocated: Arc::new(std::sync::Mutex::new((0, 0))),
            quiet: Arc::new(quiet::Quiet::new(cluster.raft.quiet_after_ms > 0, wakeups)),
        })
    }

    pub fn replica_id(&self) -> u64 {
        self.replica_id
    }

    /// Makes a fresh group of `members` (node id, address), each with its seeded
    /// replica id; call on one node, once.
    pub async fn initialize(&self, members: &[(u64, String)]) -> Result<(), StartError> {
        let members: BTreeMap<u64, openraft::BasicNode> = members
            .iter()
            .map(|(id, addr)| {
                (
                    replica_id::seeded(*id),
                    openraft::BasicNode::new(addr.clone()),
                )
            })
            .collect();
        self.inner
            .initialize(members)
            .await
            .map_err(|e| StartError::Start {
                shard_id: self.shard_id,
                message: format!("initialize: {e}"),
            })
    }

    /// The leader as this replica knows it.
    pub fn leader(&self) -> Option<u64> {
        self.inner
            .metrics()
            .borrow_watched()
            .current_leader
            .map(replica_id::node_of)
    }

    /// This replica's current term.
    pub fn term(&self) -> u64 {
        self.inner.metrics().borrow_watched().current_term
    }

    /// The effective membership's log index, whether it is joint, and how many voters
    /// it has: what changes when the voters do (cheap: no sets built). The count
    /// tells a replica whose membership is not yet loaded (a split's child just
    /// started: index 0, no voters) from the same replica a moment later (index 0,
    /// its voters).
    pub fn membership_mark(&self) -> [u64; 3] {
        let metrics = self.inner.metrics();
        let m = metrics.borrow_watched();
        let index = m.membership_config.log_id().map(|l| l.index).unwrap_or(0);
        let membership = m.membership_config.membership();
        let joint = membership.get_joint_config().len() > 1;
        let voters = membership.voter_ids().count();
        [index, u64::from(joint), voters as u64]
    }

    pub fn status(&self) -> RaftStatus {
        // Read in place, not cloned: the node's loops ask every replica often.
        let metrics = self.inner.metrics();
        let m = metrics.borrow_watched();
        let membership = m.membership_config.membership();
        RaftStatus {
            role: role(m.state),
            leader: m.current_leader.map(replica_id::node_of),
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            commit_index: m.local_committed.map(|l| l.index).unwrap_or(0),
            applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            snapshot_index: m.snapshot.map(|l| l.index).unwrap_or(0),
            purged_index: m.purged.map(|l| l.index).unwrap_or(0),
            voters: membership.voter_ids().map(replica_id::node_of).collect(),
            learners: membership.learner_ids().map(replica_id::node_of).collect(),
            membership_index: m.membership_config.log_id().map(|l| l.index).unwrap_or(0),
            joint: membership.get_joint_config().len() > 1,
            matched: m.replication.as_ref().map(|r| {
                r.iter()
                    .map(|(id, l)| (replica_id::node_of(*id), l.map(|l| l.index).unwrap_or(0)))
                    .collect()
            }),
            asleep: self.is_asleep(),
        }
    }

    /// Appends `request` as one entry and waits until it is applied here.
    ///
    /// A leader that slept (quiet shards) sent no heartbeats, so no answers renewed
    /// its lease, and openraft refuses its writes once the lease ran out: the first
    /// write after a sleep renews the lease with one read-index round first.
    pub async fn write(&self, request: ShardRequest) -> Result<(ShardResponse, u64), WriteError> {
        self.wake();
        if let Some(sleeps) = self.quiet.lease_owed() {
            match self.linearize(ReadPolicyConfig::ReadIndex).await {
                Ok(()) => self.quiet.lease_renewed(sleeps),
                // Nothing was proposed: certainly not applied.
                Err(ReadError::NotLeader { leader }) => {
                    return Err(WriteError::NotLeader { leader });
                }
                Err(_) => return Err(WriteError::NotLeader { leader: None }),
            }
        }
        match self.inner.client_write(request).await {
            Ok(resp) => Ok((resp.data, resp.log_id.index)),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(WriteError::NotLeader {
                    leader: f.leader_id.map(replica_id::node_of),
                })
            }
            Err(e) => Err(WriteError::Unknown(e.to_string())),
        }
    }

    /// Waits until a read of the local state machine is linearizable: leadership
    /// confirmed (read index or lease) and applied up to the read point.
    pub async fn linearize(&self, policy: ReadPolicyConfig) -> Result<(), ReadError> {
        self.wake();
        // A lease that may have run out while the leader slept is renewed by a
        // read-index round instead (`write`).
        let owed = self.quiet.lease_owed();
        let policy = match policy {
            ReadPolicyConfig::Lease if owed.is_none() => openraft::ReadPolicy::LeaseRead,
            _ => openraft::ReadPolicy::ReadIndex,
        };
        match self.inner.ensure_linearizable(policy).await {
            Ok(_) => {
                if let Some(sleeps) = owed {
                    self.quiet.lease_renewed(sleeps);
                }
                Ok(())
            }
            Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f))) => {
                Err(ReadError::NotLeader {
                    leader: f.leader_id.map(replica_id::node_of),
                })
            }
            Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(q))) => {
                Err(ReadError::NoQuorum(q.to_string()))
            }
            Err(RaftError::Fatal(f)) => Err(ReadError::Stopped(f.to_string())),
        }
    }

    /// Stands for election now, with a pre-vote first: the term grows only if a
    /// quorum would grant the vote, so a group that has a leader is left alone.
    pub async fn campaign(&self) -> Result<(), String> {
        self.wake();
        self.inner
            .trigger()
            .elect(true)
            .await
            .map_err(|e| e.to_string())
    }

    /// Asks the group to hand leadership to the voter on node `to` (returns once asked).
    pub async fn transfer_leader(&self, to: u64) -> Result<(), String> {
        let to = self
            .replica_on(to)
            .ok_or_else(|| format!("node {to} holds no replica of shard {}", self.shard_id))?;
        self.wake();
        self.inner
            .trigger()
            .transfer_leader(to)
            .await
            .map_err(|e| e.to_string())
    }

    /// The replica id of the member (voter or learner) on node `node`.
    pub fn replica_on(&self, node: u64) -> Option<u64> {
        let m = self.inner.metrics().borrow_watched().clone();
        m.membership_config
            .membership()
            .nodes()
            .map(|(id, _)| *id)
            .find(|id| replica_id::node_of(*id) == node)
    }

    /// Lets the replica on node `target` (wiped) be rebuilt from scratch once. The outer
    /// error is the group's (stopped); the inner, openraft's refusal.
    pub async fn allow_next_revert(&self, target: u64) -> Result<Result<(), String>, String> {
        let Some(target) = self.replica_on(target) else {
            return Ok(Err(format!("node {target} holds no replica of this shard")));
        };
        self.wake();
        match self.inner.trigger().allow_next_revert(&target, true).await {
            Ok(r) => Ok(r.map_err(|e| e.to_string())),
            Err(e) => Err(e.to_string()),
        }
    }

    pub async fn shutdown(&self) -> Result<(), String> {
        self.inner.shutdown().await.map_err(|e| e.to_string())
    }

    fn inner(&self) -> &Inner {
        &self.inner
    }
}

/// How long to wait for a condition on a shard's Raft state, polling.
pub async fn wait_until(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if done() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
