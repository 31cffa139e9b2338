//! Batch RPCs: how a list of mutations reaches the store and how each gets its answer.
//!
//! Both the coalescer and explicit batches send through `send_batch_each`. A batch goes to
//! the leader of the shard the client's map names; the node routes every operation by
//! its own map, so after a split (or while two shards' leaders differ) one reply can
//! answer some operations and refuse others for their shard (`SHARD_MOVED`,
//! `NOT_LEADER`, ...). Those are sent again, each to its shard by a refreshed map,
//! with the same request ids, while the answered ones keep their answers: resending
//! the whole batch to one node could never satisfy two leaders, and would end every
//! operation, applied or not, as UNAVAILABLE at the deadline.
//!
//! Regrouping goes on until the deadline (at most `REGROUP_ROUNDS_CAP` rounds): while
//! a merge or a split is under way nodes' maps differ, and a map refreshed from one
//! and then another can move an operation back and forth for longer than a few quick
//! rounds; giving up then would fail operations the deadline still had time for.
//! Meanwhile the operations already answered are not held back: each answer goes to
//! its caller as soon as it is known, and the coalescer frees the shard's in-flight
//! slot after the first round.
//!
//! An operation given up on is `OutcomeUnknown` whenever any attempt may have
//! applied it, `Unavailable` only when none can have.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use prost::Message;
use stockpile_proto::v1 as pb;

use crate::transport::with_timeout;
use crate::{Client, Error, RequestId, Target};

/// An operation as sent: its request id and wire form.
pub(crate) type WireOp = (RequestId, pb::operation::Op);
type OpResult = Result<pb::operation_result::Result, Error>;

/// Regroup rounds at most in one `send_batch`. The deadline ends them first: backoff
/// grows to at least 250 ms per round after the sixth, so 64 rounds outlast any
/// deadline below ~14 s (the default is 10 s); the cap bounds the loop whatever the
/// deadline.
const REGROUP_ROUNDS_CAP: u32 = 64;

/// One operation's answer from one Batch RPC. Unboxed although `Done` is the larger
/// variant by far: nearly every answer is `Done`, moved once into the caller's results,
/// and a box would add an allocation per operation on the hot path.
#[allow(clippy::large_enum_variant)]
enum Answer {
    /// What the caller gets: a result, or an error from the store or the transport.
    Done(OpResult),
    /// Refused for its shard while the same reply answered others: send it again,
    /// routed by a refreshed map.
    Again {
        /// An attempt may have applied it (the store said its outcome is unknown, or
        /// the call made more than one attempt before this reply).
        maybe_applied: bool,
        /// What the store said, for the error if the operation is given up on.
        message: String,
    },
}

/// The SKU that routes a wire operation (as `Mutation::route_sku` routes its source).
fn route_sku(op: &pb::operation::Op) -> &str {
    use pb::operation::Op;
    match op {
        Op::SetStock(r) => &r.sku,
        Op::AdjustStock(r) => &r.sku,
        Op::Decrement(r) => &r.sku,
        Op::Reserve(r) => r.items.first().map(|i| i.sku.as_str()).unwrap_or(""),
        Op::Confirm(r) => &r.sku,
        Op::Release(r) => &r.sku,
    }
}

/// Sends `ops` (routed to `shard_id` by the caller's map) and returns one result per
/// op, in order: `send_batch_each` collected.
pub(crate) async fn send_batch(
    client: &Client,
    shard_id: u64,
    ops: Vec<WireOp>,
    atomic: bool,
    deadline: Instant,
) -> Vec<OpResult> {
    let mut results: Vec<Option<OpResult>> = vec![None; ops.len()];
    let each = |i: usize, r: OpResult| results[i] = Some(r);
    send_batch_each(client, shard_id, ops, atomic, deadline, each, || ()).await;
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(unanswered())))
        .collect()
}

