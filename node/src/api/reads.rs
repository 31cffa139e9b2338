//! The Inventory service's reads: Get (many SKUs, over their shards), List (ordered,
//! paginated across shards with an opaque token) and GetReservation. Each is served by
//! the local replica of its shard, after a read barrier when linearizable.

use std::collections::BTreeMap;

use stockpile_proto::v1 as pb;

use super::decode::{self, Consistency};
use super::encode::{record_to_pb, reservation_to_pb};
use super::inventory::InventoryService;
use super::page_token::{self, Position};
use crate::error::Error;
use crate::security::Caller;
use crate::shard::Shard;
use crate::storage::reader::ListFrom;

async fn barrier(shard: &Shard, consistency: Consistency) -> Result<(), Error> {
    match consistency {
        Consistency::Linearizable => shard.linearize().await,
        Consistency::Stale => Ok(()),
    }
}

impl InventoryService {
    pub(super) async fn handle_get(
        &self,
        req: pb::GetRequest,
        caller: &Caller,
    ) -> Result<pb::GetReply, Error> {
        let read = decode::get(req, &self.node.cluster.limits)?;
        caller.check_skus("get", read.skus.iter().map(String::as_str))?;
        let mut by_shard: BTreeMap<_, Vec<usize>> = BTreeMap::new();
        for (i, sku) in read.skus.iter().enumerate() {
            by_shard
                .entry(self.node.map.get().shard_for(sku).id)
                .or_default()
                .push(i);
        }
        let mut results: Vec<Option<pb::GetResult>> = vec![None; read.skus.len()];
        let mut shards = Vec::with_capacity(by_shard.len());
        for (shard_id, idxs) in by_shard {
            let shard = self.node.local_shard(shard_id)?;
            barrier(&shard, read.consistency).await?;
            let skus: Vec<&str> = idxs.iter().map(|&i| read.skus[i].as_str()).collect();
            shard.bounds.check(skus.iter().copied())?;
            let (applied_index, records) = shard.reader.get_many(&skus)?;
            for (&i, record) in idxs.iter().zip(records) {
                results[i] = Some(pb::GetResult {
                    sku: read.skus[i].clone(),
                    found: record.is_some(),
                    record: record.map(|r| record_to_pb(&read.skus[i], &r)),
                    shard_id: shard_id.0,
                });
            }
            shards.push(pb::ShardRead {
                shard_id: shard_id.0,
                node_id: self.node.id,
                applied_index,
            });
        }
        Ok(pb::GetReply {
            results: results.into_iter().flatten().collect(),
            shards,
        })
    }

    pub(super) async fn handle_list(
        &self,
        req: pb::ListRequest,
        caller: &Caller,
    ) -> Result<pb::ListReply, Error> {
        if caller.scoped() {
            // A listing walks every SKU: an identity limited to prefixes reads its SKUs
            // with Get.
            let reason = "List needs an identity without SKU prefixes".to_string();
            return Err(caller.denied("list", reason));
        }
        let read = decode::list(req, &self.node.cluster.limits)?;
        let route = match &read.from {
            Some(Position::After(s) | Position::AtOrAfter(s)) => s.as_str(),
            None => "",
        };
        let descriptor = self.node.map.get().shard_for(route).clone();
        let shard = self.node.local_shard(descriptor.id)?;
        barrier(&shard, read.consistency).await?;
        let bounds = shard.bounds.get();
        if bounds.frozen || bounds.range != descriptor.range {
            // A split or merge this node's map has not taken yet: the page and the
            // next shard would be wrong.
            return Err(Error::ShardMoved {
                sku: route.to_string(),
            });
        }
        let from = match &read.from {
            None => ListFrom::Start,
            Some(Position::After(s)) => ListFrom::After(s),
            Some(Position::AtOrAfter(s)) => ListFrom::AtOrAfter(s),
        };
        let page = shard.reader.list(from, read.limit)?;
        // The next page: after the last record in this shard, or the next shard's start.
        let (next_page_token, next_shard_id) = if page.more {
            let token = page
                .records
                .last()
                .map(|(sku, _)| page_token::encode(&Position::After(sku.clone())))
                .unwrap_or_default();
            (token, descriptor.id.0)
        } else if let Some(next) = self.node.map.get().next_after(&descriptor) {
            let at = Position::AtOrAfter(next.range.start.clone());
            (page_token::encode(&at), next.id.0)
        } else {
            (String::new(), 0)
        };
        Ok(pb::ListReply {
            records: page
                .records
                .iter()
                .map(|(sku, r)| record_to_pb(sku, r))
                .collect(),
            next_page_token,
            next_shard_id,
            shard: Some(pb::ShardRead {
                shard_id: descriptor.id.0,
                node_id: self.node.id,
                applied_index: page.applied_index,
            }),
        })
    }

    pub(super) async fn handle_get_reservation(
        &self,
        req: pb::GetReservationRequest,
        caller: &Caller,
    ) -> Result<pb::ReservationReply, Error> {
        let read = decode::get_reservation(req)?;
        caller.check_skus("get_reservation", [read.sku.as_str()])?;
        let shard = self.node.shard_for(&read.sku)?;
        barrier(&shard, read.consistency).await?;
        shard.bounds.check([read.sku.as_str()].into_iter())?;
        let (applied_index, r) = shard.reader.reservation(&read.reservation_id)?;
        let r = r.ok_or(Error::ReservationNotFound {
            reservation_id: read.reservation_id,
        })?;
        Ok(pb::ReservationReply {
            reservation: Some(reservation_to_pb(&r, shard.id().0)),
            applied: Some(pb::Applied {
                shard_id: shard.id().0,
                node_id: self.node.id,
                log_index: applied_index,
                replayed: false,
            }),
            records: Vec::new(),
        })
    }
}
