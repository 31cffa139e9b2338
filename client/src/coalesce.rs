//! Coalescing: concurrent mutations for the same shard become one Batch RPC.
//!
//! Each shard has a task fed by a bounded queue. It takes the first waiting mutation,
//! waits for one of `inflight_max` RPC slots, then takes everything else waiting (up
//! to `batch_max`, after lingering `linger` if set) and sends it as one Batch. With
//! the default linger of zero nothing waits on purpose: mutations pile up only while
//! earlier batches are in flight, so batches grow with load and an idle client
//! pays no latency. Every mutation keeps its own request id, so a retried batch
//! applies each mutation at most once.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use prost::Message;
use stockpile_proto::v1 as pb;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::transport::with_timeout;
use crate::{Client, Error, Inner, RequestId, Target};

/// Mutations waiting for one shard's coalescer at most; a caller beyond waits.
const QUEUE_MAX: usize = 65_536;

/// Coalescing settings (see `ClientBuilder::coalesce`).
#[derive(Clone, Copy, Debug)]
pub struct CoalesceConfig {
    /// Whether mutations are coalesced at all.
    pub enabled: bool,
    /// How long the first mutation of a batch waits for company.
    pub linger: Duration,
    /// Mutations per Batch RPC at most.
    pub batch_max: usize,
    /// Batch RPCs in flight per shard at most. One by default: mutations that arrive
    /// while a shard's batch is in flight wait and go together in the next, so batches
    /// grow with load. With four in flight the same load went as more, smaller RPCs
    /// and log entries, and CPU-bound nodes served 15–40% fewer ops
    /// (docs/PERFORMANCE.md, "What was changed", 10).
    pub inflight_max: usize,
    /// Bytes of one Batch RPC at most (its protobuf encoding); larger batches are sent
    /// as several RPCs. The node's default `limits.request_bytes_max` (4 MiB).
    pub batch_bytes_max: usize,
}

impl Default for CoalesceConfig {
    fn default() -> Self {
        CoalesceConfig {
            enabled: true,
            linger: Duration::ZERO,
            batch_max: 1_000,
            inflight_max: 1,
            batch_bytes_max: 4 << 20,
        }
    }
}

pub(crate) struct Pending {
    request_id: RequestId,
    op: pb::operation::Op,
    deadline: Instant,
    reply: oneshot::Sender<Result<pb::operation_result::Result, Error>>,
}

#[derive(Default)]
pub(crate) struct Coalescers {
    queues: std::sync::Mutex<HashMap<u64, mpsc::Sender<Pending>>>,
}

pub(crate) async fn submit(
    client: &Client,
    shard_id: u64,
    request_id: RequestId,
    op: pb::operation::Op,
    deadline: Instant,
) -> Result<pb::operation_result::Result, Error> {
    let tx = {
        let mut queues = client
            .inner
            .coalescers
            .queues
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        queues
            .entry(shard_id)
            .or_insert_with(|| {
                let (tx, rx) = mpsc::channel(QUEUE_MAX);
                tokio::spawn(run(Arc::downgrade(&client.inner), shard_id, rx));
                tx
            })
            .clone()
    };
    let (reply, rx) = oneshot::channel();
    tx.send(Pending {
        request_id,
        op,
        deadline,
        reply,
    })
    .await
    .map_err(|_| Error::Unavailable {
        message: "the client is shutting down".into(),
    })?;
    rx.await.map_err(|_| Error::OutcomeUnknown {
        request_id,
        message: "the coalescer stopped".into(),
    })?
}

async fn run(inner: Weak<Inner>, shard_id: u64, mut rx: mpsc::Receiver<Pending>) {
    let Some(cfg) = inner.upgrade().map(|i| i.cfg.coalesce) else {
        return;
    };
    let slots = Arc::new(Semaphore::new(cfg.inflight_max.max(1)));
    while let Some(first) = rx.recv().await {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        if !cfg.linger.is_zero() {
            let until = tokio::time::Instant::now() + cfg.linger;
            while batch.len() < cfg.batch_max {
                match tokio::time::timeout_at(until, rx.recv()).await {
                    Ok(Some(p)) => batch.push(p),
                    _ => break,
                }
            }
        }
        while batch.len() < cfg.batch_max {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let Some(inner) = inner.upgrade() else { return };
        let client = Client { inner };
        tokio::spawn(async move {
            let _permit = permit;
            let deadline = batch
                .iter()
                .map(|p| p.deadline)
                .min()
                .unwrap_or_else(Instant::now);
            let (wire, replies): (Vec<_>, Vec<_>) = batch
                .into_iter()
                .map(|p| ((p.request_id, p.op), p.reply))
                .unzip();
            let results = send_batch(&client, shard_id, wire, false, deadline).await;
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(result);
            }
        });
    }
}

