//! A running node: opens its database, checks its data against the config, starts one
//! Raft group per replica it holds, initializes fresh shards exactly once, hands
//! requests to its shards (routing itself is `router`'s), and creates and drops
//! replicas as moves ask (`moves`).
//!
//! Which replicas a node holds: on the first boot of its data directory, the config's
//! layout; afterwards its own replica records (`storage::node_meta`), which moves
//! change. The config's shard layout only seeds.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use tokio::sync::broadcast;

use crate::clock::Clock;
use crate::config::{ClusterConfig, NodeConfig};
use crate::error::Error;
use crate::raft::ShardRaft;
use crate::raft::network::{NetworkFactory, PeerPool, PeerTuning};
use crate::raft::replica_id;
use crate::router::{LiveMap, META_SHARD_ID, ShardDescriptor, ShardId, ShardMap};
use crate::security::Security;
use crate::shard::{ProposeStats, Shard, ShardContext, ShardParts};
mod autosplit;
mod balance;
mod boot;
mod gc;
mod merge;
mod meta;
mod moves;
mod quiet;
mod repair;
mod replicas;
mod split;

pub use merge::MergeDone;
pub use meta::{Applied, cluster_request_id, records_to_pb};
pub use moves::{MoveOptions, MoveReport};
pub use split::SplitDone;

use crate::storage::{
    ApplyStats, LogStore, LogSyncer, ShardReader, StateMachineStore, StorageError, Store,
    WriteFence, WritePathStats,
};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("node {0} is not in the cluster config")]
    UnknownNode(u64),
    #[error("{what}: {source}")]
    Storage { what: String, source: StorageError },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("refusing to start: {0}")]
    Mismatch(String),
    #[error(transparent)]
    Raft(#[from] crate::raft::StartError),
    #[error(
        "security: {0} (make a cluster's certificates with `stockpile certs init DIR --config CONFIG`; scripts/cluster.sh up does it on first use; docs/SECURITY.md)"
    )]
    Security(String),
}

fn storage(what: impl Into<String>) -> impl FnOnce(StorageError) -> StartError {
    let what = what.into();
    move |source| StartError::Storage { what, source }
}

/// MOVE_REFUSED: a step of a replica move (or its create/drop) could not happen.
fn refused(shard_id: ShardId, node_id: u64, step: &'static str, problem: String) -> Error {
    Error::MoveRefused {
        shard_id,
        node_id,
        step,
        problem,
    }
}

/// How a node is started besides its config (command-line choices).
#[derive(Clone, Debug, Default)]
pub struct StartOptions {
    /// Overrides the config's data directory.
    pub data_dir: Option<PathBuf>,
    /// The wall clock (skewed only by fault-injection tests).
    pub clock: Clock,
    /// On a first boot, start with no replica (they come by moves) instead of the
    /// config's layout: a node added to a running cluster, or one declared dead and
    /// brought back.
    pub join: bool,
    /// Test-only (hidden flag): a move pauses this long after each recorded step, so
    /// that a test can strike in the middle of a move.
    pub move_step_pause_ms: u64,
}

/// Totals of the node's write path, from their one source (status, telemetry).
#[derive(Clone, Copy, Debug, Default)]
pub struct Totals {
    pub log_appends: u64,
    pub log_syncs: u64,
    pub proposals: u64,
    pub entries_proposed: u64,
    pub proposal_queue_full: u64,
    pub ops_applied: u64,
    pub ops_replayed: u64,
    pub entries_applied: u64,
}

/// The replicas running on a node, by shard: replaced as moves add and drop them.
pub type ShardSet = Arc<RwLock<BTreeMap<ShardId, Arc<Shard>>>>;