/// Sends `ops` (routed to `shard_id` by the caller's map) and hands each op's result
/// to `each` (its index, its result) as soon as it is known, exactly once per op.
/// `first_round_done` runs once the first round's answers are handed over: what
/// follows concerns only operations refused for their shard, sent again, grouped by a
/// refreshed map, until answered, `deadline` or `REGROUP_ROUNDS_CAP` rounds. (The
/// coalescer frees its shard's in-flight slot there: those operations now go to
/// other shards, and a long regrouping must not hold back the shard's next batch.)
pub(crate) async fn send_batch_each(
    client: &Client,
    shard_id: u64,
    ops: Vec<WireOp>,
    atomic: bool,
    deadline: Instant,
    each: impl FnMut(usize, OpResult),
    first_round_done: impl FnOnce(),
) {
    let n = ops.len();
    let mut sink = Sink::new(n, each);
    let mut first_round_done = Some(first_round_done);
    let mut unsure = vec![false; n];
    let mut groups: BTreeMap<u64, Vec<(usize, WireOp)>> = BTreeMap::new();
    groups.insert(shard_id, ops.into_iter().enumerate().collect());
    for round in 0..REGROUP_ROUNDS_CAP {
        let sends = groups.into_iter().map(|(shard, ops)| async move {
            let (idxs, wire): (Vec<usize>, Vec<WireOp>) = ops.into_iter().unzip();
            let answers = send_parts(client, shard, &wire, atomic, deadline).await;
            idxs.into_iter().zip(wire).zip(answers).collect::<Vec<_>>()
        });
        let mut again = Vec::new();
        let mut last_message = String::new();
        for ((i, op), answer) in futures::future::join_all(sends).await.into_iter().flatten() {
            match answer {
                Answer::Done(r) => sink.put(i, r),
                Answer::Again {
                    maybe_applied,
                    message,
                } => {
                    unsure[i] |= maybe_applied;
                    last_message = message;
                    again.push((i, op));
                }
            }
        }
        if let Some(done) = first_round_done.take() {
            done();
        }
        if again.is_empty() {
            break;
        }
        let last_round = round + 1 == REGROUP_ROUNDS_CAP || Instant::now() >= deadline;
        if last_round {
            for (i, (rid, _)) in again {
                sink.put(i, Err(give_up(rid, unsure[i], &last_message)));
            }
            break;
        }
        groups = regroup(client, again, round, deadline, &unsure, &mut sink).await;
    }
    sink.finish();
}

/// The error of an operation no round answered (a bug here, never a store's doing).
fn unanswered() -> Error {
    Error::Internal {
        message: "an operation left without an answer".into(),
    }
}

/// Each operation's result handed to the caller once (asserted: a second answer for
/// one operation is a bug here, never a store's doing).
struct Sink<F: FnMut(usize, OpResult)> {
    each: F,
    answered: Vec<bool>,
}

impl<F: FnMut(usize, OpResult)> Sink<F> {
    fn new(n: usize, each: F) -> Self {
        Sink {
            each,
            answered: vec![false; n],
        }
    }

    fn put(&mut self, i: usize, r: OpResult) {
        assert!(!self.answered[i], "operation {i} of a batch answered twice");
        self.answered[i] = true;
        (self.each)(i, r);
    }

    /// Every operation not answered yet gets an internal error: none is left waiting.
    fn finish(mut self) {
        for i in 0..self.answered.len() {
            if !self.answered[i] {
                self.put(i, Err(unanswered()));
            }
        }
    }
}

/// The error of an operation given up on: unknown if an attempt may have applied it.
fn give_up(request_id: RequestId, maybe_applied: bool, message: &str) -> Error {
    if maybe_applied {
        Error::OutcomeUnknown {
            request_id,
            message: message.to_string(),
        }
    } else {
        Error::Unavailable {
            message: message.to_string(),
        }
    }
}

/// The operations to send again, grouped by shard after refreshing the map (best
/// effort) and backing off; an operation no shard covers is given up on.
async fn regroup(
    client: &Client,
    again: Vec<(usize, WireOp)>,
    round: u32,
    deadline: Instant,
    unsure: &[bool],
    sink: &mut Sink<impl FnMut(usize, OpResult)>,
) -> BTreeMap<u64, Vec<(usize, WireOp)>> {
    if let Err(e) = client.refresh_map(deadline).await {
        tracing::debug!(error = %e, "no fresh map for operations refused for their shard");
    }
    let wait = crate::retry::backoff(round).min(deadline.saturating_duration_since(Instant::now()));
    tokio::time::sleep(wait).await;
    let mut groups: BTreeMap<u64, Vec<(usize, WireOp)>> = BTreeMap::new();
    for (i, op) in again {
        match client.shard_for(route_sku(&op.1)) {
            Ok(shard) => groups.entry(shard).or_default().push((i, op)),
            Err(e) => sink.put(i, Err(give_up(op.0, unsure[i], &e.to_string()))),
        }
    }
    groups
}

