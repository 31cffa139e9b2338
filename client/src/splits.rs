//! Shard splits and merges for operators: `split_shard` sends the split to the
//! shard's leader, `merge_shards` the merge to the left shard's leader (following
//! leader changes); both refresh the client's map, so that the next call routes to
//! the new layout.

use std::future::Future;
use std::time::{Duration, Instant};

use serde::Serialize;
use stockpile_proto::v1 as pb;
use stockpile_proto::v1::admin_client::AdminClient;

use crate::transport::{Conn, with_timeout};
use crate::{Client, Error, ShardInfo, Target};

/// How long one split or merge may take in all (id allocation or leadership
/// hand-over, the entries, retries).
const SPLIT_DEADLINE_MS: u64 = 30_000;
/// One attempt's timeout.
const SPLIT_ATTEMPT_MS: u64 = 10_000;

/// What a split did: the parent narrowed to `[start, at)`, the child `[at, end)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SplitReport {
    /// The shard that was split, narrowed, its version grown.
    pub parent: ShardInfo,
    /// The new shard, with the parent's replicas.
    pub child: ShardInfo,
}

fn info(s: Option<pb::ShardInfo>) -> Result<ShardInfo, Error> {
    let s = s.ok_or_else(|| Error::Internal {
        message: "a split or merge reply without its shard".into(),
    })?;
    Ok(ShardInfo {
        shard_id: s.shard_id,
        start: s.start,
        end: s.end,
        replicas: s.replicas,
        epoch: (s.version, s.conf_ver),
    })
}

impl Client {
    /// Splits `shard_id` at `at` (None: the shard's middle SKU). Idempotent: a retry
    /// after the split at the same SKU answers with the same two shards.
    pub async fn split_shard(&self, shard_id: u64, at: Option<&str>) -> Result<SplitReport, Error> {
        let req = pb::SplitShardRequest {
            shard_id,
            at: at.unwrap_or_default().to_string(),
        };
        let reply = self
            .change_layout(shard_id, |ch, t| {
                let r = with_timeout(req.clone(), t);
                async move { AdminClient::new(ch).split_shard(r).await }
            })
            .await?;
        Ok(SplitReport {
            parent: info(reply.parent)?,
            child: info(reply.child)?,
        })
    }

    /// Merges `right_shard_id` into its left neighbour `shard_id` (both with their
    /// replicas on the same nodes); returns the grown left shard. Idempotent: a retry
    /// after the merge answers with the merged shard.
    pub async fn merge_shards(
        &self,
        shard_id: u64,
        right_shard_id: u64,
    ) -> Result<ShardInfo, Error> {
        let req = pb::MergeShardsRequest {
            shard_id,
            right_shard_id,
        };
        let reply = self
            .change_layout(shard_id, |ch, t| {
                let r = with_timeout(req, t);
                async move { AdminClient::new(ch).merge_shards(r).await }
            })
            .await?;
        info(reply.shard)
    }

    /// Sends a split or merge (`call`) to `shard_id`'s leader, following leader
    /// changes within `SPLIT_DEADLINE_MS`, then refreshes the map so that the next
    /// call routes to the new layout (best effort: a stale map is also corrected by
    /// the first SHARD_MOVED).
    async fn change_layout<R, F, Fut>(&self, shard_id: u64, call: F) -> Result<R, Error>
    where
        F: Fn(Conn, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        let deadline = Instant::now() + Duration::from_millis(SPLIT_DEADLINE_MS);
        let reply = self
            .call_within(
                shard_id,
                Target::Leader,
                None,
                deadline,
                Duration::from_millis(SPLIT_ATTEMPT_MS),
                call,
            )
            .await?
            .into_inner();
        let _ = self.refresh_map(deadline).await;
        Ok(reply)
    }
}