pub struct Node {
    pub id: u64,
    pub me: NodeConfig,
    pub cluster: Arc<ClusterConfig>,
    /// The shard map: the config's layout, then each shard's replicas as its own
    /// membership says (local shards) or as a move announced (others).
    pub map: LiveMap,
    shards: ShardSet,
    pub data_dir: PathBuf,
    pub store: Store,
    pub write_stats: Arc<WritePathStats>,
    pub apply_stats: Arc<ApplyStats>,
    pub propose_stats: Arc<ProposeStats>,
    pub started_at: Instant,
    pub shutdown: broadcast::Sender<()>,
    pub peers: Arc<PeerPool>,
    pub admission: crate::admission::Admission,
    /// TLS material and access grants, reloadable (SIGHUP).
    pub security: Arc<Security>,
    /// What starting one more replica needs.
    shared: Shared,
    /// One replica create or drop at a time on this node.
    replica_changes: tokio::sync::Mutex<()>,
    /// Nodes whose wiped replicas the shards led here were told to accept
    /// (`allow-rebuild`): a first boot of those nodes is not refused.
    pub rebuild_allowed: std::sync::Mutex<std::collections::BTreeSet<u64>>,
    /// Shards this node is moving a replica of now: one move per shard at a time.
    moves_running: std::sync::Mutex<std::collections::BTreeSet<ShardId>>,
    /// See `StartOptions::move_step_pause_ms`.
    move_step_pause_ms: u64,
    /// The balancer's latest steps taken here, for the node's status (bounded:
    /// `balance::DECISIONS_MAX`).
    pub balancer_decisions: std::sync::Mutex<std::collections::VecDeque<balance::Decision>>,
    /// Every peer's latest beat: which shards it leads quietly (`quiet`).
    pub beats: Arc<crate::raft::quiet::Beats>,
}

/// What every shard of a node shares while it starts.
struct Shared {
    node_id: u64,
    cluster: Arc<ClusterConfig>,
    store: Store,
    syncer: LogSyncer,
    peers: Arc<PeerPool>,
    snapshot_dir: PathBuf,
    apply_stats: Arc<ApplyStats>,
    ctx: ShardContext,
    /// Every replica's wake-ups from sleep, counted for the quiet loop.
    wakeups: Arc<crate::raft::quiet::Wakeups>,
}

impl Node {
    /// Opens the node's data and starts its shards. The gRPC server is started by the
    /// caller (`server::serve`) so that peers can reach the Raft service.
    pub async fn start(
        cluster: ClusterConfig,
        node_id: u64,
        options: StartOptions,
    ) -> Result<Arc<Node>, StartError> {
        let cluster = Arc::new(cluster);
        let me = cluster
            .node(node_id)
            .cloned()
            .ok_or(StartError::UnknownNode(node_id))?;
        let data_dir = options.data_dir.unwrap_or_else(|| me.data_dir.clone());
        std::fs::create_dir_all(&data_dir).map_err(|source| StartError::Io {
            what: format!("cannot create data directory {}", data_dir.display()),
            source,
        })?;
        let store =
            Store::open(&data_dir.join("db")).map_err(storage("cannot open the database"))?;
        let first_boot = boot::check_identity(&store, &cluster, node_id)?;
        let write_stats = Arc::new(WritePathStats::default());
        let propose_stats = Arc::new(ProposeStats::default());
        let source_ip = me
            .addr
            .parse::<std::net::SocketAddr>()
            .ok()
            .map(|a| a.ip())
            .filter(|ip| !ip.is_unspecified());
        let security = Security::from_config(&cluster.security, node_id, options.clock)
            .map_err(StartError::Security)?;
        let peers = PeerPool::new(node_id, PeerTuning::from_config(&cluster), source_ip);
        peers.set_tls(security.peer_tls());
        let map = ShardMap::from_config(&cluster);
        if first_boot {
            if !options.join {
                boot::check_not_wiped(&cluster, node_id, &peers).await?;
            }
            boot::write_identity(&store, &cluster, node_id)?;
            if !options.join {
                boot::seed_replicas(&store, &map, node_id)?;
            }
        }
        let records = boot::replica_records(&store, &map, node_id)?;
        let map = LiveMap::new(map);
        let syncer =
            LogSyncer::start(&store, write_stats.clone()).map_err(|source| StartError::Io {
                what: "cannot start the WAL syncer".into(),
                source,
            })?;
        let (shutdown, _) = broadcast::channel(1);
        let shared = Shared {
            node_id,
            cluster: cluster.clone(),
            store: store.clone(),
            syncer,
            peers: peers.clone(),
            snapshot_dir: data_dir.join("snapshots"),
            apply_stats: Arc::new(ApplyStats::default()),
            ctx: ShardContext {
                node_id,
                cluster: cluster.clone(),
                map: map.clone(),
                clock: options.clock,
                stats: propose_stats.clone(),
            },
            wakeups: Arc::default(),
        };
        let mut shards = BTreeMap::new();
        for (d, replica) in records {
            shards.insert(d.id, start_shard(d, replica, &shared, &shutdown).await?);
        }
        let shards: ShardSet = Arc::new(RwLock::new(shards));
        crate::shard::spawn_sweeper(
            shards.clone(),
            cluster.server.sweep_interval_ms,
            shutdown.subscribe(),
        );
        let admission = crate::admission::Admission::new(cluster.admission.clone());
        let node = Arc::new(Node {
            id: node_id,
            me,
            cluster,
            map,
            shards,
            data_dir,
            store,
            write_stats,
            apply_stats: shared.apply_stats.clone(),
            propose_stats,
            started_at: Instant::now(),
            admission,
            shutdown,
            peers,
            security: Arc::new(security),
            shared,
            replica_changes: tokio::sync::Mutex::new(()),
            rebuild_allowed: std::sync::Mutex::new(std::collections::BTreeSet::new()),
            moves_running: std::sync::Mutex::new(std::collections::BTreeSet::new()),
            balancer_decisions: std::sync::Mutex::new(std::collections::VecDeque::new()),
            move_step_pause_ms: options.move_step_pause_ms,
            beats: Arc::new(crate::raft::quiet::Beats::default()),
        });
        node.spawn_map_follower();
        node.spawn_quiet_loop();
        Ok(node)
    }

