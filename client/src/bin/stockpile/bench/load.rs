//! The bench's load: SKU setup, the client tasks and what they count.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use stockpile_client::{Client, Consistency, Error, Item, Mutation};

use super::{BenchArgs, ConsistencyArg, Workload, hot_sku, sku};

#[derive(Default)]
pub struct Counters {
    pub attempted: AtomicU64,
    pub succeeded: AtomicU64,
    /// Decrements and confirms acknowledged: units that left the shelf.
    pub sold: AtomicU64,
    /// Sales whose outcome is unknown.
    pub sold_unknown: AtomicU64,
}

pub struct Shared {
    pub counters: Counters,
    pub errors: Mutex<BTreeMap<String, u64>>,
    /// Latency of every op, µs.
    pub latency: Mutex<Histogram<u64>>,
    /// Per-second latency, µs (2 significant digits).
    pub per_second: Mutex<Vec<Histogram<u64>>>,
    pub started: Instant,
}

impl Shared {
    pub fn new() -> Result<Shared, Error> {
        let latency = Histogram::new_with_bounds(1, 60_000_000, 3).map_err(|e| Error::Config {
            message: e.to_string(),
        })?;
        Ok(Shared {
            counters: Counters::default(),
            errors: Mutex::new(BTreeMap::new()),
            latency: Mutex::new(latency),
            per_second: Mutex::new(Vec::new()),
            started: Instant::now(),
        })
    }

    fn record(&self, latency: Duration, n: u64) {
        let us = latency.as_micros().clamp(1, 60_000_000) as u64;
        if let Ok(mut h) = self.latency.lock() {
            let _ = h.record_n(us, n);
        }
        let sec = self.started.elapsed().as_secs() as usize;
        if let Ok(mut ps) = self.per_second.lock() {
            while ps.len() <= sec {
                match Histogram::new_with_bounds(1, 60_000_000, 2) {
                    Ok(h) => ps.push(h),
                    Err(_) => return,
                }
            }
            let _ = ps[sec].record_n(us, n);
        }
    }

    fn error(&self, e: &Error, n: u64) {
        if let Ok(mut m) = self.errors.lock() {
            *m.entry(e.reason().to_string()).or_default() += n;
        }
    }
}

pub async fn setup(client: &Client, args: &BenchArgs) -> Result<Vec<String>, Error> {
    let skus: Vec<String> = match args.workload {
        Workload::Hot => vec![hot_sku(&args.prefix)],
        _ => (0..args.skus.max(1))
            .map(|i| sku(&args.prefix, i))
            .collect(),
    };
    for chunk in skus.chunks(1_000) {
        let ops = chunk
            .iter()
            .map(|s| Mutation::SetStock {
                sku: s.clone(),
                on_hand: args.stock,
                expected_version: None,
            })
            .collect();
        for r in client.batch(ops).await? {
            r?;
        }
    }
    Ok(skus)
}

pub async fn total_on_hand(client: &Client, skus: &[String]) -> Result<u64, Error> {
    let mut total = 0u64;
    for chunk in skus.chunks(1_000) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        for r in client.get(&refs, Consistency::Linearizable).await? {
            total += r.stock.map(|s| s.on_hand).unwrap_or(0);
        }
    }
    Ok(total)
}

enum Op {
    Decrement,
    Read,
    ReserveConfirm,
}

fn pick(workload: Workload, rng: &mut impl rand::Rng) -> Op {
    match workload {
        Workload::Hot | Workload::Uniform => Op::Decrement,
        Workload::Read => Op::Read,
        Workload::ReserveConfirm => Op::ReserveConfirm,
        Workload::Mixed => match rng.random_range(0..100) {
            0..80 => Op::Read,
            80..95 => Op::Decrement,
            _ => Op::ReserveConfirm,
        },
    }
}

impl Shared {
    /// Counts one sale's outcome: acknowledged, or an error (unknown ones may have sold).
    fn sale(&self, r: Result<(), Error>) {
        let c = &self.counters;
        match r {
            Ok(()) => {
                c.succeeded.fetch_add(1, Ordering::Relaxed);
                c.sold.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                if !e.is_definite() {
                    c.sold_unknown.fetch_add(1, Ordering::Relaxed);
                }
                self.error(&e, 1);
            }
        }
    }
}

pub async fn worker(
    client: Client,
    args: Arc<BenchArgs>,
    skus: Arc<Vec<String>>,
    shared: Arc<Shared>,
    until: Instant,
) {
    use rand::Rng;
    // A Send rng: the task moves between threads across awaits.
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_rng(&mut rand::rng());
    let consistency = match args.consistency {
        ConsistencyArg::Linearizable => Consistency::Linearizable,
        ConsistencyArg::Stale => Consistency::Stale,
    };
    let c = &shared.counters;
    while Instant::now() < until {
        let s = &skus[rng.random_range(0..skus.len())];
        match pick(args.workload, &mut rng) {
            Op::Decrement if args.batch > 1 => {
                let n = args.batch as u64;
                let ops = (0..args.batch)
                    .map(|_| Mutation::Decrement {
                        sku: skus[rng.random_range(0..skus.len())].clone(),
                        quantity: 1,
                    })
                    .collect();
                c.attempted.fetch_add(n, Ordering::Relaxed);
                let t = Instant::now();
                match client.batch(ops).await {
                    Ok(results) => {
                        shared.record(t.elapsed(), n);
                        for r in results {
                            shared.sale(r.map(|_| ()));
                        }
                    }
                    Err(e) => shared.error(&e, n),
                }
            }
            Op::Decrement => {
                c.attempted.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                let r = client.decrement(s, 1).await;
                shared.record(t.elapsed(), 1);
                shared.sale(r.map(|_| ()));
            }
            Op::Read => {
                c.attempted.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                let r = client.get(&[s.as_str()], consistency).await;
                shared.record(t.elapsed(), 1);
                match r {
                    Ok(_) => {
                        c.succeeded.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => shared.error(&e, 1),
                }
            }
            Op::ReserveConfirm => {
                c.attempted.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                let item = [Item::new(s.clone(), 1)];
                let r = match client.reserve(&item, Duration::from_secs(30)).await {
                    Ok(held) => {
                        let id = &held.reservation.reservation_id;
                        client.confirm(id, Some(s)).await.map(|_| ())
                    }
                    Err(e) => Err(e),
                };
                shared.record(t.elapsed(), 1);
                shared.sale(r);
            }
        }
    }
}
