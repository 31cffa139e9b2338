//! The Inventory gRPC service: validates input, routes each operation to its shard,
//! proposes mutations through the shard's proposer and serves reads from the shard's
//! state machine. Nodes never forward: a shard this node does not lead answers
//! NOT_LEADER with a hint, and the client goes there.

use std::collections::BTreeMap;
use std::sync::Arc;

use stockpile_proto::v1 as pb;
use stockpile_proto::v1::inventory_server::Inventory;
use tonic::{Request, Response, Status};

use super::convert::{Decoded, decode_op, record_to_pb, reservation_to_pb};
use super::page_token::{self, Position};
use super::status::{detail, to_status};
use tracing::Instrument;

use crate::admission::{Admission, Kind};
use crate::error::Error;
use crate::inventory::{OpGroup, OpResult, Outcome, validate};
use crate::node::Node;
use crate::storage::reader::ListFrom;
use crate::telemetry;
use std::time::Instant;

pub struct InventoryService {
    node: Arc<Node>,
}

impl InventoryService {
    pub fn new(node: Arc<Node>) -> Self {
        InventoryService { node }
    }

    /// The one shard all of `skus` live in, or CROSS_SHARD naming the shards.
    fn single_shard(&self, skus: &[String], what: &str) -> Result<u64, Error> {
        let mut ids: Vec<u64> = Vec::new();
        for sku in skus {
            let id = self
                .node
                .cluster
                .shard_for(sku)
                .map(|s| s.id)
                .ok_or_else(|| Error::internal(format!("no shard covers {sku:?}")))?;
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        match ids.as_slice() {
            [one] => Ok(*one),
            _ => {
                ids.sort_unstable();
                Err(Error::CrossShard {
                    what: what.to_string(),
                    shard_ids: ids,
                })
            }
        }
    }

    /// Proposes one operation and returns its result, the shard and the log index.
    async fn mutate(&self, op: pb::operation::Op) -> Result<(OpResult, pb::Applied), Error> {
        let Decoded { op, skus } = decode_op(op, &self.node.cluster.limits, "")?;
        let shard_id = self.single_shard(&skus, "the reservation's items")?;
        let span = tracing::Span::current();
        span.record(
            "request_id",
            crate::api::convert::request_id_hex(&op.request_id).as_str(),
        );
        span.record("shard_id", shard_id);
        let shard = self.node.local_shard(shard_id)?;
        let proposed = shard
            .propose(OpGroup {
                atomic: false,
                ops: vec![op],
            })
            .await?;
        let result = proposed
            .results
            .into_iter()
            .next()
            .ok_or_else(|| Error::internal("no result for the operation"))?;
        let applied = pb::Applied {
            shard_id,
            node_id: self.node.id,
            log_index: proposed.log_index,
            replayed: result.replayed,
        };
        Ok((result, applied))
    }

    /// Serves one RPC: admission (before anything costs a Raft round), a tracing span
    /// with the node and client, and the request metrics.
    async fn serve<Req, Rep, F, Fut>(
        &self,
        rpc: &'static str,
        kind: Kind,
        cost: u64,
        request: Request<Req>,
        handle: F,
    ) -> Result<Response<Rep>, Status>
    where
        F: FnOnce(Req) -> Fut,
        Fut: std::future::Future<Output = Result<Response<Rep>, Status>>,
    {
        let started = Instant::now();
        let identity = Admission::identity(request.metadata());
        let span = tracing::info_span!("rpc", rpc, node_id = self.node.id, client = %identity, request_id = tracing::field::Empty, shard_id = tracing::field::Empty);
        let result = async {
            let _admitted = self
                .node
                .admission
                .admit(&identity, kind, cost)
                .map_err(to_status)?;
            let result = handle(request.into_inner()).await;
            if let Err(s) = &result
                && s.code() == tonic::Code::Internal
            {
                tracing::error!(message = s.message(), "internal error");
            }
            result
        }
        .instrument(span)
        .await;
        telemetry::observe(rpc, started, &result);
        result
    }

    async fn linearize_if(
        &self,
        shard: &crate::shard::Shard,
        consistency: i32,
    ) -> Result<(), Error> {
        match pb::Consistency::try_from(consistency) {
            Ok(pb::Consistency::Linearizable) => shard.linearize().await,
            Ok(pb::Consistency::Stale) => Ok(()),
            Err(_) => Err(Error::InvalidArgument {
                field: "consistency".into(),
                rule: format!("unknown value {consistency}"),
            }),
        }
    }
}

/// The reply a successful operation result turns into, or its error.
pub fn result_to_pb(
    result: OpResult,
    applied: pb::Applied,
) -> Result<pb::operation_result::Result, Error> {
    match result.outcome {
        Outcome::Stock { sku, record } => Ok(pb::operation_result::Result::Stock(pb::StockReply {
            record: Some(record_to_pb(&sku, &record)),
            applied: Some(applied),
        })),
        Outcome::Reservation {
            reservation,
            records,
        } => Ok(pb::operation_result::Result::Reservation(
            pb::ReservationReply {
                reservation: Some(reservation_to_pb(&reservation, applied.shard_id)),
                records: records
                    .iter()
                    .map(|(sku, r)| record_to_pb(sku, r))
                    .collect(),
                applied: Some(applied),
            },
        )),
        Outcome::Rejected(r) => Err(r.into()),
    }
}

fn stock_reply(
    r: Result<(OpResult, pb::Applied), Error>,
) -> Result<Response<pb::StockReply>, Status> {
    let (result, applied) = r.map_err(to_status)?;
    match result_to_pb(result, applied).map_err(to_status)? {
        pb::operation_result::Result::Stock(s) => Ok(Response::new(s)),
        _ => Err(to_status(Error::internal(
            "a stock command produced a non-stock outcome",
        ))),
    }
}

fn reservation_reply(
    r: Result<(OpResult, pb::Applied), Error>,
) -> Result<Response<pb::ReservationReply>, Status> {
    let (result, applied) = r.map_err(to_status)?;
    match result_to_pb(result, applied).map_err(to_status)? {
        pb::operation_result::Result::Reservation(s) => Ok(Response::new(s)),
        _ => Err(to_status(Error::internal(
            "a reservation command produced a non-reservation outcome",
        ))),
    }
}

impl InventoryService {
    async fn handle_set_stock(
        &self,
        req: pb::SetStockRequest,
    ) -> Result<Response<pb::StockReply>, Status> {
        stock_reply(self.mutate(pb::operation::Op::SetStock(req)).await)
    }