/// True for reasons that concern the whole shard (every operation of a batch to it
/// gets the same one when the node refuses the shard): retried with the same request ids.
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
fn split_by_bytes(ops: &[WireOp], bytes_max: usize) -> Vec<usize> {
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
/// failures of the whole batch within `deadline`: one RPC, or several when the ops
/// exceed `batch_bytes_max` (an all-or-nothing batch cannot be split: it fails whole
/// with `RequestTooLarge`). One answer per op, in order.
async fn send_parts(
    client: &Client,
    shard_id: u64,
    ops: &[WireOp],
    atomic: bool,
    deadline: Instant,
) -> Vec<Answer> {
    let bytes_max = client.inner.cfg.coalesce.batch_bytes_max;
    let ends = split_by_bytes(ops, bytes_max);
    if ends.len() == 1 {
        return send_one_batch(client, shard_id, ops, atomic, deadline).await;
    }
    if atomic {
        let size_bytes: usize = ops.iter().map(|(_, op)| op_bytes(op)).sum();
        let e = Error::RequestTooLarge {
            size_bytes: size_bytes as u64,
            limit_bytes: bytes_max as u64,
        };
        return ops.iter().map(|_| Answer::Done(Err(e.clone()))).collect();
    }
    let starts = std::iter::once(0).chain(ends.iter().copied());
    let sends = starts
        .zip(ends.iter().copied())
        .map(|(start, end)| send_one_batch(client, shard_id, &ops[start..end], false, deadline));
    futures::future::join_all(sends)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// The first shard-level refusal in `reply` when every operation got one: then the
/// whole batch failed at that node, and `call` retries it (following a leader hint).
fn refused_whole(reply: &pb::BatchReply) -> Option<&pb::ErrorDetail> {
    let mut first = None;
    for res in &reply.results {
        match &res.result {
            Some(pb::operation_result::Result::Error(d)) if shard_level(d.reason()) => {
                first = first.or(Some(d));
            }
            _ => return None,
        }
    }
    first
}

/// One Batch RPC (retried whole by `call` while the node refuses it whole). A reply
/// that answers some operations and refuses others for their shard is kept: the
/// refused ones come back as `Answer::Again`.
async fn send_one_batch(
    client: &Client,
    shard_id: u64,
    ops: &[WireOp],
    atomic: bool,
    deadline: Instant,
) -> Vec<Answer> {
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
    let attempts = AtomicU32::new(0);
    let reply = client
        .call(
            shard_id,
            Target::Leader,
            Some(placeholder),
            deadline,
            |ch, t| {
                let r = with_timeout(request.clone(), t);
                attempts.fetch_add(1, Ordering::Relaxed);
                async move {
                    let reply = crate::transport::inventory(ch).batch(r).await?.into_inner();
                    if let Some(d) = refused_whole(&reply) {
                        return Err(tonic::Status::with_details(
                            tonic::Code::Unavailable,
                            d.message.clone(),
                            d.encode_to_vec().into(),
                        ));
                    }
                    Ok(reply)
                }
            },
        )
        .await;
    // More than one attempt: an earlier one may have applied what this reply refuses.
    let retried = attempts.load(Ordering::Relaxed) > 1;
    match reply {
        Ok(reply) if reply.results.len() == n => reply
            .results
            .into_iter()
            .zip(ops)
            .enumerate()
            .map(|(i, (r, (rid, _)))| answer(r, i, *rid, retried))
            .collect(),
        Ok(reply) => {
            let e = Error::Internal {
                message: format!("{} results for {n} operations", reply.results.len()),
            };
            ops.iter().map(|_| Answer::Done(Err(e.clone()))).collect()
        }
        Err(Error::OutcomeUnknown { message, .. }) => ops
            .iter()
            .map(|(rid, _)| {
                Answer::Done(Err(Error::OutcomeUnknown {
                    request_id: *rid,
                    message: message.clone(),
                }))
            })
            .collect(),
        Err(e) => ops.iter().map(|_| Answer::Done(Err(e.clone()))).collect(),
    }
}

/// The answer for operation `i` (request id `rid`) of a kept reply.
fn answer(r: pb::OperationResult, i: usize, rid: RequestId, retried: bool) -> Answer {
    match r.result {
        Some(pb::operation_result::Result::Error(d)) if shard_level(d.reason()) => Answer::Again {
            maybe_applied: retried || d.reason() == pb::Reason::OutcomeUnknown,
            message: d.message,
        },
        Some(pb::operation_result::Result::Error(d)) => {
            let d = relative_to_op(d, i);
            Answer::Done(Err(
                Error::from_detail(&d, Some(rid)).unwrap_or(Error::Internal { message: d.message })
            ))
        }
        Some(ok) => Answer::Done(Ok(ok)),
        None => Answer::Done(Err(Error::Internal {
            message: "an empty operation result".into(),
        })),
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

    #[test]
    fn every_operation_of_a_batch_gets_exactly_one_answer() {
        let mut got: Vec<(usize, bool)> = Vec::new();
        let mut sink = Sink::new(3, |i, r: OpResult| got.push((i, r.is_ok())));
        sink.put(
            1,
            Ok(pb::operation_result::Result::Stock(
                pb::StockReply::default(),
            )),
        );
        sink.finish();
        got.sort();
        assert_eq!(
            got,
            vec![(0, false), (1, true), (2, false)],
            "the answered one keeps its answer, the others get an error, none is left waiting"
        );
    }

    #[test]
    #[should_panic(expected = "answered twice")]
    fn an_operation_answered_twice_is_a_bug() {
        let mut sink = Sink::new(1, |_, _| ());
        sink.put(
            0,
            Err(Error::Internal {
                message: "a".into(),
            }),
        );
        sink.put(
            0,
            Err(Error::Internal {
                message: "b".into(),
            }),
        );
    }

    fn result(reason: Option<pb::Reason>) -> pb::OperationResult {
        pb::OperationResult {
            result: Some(match reason {
                Some(r) => pb::operation_result::Result::Error(pb::ErrorDetail {
                    reason: r as i32,
                    message: format!("{r:?}"),
                    ..Default::default()
                }),
                None => pb::operation_result::Result::Stock(pb::StockReply::default()),
            }),
        }
    }

    #[test]
    fn a_reply_is_refused_whole_only_when_every_operation_was_refused_for_its_shard() {
        let reply = |rs: Vec<Option<pb::Reason>>| pb::BatchReply {
            results: rs.into_iter().map(result).collect(),
        };
        let not_leader = Some(pb::Reason::NotLeader);
        let moved = Some(pb::Reason::ShardMoved);
        assert!(refused_whole(&reply(vec![not_leader, moved])).is_some());
        assert!(
            refused_whole(&reply(vec![None, moved])).is_none(),
            "a split answered one and refused the other: keep the answer"
        );
        assert!(
            refused_whole(&reply(vec![
                Some(pb::Reason::InsufficientStock),
                not_leader
            ]))
            .is_none()
        );
    }

    #[test]
    fn an_operation_refused_for_its_shard_goes_again_unsure_if_it_may_have_applied() {
        let again = |reason, retried| match answer(result(Some(reason)), 0, [1; 16], retried) {
            Answer::Again { maybe_applied, .. } => Some(maybe_applied),
            Answer::Done(_) => None,
        };
        assert_eq!(again(pb::Reason::ShardMoved, false), Some(false));
        assert_eq!(
            again(pb::Reason::NotLeader, true),
            Some(true),
            "an earlier attempt may have applied it"
        );
        assert_eq!(again(pb::Reason::OutcomeUnknown, false), Some(true));
        assert_eq!(
            again(pb::Reason::InsufficientStock, true),
            None,
            "a refusal is final"
        );
        assert!(matches!(
            answer(result(None), 0, [1; 16], false),
            Answer::Done(Ok(_))
        ));
    }
}
