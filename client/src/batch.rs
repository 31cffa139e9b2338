//! Explicit batches: many mutations, one Batch RPC per shard (split by the
//! coalescer's count and byte bounds), all shards at once.

use std::collections::BTreeMap;

use stockpile_proto::v1 as pb;

use crate::{Client, Error, Mutation, MutationOutcome, RequestId, batch_rpc, new_request_id};
impl Client {
    /// Applies many mutations (new request ids each), grouped by shard into one Batch
    /// RPC per shard (in chunks of the coalescing batch size), all shards at once.
    /// Returns one result per mutation, in order; one may fail while others succeed.
    ///
    /// ```no_run
    /// # async fn demo(client: stockpile_client::Client) -> Result<(), stockpile_client::Error> {
    /// use stockpile_client::Mutation;
    /// let results = client
    ///     .batch(vec![
    ///         Mutation::SetStock { sku: "apple".into(), on_hand: 10, expected_version: None },
    ///         Mutation::Decrement { sku: "kiwi".into(), quantity: 1 },
    ///     ])
    ///     .await?;
    /// assert_eq!(results.len(), 2);
    /// # Ok(()) }
    /// ```
    pub async fn batch(
        &self,
        mutations: Vec<Mutation>,
    ) -> Result<Vec<Result<MutationOutcome, Error>>, Error> {
        let ops = mutations
            .into_iter()
            .map(|m| (new_request_id(), m))
            .collect();
        self.batch_with_ids(ops, false).await
    }

    /// [`batch`](Self::batch) with caller-chosen request ids. With `atomic`, every
    /// mutation applies or none does; all must then live in one shard (else
    /// `CrossShard`).
    pub async fn batch_with_ids(
        &self,
        ops: Vec<(RequestId, Mutation)>,
        atomic: bool,
    ) -> Result<Vec<Result<MutationOutcome, Error>>, Error> {
        let mut by_shard: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        for (i, (_, m)) in ops.iter().enumerate() {
            by_shard
                .entry(self.shard_for(m.route_sku())?)
                .or_default()
                .push(i);
        }
        if atomic && by_shard.len() > 1 {
            let shard_ids: Vec<u64> = by_shard.keys().copied().collect();
            return Err(Error::CrossShard {
                message: format!("an all-or-nothing batch spans shards {shard_ids:?}"),
                shard_ids,
            });
        }
        let chunk = if atomic {
            usize::MAX
        } else {
            self.inner.cfg.coalesce.batch_max.max(1)
        };
        let deadline = self.deadline();
        let mut calls = Vec::new();
        for (shard_id, idxs) in by_shard {
            for part in idxs.chunks(chunk.min(idxs.len()).max(1)) {
                let part: Vec<usize> = part.to_vec();
                let wire: Vec<(RequestId, pb::operation::Op)> = part
                    .iter()
                    .map(|&i| (ops[i].0, ops[i].1.to_pb(&ops[i].0)))
                    .collect();
                calls.push(async move {
                    let results =
                        batch_rpc::send_batch(self, shard_id, wire, atomic, deadline).await;
                    (part, results)
                });
            }
        }
        let mut out: Vec<Option<Result<MutationOutcome, Error>>> = vec![None; ops.len()];
        for (part, results) in futures::future::join_all(calls).await {
            for (i, r) in part.into_iter().zip(results) {
                let rid = ops[i].0;
                out[i] = Some(r.and_then(|r| {
                    MutationOutcome::from_pb(r, rid).ok_or_else(|| Error::Internal {
                        message: "a reply without an outcome".into(),
                    })
                }));
            }
        }
        Ok(out
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(Error::Internal {
                        message: "no result".into(),
                    })
                })
            })
            .collect())
    }
}