    async fn handle_adjust_stock(
        &self,
        req: pb::AdjustStockRequest,
    ) -> Result<Response<pb::StockReply>, Status> {
        stock_reply(self.mutate(pb::operation::Op::AdjustStock(req)).await)
    }

    async fn handle_decrement(
        &self,
        req: pb::DecrementRequest,
    ) -> Result<Response<pb::StockReply>, Status> {
        stock_reply(self.mutate(pb::operation::Op::Decrement(req)).await)
    }

    async fn handle_reserve(
        &self,
        req: pb::ReserveRequest,
    ) -> Result<Response<pb::ReservationReply>, Status> {
        reservation_reply(self.mutate(pb::operation::Op::Reserve(req)).await)
    }

    async fn handle_confirm(
        &self,
        req: pb::ConfirmRequest,
    ) -> Result<Response<pb::ReservationReply>, Status> {
        reservation_reply(self.mutate(pb::operation::Op::Confirm(req)).await)
    }

    async fn handle_release(
        &self,
        req: pb::ReleaseRequest,
    ) -> Result<Response<pb::ReservationReply>, Status> {
        reservation_reply(self.mutate(pb::operation::Op::Release(req)).await)
    }

    async fn handle_get(&self, req: pb::GetRequest) -> Result<Response<pb::GetReply>, Status> {
        let limits = &self.node.cluster.limits;
        if req.skus.is_empty() || req.skus.len() > limits.get_skus_max {
            return Err(to_status(Error::InvalidArgument {
                field: "skus".into(),
                rule: format!(
                    "must name 1..={} SKUs, got {}",
                    limits.get_skus_max,
                    req.skus.len()
                ),
            }));
        }
        let mut by_shard: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        for (i, sku) in req.skus.iter().enumerate() {
            validate::sku(&format!("skus[{i}]"), sku).map_err(|e| to_status(e.into()))?;
            let id = self
                .node
                .cluster
                .shard_for(sku)
                .map(|s| s.id)
                .ok_or_else(|| to_status(Error::internal("no shard")))?;
            by_shard.entry(id).or_default().push(i);
        }
        let mut results: Vec<Option<pb::GetResult>> = vec![None; req.skus.len()];
        let mut shards = Vec::with_capacity(by_shard.len());
        for (shard_id, idxs) in by_shard {
            let shard = self.node.local_shard(shard_id).map_err(to_status)?;
            self.linearize_if(shard, req.consistency)
                .await
                .map_err(to_status)?;
            let skus: Vec<&str> = idxs.iter().map(|&i| req.skus[i].as_str()).collect();
            let (applied_index, records) = shard
                .reader
                .get_many(&skus)
                .map_err(|e| to_status(Error::internal(e)))?;
            for (&i, record) in idxs.iter().zip(records) {
                results[i] = Some(pb::GetResult {
                    sku: req.skus[i].clone(),
                    found: record.is_some(),
                    record: record.map(|r| record_to_pb(&req.skus[i], &r)),
                    shard_id,
                });
            }
            shards.push(pb::ShardRead {
                shard_id,
                node_id: self.node.id,
                applied_index,
            });
        }
        Ok(Response::new(pb::GetReply {
            results: results.into_iter().flatten().collect(),
            shards,
        }))
    }

