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

use stockpile_proto::v1 as pb;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::{Client, Error, Inner, RequestId, batch_rpc};

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
            let deadline = batch
                .iter()
                .map(|p| p.deadline)
                .min()
                .unwrap_or_else(Instant::now);
            let (wire, mut replies): (Vec<_>, Vec<_>) = batch
                .into_iter()
                .map(|p| ((p.request_id, p.op), Some(p.reply)))
                .unzip();
            // Each caller gets its answer as soon as it is known; the shard's slot is
            // free once the first round is answered (operations sent again after a
            // split or a merge go to other shards).
            let each = |i: usize, result| {
                if let Some(reply) = replies.get_mut(i).and_then(Option::take) {
                    let _ = reply.send(result);
                }
            };
            let free_slot = move || drop(permit);
            batch_rpc::send_batch_each(&client, shard_id, wire, false, deadline, each, free_slot)
                .await;
        });
    }
}
