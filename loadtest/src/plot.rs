//! `--plot FILE.svg`: a hand-written SVG with three panels — latency over
//! time (per-second p50, p99 and max), requests per second over time, and
//! the latency percentile distribution (HdrHistogram-style, log axes).

use std::fmt::Write as _;

use crate::report::{fmt_us, Summary};

const WIDTH: f64 = 960.0;
const LEFT: f64 = 90.0;
const RIGHT: f64 = 30.0;
const COLORS: [(&str, &str); 3] = [("p50", "#1f77b4"), ("p99", "#ff7f0e"), ("max", "#d62728")];

/// A plotting area and its data ranges.
#[derive(Debug, Clone, Copy)]
struct Panel {
    top: f64,
    height: f64,
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
}

impl Panel {
    fn width() -> f64 {
        WIDTH - LEFT - RIGHT
    }
    fn px(&self, x: f64) -> f64 {
        LEFT + (x - self.x0) / (self.x1 - self.x0).max(f64::MIN_POSITIVE) * Self::width()
    }
    fn py(&self, y: f64) -> f64 {
        self.top + self.height
            - (y - self.y0) / (self.y1 - self.y0).max(f64::MIN_POSITIVE) * self.height
    }
    fn frame(&self, svg: &mut String, title: &str, xlabel: &str, ylabel: &str) {
        let _ = writeln!(
            svg,
            r##"<rect x="{LEFT}" y="{}" width="{}" height="{}" fill="#fafafa" stroke="#888"/>"##,
            self.top,
            Self::width(),
            self.height
        );
        let _ = writeln!(
            svg,
            r#"<text x="{LEFT}" y="{}" font-size="15" font-weight="bold">{}</text>"#,
            self.top - 10.0,
            esc(title)
        );
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle" font-size="12">{}</text>"#,
            LEFT + Self::width() / 2.0,
            self.top + self.height + 36.0,
            esc(xlabel)
        );
        let (cx, cy) = (22.0, self.top + self.height / 2.0);
        let _ = writeln!(
            svg,
            r#"<text x="{cx}" y="{cy}" text-anchor="middle" font-size="12" transform="rotate(-90 {cx} {cy})">{}</text>"#,
            esc(ylabel)
        );
    }
    fn hgrid(&self, svg: &mut String, y: f64, label: &str) {
        let py = self.py(y);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end" font-size="11">{}</text>"##,
            LEFT + Self::width(),
            LEFT - 6.0,
            py + 4.0,
            esc(label)
        );
    }
    fn vgrid(&self, svg: &mut String, x: f64, label: &str) {
        let px = self.px(x);
        let _ = writeln!(
            svg,
            r##"<line x1="{px:.1}" y1="{}" x2="{px:.1}" y2="{}" stroke="#ddd"/><text x="{px:.1}" y="{:.1}" text-anchor="middle" font-size="11">{}</text>"##,
            self.top,
            self.top + self.height,
            self.top + self.height + 16.0,
            esc(label)
        );
    }
    fn line(&self, svg: &mut String, pts: &[(f64, f64)], color: &str, markers: bool) {
        if pts.is_empty() {
            return;
        }
        let path: Vec<String> = pts
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", self.px(x), self.py(y)))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"#,
            path.join(" ")
        );
        if markers && pts.len() <= 120 {
            for &(x, y) in pts {
                let _ = writeln!(
                    svg,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#,
                    self.px(x),
                    self.py(y)
                );
            }
        }
    }
    fn no_data(&self, svg: &mut String) {
        let _ = writeln!(
            svg,
            r##"<text x="{}" y="{}" text-anchor="middle" font-size="14" fill="#888">no successful requests</text>"##,
            LEFT + Self::width() / 2.0,
            self.top + self.height / 2.0
        );
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Log-scale range (in log10 µs) covering `values`, widened to whole
/// decades, plus the gridline values (1-2-5 steps when few decades).
fn log_axis(values: impl Iterator<Item = f64>) -> Option<(f64, f64, Vec<f64>)> {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| *v > 0.0) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return None;
    }
    let d0 = lo.log10().floor();
    let d1 = (hi.log10().ceil()).max(d0 + 1.0);
    let steps: &[f64] = if d1 - d0 <= 3.0 {
        &[1.0, 2.0, 5.0]
    } else {
        &[1.0]
    };
    let mut ticks = Vec::new();
    let mut d = d0;
    while d <= d1 {
        for s in steps {
            let v = s * 10f64.powf(d);
            if v.log10() <= d1 + 1e-9 {
                ticks.push(v);
            }
        }
        d += 1.0;
    }
    Some((d0, d1, ticks))
}

/// "Nice" linear upper bound and step for values up to `max`.
fn lin_axis(max: f64) -> (f64, f64) {
    let max = max.max(1.0);
    let mag = 10f64.powf(max.log10().floor());
    let step = [0.1, 0.2, 0.25, 0.5, 1.0, 2.0, 2.5, 5.0]
        .into_iter()
        .map(|s| s * mag)
        .find(|s| max / s <= 6.0)
        .unwrap_or(mag * 10.0);
    ((max / step).ceil() * step, step)
}

