//! The Inventory gRPC service. Each RPC has one typed path: decode (`decode`) → route
//! (`router`) → propose through the shard's proposer → encode (`encode`); reads are in
//! `reads`. Nodes never forward: a shard this node does not lead answers NOT_LEADER
//! (or SHARD_NOT_HERE) and the client goes there.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use stockpile_proto::v1 as pb;
use stockpile_proto::v1::inventory_server::Inventory;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::decode::{self, Mutation};
use super::encode;
use super::status::{detail, detail_of_op, to_status, to_status_of_op};
use crate::admission::Kind;
use crate::error::Error;
use crate::inventory::{OpGroup, OpResult, RequestId};
use crate::node::Node;
use crate::router::ShardId;
use crate::security::{Caller, Need, audit_denied};
use crate::telemetry::{self, names};

pub struct InventoryService {
    pub(super) node: Arc<Node>,
}

/// A failed RPC: the error, and the request id of the mutation it concerns.
pub(super) struct Failure {
    pub error: Error,
    pub request_id: Option<RequestId>,
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Failure {
            error,
            request_id: None,
        }
    }
}

impl Failure {
    fn of(request_id: RequestId) -> impl FnOnce(Error) -> Failure {
        move |error| Failure {
            error,
            request_id: Some(request_id),
        }
    }
}

impl InventoryService {
    pub fn new(node: Arc<Node>) -> Self {
        InventoryService { node }
    }

    /// Serves one RPC: admission (before anything costs a Raft round), a tracing span
    /// with the node and client, telemetry of the typed outcome, then the one error
    /// mapping to a status.
    async fn serve<Req, Rep, F, Fut>(
        &self,
        rpc: &'static str,
        kind: Kind,
        cost: u64,
        request: Request<Req>,
        handle: F,
    ) -> Result<Response<Rep>, Status>
    where
        F: FnOnce(Req, Caller) -> Fut,
        Fut: std::future::Future<Output = Result<Rep, Failure>>,
    {
        let started = Instant::now();
        let caller = self.node.security.caller(&request);
        let name = caller
            .as_ref()
            .map_or("unauthenticated", |c| c.name.as_str());
        let span = tracing::info_span!("rpc", rpc, node_id = self.node.id, client = %name, request_id = tracing::field::Empty, shard_id = tracing::field::Empty);
        let result = async {
            let caller = caller.inspect_err(|e| audit_denied("unauthenticated", rpc, e))?;
            let need = match kind {
                Kind::Read => Need::Read,
                Kind::Write => Need::Write,
            };
            caller.authorize(rpc, need)?;
            // Rate limits key on the authenticated identity, not on a name the client claims.
            let _admitted = self.node.admission.admit(&caller.name, kind, cost)?;
            handle(request.into_inner(), caller).await
        }
        .instrument(span)
        .await;
        let typed = result.as_ref().map_err(|f| f.error.clone());
        telemetry::observe(rpc, started, &typed);
        match result {
            Ok(reply) => Ok(Response::new(reply)),
            Err(Failure { error, request_id }) => {
                if matches!(error, Error::Internal { .. }) {
                    tracing::error!(%error, "internal error");
                }
                Err(match request_id {
                    Some(rid) => to_status_of_op(error, &rid),
                    None => to_status(error),
                })
            }
        }
    }

    /// Routes one mutation to its shard, proposes it, and returns its result and
    /// where it was applied.
    async fn propose_one(&self, m: Mutation) -> Result<(OpResult, pb::Applied), Failure> {
        let request_id = m.op.request_id;
        if let Some(sku) = m.skus.first() {
            telemetry::console::touch_sku(sku);
        }
        let shard_id = self
            .node
            .map
            .get()
            .single_shard(&m.skus, "the reservation's items")
            .map_err(Failure::of(request_id))?;
        let span = tracing::Span::current();
        span.record("request_id", decode::request_id_hex(&request_id).as_str());
        span.record("shard_id", shard_id.0);
        let shard = self
            .node
            .local_shard(shard_id)
            .map_err(Failure::of(request_id))?;
        let group = OpGroup {
            atomic: false,
            ops: vec![m.op],
        };
        let proposed = shard
            .propose(group)
            .await
            .map_err(Failure::of(request_id))?;
        let result = proposed.results.into_iter().next().ok_or_else(|| Failure {
            error: Error::internal("no result for the operation"),
            request_id: Some(request_id),
        })?;
        let applied = self.applied(shard_id, proposed.log_index, result.replayed);
        Ok((result, applied))
    }