    /// Starts the meta leader's duties (`meta`): seeding the cluster map once, driving
    /// silent recorded moves again, repairing nodes gone too long (`repair`), balancing
    /// (`balance`). Every node runs the loop; only the meta leader acts.
    pub fn spawn_meta_duties(self: &Arc<Self>) {
        let node = Arc::downgrade(self);
        let mut shutdown = self.shutdown.subscribe();
        tokio::spawn(async move {
            let driving = Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
            let mut watch = repair::RepairWatch::default();
            let mut balancer = balance::Balancer::default();
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(
                meta::META_DUTY_INTERVAL_MS,
            ));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.recv() => return,
                }
                let Some(node) = node.upgrade() else { return };
                node.meta_duties(&driving, &mut watch, &mut balancer).await;
            }
        });
    }

    /// Starts the check for replicas their shard no longer names (`gc`), every
    /// `GC_CHECK_INTERVAL_MS` on every node.
    pub fn spawn_replica_gc(self: &Arc<Self>) {
        let node = Arc::downgrade(self);
        let mut shutdown = self.shutdown.subscribe();
        tokio::spawn(async move {
            let mut watch = gc::GcWatch::default();
            let mut tick =
                tokio::time::interval(std::time::Duration::from_millis(gc::GC_CHECK_INTERVAL_MS));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.recv() => return,
                }
                let Some(node) = node.upgrade() else { return };
                node.collect_garbage(&mut watch).await;
            }
        });
    }

    /// The local shard `shard_id`, or SHARD_NOT_HERE naming its replicas (this node
    /// never guesses a leader for a shard it does not hold).
    pub fn local_shard(&self, shard_id: ShardId) -> Result<Arc<Shard>, Error> {
        self.shards
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&shard_id)
            .cloned()
            .ok_or_else(|| self.map.get().not_here(shard_id))
    }

    /// The local shard that owns `sku` (see `local_shard`).
    pub fn shard_for(&self, sku: &str) -> Result<Arc<Shard>, Error> {
        self.local_shard(self.map.get().shard_for(sku).id)
    }

    /// Every replica running on this node, in shard id order.
    pub fn shards(&self) -> Vec<Arc<Shard>> {
        self.shards
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub fn totals(&self) -> Totals {
        let (w, p, a) = (&self.write_stats, &self.propose_stats, &self.apply_stats);
        let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        Totals {
            log_appends: get(&w.log_appends),
            log_syncs: get(&w.log_syncs),
            proposals: get(&p.requests),
            entries_proposed: get(&p.entries),
            proposal_queue_full: get(&p.queue_full),
            ops_applied: get(&a.ops_applied),
            ops_replayed: get(&a.ops_replayed),
            entries_applied: get(&a.entries_applied),
        }
    }

    /// Hands the leadership of every shard this node leads to the most up-to-date
    /// other replica, waiting up to `per_shard` for each. Returns the shards moved.
    pub async fn hand_over_leadership(&self, per_shard: std::time::Duration) -> Vec<ShardId> {
        let shards = self.shards();
        let led = shards
            .iter()
            .filter(|s| s.is_leader() && s.raft.status().voters.len() > 1);
        let moves = led.map(|shard| async move {
            let status = shard.raft.status();
            let target = status
                .matched
                .iter()
                .flatten()
                .filter(|(id, _)| **id != self.id)
                .max_by_key(|(_, matched)| **matched)
                .map(|(id, _)| *id)?;
            match shard.transfer_leadership(target, per_shard).await {
                Ok(Some(l)) if l == target => Some(shard.id()),
                Ok(other) => {
                    tracing::warn!(shard_id = %shard.id(), target, leader = ?other, "leadership did not move in time");
                    None
                }
                Err(e) => {
                    tracing::warn!(shard_id = %shard.id(), target, error = %e, "leadership transfer failed");
                    None
                }
            }
        });
        futures::future::join_all(moves)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// Reads the certificates, CA bundle and access file again (SIGHUP): new
    /// connections, inbound and to peers, use them; existing ones are not cut.
    pub fn reload_security(&self) -> Result<(), String> {
        self.security.reload()?;
        self.peers.set_tls(self.security.peer_tls());
        Ok(())
    }

    /// True when every shard on this node knows a leader: it has joined its groups.
    pub fn joined(&self) -> bool {
        self.shards().iter().all(|s| s.leader_id().is_some())
    }

    /// Stops every shard's Raft group and syncs the WAL.
    pub async fn stop(&self) {
        let _ = self.shutdown.send(());
        for shard in self.shards() {
            if let Err(e) = shard.raft.shutdown().await {
                tracing::warn!(shard_id = %shard.id(), error = %e, "raft shutdown");
            }
        }
        if let Err(e) = self.store.sync_wal() {
            tracing::error!(error = %e, "final WAL sync failed");
        }
        // Stop RocksDB's flush and compaction threads before the process exits: tasks
        // may still hold the database while static destructors run, and a background
        // job touching torn-down state aborts the process instead of exiting 0.
        self.store.stop_background_work();
    }
}

/// Opens one replica's log and state machine, starts its Raft group (initializing a
/// fresh shard exactly once), and its proposer.
async fn start_shard(
    d: ShardDescriptor,
    replica: u64,
    shared: &Shared,
    shutdown: &broadcast::Sender<()>,
) -> Result<Arc<Shard>, StartError> {
    let shard_id = d.id;
    let log = LogStore::new(shard_id, &shared.store, shared.syncer.clone());
    let pristine = log
        .is_pristine()
        .map_err(storage(format!("shard {shard_id}: cannot read its log")))?;
    let fence = WriteFence::default();
    let sm = StateMachineStore::open(
        shard_id,
        replica,
        d.range.clone(),
        &shared.store,
        shared.snapshot_dir.clone(),
        shared.apply_stats.clone(),
        fence.clone(),
    )
    .map_err(storage(format!(
        "shard {shard_id}: cannot open its state machine"
    )))?;
    let next_timer_ms = sm.next_timer_handle();
    let bounds = sm.bounds_handle();
    let network = NetworkFactory {
        shard_id,
        pool: shared.peers.clone(),
    };
    let raft = ShardRaft::start(
        replica,
        shard_id,
        &shared.cluster,
        network,
        log,
        sm,
        shared.wakeups.clone(),
    )
    .await?;
    // Exactly one node initializes a fresh shard, and only when it has never stored
    // anything for the shard; restarts never re-initialize, and neither does a replica
    // a move created (its id is not the seeded one: the leader feeds it). The
    // initializer is the shard's `(id - 1) % n`-th replica in id order, so that first
    // leaders spread over the nodes instead of all landing on the lowest id.
    // A shard the config does not seed (a split's child adopted from a snapshot) is
    // never initialized here: its leader fills it.
    let seeded =
        shard_id == META_SHARD_ID || shared.cluster.shards.iter().any(|s| s.id == shard_id.0);
    if pristine
        && seeded
        && replica == replica_id::seeded(shared.node_id)
        && initializer_of(&d) == shared.node_id
    {
        let map = shared.ctx.map.get();
        let members: Vec<(u64, String)> = d
            .replicas
            .iter()
            .map(|id| (*id, map.addr(*id).unwrap_or_default().to_string()))
            .collect();
        raft.initialize(&members).await?;
        tracing::info!(%shard_id, replicas = ?d.replicas, "initialized fresh shard");
    }
    let reader = ShardReader::new(shard_id, &shared.store);
    let parts = ShardParts {
        descriptor: d,
        bounds,
        raft,
        reader,
        next_timer_ms,
        fence,
    };
    Ok(Shard::start(parts, &shared.ctx, shutdown))
}

/// The replica that initializes a fresh shard: the `(shard id - 1) % replicas`-th in
/// node id order.
pub fn initializer_of(d: &ShardDescriptor) -> u64 {
    let mut replicas = d.replicas.clone();
    replicas.sort_unstable();
    let n = replicas.len() as u64;
    replicas[(d.id.0.saturating_sub(1) % n) as usize]
}
