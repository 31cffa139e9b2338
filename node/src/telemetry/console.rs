//! What the web console (`/ui`, docs/HTTP.md) shows of this node beyond the cluster
//! status: request rates, latency percentiles and refusals per RPC over the last
//! complete window, and the hottest SKUs. Prometheus has the same facts as counters
//! and histograms (`telemetry::names`); this keeps a small, bounded copy the node can
//! answer from directly, so the console needs no Prometheus server.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use utoipa::ToSchema;

/// Rates and percentiles are over one complete window of this length.
pub const WINDOW: Duration = Duration::from_secs(5);

/// SKUs tracked for "hottest": a bounded map; its colder half is dropped when full.
const HOT_SKUS_MAX: usize = 256;

/// One mutation in this many is counted for the hottest SKUs (bounded cost on the
/// hot path; the ranking of a hot SKU is unaffected by sampling).
const HOT_SAMPLE_EVERY: u64 = 4;

/// Hot-SKU counts halve every this long, so that "hottest" means "lately".
const HOT_HALF_LIFE: Duration = Duration::from_secs(30);

/// Latencies kept per RPC per window for the percentiles (a uniform reservoir).
const LATENCY_SAMPLES_MAX: usize = 4096;

#[derive(Default)]
struct RpcWindow {
    count: u64,
    /// Refusals by reason (`RATE_LIMITED`, `INSUFFICIENT_STOCK`, ...).
    refused: BTreeMap<&'static str, u64>,
    latencies_us: Vec<u64>,
}

struct Windows {
    started: Instant,
    current: BTreeMap<&'static str, RpcWindow>,
    /// The last complete window: what is shown.
    previous: BTreeMap<&'static str, RpcWindow>,
}

struct Hot {
    counts: HashMap<String, u64>,
    halved_at: Instant,
}

struct Console {
    windows: Mutex<Windows>,
    hot: Mutex<Hot>,
    mutations: AtomicU64,
}

fn console() -> &'static Console {
    static CONSOLE: OnceLock<Console> = OnceLock::new();
    CONSOLE.get_or_init(|| Console {
        windows: Mutex::new(Windows {
            started: Instant::now(),
            current: BTreeMap::new(),
            previous: BTreeMap::new(),
        }),
        hot: Mutex::new(Hot {
            counts: HashMap::new(),
            halved_at: Instant::now(),
        }),
        mutations: AtomicU64::new(0),
    })
}

impl Windows {
    fn roll(&mut self, now: Instant) {
        let elapsed = now.duration_since(self.started);
        if elapsed < WINDOW {
            return;
        }
        self.previous = if elapsed < 2 * WINDOW {
            std::mem::take(&mut self.current)
        } else {
            // Idle for more than a window: the last complete one was empty.
            self.current.clear();
            BTreeMap::new()
        };
        self.started = now;
    }
}

/// Records one answered RPC (from `telemetry::observe`).
pub fn record(rpc: &'static str, reason: &'static str, elapsed: Duration) {
    let now = Instant::now();
    let mut w = console().windows.lock().unwrap_or_else(|p| p.into_inner());
    w.roll(now);
    let entry = w.current.entry(rpc).or_default();
    entry.count += 1;
    if reason != "OK" {
        *entry.refused.entry(reason).or_default() += 1;
    }
    let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    if entry.latencies_us.len() < LATENCY_SAMPLES_MAX {
        entry.latencies_us.push(us);
    } else {
        let slot = rand::random_range(0..entry.count) as usize;
        if slot < LATENCY_SAMPLES_MAX {
            entry.latencies_us[slot] = us;
        }
    }
}

/// Counts a mutation of `sku` towards the hottest SKUs (sampled).
pub fn touch_sku(sku: &str) {
    let c = console();
    if !c
        .mutations
        .fetch_add(1, Ordering::Relaxed)
        .is_multiple_of(HOT_SAMPLE_EVERY)
    {
        return;
    }
    let mut hot = c.hot.lock().unwrap_or_else(|p| p.into_inner());
    if hot.halved_at.elapsed() >= HOT_HALF_LIFE {
        hot.counts.retain(|_, n| {
            *n /= 2;
            *n > 0
        });
        hot.halved_at = Instant::now();
    }
    if let Some(n) = hot.counts.get_mut(sku) {
        *n += HOT_SAMPLE_EVERY;
        return;
    }
    if hot.counts.len() >= HOT_SKUS_MAX {
        drop_colder_half(&mut hot.counts);
    }
    hot.counts.insert(sku.to_string(), HOT_SAMPLE_EVERY);
    assert!(
        hot.counts.len() <= HOT_SKUS_MAX,
        "hot SKU map over its bound"
    );
}

