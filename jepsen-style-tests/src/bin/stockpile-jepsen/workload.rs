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
use crate::run::{Completion, History, Invocation};

pub const REGISTER_SKUS: [&str; 4] = ["apple-reg", "melon-reg", "peach-reg", "tomato-reg"];
pub const RESERVATION_SKUS: [&str; 2] = ["banana-res", "orange-res"];
pub const IDEMPOTENCY_SKUS: [&str; 2] = ["kiwi-idem", "zucchini-idem"];
pub const INITIAL_STOCK: u64 = 30;

pub async fn client(nodes: u64, first: u64, timeout: Duration) -> Result<Client, Error> {
    // Seeds start at `first`, so discovery (and a retry) begins at another node.
    let seeds: Vec<String> = (0..nodes)
        .map(|i| cluster::addr((first - 1 + i) % nodes + 1))
        .collect();
    Client::builder()
        .seeds(seeds)
        .no_coalescing()
        .request_timeout(timeout)
        .attempt_timeout(Duration::from_millis(400))
        .connect_timeout(Duration::from_millis(300))
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
    nodes: u64,
    seed: u64,
    history: Arc<History>,
    stop: Arc<AtomicBool>,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ (index.wrapping_mul(0x9e37_79b9)));
    let timeout = if kind == "idempotency" {
        Duration::from_millis(800)
    } else {
        Duration::from_millis(2_500)
    };
    let mut c = match client(nodes, index % nodes + 1, Duration::from_secs(10)).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("worker {index}: no client: {e}");
            return;
        }
    };
    // The client built, discovery done: every op from here has the op deadline.
    c = match client(nodes, index % nodes + 1, timeout).await {
        Ok(c2) => c2,
        Err(_) => c,
    };
    let mut process = index;
    let mut generation = 0u64;
    let mut next_process = |p: &mut u64| {
        generation += 1;
        *p = index + 1_000 * generation;
    };
    let mut held: Vec<(String, String)> = Vec::new(); // (reservation, sku)
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        tokio::time::sleep(Duration::from_millis(rng.random_range(5..40))).await;
        match kind {
            "register" => {
                let sku = REGISTER_SKUS[(index as usize) % REGISTER_SKUS.len()];
                let roll = rng.random_range(0..100);
                if roll < 35 {
                    let h = history.invoke(process, Invocation::read(sku));
                    // Half the reads go to the worker's own node, as a Jepsen client bound
                    // to one node would: a node that does not lead must refuse them.
                    let pinned = rng.random_bool(0.5);
                    let read = if pinned {
                        c.get_at_node(index % nodes + 1, &[sku], Consistency::Linearizable)
                            .await
                    } else {
                        c.get(&[sku], Consistency::Linearizable).await
                    };
                    let done = match read {
                        Ok(r) => match r.first() {
                            Some(r) => match &r.stock {
                                Some(s) => Completion::ok_stock(
                                    true,
                                    s.on_hand,
                                    s.reserved,
                                    Some(r.node_id),
                                ),
                                None => Completion::ok_stock(false, 0, 0, Some(r.node_id)),
                            },
                            None => Completion::info("EMPTY_READ"),
                        },
                        Err(e) => completion_of(&e),
                    };
                    if history.complete(h, process, done) {
                        next_process(&mut process);
                    }
                } else if roll < 80 {
                    let qty = rng.random_range(1..=3);
                    let rid = new_request_id();
                    let h = history.invoke(process, Invocation::decrement(sku, qty, &rid));
                    let done = match c.decrement_with_id(rid, sku, qty).await {
                        Ok(u) => stock_done(&u.stock, u.applied.node_id),
                        Err(e) => completion_of(&e),
                    };
                    if history.complete(h, process, done) {
                        next_process(&mut process);
                    }
                } else {
                    let delta: i64 = if rng.random_bool(0.8) {
                        rng.random_range(2..=8)
                    } else {
                        -rng.random_range(1..=2)
                    };
                    let rid = new_request_id();
                    let h = history.invoke(process, Invocation::adjust(sku, delta, &rid));
                    let done = match c.adjust_stock_with_id(rid, sku, delta).await {
                        Ok(u) => stock_done(&u.stock, u.applied.node_id),
                        Err(e) => completion_of(&e),
                    };
                    if history.complete(h, process, done) {
                        next_process(&mut process);
                    }
                }
            }
            "reservations" => {
                let sku = RESERVATION_SKUS[(index as usize) % RESERVATION_SKUS.len()];
                let roll = rng.random_range(0..100);
                if held.is_empty() || roll < 25 {
                    let res = format!("w{index}-{n}");
                    let qty = rng.random_range(1..=2);
                    let ttl_ms = rng.random_range(1_000..2_500);
                    let rid = new_request_id();
                    let h =
                        history.invoke(process, Invocation::reserve(sku, &res, qty, ttl_ms, &rid));
                    let done = match c
                        .reserve_with_id(
                            rid,
                            Some(&res),
                            &[Item::new(sku, qty)],
                            Duration::from_millis(ttl_ms),
                        )
                        .await
                    {
                        Ok(u) => {
                            held.push((res.clone(), sku.to_string()));
                            u.stock
                                .first()
                                .map(|s| stock_done(s, u.applied.node_id))
                                .unwrap_or(Completion::info("NO_RECORD"))
                        }
                        Err(e) => {
                            if !e.is_definite() {
                                held.push((res.clone(), sku.to_string()));
                            }
                            completion_of(&e)
                        }
                    };
                    if history.complete(h, process, done) {
                        next_process(&mut process);
                    }
                } else if roll < 60 {
                    let (res, sku) = held.remove(rng.random_range(0..held.len()));
                    let confirm = rng.random_bool(0.55);
                    let rid = new_request_id();
                    let h = history.invoke(process, Invocation::close(confirm, &sku, &res, &rid));
                    let r = if confirm {
                        c.confirm_with_id(rid, &res, Some(&sku)).await
                    } else {
                        c.release_with_id(rid, &res, Some(&sku)).await
                    };
                    let done = match r {
                        Ok(u) => u
                            .stock
                            .first()
                            .map(|s| stock_done(s, u.applied.node_id))
                            .unwrap_or(Completion::info("NO_RECORD")),
                        Err(e) => completion_of(&e),
                    };
                    if history.complete(h, process, done) {
                        next_process(&mut process);
                    }
                } else if roll < 75 {
                    let h = history.invoke(process, Invocation::read(sku));
                    let done = match c.get(&[sku], Consistency::Linearizable).await {
                        Ok(r) => match r
                            .first()
                            .and_then(|r| r.stock.clone().map(|s| (s, r.node_id)))
                        {
                            Some((s, node)) => stock_done(&s, node),
                            None => Completion::ok_stock(false, 0, 0, None),
                        },
                        Err(e) => completion_of(&e),
                    };
                    if history.complete(h, process, done) {
                        next_process(&mut process);
                    }
                } else {
                    // Read one of the held reservations (some may have expired by now).
                    let (res, sku) = held[rng.random_range(0..held.len())].clone();
                    let h = history.invoke(process, Invocation::read_reservation(&sku, &res));
                    let done = match c
                        .get_reservation(&res, Some(&sku), Consistency::Linearizable)
                        .await
                    {
                        Ok(r) => Completion::ok_state(&format!("{:?}", r.state).to_lowercase()),
                        Err(e) => completion_of(&e),
                    };
                    if history.complete(h, process, done) {
                        next_process(&mut process);
                    }
                }
            }
            _ => {
                let sku = IDEMPOTENCY_SKUS[(index as usize) % IDEMPOTENCY_SKUS.len()];
                let rid: RequestId = new_request_id();
                let decrement = rng.random_bool(0.7);
                let (qty, delta) = (rng.random_range(1..=2), rng.random_range(1..=3));
                // The first attempt, then up to three retries with the same request id,
                // each through a new client that starts discovery at another node.
                for attempt in 0..4u64 {
                    if attempt > 0 {
                        match client(nodes, (index + attempt) % nodes + 1, timeout).await {
                            Ok(fresh) => c = fresh,
                            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                        }
                    }
                    let inv = if decrement {
                        Invocation::decrement(sku, qty, &rid)
                    } else {
                        Invocation::adjust(sku, delta, &rid)
                    };
                    let h = history.invoke(process, inv);
                    let r = if decrement {
                        c.decrement_with_id(rid, sku, qty).await
                    } else {
                        c.adjust_stock_with_id(rid, sku, delta).await
                    };
                    let (done, unknown) = match r {
                        Ok(u) => (stock_done(&u.stock, u.applied.node_id), false),
                        Err(e) => (completion_of(&e), !e.is_definite()),
                    };
                    if history.complete(h, process, done) {
                        next_process(&mut process);
                    }
                    if !unknown || stop.load(Ordering::Relaxed) {
                        break;
                    }
                    history.note(&format!(
                        "worker {index}: retrying request {} after an unknown outcome",
                        request_id_hex(&rid)
                    ));
                }
            }
        }
    }
}
