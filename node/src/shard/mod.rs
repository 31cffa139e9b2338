//! One shard on this node: its Raft group, a reader of its state machine, and its
//! proposer (`proposer`), which turns concurrent requests into few log entries; and
//! the node-level expiry sweeper (`sweeper`).

mod proposer;
mod sweeper;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot};

pub use proposer::{ProposeStats, Proposed};
pub use sweeper::spawn_sweeper;

use crate::clock::Clock;
use crate::config::ClusterConfig;
use crate::error::Error;
use crate::inventory::{OpGroup, OpResult};
use crate::raft::{ReadError, ShardRaft};
use crate::router::{LiveBounds, LiveMap, ShardDescriptor, ShardId};
use crate::storage::{ShardReader, WriteFence};
use proposer::Proposal;

pub struct Shard {
    /// As the replica was started; its range may since have been narrowed by a split
    /// (`bounds` is the current one).
    pub descriptor: ShardDescriptor,
    /// The range and version the state machine holds now.
    pub bounds: LiveBounds,
    pub raft: ShardRaft,
    pub reader: ShardReader,
    /// The state machine's write permission: closed after the Raft group stops and
    /// before the replica's data is deleted (`storage::fence` says why).
    pub fence: WriteFence,
    node_id: u64,
    cluster: Arc<ClusterConfig>,
    /// Where leader hints get their addresses.
    map: LiveMap,
    clock: Clock,
    stats: Arc<ProposeStats>,
    proposals: mpsc::Sender<Proposal>,
    /// The state machine's earliest-timer hint (`u64::MAX` none, 0 unknown).
    next_timer_ms: Arc<AtomicU64>,
    /// Operations and proposals this replica proposed as leader: the load a split by
    /// load measures (`node::autosplit`).
    ops_proposed: AtomicU64,
    groups_proposed: AtomicU64,
    /// SKUs of every `LOAD_SAMPLE_EVERY`-th proposal since the splitter last looked, at
    /// most `LOAD_SAMPLES_MAX` (later ones overwrite earlier ones in turn): where a
    /// split by load cuts, so that both halves carry comparable load.
    load_samples: std::sync::Mutex<Vec<String>>,
}

/// One proposal in this many has its SKU sampled.
const LOAD_SAMPLE_EVERY: u64 = 8;
/// Samples kept per shard between two looks of the splitter.
const LOAD_SAMPLES_MAX: usize = 512;

/// One replica as `node::start_shard` opened it, for `Shard::start`.
pub struct ShardParts {
    pub descriptor: ShardDescriptor,
    pub bounds: LiveBounds,
    pub raft: ShardRaft,
    pub reader: ShardReader,
    pub next_timer_ms: Arc<AtomicU64>,
    pub fence: WriteFence,
}

/// What a shard is started with, besides its own parts.
pub struct ShardContext {
    pub node_id: u64,
    pub cluster: Arc<ClusterConfig>,
    pub map: LiveMap,
    pub clock: Clock,
    pub stats: Arc<ProposeStats>,
}

impl Shard {
    pub fn start(
        parts: ShardParts,
        ctx: &ShardContext,
        shutdown: &broadcast::Sender<()>,
    ) -> Arc<Shard> {
        let ShardParts {
            descriptor,
            bounds,
            raft,
            reader,
            next_timer_ms,
            fence,
        } = parts;
        let (tx, rx) = mpsc::channel(ctx.cluster.server.shard_queue_max);
        let shard = Arc::new(Shard {
            descriptor,
            bounds,
            raft: raft.clone(),
            reader,
            fence,
            node_id: ctx.node_id,
            cluster: ctx.cluster.clone(),
            map: ctx.map.clone(),
            clock: ctx.clock,
            stats: ctx.stats.clone(),
            proposals: tx,
            next_timer_ms,
            ops_proposed: AtomicU64::new(0),
            groups_proposed: AtomicU64::new(0),
            load_samples: std::sync::Mutex::new(Vec::new()),
        });
        let proposer = proposer::ProposerContext {
            shard_id: shard.id(),
            node_id: ctx.node_id,
            raft,
            cluster: ctx.cluster.clone(),
            map: ctx.map.clone(),
            clock: ctx.clock,
            stats: ctx.stats.clone(),
        };
        tokio::spawn(proposer::run(proposer, rx, shutdown.subscribe()));
        shard
    }

    pub fn id(&self) -> ShardId {
        self.descriptor.id
    }

    /// The leader as this node's Raft instance knows it.
    pub fn leader_id(&self) -> Option<u64> {
        self.raft.leader()
    }

    pub fn is_leader(&self) -> bool {
        self.leader_id() == Some(self.node_id)
    }