    async fn handle_list(&self, req: pb::ListRequest) -> Result<Response<pb::ListReply>, Status> {
        let max = self.node.cluster.limits.list_limit_max;
        let limit = match req.limit {
            0 => 100.min(max),
            n if n <= max => n,
            n => {
                return Err(to_status(Error::InvalidArgument {
                    field: "limit".into(),
                    rule: format!("{n} exceeds the page size limit {max}"),
                }));
            }
        };
        let position = if !req.page_token.is_empty() {
            Some(page_token::decode(&req.page_token).map_err(to_status)?)
        } else if !req.start_after.is_empty() {
            validate::sku("start_after", &req.start_after).map_err(|e| to_status(e.into()))?;
            Some(Position::After(req.start_after.clone()))
        } else {
            None
        };
        let route = match &position {
            Some(Position::After(s)) | Some(Position::AtOrAfter(s)) => s.as_str(),
            None => "",
        };
        let shard_cfg = self
            .node
            .cluster
            .shard_for(route)
            .ok_or_else(|| to_status(Error::internal("no shard")))?
            .clone();
        let shard = self.node.local_shard(shard_cfg.id).map_err(to_status)?;
        self.linearize_if(shard, req.consistency)
            .await
            .map_err(to_status)?;
        let from = match &position {
            None => ListFrom::Start,
            Some(Position::After(s)) => ListFrom::After(s),
            Some(Position::AtOrAfter(s)) => ListFrom::AtOrAfter(s),
        };
        let page = shard
            .reader
            .list(from, limit as usize)
            .map_err(|e| to_status(Error::internal(e)))?;
        let (next, next_shard_id) = if page.more {
            let token = page
                .records
                .last()
                .map(|(sku, _)| page_token::encode(&Position::After(sku.clone())))
                .unwrap_or_default();
            (token, shard_cfg.id)
        } else if !shard_cfg.end.is_empty() {
            let next_shard = self
                .node
                .cluster
                .shard_for(&shard_cfg.end)
                .map(|s| s.id)
                .unwrap_or(0);
            (
                page_token::encode(&Position::AtOrAfter(shard_cfg.end.clone())),
                next_shard,
            )
        } else {
            (String::new(), 0)
        };
        Ok(Response::new(pb::ListReply {
            records: page
                .records
                .iter()
                .map(|(sku, r)| record_to_pb(sku, r))
                .collect(),
            next_page_token: next,
            next_shard_id,
            shard: Some(pb::ShardRead {
                shard_id: shard_cfg.id,
                node_id: self.node.id,
                applied_index: page.applied_index,
            }),
        }))
    }

