//! A small SVG writer for the bench's plot: latency over time (p50, p99 per second)
//! and the latency distribution (latency at each percentile).

use hdrhistogram::Histogram;

const W: f64 = 900.0;
const H: f64 = 300.0;
const PAD: f64 = 55.0;

/// A named, coloured line: points with x in 0..=1 and y in ms.
type Series<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// One panel: axes, labels and polylines; `series` are (name, colour, points) with
/// x in 0..=1 and y in ms.
fn panel(y0: f64, title: &str, x_labels: &[(f64, String)], series: &[Series<'_>]) -> String {
    let y_max = series
        .iter()
        .flat_map(|s| s.2.iter().map(|p| p.1))
        .fold(0.0f64, f64::max)
        .max(0.001)
        * 1.1;
    let sx = |x: f64| PAD + x * (W - 2.0 * PAD);
    let sy = |y: f64| y0 + H - PAD + -(y / y_max) * (H - 2.0 * PAD);
    let mut out = format!(
        "<text x=\"{}\" y=\"{}\" font-size=\"14\" font-family=\"sans-serif\">{}</text>\n",
        PAD,
        y0 + 25.0,
        esc(title)
    );
    out += &format!(
        "<line x1=\"{0}\" y1=\"{1}\" x2=\"{2}\" y2=\"{1}\" stroke=\"black\"/><line x1=\"{0}\" y1=\"{1}\" x2=\"{0}\" y2=\"{3}\" stroke=\"black\"/>\n",
        sx(0.0),
        sy(0.0),
        sx(1.0),
        sy(y_max)
    );
    for i in 0..=4 {
        let v = y_max * i as f64 / 4.0;
        let y = sy(v);
        out += &format!(
            "<text x=\"{}\" y=\"{}\" font-size=\"10\" text-anchor=\"end\" font-family=\"sans-serif\">{v:.2} ms</text>\n",
            sx(0.0) - 4.0,
            y + 3.0
        );
        out += &format!(
            "<line x1=\"{}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"#ddd\"/>\n",
            sx(0.0),
            sx(1.0)
        );
    }
    for (x, label) in x_labels {
        out += &format!(
            "<text x=\"{}\" y=\"{}\" font-size=\"10\" text-anchor=\"middle\" font-family=\"sans-serif\">{}</text>\n",
            sx(*x),
            sy(0.0) + 14.0,
            esc(label)
        );
    }
    for (i, (name, colour, pts)) in series.iter().enumerate() {
        let path: Vec<String> = pts
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
            .collect();
        out += &format!(
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\" points=\"{}\"/>\n",
            path.join(" ")
        );
        out += &format!(
            "<text x=\"{}\" y=\"{}\" font-size=\"11\" fill=\"{colour}\" font-family=\"sans-serif\">{}</text>\n",
            W - PAD - 60.0,
            y0 + 25.0 + 14.0 * i as f64,
            esc(name)
        );
    }
    out
}

pub fn plot(title: &str, per_second: &[Histogram<u64>], all: &Histogram<u64>) -> String {
    let secs = per_second.len().max(1) as f64;
    let over_time = |q: f64| -> Vec<(f64, f64)> {
        per_second
            .iter()
            .enumerate()
            .filter(|(_, h)| !h.is_empty())
            .map(|(i, h)| ((i as f64 + 0.5) / secs, h.value_at_quantile(q) as f64 / 1e3))
            .collect()
    };
    let time_labels: Vec<(f64, String)> = (0..=4)
        .map(|i| (i as f64 / 4.0, format!("{:.0} s", secs * i as f64 / 4.0)))
        .collect();
    let quantiles = [0.0, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9999, 1.0];
    let dist: Vec<(f64, f64)> = quantiles
        .iter()
        .enumerate()
        .map(|(i, q)| {
            (
                i as f64 / (quantiles.len() - 1) as f64,
                all.value_at_quantile(*q) as f64 / 1e3,
            )
        })
        .collect();
    let dist_labels: Vec<(f64, String)> = quantiles
        .iter()
        .enumerate()
        .map(|(i, q)| {
            (
                i as f64 / (quantiles.len() - 1) as f64,
                format!("p{}", (q * 100.0 * 100.0).round() / 100.0),
            )
        })
        .collect();
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{}\" viewBox=\"0 0 {W} {}\">\n",
        2.0 * H,
        2.0 * H
    );
    svg += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
    svg += &panel(
        0.0,
        &format!("{title}: latency over time"),
        &time_labels,
        &[
            ("p50", "#1f77b4", over_time(0.5)),
            ("p99", "#d62728", over_time(0.99)),
        ],
    );
    svg += &panel(
        H,
        "latency distribution",
        &dist_labels,
        &[("latency", "#2ca02c", dist)],
    );
    svg += "</svg>\n";
    svg
}
