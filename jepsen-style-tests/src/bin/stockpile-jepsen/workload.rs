//! Workloads, generated from the seed: client workers through the Rust client, each
//! operation with a deadline, recorded as invoke + ok/fail/info.
//!
//! - register: get / decrement / adjust on a few hot SKUs;
//! - reservations: reserve (with a TTL) / confirm / release / let expire, with reads of
//!   the stock and of the reservations;
//! - idempotency: a worker whose operation's outcome is unknown retries it, with the
//!   same request id, through a new client that discovers the cluster from another node.
//!
//! A worker whose operation ended unknown continues as a new process (its old op may
//! still take effect), as in Jepsen.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use stockpile_client::{
    Client, Consistency, Error, Item, RequestId, new_request_id, request_id_hex,
};

use crate::cluster;
use stockpile_jepsen::recorder::{Completion, History, Invocation};

pub const REGISTER_SKUS: [&str; 4] = ["apple-reg", "melon-reg", "peach-reg", "tomato-reg"];
pub const RESERVATION_SKUS: [&str; 2] = ["banana-res", "orange-res"];
pub const IDEMPOTENCY_SKUS: [&str; 2] = ["kiwi-idem", "zucchini-idem"];
pub const INITIAL_STOCK: u64 = 30;

/// A client whose seeds are the members now, starting at the `first`-th (modulo), so
/// that discovery (and a retry) begins at another node.
pub async fn client(first: u64, timeout: Duration) -> Result<Client, Error> {
    let members = cluster::members();
    let n = members.len().max(1);
    let seeds: Vec<String> = (0..members.len())
        .map(|i| cluster::addr(members[(first as usize + i) % n]))
        .collect();
    let b = Client::builder()
        .seeds(seeds)
        .no_coalescing()
        .request_timeout(timeout)
        .attempt_timeout(Duration::from_millis(400))
        .connect_timeout(Duration::from_millis(300));
    match cluster::client_tls() {
        Some(tls) => b.tls(tls),
        None => b,
    }
    .build()
    .await
}

fn completion_of(e: &Error) -> Completion {
    match e {
        Error::OutcomeUnknown { .. } | Error::Internal { .. } => Completion::info(e.reason()),
        Error::InsufficientStock { available, .. } => {
            Completion::fail(e.reason(), Some(*available))
        }
        _ => Completion::fail(e.reason(), None),
    }
}

fn stock_done(s: &stockpile_client::Stock, node: u64) -> Completion {
    Completion::ok_stock(true, s.on_hand, s.reserved, Some(node))
}

/// One worker: runs `kind` until `stop`.
pub async fn worker(
    kind: &'static str,
    index: u64,
    seed: u64,
    history: Arc<History>,
    stop: Arc<AtomicBool>,
) {
    let timeout = if kind == "idempotency" {
        Duration::from_millis(800)
    } else {
        Duration::from_millis(2_500)
    };
    let first = match client(index, Duration::from_secs(10)).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("worker {index}: no client: {e}");
            return;
        }
    };
    // The client built, discovery done: every op from here has the op deadline.
    let c = client(index, timeout).await.unwrap_or(first);
    let mut w = Worker {
        index,
        timeout,
        rng: StdRng::seed_from_u64(seed ^ (index.wrapping_mul(0x9e37_79b9))),
        c,
        history,
        stop,
        process: index,
        generation: 0,
        held: Vec::new(),
        n: 0,
    };
    while !w.stop.load(Ordering::Relaxed) {
        w.n += 1;
        let pause = Duration::from_millis(w.rng.random_range(5..40));
        tokio::time::sleep(pause).await;
        match kind {
            "register" => w.register().await,
            "reservations" => w.reservations().await,
            _ => w.idempotency().await,
        }
    }
}

/// A worker's state: its process id (a new one after an unknown outcome, as in
/// Jepsen), its client, and the reservations it holds.
struct Worker {
    index: u64,
    timeout: Duration,
    rng: StdRng,
    c: Client,
    history: Arc<History>,
    stop: Arc<AtomicBool>,
    process: u64,
    generation: u64,
    /// (reservation, sku) of reservations made and not closed.
    held: Vec<(String, String)>,
    /// Operations started, for unique reservation ids.
    n: u64,
}

impl Worker {
    /// Records the completion of `h`; after an unknown outcome, continues as a new
    /// process. True when the outcome was unknown.
    fn done(&mut self, h: usize, done: Completion) -> bool {
        let unknown = self.history.complete(h, self.process, done);
        if unknown {
            self.generation += 1;
            self.process = self.index + 1_000 * self.generation;
        }
        unknown
    }

    /// Reads (half pinned to the worker's own node), decrements and adjustments of one
    /// hot SKU.
    async fn register(&mut self) {
        let sku = REGISTER_SKUS[(self.index as usize) % REGISTER_SKUS.len()];
        let roll = self.rng.random_range(0..100);
        if roll < 35 {
            let h = self.history.invoke(self.process, Invocation::read(sku));
            // Half the reads go to the worker's own node, as a Jepsen client bound to one
            // node would: a node that does not lead must refuse them.
            let members = cluster::members();
            let read = if self.rng.random_bool(0.5) && !members.is_empty() {
                let own = members[self.index as usize % members.len()];
                self.c
                    .get_at_node(own, &[sku], Consistency::Linearizable)
                    .await
            } else {
                self.c.get(&[sku], Consistency::Linearizable).await
            };
            let done = match read {
                Ok(r) => match r.first() {
                    Some(r) => match &r.stock {
                        Some(s) => stock_done(s, r.node_id),
                        None => Completion::ok_stock(false, 0, 0, Some(r.node_id)),
                    },
                    None => Completion::info("EMPTY_READ"),
                },
                Err(e) => completion_of(&e),
            };
            self.done(h, done);
        } else if roll < 80 {
            let qty = self.rng.random_range(1..=3);
            let rid = new_request_id();
            let h = self
                .history
                .invoke(self.process, Invocation::decrement(sku, qty, &rid));
            let done = match self.c.decrement_with_id(rid, sku, qty).await {
                Ok(u) => stock_done(&u.stock, u.applied.node_id),
                Err(e) => completion_of(&e),
            };
            self.done(h, done);
        } else {
            let delta: i64 = if self.rng.random_bool(0.8) {
                self.rng.random_range(2..=8)
            } else {
                -self.rng.random_range(1..=2)
            };
            let rid = new_request_id();
            let h = self
                .history
                .invoke(self.process, Invocation::adjust(sku, delta, &rid));
            let done = match self.c.adjust_stock_with_id(rid, sku, delta).await {
                Ok(u) => stock_done(&u.stock, u.applied.node_id),
                Err(e) => completion_of(&e),
            };
            self.done(h, done);
        }
    }

