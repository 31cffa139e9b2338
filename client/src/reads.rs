//! The reads of [`Client`]: Get (many SKUs, one RPC per shard), List (ordered,
//! across shards, with page tokens) and GetReservation, linearizable or stale.

use std::collections::BTreeMap;
use std::time::Instant;

use stockpile_proto::v1 as pb;

use crate::retry::{REGROUP_ROUNDS_MAX, backoff};
use crate::transport::{inventory, with_timeout};
use crate::{Client, Consistency, Error, Read, Reservation, Stock, Target};

impl Client {
    /// A reservation's items, state and expiry.
    pub async fn get_reservation(
        &self,
        reservation_id: &str,
        sku: Option<&str>,
        consistency: Consistency,
    ) -> Result<Reservation, Error> {
        let route = match sku {
            Some(s) => s.to_string(),
            None => self.reservation_route(reservation_id, None).await?,
        };
        self.get_reservation_routed(reservation_id, route, consistency)
            .await
    }

    pub(crate) async fn get_reservation_routed(
        &self,
        reservation_id: &str,
        route: String,
        consistency: Consistency,
    ) -> Result<Reservation, Error> {
        let shard_id = self.shard_for(&route)?;
        let req = pb::GetReservationRequest {
            reservation_id: reservation_id.to_string(),
            sku: route,
            consistency: consistency.to_pb(),
        };
        let reply = self
            .call(
                shard_id,
                Target::of(consistency),
                None,
                self.deadline(),
                |ch, t| {
                    let r = with_timeout(req.clone(), t);
                    async move { inventory(ch).get_reservation(r).await }
                },
            )
            .await?;
        reply
            .into_inner()
            .reservation
            .map(Reservation::from)
            .ok_or_else(|| Error::Internal {
                message: "reply without reservation".into(),
            })
    }

    /// Reads the stock of `skus` (in the order given). SKUs of different shards are
    /// read from their shards concurrently. SKUs a node places in another shard than
    /// this client's map did (a split it had not seen) are grouped again by the
    /// refreshed map and read from their own shards, after a backoff. The last of
    /// `REGROUP_ROUNDS_MAX` rounds retries its groups as they are until the deadline:
    /// while a merge is under way nodes' maps differ, and a map refreshed from one and
    /// then another can move a SKU back and forth between rounds.
    pub async fn get(&self, skus: &[&str], consistency: Consistency) -> Result<Vec<Read>, Error> {
        let deadline = self.deadline();
        let mut out: Vec<Option<Read>> = vec![None; skus.len()];
        let mut left: Vec<usize> = (0..skus.len()).collect();
        for round in 0..REGROUP_ROUNDS_MAX {
            if round > 0 {
                let wait = backoff(round).min(deadline.saturating_duration_since(Instant::now()));
                tokio::time::sleep(wait).await;
            }
            let last_round = round + 1 == REGROUP_ROUNDS_MAX;
            let mut by_shard: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
            for i in std::mem::take(&mut left) {
                by_shard
                    .entry(self.shard_for(skus[i])?)
                    .or_default()
                    .push(i);
            }
            let calls = by_shard.into_iter().map(|(shard_id, idxs)| async move {
                let group: Vec<&str> = idxs.iter().map(|&i| skus[i]).collect();
                let req = pb::GetRequest {
                    skus: group.iter().map(|s| s.to_string()).collect(),
                    consistency: consistency.to_pb(),
                };
                let target = Target::of(consistency);
                let bound: &[&str] = if last_round { &[] } else { &group };
                let reply = self
                    .call_for_skus(shard_id, bound, target, deadline, |ch, t| {
                        let r = with_timeout(req.clone(), t);
                        async move { inventory(ch).get(r).await }
                    })
                    .await?;
                Ok::<_, Error>((idxs, reply.map(|r| r.into_inner())))
            });
            for result in futures::future::join_all(calls).await {
                match result? {
                    (idxs, Some(reply)) => fill_reads(&mut out, &idxs, &reply),
                    (idxs, None) => left.extend(idxs),
                }
            }
            if left.is_empty() {
                break;
            }
        }
        if !left.is_empty() {
            return Err(Error::Unavailable {
                message: format!(
                    "the shard map kept changing: {} of {} SKUs unread after {REGROUP_ROUNDS_MAX} rounds",
                    left.len(),
                    skus.len()
                ),
            });
        }
        out.into_iter()
            .map(|r| {
                r.ok_or_else(|| Error::Internal {
                    message: "a SKU got no read result".into(),
                })
            })
            .collect()
    }

    /// One SKU's stock (None when never set).
    pub async fn get_one(
        &self,
        sku: &str,
        consistency: Consistency,
    ) -> Result<Option<Stock>, Error> {
        Ok(self
            .get(&[sku], consistency)
            .await?
            .pop()
            .and_then(|r| r.stock))
    }

    /// Up to `limit` stock records in SKU order, after `start_after` (None = from the
    /// first SKU), across every shard.
    pub async fn list(
        &self,
        start_after: Option<&str>,
        limit: usize,
        consistency: Consistency,
    ) -> Result<Vec<Stock>, Error> {
        let mut out = Vec::new();
        let mut token = String::new();
        let mut shard_id = self.shard_for(start_after.unwrap_or(""))?;
        let deadline = self.deadline();
        while out.len() < limit {
            let page = u32::try_from((limit - out.len()).min(1_000)).unwrap_or(1_000);
            let req = pb::ListRequest {
                page_token: token.clone(),
                start_after: if token.is_empty() {
                    start_after.unwrap_or_default().to_string()
                } else {
                    String::new()
                },
                limit: page,
                consistency: consistency.to_pb(),
            };
            let reply = self
                .call(
                    shard_id,
                    Target::of(consistency),
                    None,
                    deadline,
                    |ch, t| {
                        let r = with_timeout(req.clone(), t);
                        async move { inventory(ch).list(r).await }
                    },
                )
                .await?
                .into_inner();
            out.extend(reply.records.into_iter().map(Stock::from));
            if reply.next_page_token.is_empty() {
                break;
            }
            token = reply.next_page_token;
            shard_id = reply.next_shard_id;
        }
        Ok(out)
    }
}

/// Fills `out` at `idxs` (the SKUs of one Get, in order) from its reply.
fn fill_reads(out: &mut [Option<Read>], idxs: &[usize], reply: &pb::GetReply) {
    for (&i, read) in idxs.iter().zip(reads_of(reply)) {
        out[i] = Some(read);
    }
}

/// A Get reply's results, in order, each with the node and applied index its shard
/// was read at.
pub(crate) fn reads_of(reply: &pb::GetReply) -> impl Iterator<Item = Read> + '_ {
    reply.results.iter().map(|r| {
        let (node_id, applied_index) = reply
            .shards
            .iter()
            .find(|s| s.shard_id == r.shard_id)
            .map(|s| (s.node_id, s.applied_index))
            .unwrap_or((0, 0));
        Read {
            sku: r.sku.clone(),
            stock: if r.found {
                r.record.clone().map(Stock::from)
            } else {
                None
            },
            shard_id: r.shard_id,
            node_id,
            applied_index,
        }
    })
}