/// True for reasons that concern the whole shard (every operation of a batch to it
/// gets the same one): the batch is retried, with the same request ids.
fn shard_level(reason: pb::Reason) -> bool {
    matches!(
        reason,
        pb::Reason::NotLeader
            | pb::Reason::ShardNotHere
            | pb::Reason::ShardUnavailable
            | pb::Reason::RateLimited
            | pb::Reason::OutcomeUnknown
            | pb::Reason::ShardMoved
    )
}

/// Bytes an operation adds to a `BatchRequest`: its encoding, plus the field's tag and
/// length prefix.
fn op_bytes(op: &pb::operation::Op) -> usize {
    const FIELD_OVERHEAD_BYTES: usize = 6;
    pb::Operation {
        op: Some(op.clone()),
    }
    .encoded_len()
        + FIELD_OVERHEAD_BYTES
}

/// Consecutive parts of `ops` whose Batch RPCs each stay within `bytes_max` (one op
/// larger than that goes alone; the store will refuse it).
fn split_by_bytes(ops: &[(RequestId, pb::operation::Op)], bytes_max: usize) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut bytes = 0usize;
    for (i, (_, op)) in ops.iter().enumerate() {
        let b = op_bytes(op);
        if i > 0 && bytes + b > bytes_max {
            ends.push(i);
            bytes = 0;
        }
        bytes += b;
    }
    ends.push(ops.len());
    ends
}

/// Sends `ops` (all of `shard_id`) as Batch RPCs to the shard's leader, retrying
/// shard-level failures within `deadline`: one RPC, or several when the ops exceed
/// `batch_bytes_max` (an all-or-nothing batch cannot be split: it fails whole with
/// `RequestTooLarge`). One result per op, in order.
pub(crate) async fn send_batch(
    client: &Client,
    shard_id: u64,
    ops: Vec<(RequestId, pb::operation::Op)>,
    atomic: bool,
    deadline: Instant,
) -> Vec<Result<pb::operation_result::Result, Error>> {
    let bytes_max = client.inner.cfg.coalesce.batch_bytes_max;
    let ends = split_by_bytes(&ops, bytes_max);
    if ends.len() == 1 {
        return send_one_batch(client, shard_id, ops, atomic, deadline).await;
    }
    if atomic {
        let size_bytes: usize = ops.iter().map(|(_, op)| op_bytes(op)).sum();
        let e = Error::RequestTooLarge {
            size_bytes: size_bytes as u64,
            limit_bytes: bytes_max as u64,
        };
        return vec![Err(e); ops.len()];
    }
    let mut parts = Vec::with_capacity(ends.len());
    let mut rest = ops;
    let mut start = 0;
    for end in ends {
        let tail = rest.split_off(end - start);
        parts.push(std::mem::replace(&mut rest, tail));
        start = end;
    }
    let sends = parts
        .into_iter()
        .map(|part| send_one_batch(client, shard_id, part, false, deadline));
    futures::future::join_all(sends)
        .await
        .into_iter()
        .flatten()
        .collect()
}