    /// Reserve, confirm or release, read the stock, or read a held reservation.
    async fn reservations(&mut self) {
        let sku = RESERVATION_SKUS[(self.index as usize) % RESERVATION_SKUS.len()];
        let roll = self.rng.random_range(0..100);
        if self.held.is_empty() || roll < 25 {
            self.reserve(sku).await;
        } else if roll < 60 {
            self.close().await;
        } else if roll < 75 {
            let h = self.history.invoke(self.process, Invocation::read(sku));
            let done = match self.c.get(&[sku], Consistency::Linearizable).await {
                Ok(r) => match r
                    .first()
                    .and_then(|r| r.stock.clone().map(|s| (s, r.node_id)))
                {
                    Some((s, node)) => stock_done(&s, node),
                    None => Completion::ok_stock(false, 0, 0, None),
                },
                Err(e) => completion_of(&e),
            };
            self.done(h, done);
        } else {
            // Read one of the held reservations (some may have expired by now).
            let (res, sku) = self.held[self.rng.random_range(0..self.held.len())].clone();
            let h = self
                .history
                .invoke(self.process, Invocation::read_reservation(&sku, &res));
            let done = match self
                .c
                .get_reservation(&res, Some(&sku), Consistency::Linearizable)
                .await
            {
                Ok(r) => Completion::ok_state(&format!("{:?}", r.state).to_lowercase()),
                Err(e) => completion_of(&e),
            };
            self.done(h, done);
        }
    }

    async fn reserve(&mut self, sku: &str) {
        let res = format!("w{}-{}", self.index, self.n);
        let qty = self.rng.random_range(1..=2);
        let ttl_ms = self.rng.random_range(1_000..2_500);
        let rid = new_request_id();
        let inv = Invocation::reserve(sku, &res, qty, ttl_ms, &rid);
        let h = self.history.invoke(self.process, inv);
        let ttl = Duration::from_millis(ttl_ms);
        let items = [Item::new(sku, qty)];
        let done = match self.c.reserve_with_id(rid, Some(&res), &items, ttl).await {
            Ok(u) => {
                self.held.push((res.clone(), sku.to_string()));
                u.stock
                    .first()
                    .map(|s| stock_done(s, u.applied.node_id))
                    .unwrap_or(Completion::info("NO_RECORD"))
            }
            Err(e) => {
                if !e.is_definite() {
                    self.held.push((res.clone(), sku.to_string()));
                }
                completion_of(&e)
            }
        };
        self.done(h, done);
    }

    async fn close(&mut self) {
        let (res, sku) = self.held.remove(self.rng.random_range(0..self.held.len()));
        let confirm = self.rng.random_bool(0.55);
        let rid = new_request_id();
        let h = self
            .history
            .invoke(self.process, Invocation::close(confirm, &sku, &res, &rid));
        let r = if confirm {
            self.c.confirm_with_id(rid, &res, Some(&sku)).await
        } else {
            self.c.release_with_id(rid, &res, Some(&sku)).await
        };
        let done = match r {
            Ok(u) => u
                .stock
                .first()
                .map(|s| stock_done(s, u.applied.node_id))
                .unwrap_or(Completion::info("NO_RECORD")),
            Err(e) => completion_of(&e),
        };
        self.done(h, done);
    }

    /// A decrement or adjustment; after an unknown outcome, up to three retries with
    /// the same request id, each through a new client that starts discovery at another
    /// node.
    async fn idempotency(&mut self) {
        let sku = IDEMPOTENCY_SKUS[(self.index as usize) % IDEMPOTENCY_SKUS.len()];
        let rid: RequestId = new_request_id();
        let decrement = self.rng.random_bool(0.7);
        let (qty, delta) = (self.rng.random_range(1..=2), self.rng.random_range(1..=3));
        for attempt in 0..4u64 {
            if attempt > 0 {
                match client(self.index + attempt, self.timeout).await {
                    Ok(fresh) => self.c = fresh,
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
            let inv = if decrement {
                Invocation::decrement(sku, qty, &rid)
            } else {
                Invocation::adjust(sku, delta, &rid)
            };
            let h = self.history.invoke(self.process, inv);
            let r = if decrement {
                self.c.decrement_with_id(rid, sku, qty).await
            } else {
                self.c.adjust_stock_with_id(rid, sku, delta).await
            };
            let (done, unknown) = match r {
                Ok(u) => (stock_done(&u.stock, u.applied.node_id), false),
                Err(e) => (completion_of(&e), !e.is_definite()),
            };
            self.done(h, done);
            if !unknown || self.stop.load(Ordering::Relaxed) {
                break;
            }
            self.history.note(&format!(
                "worker {}: retrying request {} after an unknown outcome",
                self.index,
                request_id_hex(&rid)
            ));
        }
    }
}
