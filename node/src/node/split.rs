//! A split by command, driven by the shard's leader: choose the split SKU, allocate
//! the child's id in the cluster map, then propose the split alone in the parent's
//! log. Every replica divides the state when it applies that entry
//! (`storage::state_machine::split`) and starts the child (`replicas`).

use std::time::Duration;

use super::{Node, refused};
use crate::error::Error;
use crate::inventory::cluster::{ClusterCommand, ClusterOutcome, ShardRecord};
use crate::inventory::{Command, Op, Outcome};
use crate::router::{META_SHARD_ID, ShardId, SkuRange};

/// How long a repeated split waits for the child of the first to run here.
const CHILD_START_WAIT_MS: u64 = 3_000;

/// Shard ids tried when allocating a child's id (another split may have taken one).
const ALLOCATE_ATTEMPTS_MAX: u64 = 32;

/// A split that happened: the parent's new range and the child.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitDone {
    pub parent_range: SkuRange,
    pub child_id: ShardId,
    pub child_range: SkuRange,
    pub version: u64,
}

impl Node {
    /// Splits `shard_id` (led here) at `at` (None: its middle SKU). A retry after the
    /// split at the same SKU answers with the split that happened.
    pub async fn split_shard(
        &self,
        shard_id: ShardId,
        at: Option<String>,
    ) -> Result<SplitDone, Error> {
        let step = "split";
        if shard_id == META_SHARD_ID {
            return Err(Error::InvalidArgument {
                field: "shard_id".into(),
                rule: "the meta shard (0) never splits".into(),
            });
        }
        let shard = self.local_shard(shard_id)?;
        shard.check_leader()?;
        let bounds = shard.bounds.get();
        let at = match at {
            Some(at) => at,
            None => shard
                .reader
                .middle_sku()
                .map_err(Error::internal)?
                .ok_or_else(|| Error::InvalidArgument {
                    field: "at".into(),
                    rule: format!(
                        "shard {shard_id} holds fewer than two SKUs; give the SKU to split at"
                    ),
                })?,
        };
        if bounds.range.end == at
            && let Some(done) = self.split_already_done(shard_id, &at).await
        {
            return Ok(done);
        }
        if at <= bounds.range.start || !bounds.range.contains(&at) {
            return Err(Error::InvalidArgument {
                field: "at".into(),
                rule: format!(
                    "{at:?} is not inside shard {shard_id}'s range {} after its first SKU",
                    bounds.range
                ),
            });
        }
        let child_id = self.allocate_shard_id(shard_id, &at).await?;
        let op = Op {
            request_id: rand::random(),
            command: Command::Split {
                at: at.clone(),
                child_id: child_id.0,
                expected_version: bounds.version,
            },
        };
        match shard.propose_alone(op).await?.outcome {
            Outcome::Cluster(ClusterOutcome::Done) => Ok(SplitDone {
                parent_range: SkuRange {
                    start: bounds.range.start,
                    end: at.clone(),
                },
                child_id,
                child_range: SkuRange {
                    start: at,
                    end: bounds.range.end,
                },
                version: bounds.version + 1,
            }),
            Outcome::Cluster(ClusterOutcome::Refused { problem }) => {
                Err(refused(shard_id, self.id, step, problem))
            }
            other => Err(Error::internal(format!("a split came back as {other:?}"))),
        }
    }

    /// The split of `shard_id` at `at` this node already applied, once its child runs
    /// here (the map follower starts it within `CHILD_START_WAIT_MS`).
    async fn split_already_done(&self, shard_id: ShardId, at: &str) -> Option<SplitDone> {
        let parent = self.local_shard(shard_id).ok()?.bounds.get();
        let started = || {
            self.shards()
                .into_iter()
                .find(|s| s.id() != shard_id && s.bounds.get().range.start == at)
        };
        crate::raft::wait_until(Duration::from_millis(CHILD_START_WAIT_MS), || {
            started().is_some()
        })
        .await;
        let child = started()?;
        let child_bounds = child.bounds.get();
        Some(SplitDone {
            parent_range: parent.range,
            child_id: child.id(),
            child_range: child_bounds.range,
            version: parent.version,
        })
    }

    /// A fresh shard id for the child of `parent` at `at`, recorded in the cluster
    /// map (the record is what makes it taken): the lowest id above every shard this
    /// node knows and every seeded one that no other split took.
    async fn allocate_shard_id(&self, parent: ShardId, at: &str) -> Result<ShardId, Error> {
        let known_max = self
            .map
            .get()
            .all_shards()
            .map(|s| s.id.0)
            .max()
            .unwrap_or(0);
        let local_max = self.shards().iter().map(|s| s.id().0).max().unwrap_or(0);
        // A seeded shard merged away is in neither the map nor the cluster map's
        // records: the config's ids are never given again either.
        let config_max = self.cluster.shards.iter().map(|s| s.id).max().unwrap_or(0);
        let first = known_max.max(local_max).max(config_max) + 1;
        let mut last = String::new();
        for id in first..first + ALLOCATE_ATTEMPTS_MAX {
            let record = ShardRecord {
                id,
                parent: parent.0,
                start: at.to_string(),
            };
            let command = ClusterCommand::AddShard { record };
            match self
                .cluster_write(super::cluster_request_id(), command)
                .await?
            {
                Ok(()) => return Ok(ShardId(id)),
                Err(problem) => last = problem,
            }
        }
        Err(refused(
            parent,
            self.id,
            "split",
            format!("no free shard id among {ALLOCATE_ATTEMPTS_MAX} tried: {last}"),
        ))
    }
}