/// Drops the colder half of a full hot-SKU map in one pass. Dropping only the coldest
/// SKU made every new SKU past the bound scan the whole map: under `uniform` (10,000
/// SKUs) that scan was 2% of a loaded leader's samples. Halving pays one scan per
/// `HOT_SKUS_MAX / 2` new SKUs, and a hot SKU, far above the median, stays.
fn drop_colder_half(counts: &mut HashMap<String, u64>) {
    let mut values: Vec<u64> = counts.values().copied().collect();
    let keep = HOT_SKUS_MAX / 2;
    let excess = values.len().saturating_sub(keep);
    if excess == 0 {
        return;
    }
    // `values[excess - 1]` is the excess-th smallest: every count below it goes, and
    // as many equal to it as make up the excess.
    let (below, threshold, _) = values.select_nth_unstable(excess - 1);
    let threshold = *threshold;
    let mut equal_to_drop = excess - below.iter().filter(|n| **n < threshold).count();
    counts.retain(|_, n| {
        if *n < threshold {
            false
        } else if *n == threshold && equal_to_drop > 0 {
            equal_to_drop -= 1;
            false
        } else {
            true
        }
    });
    assert!(counts.len() == keep, "hot SKU map not halved");
}

/// One RPC over the last complete window.
#[derive(Debug, Serialize, ToSchema)]
pub struct RpcStats {
    pub rpc: String,
    pub per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Refusals by reason (RATE_LIMITED among them: admission).
    pub refused: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HotSku {
    pub sku: String,
    /// Estimated recent mutations (sampled, halving every 30 s).
    pub score: u64,
}

/// `GET /v1/console/stats`: this node's view.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConsoleStats {
    pub node_id: u64,
    pub window_s: u64,
    pub rpcs: Vec<RpcStats>,
    /// Requests refused RATE_LIMITED in the window (admission control).
    pub admission_rejections: u64,
    pub hottest_skus: Vec<HotSku>,
}

fn percentile_ms(sorted_us: &[u64], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let at = ((sorted_us.len() - 1) as f64 * q).round() as usize;
    sorted_us[at.min(sorted_us.len() - 1)] as f64 / 1000.0
}

/// The console's numbers now; at most `hot_max` SKUs.
pub fn snapshot(node_id: u64, hot_max: usize) -> ConsoleStats {
    let mut w = console().windows.lock().unwrap_or_else(|p| p.into_inner());
    w.roll(Instant::now());
    let window_s = WINDOW.as_secs();
    let mut admission_rejections = 0;
    let rpcs = w
        .previous
        .iter()
        .map(|(rpc, win)| {
            let mut sorted = win.latencies_us.clone();
            sorted.sort_unstable();
            admission_rejections += win.refused.get("RATE_LIMITED").copied().unwrap_or(0);
            RpcStats {
                rpc: rpc.to_string(),
                per_s: win.count as f64 / window_s as f64,
                p50_ms: percentile_ms(&sorted, 0.50),
                p99_ms: percentile_ms(&sorted, 0.99),
                refused: win
                    .refused
                    .iter()
                    .map(|(k, v)| (k.to_string(), *v))
                    .collect(),
            }
        })
        .collect();
    drop(w);
    let hot = console().hot.lock().unwrap_or_else(|p| p.into_inner());
    let mut hottest: Vec<HotSku> = hot
        .counts
        .iter()
        .map(|(sku, score)| HotSku {
            sku: sku.clone(),
            score: *score,
        })
        .collect();
    hottest.sort_by(|a, b| b.score.cmp(&a.score).then_with(|| a.sku.cmp(&b.sku)));
    hottest.truncate(hot_max);
    ConsoleStats {
        node_id,
        window_s,
        rpcs,
        admission_rejections,
        hottest_skus: hottest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_sorted_samples() {
        let us: Vec<u64> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(percentile_ms(&us, 0.5), 51.0);
        assert_eq!(percentile_ms(&us, 0.99), 99.0);
        assert_eq!(percentile_ms(&[], 0.5), 0.0);
    }

    #[test]
    fn the_hottest_sku_ranks_first_and_the_map_stays_bounded() {
        for i in 0..(HOT_SKUS_MAX * 8) {
            touch_sku(&format!("cold-{i}"));
        }
        for _ in 0..400 {
            touch_sku("flash-sale");
        }
        let stats = snapshot(1, 5);
        assert_eq!(stats.hottest_skus[0].sku, "flash-sale");
        assert!(stats.hottest_skus.len() <= 5);
        let hot = console().hot.lock().unwrap();
        assert!(hot.counts.len() <= HOT_SKUS_MAX);
    }

    #[test]
    fn halving_a_full_map_keeps_the_hotter_half() {
        let mut counts: HashMap<String, u64> = (0..HOT_SKUS_MAX as u64)
            .map(|i| (format!("sku-{i}"), i % 7 + if i == 3 { 1_000 } else { 0 }))
            .collect();
        let min_kept = |c: &HashMap<String, u64>| c.values().copied().min().unwrap();
        let max_of_all_dropped = {
            let mut v: Vec<u64> = counts.values().copied().collect();
            v.sort_unstable();
            v[HOT_SKUS_MAX / 2 - 1]
        };
        drop_colder_half(&mut counts);
        assert_eq!(counts.len(), HOT_SKUS_MAX / 2);
        assert_eq!(counts["sku-3"], 1_003, "the hot SKU stays");
        assert!(min_kept(&counts) >= max_of_all_dropped);
    }
}