    fn applied(&self, shard_id: ShardId, log_index: u64, replayed: bool) -> pb::Applied {
        pb::Applied {
            shard_id: shard_id.0,
            node_id: self.node.id,
            log_index,
            replayed,
        }
    }

    async fn stock(&self, m: Mutation) -> Result<pb::StockReply, Failure> {
        let rid = m.op.request_id;
        let (result, applied) = self.propose_one(m).await?;
        encode::stock_reply(result, applied).map_err(Failure::of(rid))
    }

    async fn reservation(&self, m: Mutation) -> Result<pb::ReservationReply, Failure> {
        let rid = m.op.request_id;
        let (result, applied) = self.propose_one(m).await?;
        encode::reservation_reply(result, applied).map_err(Failure::of(rid))
    }
}

/// A Batch's operations, grouped by shard (with their places in the batch).
type ByShard = BTreeMap<ShardId, (Vec<usize>, Vec<crate::inventory::Op>)>;

impl InventoryService {
    async fn handle_batch(
        &self,
        req: pb::BatchRequest,
        caller: &Caller,
    ) -> Result<pb::BatchReply, Failure> {
        let atomic = req.atomic;
        let decoded = decode::batch(req, &self.node.cluster.limits)?;
        // Every operation within the caller's scope, or the whole batch is refused.
        let skus = decoded.iter().flatten().flat_map(|m| m.skus.iter());
        caller.check_skus("batch", skus.map(String::as_str))?;
        for sku in decoded.iter().flatten().filter_map(|m| m.skus.first()) {
            telemetry::console::touch_sku(sku);
        }
        let mut results: Vec<Option<pb::operation_result::Result>> = vec![None; decoded.len()];
        let mut by_shard = ByShard::new();
        for (i, d) in decoded.into_iter().enumerate() {
            let refused = match d {
                Ok(m) => match self
                    .node
                    .map
                    .get()
                    .single_shard(&m.skus, &format!("ops[{i}]"))
                {
                    Ok(shard_id) => {
                        let e = by_shard.entry(shard_id).or_default();
                        e.0.push(i);
                        e.1.push(m.op);
                        continue;
                    }
                    Err(e) => Failure::of(m.op.request_id)(e),
                },
                Err(e) => Failure::from(e),
            };
            if atomic {
                return Err(refused);
            }
            let d = match refused.request_id {
                Some(rid) => detail_of_op(&refused.error, &rid),
                None => detail(&refused.error),
            };
            results[i] = Some(pb::operation_result::Result::Error(d));
        }
        if atomic && by_shard.len() > 1 {
            return Err(Error::CrossShard {
                what: "an all-or-nothing batch".into(),
                shard_ids: by_shard.keys().copied().collect(),
            }
            .into());
        }
        self.propose_batch(by_shard, atomic, &mut results).await?;
        for r in &results {
            let reason = match r {
                Some(pb::operation_result::Result::Error(d)) => {
                    d.reason().as_str_name().trim_start_matches("REASON_")
                }
                _ => "OK",
            };
            metrics::counter!(names::BATCH_OPERATIONS_TOTAL, "reason" => reason).increment(1);
        }
        Ok(pb::BatchReply {
            results: results
                .into_iter()
                .map(|r| pb::OperationResult { result: r })
                .collect(),
        })
    }