/// Axis label for a latency gridline (1-2-5 values): "200µs", "1ms", "5s".
fn fmt_tick(us: f64) -> String {
    let (v, unit) = if us >= 1e6 {
        (us / 1e6, "s")
    } else if us >= 1e3 {
        (us / 1e3, "ms")
    } else {
        (us, "µs")
    };
    // Round away float noise such as 0.30000000000000004.
    let v = (v * 1000.0).round() / 1000.0;
    format!("{v}{unit}")
}

fn fmt_count(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// Renders the whole chart.
pub fn render(s: &Summary<'_>) -> String {
    let height = 1110.0;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{LEFT}" y="28" font-size="18" font-weight="bold">loadtest {} — {}</text>"#,
        esc(&s.target),
        esc(s.args.mode())
    );
    let target_rate = match s.args.rate {
        Some(r) => format!(", target {} req/s (open loop)", fmt_count(r)),
        None => String::new(),
    };
    let _ = writeln!(
        svg,
        r##"<text x="{LEFT}" y="48" font-size="12" fill="#444">{} connections, {}-byte messages, {} requests, {:.0} req/s{}, {} errors</text>"##,
        s.args.connections,
        s.args.size,
        s.totals.requests,
        s.rps(),
        esc(&target_rate),
        s.totals.errors.total()
    );

    let secs = s.duration.as_secs_f64();
    let tl = &s.timeline;
    let us = |ns: u64| ns as f64 / 1000.0;
    // Per-second series, at the middle of each second.
    let per_sec: Vec<(f64, [f64; 3])> = tl
        .iter()
        .enumerate()
        .filter(|(_, sec)| sec.requests > 0)
        .map(|(i, sec)| {
            let h = &sec.hist;
            (
                i as f64 + 0.5,
                [
                    us(h.value_at_quantile(0.5)),
                    us(h.value_at_quantile(0.99)),
                    us(h.max()),
                ],
            )
        })
        .collect();
    let time_ticks = |p: &Panel, svg: &mut String| {
        let (_, step) = lin_axis(secs);
        let mut t = 0.0;
        while t <= secs + 1e-9 {
            p.vgrid(svg, t, &format!("{t}s"));
            t += step;
        }
    };

    // Panel 1: latency over time.
    let axis = log_axis(per_sec.iter().flat_map(|(_, v)| v.iter().copied()));
    let mut p = Panel {
        top: 90.0,
        height: 260.0,
        x0: 0.0,
        x1: secs,
        y0: 0.0,
        y1: 1.0,
    };
    p.frame(
        &mut svg,
        "Latency over time (per second)",
        "time since start of measurement",
        "latency (log scale)",
    );
    match axis {
        Some((d0, d1, ticks)) => {
            p.y0 = d0;
            p.y1 = d1;
            for t in ticks {
                p.hgrid(&mut svg, t.log10(), &fmt_tick(t));
            }
            time_ticks(&p, &mut svg);
            for (k, (name, color)) in COLORS.iter().enumerate() {
                let pts: Vec<(f64, f64)> =
                    per_sec.iter().map(|(x, v)| (*x, v[k].log10())).collect();
                p.line(&mut svg, &pts, color, true);
                legend(&mut svg, &p, k, name, color);
            }
        }
        None => p.no_data(&mut svg),
    }

    // Panel 2: throughput over time.
    let max_rps = tl
        .iter()
        .map(|s| s.requests as f64)
        .chain(s.args.rate)
        .fold(0.0, f64::max)
        // Headroom, so a target line at the top does not hit the title.
        * 1.1;
    let (ymax, ystep) = lin_axis(max_rps);
    let p = Panel {
        top: 420.0,
        height: 200.0,
        x0: 0.0,
        x1: secs,
        y0: 0.0,
        y1: ymax,
    };
    p.frame(
        &mut svg,
        "Throughput over time",
        "time since start of measurement",
        "requests per second",
    );
    let mut y = 0.0;
    while y <= ymax + 1e-9 {
        p.hgrid(&mut svg, y, &fmt_count(y));
        y += ystep;
    }
    time_ticks(&p, &mut svg);
    for (i, sec) in tl.iter().enumerate() {
        let x0 = p.px(i as f64 + 0.1);
        let x1 = p.px((i as f64 + 0.9).min(secs));
        let (yt, yb) = (p.py(sec.requests as f64), p.py(0.0));
        let _ = writeln!(
            svg,
            r##"<rect x="{x0:.1}" y="{yt:.1}" width="{:.1}" height="{:.1}" fill="#2ca02c" opacity="0.7"/>"##,
            (x1 - x0).max(1.0),
            yb - yt
        );
        if sec.errors > 0 {
            let ye = p.py((sec.errors as f64).min(ymax));
            let _ = writeln!(
                svg,
                r##"<rect x="{x0:.1}" y="{ye:.1}" width="{:.1}" height="{:.1}" fill="#d62728"/>"##,
                (x1 - x0).max(1.0),
                yb - ye
            );
        }
    }
    if let Some(rate) = s.args.rate {
        let (xl, xr, y) = (p.px(0.0), p.px(secs), p.py(rate));
        let _ = writeln!(
            svg,
            r##"<line x1="{xl:.1}" y1="{y:.1}" x2="{xr:.1}" y2="{y:.1}" stroke="#000" stroke-dasharray="6 4"/><text x="{:.1}" y="{:.1}" font-size="11">target {}/s</text>"##,
            xl + 4.0,
            y - 4.0,
            fmt_count(rate)
        );
    }
    // A request lands in the second its reply arrived: a server that
    // stalls at t = 4 s shows its backlog in the bar where the stall ends.
    let _ = writeln!(
        svg,
        r##"<text x="{LEFT}" y="{:.1}" font-size="11" fill="#444">each request is counted in the second its reply arrived, so a stall shows as a gap and then a burst where it ends</text>"##,
        p.top + p.height + 54.0
    );
    legend(&mut svg, &p, 0, "requests", "#2ca02c");
    legend(&mut svg, &p, 1, "errors", "#d62728");

    // Panel 3: percentile distribution.
    let h = &s.totals.hist;
    let mut p = Panel {
        top: 720.0,
        height: 300.0,
        x0: 0.0,
        x1: 1.0,
        y0: 0.0,
        y1: 1.0,
    };
    p.frame(
        &mut svg,
        "Latency by percentile (whole run)",
        "percentile",
        "latency (log scale)",
    );
    if h.is_empty() {
        p.no_data(&mut svg);
    } else {
        // x = log10(1 / (1 - q)): 0 → p0, 1 → p90, 2 → p99, …
        // At least up to p99.9, so p50..p99.9 always has room; further
        // when there are enough samples to say something there.
        let nines = (h.len() as f64).log10().clamp(3.0, 6.0).ceil();
        // A little room right of the last tick for its marker's label.
        p.x1 = nines + 0.35;
        let pts: Vec<(f64, f64)> = (0..=(nines as usize * 50))
            .map(|i| {
                let x = i as f64 / 50.0;
                let q = (1.0 - 10f64.powf(-x)).min(1.0);
                let v = if x >= nines {
                    us(h.max())
                } else {
                    us(h.value_at_quantile(q))
                };
                (x, v)
            })
            .collect();
        if let Some((d0, d1, ticks)) = log_axis(pts.iter().map(|p| p.1)) {
            p.y0 = d0;
            p.y1 = d1;
            for t in ticks {
                p.hgrid(&mut svg, t.log10(), &fmt_tick(t));
            }
        }
        for n in 0..=nines as usize {
            let label = match n {
                0 => "0%".to_string(),
                _ => format!("{}%", 100.0 - 100.0 * 10f64.powi(-(n as i32))),
            };
            p.vgrid(&mut svg, n as f64, &label);
        }
        let logged: Vec<(f64, f64)> = pts.iter().map(|&(x, v)| (x, v.max(1e-3).log10())).collect();
        p.line(&mut svg, &logged, "#9467bd", false);
        for (q, name) in [(0.5, "p50"), (0.99, "p99"), (0.999, "p99.9")] {
            let x = -(1.0f64 - q).log10();
            if x <= nines {
                let v = us(h.value_at_quantile(q));
                let (cx, cy) = (p.px(x), p.py(v.max(1e-3).log10()));
                let _ = writeln!(
                    svg,
                    r##"<circle cx="{cx:.1}" cy="{cy:.1}" r="4" fill="#9467bd"/><text x="{:.1}" y="{:.1}" font-size="11">{name} {}</text>"##,
                    cx + 6.0,
                    cy - 6.0,
                    fmt_us(v)
                );
            }
        }
    }
    svg.push_str("</svg>\n");
    svg
}

fn legend(svg: &mut String, p: &Panel, k: usize, name: &str, color: &str) {
    let x = LEFT + Panel::width() - 90.0 * (3 - k) as f64;
    let y = p.top - 14.0;
    let _ = writeln!(
        svg,
        r#"<rect x="{x}" y="{}" width="14" height="4" fill="{color}"/><text x="{}" y="{y}" font-size="12">{name}</text>"#,
        y - 4.0,
        x + 18.0
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_cover_their_data() {
        let (d0, d1, ticks) = log_axis([15.0, 900.0].into_iter()).unwrap();
        assert_eq!((d0, d1), (1.0, 3.0));
        assert!(ticks.contains(&10.0) && ticks.contains(&1000.0));
        assert!(log_axis(std::iter::empty()).is_none());
        assert_eq!(fmt_tick(200.0), "200µs");
        assert_eq!(fmt_tick(1000.0), "1ms");
        assert_eq!(fmt_tick(0.1), "0.1µs");
        let (max, step) = lin_axis(43_000.0);
        assert!(max >= 43_000.0 && max / step <= 6.0);
    }
}