    async fn handle_get_reservation(
        &self,
        req: pb::GetReservationRequest,
    ) -> Result<Response<pb::ReservationReply>, Status> {
        validate::reservation_id("reservation_id", &req.reservation_id)
            .map_err(|e| to_status(e.into()))?;
        validate::sku("sku", &req.sku).map_err(|e| to_status(e.into()))?;
        let shard = self.node.shard_for(&req.sku).map_err(to_status)?;
        self.linearize_if(shard, req.consistency)
            .await
            .map_err(to_status)?;
        let (applied_index, r) = shard
            .reader
            .reservation(&req.reservation_id)
            .map_err(|e| to_status(Error::internal(e)))?;
        let r = r.ok_or_else(|| {
            to_status(Error::ReservationNotFound {
                reservation_id: req.reservation_id.clone(),
            })
        })?;
        Ok(Response::new(pb::ReservationReply {
            reservation: Some(reservation_to_pb(&r, shard.id())),
            applied: Some(pb::Applied {
                shard_id: shard.id(),
                node_id: self.node.id,
                log_index: applied_index,
                replayed: false,
            }),
            records: Vec::new(),
        }))
    }

    async fn handle_batch(
        &self,
        req: pb::BatchRequest,
    ) -> Result<Response<pb::BatchReply>, Status> {
        let max = self.node.cluster.limits.batch_ops_max;
        if req.ops.is_empty() || req.ops.len() > max {
            return Err(to_status(Error::InvalidArgument {
                field: "ops".into(),
                rule: format!("must hold 1..={max} operations, got {}", req.ops.len()),
            }));
        }
        let n = req.ops.len();
        let mut results: Vec<Option<pb::operation_result::Result>> = vec![None; n];
        let mut by_shard: BTreeMap<u64, (Vec<usize>, Vec<crate::inventory::Op>)> = BTreeMap::new();
        for (i, op) in req.ops.into_iter().enumerate() {
            let prefix = format!("ops[{i}].");
            let decoded = op
                .op
                .ok_or_else(|| Error::InvalidArgument {
                    field: format!("ops[{i}]"),
                    rule: "names no operation".into(),
                })
                .and_then(|op| decode_op(op, &self.node.cluster.limits, &prefix))
                .and_then(|d| Ok((self.single_shard(&d.skus, &format!("ops[{i}]"))?, d.op)));
            match decoded {
                Ok((shard_id, op)) => {
                    let e = by_shard.entry(shard_id).or_default();
                    e.0.push(i);
                    e.1.push(op);
                }
                Err(e) if req.atomic => return Err(to_status(e)),
                Err(e) => results[i] = Some(pb::operation_result::Result::Error(detail(&e))),
            }
        }
        if req.atomic && by_shard.len() > 1 {
            return Err(to_status(Error::CrossShard {
                what: "an all-or-nothing batch".into(),
                shard_ids: by_shard.keys().copied().collect(),
            }));
        }
        // Each shard's operations become one group, proposed concurrently.
        let node = &self.node;
        let proposals = by_shard
            .into_iter()
            .map(|(shard_id, (idxs, ops))| async move {
                let outcome = match node.local_shard(shard_id) {
                    Ok(shard) => {
                        shard
                            .propose(OpGroup {
                                atomic: req.atomic,
                                ops,
                            })
                            .await
                    }
                    Err(e) => Err(e),
                };
                (shard_id, idxs, outcome)
            });
        for (shard_id, idxs, outcome) in futures::future::join_all(proposals).await {
            match outcome {
                Ok(proposed) => {
                    for (i, r) in idxs.into_iter().zip(proposed.results) {
                        let applied = pb::Applied {
                            shard_id,
                            node_id: node.id,
                            log_index: proposed.log_index,
                            replayed: r.replayed,
                        };
                        results[i] =
                            Some(result_to_pb(r, applied).unwrap_or_else(|e| {
                                pb::operation_result::Result::Error(detail(&e))
                            }));
                    }
                }
                Err(e) => {
                    if req.atomic {
                        return Err(to_status(e));
                    }
                    for i in idxs {
                        results[i] = Some(pb::operation_result::Result::Error(detail(&e)));
                    }
                }
            }
        }
        for r in &results {
            let reason = match r {
                Some(pb::operation_result::Result::Error(d)) => {
                    d.reason().as_str_name().trim_start_matches("REASON_")
                }
                _ => "OK",
            };
            metrics::counter!("stockpile_batch_operations_total", "reason" => reason).increment(1);
        }
        Ok(Response::new(pb::BatchReply {
            results: results
                .into_iter()
                .map(|r| pb::OperationResult { result: r })
                .collect(),
        }))
    }
}

#[tonic::async_trait]
impl Inventory for InventoryService {
    async fn set_stock(
        &self,
        request: Request<pb::SetStockRequest>,
    ) -> Result<Response<pb::StockReply>, Status> {
        self.serve("set_stock", Kind::Write, 1, request, |r| {
            self.handle_set_stock(r)
        })
        .await
    }