    /// Proposes each shard's operations as one group, all shards at once, and fills in
    /// their results. An all-or-nothing batch (one shard) fails whole.
    async fn propose_batch(
        &self,
        by_shard: ByShard,
        atomic: bool,
        results: &mut [Option<pb::operation_result::Result>],
    ) -> Result<(), Failure> {
        let node = &self.node;
        let proposals = by_shard
            .into_iter()
            .map(|(shard_id, (idxs, ops))| async move {
                let rids: Vec<RequestId> = ops.iter().map(|o| o.request_id).collect();
                let outcome = match node.local_shard(shard_id) {
                    Ok(shard) => shard.propose(OpGroup { atomic, ops }).await,
                    Err(e) => Err(e),
                };
                (shard_id, idxs, rids, outcome)
            });
        for (shard_id, idxs, rids, outcome) in futures::future::join_all(proposals).await {
            let proposed = match outcome {
                Ok(p) => p,
                Err(e) if atomic => return Err(e.into()),
                Err(e) => {
                    for (i, rid) in idxs.into_iter().zip(&rids) {
                        let d = detail_of_op(&e, rid);
                        results[i] = Some(pb::operation_result::Result::Error(d));
                    }
                    continue;
                }
            };
            for ((i, r), rid) in idxs.into_iter().zip(proposed.results).zip(&rids) {
                let applied = self.applied(shard_id, proposed.log_index, r.replayed);
                results[i] = Some(encode::batch_result(r, applied).unwrap_or_else(|e| {
                    pb::operation_result::Result::Error(detail_of_op(&e, rid))
                }));
            }
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl Inventory for InventoryService {
    async fn set_stock(
        &self,
        request: Request<pb::SetStockRequest>,
    ) -> Result<Response<pb::StockReply>, Status> {
        self.serve(
            "set_stock",
            Kind::Write,
            1,
            request,
            |r, caller| async move {
                let m = decode::set_stock(r, "")?;
                caller.check_skus("set_stock", m.skus.iter().map(String::as_str))?;
                self.stock(m).await
            },
        )
        .await
    }

    async fn adjust_stock(
        &self,
        request: Request<pb::AdjustStockRequest>,
    ) -> Result<Response<pb::StockReply>, Status> {
        self.serve(
            "adjust_stock",
            Kind::Write,
            1,
            request,
            |r, caller| async move {
                let m = decode::adjust_stock(r, "")?;
                caller.check_skus("adjust_stock", m.skus.iter().map(String::as_str))?;
                self.stock(m).await
            },
        )
        .await
    }

    async fn decrement(
        &self,
        request: Request<pb::DecrementRequest>,
    ) -> Result<Response<pb::StockReply>, Status> {
        self.serve(
            "decrement",
            Kind::Write,
            1,
            request,
            |r, caller| async move {
                let m = decode::decrement(r, "")?;
                caller.check_skus("decrement", m.skus.iter().map(String::as_str))?;
                self.stock(m).await
            },
        )
        .await
    }

    async fn reserve(
        &self,
        request: Request<pb::ReserveRequest>,
    ) -> Result<Response<pb::ReservationReply>, Status> {
        let limits = &self.node.cluster.limits;
        self.serve("reserve", Kind::Write, 1, request, |r, caller| async move {
            let m = decode::reserve(r, limits, "")?;
            caller.check_skus("reserve", m.skus.iter().map(String::as_str))?;
            self.reservation(m).await
        })
        .await
    }

    async fn confirm(
        &self,
        request: Request<pb::ConfirmRequest>,
    ) -> Result<Response<pb::ReservationReply>, Status> {
        self.serve("confirm", Kind::Write, 1, request, |r, caller| async move {
            let m = decode::confirm(r, "")?;
            caller.check_skus("confirm", m.skus.iter().map(String::as_str))?;
            self.reservation(m).await
        })
        .await
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReservationReply>, Status> {
        self.serve("release", Kind::Write, 1, request, |r, caller| async move {
            let m = decode::release(r, "")?;
            caller.check_skus("release", m.skus.iter().map(String::as_str))?;
            self.reservation(m).await
        })
        .await
    }

    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetReply>, Status> {
        let cost = request.get_ref().skus.len() as u64;
        self.serve("get", Kind::Read, cost, request, |r, caller| async move {
            Ok(self.handle_get(r, &caller).await?)
        })
        .await
    }

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListReply>, Status> {
        self.serve("list", Kind::Read, 1, request, |r, caller| async move {
            Ok(self.handle_list(r, &caller).await?)
        })
        .await
    }

    async fn get_reservation(
        &self,
        request: Request<pb::GetReservationRequest>,
    ) -> Result<Response<pb::ReservationReply>, Status> {
        self.serve(
            "get_reservation",
            Kind::Read,
            1,
            request,
            |r, caller| async move { Ok(self.handle_get_reservation(r, &caller).await?) },
        )
        .await
    }

    async fn batch(
        &self,
        request: Request<pb::BatchRequest>,
    ) -> Result<Response<pb::BatchReply>, Status> {
        let cost = request.get_ref().ops.len() as u64;
        metrics::histogram!(names::BATCH_OPS).record(cost as f64);
        self.serve(
            "batch",
            Kind::Write,
            cost,
            request,
            |r, caller| async move { self.handle_batch(r, &caller).await },
        )
        .await
    }
}