async fn send_one_batch(
    client: &Client,
    shard_id: u64,
    ops: Vec<(RequestId, pb::operation::Op)>,
    atomic: bool,
    deadline: Instant,
) -> Vec<Result<pb::operation_result::Result, Error>> {
    let n = ops.len();
    let request = pb::BatchRequest {
        ops: ops
            .iter()
            .map(|(_, op)| pb::Operation {
                op: Some(op.clone()),
            })
            .collect(),
        atomic,
    };
    // `call` reports an unknown outcome with this placeholder id; it is replaced by
    // each operation's own id below.
    let placeholder: RequestId = [0u8; 16];
    let reply = client
        .call(
            shard_id,
            Target::Leader,
            Some(placeholder),
            deadline,
            |ch, t| {
                let r = with_timeout(request.clone(), t);
                async move {
                    let reply = crate::transport::inventory(ch).batch(r).await?.into_inner();
                    // A shard-level refusal of the operations is a failure of the whole batch.
                    for res in &reply.results {
                        if let Some(pb::operation_result::Result::Error(d)) = &res.result
                            && shard_level(d.reason())
                        {
                            return Err(tonic::Status::with_details(
                                tonic::Code::Unavailable,
                                d.message.clone(),
                                d.encode_to_vec().into(),
                            ));
                        }
                    }
                    Ok(reply)
                }
            },
        )
        .await;
    match reply {
        Ok(reply) if reply.results.len() == n => reply
            .results
            .into_iter()
            .zip(ops)
            .enumerate()
            .map(|(i, (r, (rid, _)))| match r.result {
                Some(pb::operation_result::Result::Error(d)) => {
                    let d = relative_to_op(d, i);
                    Err(Error::from_detail(&d, Some(rid))
                        .unwrap_or(Error::Internal { message: d.message }))
                }
                Some(ok) => Ok(ok),
                None => Err(Error::Internal {
                    message: "an empty operation result".into(),
                }),
            })
            .collect(),
        Ok(reply) => vec![
            Err(Error::Internal {
                message: format!("{} results for {n} operations", reply.results.len())
            });
            n
        ],
        Err(Error::OutcomeUnknown { message, .. }) => ops
            .iter()
            .map(|(rid, _)| {
                Err(Error::OutcomeUnknown {
                    request_id: *rid,
                    message: message.clone(),
                })
            })
            .collect(),
        Err(e) => vec![Err(e); n],
    }
}

/// An operation's error as the caller of that one operation sees it: the field path
/// without the batch's `ops[i].` (the caller never saw the batch).
fn relative_to_op(mut d: pb::ErrorDetail, i: usize) -> pb::ErrorDetail {
    let prefix = format!("ops[{i}].");
    if let Some(rest) = d.field.strip_prefix(&prefix) {
        let rest = rest.to_string();
        d.message = d.message.replacen(&d.field, &rest, 1);
        d.field = rest;
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decrement(sku: &str) -> (RequestId, pb::operation::Op) {
        (
            [1; 16],
            pb::operation::Op::Decrement(pb::DecrementRequest {
                sku: sku.into(),
                quantity: 1,
                request_id: vec![1; 16],
            }),
        )
    }

    #[test]
    fn batch_errors_name_the_field_of_the_operation() {
        let d = relative_to_op(
            pb::ErrorDetail {
                field: "ops[7].items[0].sku".into(),
                message: "invalid ops[7].items[0].sku: must not be empty".into(),
                ..Default::default()
            },
            7,
        );
        assert_eq!(d.field, "items[0].sku");
        assert_eq!(d.message, "invalid items[0].sku: must not be empty");
        let other = relative_to_op(
            pb::ErrorDetail {
                field: "request_id".into(),
                ..Default::default()
            },
            7,
        );
        assert_eq!(other.field, "request_id");
    }

    #[test]
    fn batches_split_where_the_next_op_would_pass_the_byte_limit() {
        let ops: Vec<_> = (0..10).map(|i| decrement(&format!("sku-{i:03}"))).collect();
        let one = op_bytes(&ops[0].1);
        assert_eq!(split_by_bytes(&ops, 100 * one), vec![10]);
        assert_eq!(split_by_bytes(&ops, 3 * one), vec![3, 6, 9, 10]);
        // An op larger than the limit still goes (alone); the store decides.
        assert_eq!(split_by_bytes(&ops[..2], 1), vec![1, 2]);
        let request = pb::BatchRequest {
            ops: ops[..3]
                .iter()
                .map(|(_, op)| pb::Operation {
                    op: Some(op.clone()),
                })
                .collect(),
            atomic: false,
        };
        assert!(
            request.encoded_len() <= 3 * one,
            "op_bytes bounds the real size"
        );
    }
}
