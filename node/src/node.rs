//! A running node: opens its RocksDB, checks its data against the config, starts one
//! Raft group per shard it holds, initializes fresh shards exactly once, and routes
//! requests to shards.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::broadcast;

use crate::config::{ClusterConfig, NodeConfig};
use crate::error::Error;
use crate::raft::network::{NetworkFactory, PeerPool};
use crate::raft::{Raft, shard_raft_config};
use crate::shard::{ProposeStats, Shard};
use crate::storage::node_meta::{self, NodeIdentity, ShardDescriptor};
use crate::storage::{
    ApplyStats, Db, LogStore, LogSyncer, ShardReader, StateMachineStore, WritePathStats, db,
};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("node {0} is not in the cluster config")]
    UnknownNode(u64),
    #[error(transparent)]
    Db(#[from] db::DbError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("refusing to start: {0}")]
    Mismatch(String),
    #[error(transparent)]
    RaftConfig(#[from] crate::raft::RaftConfigError),
    #[error("shard {shard_id}: raft failed to start: {message}")]
    Raft { shard_id: u64, message: String },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StartError {
    let what = what.into();
    move |source| StartError::Io { what, source }
}

pub struct Node {
    pub id: u64,
    pub me: NodeConfig,
    pub cluster: Arc<ClusterConfig>,
    pub shards: BTreeMap<u64, Arc<Shard>>,
    pub data_dir: PathBuf,
    pub db: Arc<Db>,
    pub write_stats: Arc<WritePathStats>,
    pub apply_stats: Arc<ApplyStats>,
    pub propose_stats: Arc<ProposeStats>,
    pub started_at: Instant,
    pub shutdown: broadcast::Sender<()>,
    pub peers: Arc<PeerPool>,
    pub admission: crate::admission::Admission,
}

impl Node {
    /// Opens the node's data and starts its shards. The gRPC server is started by the
    /// caller (`server::serve`) so that peers can reach the Raft service.
    pub async fn start(
        cluster: ClusterConfig,
        node_id: u64,
        data_dir: Option<PathBuf>,
    ) -> Result<Arc<Node>, StartError> {
        let cluster = Arc::new(cluster);
        let me = cluster
            .node(node_id)
            .cloned()
            .ok_or(StartError::UnknownNode(node_id))?;
        let data_dir = data_dir.unwrap_or_else(|| me.data_dir.clone());
        std::fs::create_dir_all(&data_dir).map_err(io(format!(
            "cannot create data directory {}",
            data_dir.display()
        )))?;
        let db = db::open(&data_dir.join("db"))?;
        check_identity(&db, &cluster, node_id)?;

        let my_shards: Vec<_> = cluster.shards_of(node_id).cloned().collect();
        check_shards(&db, &cluster, node_id)?;

        let write_stats = Arc::new(WritePathStats::default());
        let apply_stats = Arc::new(ApplyStats::default());
        let propose_stats = Arc::new(ProposeStats::default());
        let syncer = LogSyncer::start(db.clone(), write_stats.clone())
            .map_err(io("cannot start the WAL syncer"))?;
        let source_ip = me
            .addr
            .parse::<std::net::SocketAddr>()
            .ok()
            .map(|a| a.ip())
            .filter(|ip| !ip.is_unspecified());
        let peers = PeerPool::new(
            node_id,
            crate::raft::network::PeerTuning::from_config(&cluster),
            source_ip,
        );
        let (shutdown, _) = broadcast::channel(1);
        let snapshot_dir = data_dir.join("snapshots");

        let mut shards = BTreeMap::new();
        for sc in my_shards {
            let shard_id = sc.id;
            let log_store = LogStore::new(shard_id, db.clone(), syncer.clone());
            let pristine = log_store
                .is_pristine()
                .map_err(io(format!("shard {shard_id}: cannot read its log")))?;
            let sm = StateMachineStore::open(
                shard_id,
                db.clone(),
                snapshot_dir.clone(),
                apply_stats.clone(),
            )
            .map_err(io(format!(
                "shard {shard_id}: cannot open its state machine"
            )))?;
            let next_timer_ms = sm.next_timer_handle();
            let network = NetworkFactory {
                shard_id,
                pool: peers.clone(),
            };
            let raft = Raft::new(
                node_id,
                shard_raft_config(&cluster, shard_id)?,
                network,
                log_store,
                sm,
            )
            .await
            .map_err(|e| StartError::Raft {
                shard_id,
                message: e.to_string(),
            })?;
            check_membership(&raft, &sc.replicas, shard_id)?;
            // Exactly one node initializes a fresh shard, and only when it has never
            // stored anything for the shard; restarts never re-initialize. The initializer
            // is the shard's `(id - 1) % n`-th replica in id order, so that first leaders
            // spread over the nodes instead of all landing on the lowest id.
            let initializer = initializer_of(&sc) == node_id;
            if pristine && initializer {
                let members: BTreeMap<u64, openraft::BasicNode> = sc
                    .replicas
                    .iter()
                    .map(|id| {
                        (
                            *id,
                            openraft::BasicNode::new(
                                cluster
                                    .node(*id)
                                    .map(|n| n.addr.clone())
                                    .unwrap_or_default(),
                            ),
                        )
                    })
                    .collect();
                raft.initialize(members)
                    .await
                    .map_err(|e| StartError::Raft {
                        shard_id,
                        message: format!("initialize: {e}"),
                    })?;
                tracing::info!(shard_id, replicas = ?sc.replicas, "initialized fresh shard");
            }
            let reader = ShardReader::new(shard_id, db.clone());
            let shard = Shard::start(
                sc,
                raft,
                reader,
                node_id,
                cluster.clone(),
                propose_stats.clone(),
                next_timer_ms,
                &shutdown,
            );
            shards.insert(shard_id, shard);
        }
        crate::shard::spawn_sweeper(
            shards.values().cloned().collect(),
            cluster.server.sweep_interval_ms,
            shutdown.subscribe(),
        );
        let admission = crate::admission::Admission::new(cluster.admission.clone());
        Ok(Arc::new(Node {
            id: node_id,
            me,
            cluster,
            shards,
            data_dir,
            db,
            write_stats,
            apply_stats,
            propose_stats,
            started_at: Instant::now(),
            admission,
            shutdown,
            peers,
        }))
    }

    /// The local shard that owns `sku`, or NOT_LEADER pointing at a replica that
    /// holds it when this node holds no replica of it.
    pub fn shard_for(&self, sku: &str) -> Result<&Arc<Shard>, Error> {
        let sc = self
            .cluster
            .shard_for(sku)
            .ok_or_else(|| Error::internal(format!("no shard covers {sku:?}")))?;
        self.local_shard(sc.id)
    }

    pub fn local_shard(&self, shard_id: u64) -> Result<&Arc<Shard>, Error> {
        if let Some(s) = self.shards.get(&shard_id) {
            return Ok(s);
        }
        let sc = self
            .cluster
            .shard(shard_id)
            .ok_or(Error::ShardNotFound { shard_id })?;
        let leader = sc
            .replicas
            .first()
            .and_then(|id| self.cluster.node(*id).map(|n| (*id, n.addr.clone())));
        Err(Error::NotLeader { shard_id, leader })
    }

    /// Hands the leadership of every shard this node leads to the most up-to-date
    /// other replica, waiting up to `per_shard` for each. Returns the shards moved.
    pub async fn hand_over_leadership(&self, per_shard: std::time::Duration) -> Vec<u64> {
        let moves = self.shards.values().filter(|s| s.is_leader() && s.config.replicas.len() > 1).map(|shard| async move {
            let m = crate::raft::metrics(&shard.raft);
            let target = m
                .replication
                .as_ref()
                .and_then(|r| r.iter().filter(|(id, _)| **id != self.id).max_by_key(|(_, matched)| matched.map(|l| l.index)).map(|(id, _)| *id));
            let target = target?;
            match shard.transfer_leadership(target, per_shard).await {
                Ok(Some(l)) if l == target => Some(shard.id()),
                Ok(other) => {
                    tracing::warn!(shard_id = shard.id(), target, leader = ?other, "leadership did not move in time");
                    None
                }
                Err(e) => {
                    tracing::warn!(shard_id = shard.id(), target, error = %e, "leadership transfer failed");
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

    /// True when every shard on this node knows a leader: it has joined its groups.
    pub fn joined(&self) -> bool {
        self.shards.values().all(|s| s.leader_id().is_some())
    }

    /// Stops every shard's Raft group and syncs the WAL.
    pub async fn stop(&self) {
        let _ = self.shutdown.send(());
        for (id, shard) in &self.shards {
            if let Err(e) = shard.raft.shutdown().await {
                tracing::warn!(shard_id = id, error = %e, "raft shutdown");
            }
        }
        if let Err(e) = self.db.flush_wal(true) {
            tracing::error!(error = %e, "final WAL sync failed");
        }
        // Stop RocksDB's flush and compaction threads before the process exits: tasks
        // may still hold the database while static destructors run, and a background
        // job touching torn-down state aborts the process instead of exiting 0.
        self.db.cancel_all_background_work(true);
    }
}

fn check_identity(db: &Db, cluster: &ClusterConfig, node_id: u64) -> Result<(), StartError> {
    let wanted = NodeIdentity {
        cluster_name: cluster.cluster_name.clone(),
        node_id,
    };
    let stored = node_meta::read_identity(db).map_err(|e| match e.kind() {
        std::io::ErrorKind::InvalidData => StartError::Mismatch(format!(
            "cannot read this data directory's node identity ({e}): it was written in another storage format. \
             Start it with the build that wrote it, or rebuild this node from an empty data directory (docs/OPERATIONS.md)"
        )),
        _ => io("cannot read the node identity")(e),
    })?;
    match stored {
        Some(stored) if stored == wanted => Ok(()),
        Some(stored) => Err(StartError::Mismatch(format!(
            "this data directory belongs to node {} of cluster {:?}, but this is node {} of cluster {:?}",
            stored.node_id, stored.cluster_name, node_id, cluster.cluster_name
        ))),
        None => {
            let stored = node_meta::stored_shards(db).map_err(io("cannot list stored shards"))?;
            if !stored.is_empty() {
                return Err(StartError::Mismatch(format!(
                    "the data directory holds shards {stored:?} but no node identity"
                )));
            }
            node_meta::write_identity(db, &wanted).map_err(io("cannot write the node identity"))
        }
    }
}

fn check_shards(db: &Db, cluster: &ClusterConfig, node_id: u64) -> Result<(), StartError> {
    let configured: BTreeSet<u64> = cluster.shards_of(node_id).map(|s| s.id).collect();
    for stored in node_meta::stored_shards(db).map_err(io("cannot list stored shards"))? {
        if !configured.contains(&stored) {
            return Err(StartError::Mismatch(format!(
                "this node holds data of shard {stored}, which the config does not place on node {node_id}"
            )));
        }
    }
    for sc in cluster.shards_of(node_id) {
        let wanted = ShardDescriptor {
            start: sc.start.clone(),
            end: sc.end.clone(),
            replicas: sc.replicas.clone(),
        };
        match node_meta::read_descriptor(db, sc.id)
            .map_err(io(format!("shard {}: cannot read its descriptor", sc.id)))?
        {
            Some(stored) if stored.start != wanted.start || stored.end != wanted.end => {
                return Err(StartError::Mismatch(format!(
                    "the config says shard {} covers [{:?}, {:?}) but this node stored [{:?}, {:?})",
                    sc.id, wanted.start, wanted.end, stored.start, stored.end
                )));
            }
            Some(_) => {}
            None => node_meta::write_descriptor(db, sc.id, &wanted)
                .map_err(io(format!("shard {}: cannot write its descriptor", sc.id)))?,
        }
    }
    Ok(())
}

/// Once a shard has a membership, it must be the configured replica set (until
/// membership changes exist, nothing else can change it).
fn check_membership(raft: &Raft, replicas: &[u64], shard_id: u64) -> Result<(), StartError> {
    let metrics = crate::raft::metrics(raft);
    let voters: BTreeSet<u64> = metrics.membership_config.membership().voter_ids().collect();
    let wanted: BTreeSet<u64> = replicas.iter().copied().collect();
    if !voters.is_empty() && voters != wanted {
        return Err(StartError::Mismatch(format!(
            "the config says shard {shard_id} has replicas {wanted:?} but its stored membership is {voters:?}"
        )));
    }
    Ok(())
}

/// The replica that initializes a fresh shard: the `(shard id - 1) % replicas`-th in
/// node id order.
pub fn initializer_of(shard: &crate::config::ShardConfig) -> u64 {
    let mut replicas = shard.replicas.clone();
    replicas.sort_unstable();
    replicas[((shard.id - 1) % replicas.len() as u64) as usize]
}
