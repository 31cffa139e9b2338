//! The bench's report: the drain check, the summary (JSON or a table) and the plot.

use std::sync::atomic::Ordering;

use hdrhistogram::Histogram;
use serde_json::json;
use stockpile_client::Error;

use super::load::Shared;
use super::{BenchArgs, OnOff, Workload};

/// Whether a run's stock changes add up: every acknowledged sale took a unit, and
/// no more units left than acknowledged plus unknown outcomes.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DrainCheck {
    pub initial: u64,
    #[serde(rename = "final")]
    pub final_: u64,
    pub acked: u64,
    pub unknown: u64,
    pub ok: bool,
    pub message: String,
}

pub fn drain_check(initial: u64, final_: u64, acked: u64, unknown: u64) -> DrainCheck {
    let (ok, message) = if final_ > initial {
        (
            false,
            format!("stock grew from {initial} to {final_}: units appeared"),
        )
    } else {
        let taken = initial - final_;
        if taken > acked + unknown {
            (
                false,
                format!(
                    "OVERSOLD: {taken} units left but only {acked} sales were acknowledged (+{unknown} unknown)"
                ),
            )
        } else if taken < acked {
            (
                false,
                format!("LOST: {acked} sales were acknowledged but only {taken} units left"),
            )
        } else if taken == initial && initial > 0 {
            (
                true,
                format!(
                    "drained: {acked} acknowledged sales == initial stock {initial}, final stock 0"
                ),
            )
        } else {
            (
                true,
                format!("{taken} units left for {acked} acknowledged sales (+{unknown} unknown)"),
            )
        }
    };
    DrainCheck {
        initial,
        final_,
        acked,
        unknown,
        ok,
        message,
    }
}

/// What a run measured.
pub struct Outcome<'a> {
    pub args: &'a BenchArgs,
    pub shared: &'a Shared,
    pub elapsed: f64,
    pub drain: Option<DrainCheck>,
}

impl Outcome<'_> {
    fn histogram(&self) -> Result<Histogram<u64>, Error> {
        self.shared
            .latency
            .lock()
            .map(|h| h.clone())
            .map_err(|_| Error::Internal {
                message: "histogram lock".into(),
            })
    }

    /// The summary as JSON (what `--json` prints).
    pub fn summary(&self) -> Result<serde_json::Value, Error> {
        let (args, c, elapsed) = (self.args, &self.shared.counters, self.elapsed);
        let (attempted, succeeded) = (
            c.attempted.load(Ordering::Relaxed),
            c.succeeded.load(Ordering::Relaxed),
        );
        let h = self.histogram()?;
        let q = |p: f64| h.value_at_quantile(p);
        let errors = self
            .shared
            .errors
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default();
        Ok(json!({
            "workload": args.workload,
            "clients": args.clients,
            "duration_s": elapsed,
            "skus": if args.workload == Workload::Hot { 1 } else { args.skus },
            "batch": args.batch,
            "coalesce": args.coalesce == OnOff::On,
            "consistency": format!("{:?}", args.consistency).to_lowercase(),
            "attempted": attempted,
            "succeeded": succeeded,
            "attempted_per_s": (attempted as f64 / elapsed).round(),
            "succeeded_per_s": (succeeded as f64 / elapsed).round(),
            "latency_us": { "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999), "max": h.max() },
            "errors": errors,
            "drain_check": self.drain,
        }))
    }

    /// The summary as a table, for people.
    pub fn print(&self) -> Result<(), Error> {
        let (args, c, elapsed) = (self.args, &self.shared.counters, self.elapsed);
        let (attempted, succeeded) = (
            c.attempted.load(Ordering::Relaxed),
            c.succeeded.load(Ordering::Relaxed),
        );
        let h = self.histogram()?;
        let ms = |p: f64| h.value_at_quantile(p) as f64 / 1e3;
        let coalescing = if args.coalesce == OnOff::On {
            "on"
        } else {
            "off"
        };
        println!(
            "workload {:?}, {} clients, {elapsed:.1} s, batch {}, coalescing {coalescing}",
            args.workload, args.clients, args.batch,
        );
        println!(
            "ops/s: {:.0} attempted, {:.0} successful ({attempted} attempted, {succeeded} successful)",
            attempted as f64 / elapsed,
            succeeded as f64 / elapsed
        );
        println!(
            "latency: p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms",
            ms(0.5),
            ms(0.9),
            ms(0.99),
            ms(0.999),
            h.max() as f64 / 1e3
        );
        let errors = self
            .shared
            .errors
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default();
        if errors.is_empty() {
            println!("errors: none");
        } else {
            let list: Vec<String> = errors.iter().map(|(k, v)| format!("{k} {v}")).collect();
            println!("errors: {}", list.join(", "));
        }
        if let Some(d) = &self.drain {
            let verdict = if d.ok { "ok" } else { "FAILED" };
            println!("drain check: {verdict} — {}", d.message);
        }
        Ok(())
    }

    /// Writes the latency plot to `path` (SVG).
    pub fn plot(&self, path: &std::path::Path) -> Result<(), Error> {
        let per_second = self
            .shared
            .per_second
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default();
        let title = format!(
            "stockpile bench --workload {:?} --clients {}",
            self.args.workload, self.args.clients
        )
        .to_lowercase();
        let svg = crate::svg::plot(&title, &per_second, &self.histogram()?);
        std::fs::write(path, svg).map_err(|e| Error::Config {
            message: format!("{}: {e}", path.display()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drain_check_catches_an_oversell_and_a_lost_sale() {
        assert!(drain_check(100, 0, 100, 0).ok);
        assert!(drain_check(100, 0, 100, 0).message.contains("drained"));
        assert!(
            drain_check(1_000, 900, 95, 5).ok,
            "unknown outcomes may or may not have applied"
        );
        let oversold = drain_check(100, 0, 98, 1);
        assert!(
            !oversold.ok && oversold.message.contains("OVERSOLD"),
            "{oversold:?}"
        );
        let lost = drain_check(100, 10, 95, 0);
        assert!(!lost.ok && lost.message.contains("LOST"), "{lost:?}");
        assert!(!drain_check(100, 101, 0, 0).ok);
    }
}