    fn not_leader(&self, leader: Option<u64>) -> Error {
        self.map.get().not_leader(self.id(), leader, self.node_id)
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
        let unchecked = crate::planted::active() == crate::planted::Bug::SplitRangeUnchecked;
        #[cfg(not(feature = "planted-bugs"))]
        let unchecked = false;
        if !unchecked {
            self.bounds
                .check(group.ops.iter().flat_map(|op| op.command.skus()))?;
        }
        self.count_load(&group);
        #[cfg(feature = "planted-bugs")]
        if crate::planted::active() == crate::planted::Bug::AckBeforeCommit && !group.ops.is_empty()
        {
            return self.answer_before_commit(group);
        }
        let (reply, rx) = oneshot::channel();
        match self.proposals.try_send(Proposal { group, reply }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.stats.queue_full.fetch_add(1, Ordering::Relaxed);
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

    /// Counts `group` into the shard's load, sampling its first SKU now and then.
    fn count_load(&self, group: &OpGroup) {
        self.ops_proposed
            .fetch_add(group.ops.len() as u64, Ordering::Relaxed);
        let n = self.groups_proposed.fetch_add(1, Ordering::Relaxed);
        if !n.is_multiple_of(LOAD_SAMPLE_EVERY) {
            return;
        }
        let Some(sku) = group.ops.first().and_then(|op| op.command.skus().next()) else {
            return;
        };
        let mut samples = self.load_samples.lock().unwrap_or_else(|p| p.into_inner());
        if samples.len() < LOAD_SAMPLES_MAX {
            samples.push(sku.to_string());
        } else {
            let slot = (n / LOAD_SAMPLE_EVERY) as usize % LOAD_SAMPLES_MAX;
            samples[slot] = sku.to_string();
        }
    }

    /// Operations proposed here as leader so far.
    pub fn ops_proposed(&self) -> u64 {
        self.ops_proposed.load(Ordering::Relaxed)
    }

    /// The SKU samples since the last call (taken).
    pub fn take_load_samples(&self) -> Vec<String> {
        std::mem::take(&mut *self.load_samples.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Proposes `op` alone in its own entry, past the proposer (a split must not share
    /// its entry), and waits up to the write timeout for its result.
    pub async fn propose_alone(&self, op: crate::inventory::Op) -> Result<OpResult, Error> {
        self.check_leader()?;
        let request = crate::inventory::ShardRequest {
            now_ms: self.clock.now_ms(),
            retention: self.cluster.retention.to_retention(),
            groups: vec![OpGroup {
                atomic: false,
                ops: vec![op],
            }],
        };
        let timeout = Duration::from_millis(self.cluster.server.propose_timeout_ms);
        let unknown = |reason: String| Error::OutcomeUnknown {
            shard_id: self.id(),
            reason,
        };
        let written = tokio::time::timeout(timeout, self.raft.write(request))
            .await
            .map_err(|_| unknown(format!("not applied within {} ms", timeout.as_millis())))?;
        match written {
            Ok((response, _)) => response
                .groups
                .into_iter()
                .flatten()
                .next()
                .ok_or_else(|| Error::internal("a proposal came back without its result")),
            Err(crate::raft::WriteError::NotLeader { leader }) => Err(self.not_leader(leader)),
            Err(crate::raft::WriteError::Unknown(reason)) => Err(unknown(reason)),
        }
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
            .transfer_leader(to)
            .await
            .map_err(|reason| Error::ShardUnavailable {
                shard_id: self.id(),
                reason,
            })?;
        crate::raft::wait_until(timeout, || self.leader_id() == Some(to)).await;
        Ok(self.leader_id())
    }

    /// Planted bug `ack-before-commit`: answers from the local state at once and
    /// proposes in the background, whatever becomes of it.
    #[cfg(feature = "planted-bugs")]
    fn answer_before_commit(&self, group: OpGroup) -> Result<Proposed, Error> {
        let mut scratch =
            crate::planted::scratch::Scratch::new(&self.reader).map_err(Error::internal)?;
        let request = crate::inventory::ShardRequest {
            now_ms: self.clock.now_ms(),
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
        #[cfg(feature = "planted-bugs")]
        if crate::planted::active() == crate::planted::Bug::LocalReads {
            return Ok(());
        }
        let timeout = Duration::from_millis(self.cluster.server.read_timeout_ms);
        let unavailable = |reason: String| Error::ShardUnavailable {
            shard_id: self.id(),
            reason,
        };
        match tokio::time::timeout(timeout, self.raft.linearize(self.cluster.raft.read_policy))
            .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(ReadError::NotLeader { leader })) => Err(self.not_leader(leader)),
            Ok(Err(ReadError::NoQuorum(q))) => Err(unavailable(format!(
                "leadership not confirmed by a quorum: {q}"
            ))),
            Ok(Err(ReadError::Stopped(reason))) => Err(unavailable(reason)),
            Err(_) => Err(unavailable(format!(
                "leadership not confirmed within {} ms",
                timeout.as_millis()
            ))),
        }
    }
}