    async fn adjust_stock(
        &self,
        request: Request<pb::AdjustStockRequest>,
    ) -> Result<Response<pb::StockReply>, Status> {
        self.serve("adjust_stock", Kind::Write, 1, request, |r| {
            self.handle_adjust_stock(r)
        })
        .await
    }

    async fn decrement(
        &self,
        request: Request<pb::DecrementRequest>,
    ) -> Result<Response<pb::StockReply>, Status> {
        self.serve("decrement", Kind::Write, 1, request, |r| {
            self.handle_decrement(r)
        })
        .await
    }

    async fn reserve(
        &self,
        request: Request<pb::ReserveRequest>,
    ) -> Result<Response<pb::ReservationReply>, Status> {
        self.serve("reserve", Kind::Write, 1, request, |r| {
            self.handle_reserve(r)
        })
        .await
    }

    async fn confirm(
        &self,
        request: Request<pb::ConfirmRequest>,
    ) -> Result<Response<pb::ReservationReply>, Status> {
        self.serve("confirm", Kind::Write, 1, request, |r| {
            self.handle_confirm(r)
        })
        .await
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReservationReply>, Status> {
        self.serve("release", Kind::Write, 1, request, |r| {
            self.handle_release(r)
        })
        .await
    }

    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetReply>, Status> {
        let cost = request.get_ref().skus.len() as u64;
        self.serve("get", Kind::Read, cost, request, |r| self.handle_get(r))
            .await
    }

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListReply>, Status> {
        self.serve("list", Kind::Read, 1, request, |r| self.handle_list(r))
            .await
    }

    async fn get_reservation(
        &self,
        request: Request<pb::GetReservationRequest>,
    ) -> Result<Response<pb::ReservationReply>, Status> {
        self.serve("get_reservation", Kind::Read, 1, request, |r| {
            self.handle_get_reservation(r)
        })
        .await
    }

    async fn batch(
        &self,
        request: Request<pb::BatchRequest>,
    ) -> Result<Response<pb::BatchReply>, Status> {
        let cost = request.get_ref().ops.len() as u64;
        metrics::histogram!("stockpile_batch_ops").record(cost as f64);
        self.serve("batch", Kind::Write, cost, request, |r| {
            self.handle_batch(r)
        })
        .await
    }
}
