//! The run report: `check.json` (every verdict) and `index.html` — a verdict table
//! and, for every failing SKU, an SVG timeline of its operations per process (ok /
//! fail / info), nemesis bands, the longest linearizable prefix and where the search
//! got stuck.

use serde::Serialize;

use crate::checker::SkuVerdict;
use crate::history::{Call, Op, Outcome, Record};
use crate::invariants::Violation;

#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub valid: bool,
    pub seed: u64,
    pub command: String,
    pub linearizability: Vec<SkuVerdict>,
    pub invariants: Vec<Violation>,
    /// Replica convergence after healing, and other whole-cluster checks.
    pub cluster: Vec<ClusterCheck>,
    pub stats: Stats,
}

#[derive(Clone, Debug, Serialize)]
pub struct ClusterCheck {
    pub check: String,
    pub ok: bool,
    pub message: String,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Stats {
    pub ops: usize,
    pub ok: usize,
    pub fail: usize,
    pub info: usize,
    pub nemesis_events: usize,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn label(op: &Op) -> String {
    let c = match &op.call {
        Call::Set { on_hand } => format!("set {on_hand}"),
        Call::Read => "read".into(),
        Call::Decrement { qty } => format!("dec {qty}"),
        Call::Adjust { delta } => format!("adj {delta:+}"),
        Call::Reserve { res, qty, .. } => format!("reserve {res} {qty}"),
        Call::Confirm { res } => format!("confirm {res}"),
        Call::Release { res } => format!("release {res}"),
        Call::ReadReservation { res } => format!("read-res {res}"),
        Call::Expire { res } => format!("expire {res}"),
    };
    let o = match &op.outcome {
        Outcome::Stock {
            found,
            on_hand,
            reserved,
        } => {
            if *found {
                format!(" → {on_hand}/{reserved}")
            } else {
                " → none".into()
            }
        }
        Outcome::ReservationState(s) => format!(" → {s}"),
        Outcome::Refused { reason, available } => format!(
            " ✗ {reason}{}",
            available.map(|a| format!(" ({a})")).unwrap_or_default()
        ),
        Outcome::Unknown => " ?".into(),
    };
    format!("#{} p{} {c}{o}", op.id, op.process)
}

/// An SVG timeline of one SKU's ops: a lane per process, nemesis bands behind;
/// `window` (ns) restricts it to the ops that overlap it.
pub fn timeline(
    ops: &[Op],
    nemesis: &[(u64, u64, String)],
    verdict: &SkuVerdict,
    window: Option<(u64, u64)>,
) -> String {
    let end_of = |o: &Op| {
        if o.ret_ns == u64::MAX {
            o.call_ns
        } else {
            o.ret_ns
        }
    };
    let client_ops: Vec<&Op> = ops
        .iter()
        .filter(|o| o.process != u64::MAX)
        .filter(|o| window.is_none_or(|(a, b)| end_of(o) >= a && o.call_ns <= b))
        .collect();
    let t0 = window.map(|w| w.0).unwrap_or(0);
    let t_end = window
        .map(|w| w.1)
        .unwrap_or_else(|| client_ops.iter().map(|o| end_of(o)).max().unwrap_or(1))
        .max(t0 + 1);
    let mut procs: Vec<u64> = client_ops.iter().map(|o| o.process).collect();
    procs.sort_unstable();
    procs.dedup();
    let (w, lane, left) = (1400.0, 22.0, 60.0);
    let h = 40.0 + lane * procs.len() as f64;
    let x =
        |t: u64| left + (t.clamp(t0, t_end) - t0) as f64 / (t_end - t0) as f64 * (w - left - 20.0);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"monospace\" font-size=\"9\">\n"
    );
    for (start, end, what) in nemesis {
        let e = (*end).min(t_end);
        if e < t0 || *start > t_end {
            continue;
        }
        svg += &format!(
            "<rect x=\"{:.1}\" y=\"20\" width=\"{:.1}\" height=\"{}\" fill=\"#fbe3c8\"><title>{}</title></rect>\n",
            x(*start),
            (x(e) - x(*start)).max(1.0),
            h - 20.0,
            esc(what)
        );
    }
    let prefix: std::collections::HashSet<usize> = verdict.longest_prefix.iter().copied().collect();
    for o in &client_ops {
        let lane_i = procs.iter().position(|p| *p == o.process).unwrap_or(0) as f64;
        let y = 25.0 + lane * lane_i;
        let end = if o.ret_ns == u64::MAX {
            t_end
        } else {
            o.ret_ns.min(t_end)
        };
        let fill = match o.outcome {
            Outcome::Stock { .. } | Outcome::ReservationState(_) => "#7cc47c",
            Outcome::Refused { .. } => "#e6a0a0",
            Outcome::Unknown => "#c0c0c0",
        };
        let stroke = if verdict.stuck_at.contains(&o.id) {
            "stroke=\"red\" stroke-width=\"2\""
        } else if prefix.contains(&o.id) {
            "stroke=\"#1f5f1f\" stroke-width=\"1\""
        } else {
            "stroke=\"none\""
        };
        svg += &format!(
            "<rect x=\"{:.1}\" y=\"{y}\" width=\"{:.1}\" height=\"{}\" fill=\"{fill}\" {stroke}><title>{}</title></rect>\n",
            x(o.call_ns),
            (x(end) - x(o.call_ns)).max(1.5),
            lane - 6.0,
            esc(&label(o))
        );
        if window.is_some() {
            svg += &format!(
                "<text x=\"{:.1}\" y=\"{}\" font-size=\"8\">{}</text>\n",
                x(o.call_ns) + 2.0,
                y + 11.0,
                esc(&label(o))
            );
        }
    }
    for (i, p) in procs.iter().enumerate() {
        svg += &format!(
            "<text x=\"4\" y=\"{}\">process {p}</text>\n",
            25.0 + lane * i as f64 + 10.0
        );
    }
    svg += &format!(
        "<text x=\"{left}\" y=\"12\">{:.3} s … {:.3} s; green ok, red fail, grey unknown; orange bands: faults; dark outline: the longest linearizable prefix; red outline: where the search got stuck (hover for details)</text>\n",
        t0 as f64 / 1e9,
        t_end as f64 / 1e9
    );
    svg += "</svg>\n";
    svg
}

/// The HTML report.
pub fn html(
    check: &Check,
    ops_by_sku: &std::collections::BTreeMap<String, Vec<Op>>,
    records: &[Record],
) -> String {
    let nemesis = nemesis_bands(records);
    let mut out = String::from(
        "<!doctype html><meta charset=\"utf-8\"><title>stockpile-jepsen report</title>\n<style>body{font-family:sans-serif;margin:2em}td,th{padding:4px 8px;border-bottom:1px solid #ddd;text-align:left}.ok{color:#1a7f1a}.bad{color:#b00;font-weight:bold}</style>\n",
    );
    out += &format!(
        "<h1>stockpile-jepsen: {}</h1>\n<p>seed {} · {} ops ({} ok, {} fail, {} info) · {} nemesis events</p>\n<p>repeat: <code>{}</code></p>\n",
        if check.valid {
            "<span class=ok>VALID</span>"
        } else {
            "<span class=bad>ANOMALY</span>"
        },
        check.seed,
        check.stats.ops,
        check.stats.ok,
        check.stats.fail,
        check.stats.info,
        check.stats.nemesis_events,
        esc(&check.command)
    );
    out += "<h2>Verdicts</h2><table><tr><th>check</th><th>subject</th><th>verdict</th><th>detail</th></tr>\n";
    for v in &check.linearizability {
        out += &format!(
            "<tr><td>linearizable</td><td>{}</td><td class={}>{}</td><td>{} ({} states)</td></tr>\n",
            esc(&v.sku),
            if v.linearizable { "ok" } else { "bad" },
            if v.linearizable { "ok" } else { "FAIL" },
            esc(&v.message),
            v.states_explored
        );
    }
    for v in &check.invariants {
        out += &format!(
            "<tr><td>{}</td><td>{}</td><td class=bad>FAIL</td><td>{} (ops {:?})</td></tr>\n",
            esc(&v.check),
            esc(&v.sku),
            esc(&v.message),
            v.ops
        );
    }
    for c in &check.cluster {
        out += &format!(
            "<tr><td>{}</td><td>cluster</td><td class={}>{}</td><td>{}</td></tr>\n",
            esc(&c.check),
            if c.ok { "ok" } else { "bad" },
            if c.ok { "ok" } else { "FAIL" },
            esc(&c.message)
        );
    }
    out += "</table>\n";
    for v in check.linearizability.iter().filter(|v| !v.linearizable) {
        let Some(ops) = ops_by_sku.get(&v.sku) else {
            continue;
        };
        out += &format!(
            "<h2>{}: not linearizable</h2><p>{}</p>\n",
            esc(&v.sku),
            esc(&v.message)
        );
        out += &format!(
            "<p>longest linearizable prefix ({} ops): {:?}</p>\n",
            v.longest_prefix.len(),
            v.longest_prefix
        );
        out += "<p>stuck at:</p><ul>\n";
        for id in &v.stuck_at {
            if let Some(o) = ops.get(*id) {
                out += &format!("<li>{}</li>\n", esc(&label(o)));
            }
        }
        out += "</ul>\n";
        out += "<p>the whole run:</p>\n";
        out += &timeline(ops, &nemesis, v, None);
        // And zoomed on where the search got stuck.
        let stuck: Vec<&Op> = v.stuck_at.iter().filter_map(|i| ops.get(*i)).collect();
        let from = stuck.iter().map(|o| o.call_ns).min();
        let to = stuck
            .iter()
            .map(|o| {
                if o.ret_ns == u64::MAX {
                    o.call_ns
                } else {
                    o.ret_ns
                }
            })
            .max();
        if let (Some(a), Some(b)) = (from, to) {
            out += "<p>around the stuck operation(s), ±300 ms:</p>\n";
            out += &timeline(
                ops,
                &nemesis,
                v,
                Some((a.saturating_sub(300_000_000), b.saturating_add(300_000_000))),
            );
        }
    }
    out += "<h2>Files</h2><ul><li><a href=\"history.jsonl\">history.jsonl</a></li><li><a href=\"check.json\">check.json</a></li><li><a href=\"schedule.txt\">schedule.txt</a></li><li><a href=\"cluster.toml\">cluster.toml</a></li><li>logs/</li></ul>\n";
    out
}

/// (start, end, description) of every fault, from the history's nemesis events:
/// an event whose `f` ends in `-start` opens a band, the next `heal` closes it.
pub fn nemesis_bands(records: &[Record]) -> Vec<(u64, u64, String)> {
    let mut bands = Vec::new();
    let mut open: Option<(u64, String)> = None;
    for r in records
        .iter()
        .filter(|r| r.kind == Some(crate::history::Kind::Nemesis))
    {
        if r.f == "heal" {
            if let Some((s, d)) = open.take() {
                bands.push((s, r.time_ns, d));
            }
        } else if r.f.ends_with("-start") {
            open = Some((
                r.time_ns,
                format!("{} {}", r.f, r.detail.clone().unwrap_or_default()),
            ));
        }
    }
    if let Some((s, d)) = open {
        bands.push((s, u64::MAX, d));
    }
    bands
}
