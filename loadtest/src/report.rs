//! The end-of-run report: a human summary or one JSON object.

use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::cli::Args;
use crate::stats::{ErrorKind, Second, Totals};

/// Latency summary in microseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    /// Fastest request.
    pub min: f64,
    /// Mean.
    pub mean: f64,
    /// Standard deviation.
    pub stdev: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Slowest request.
    pub max: f64,
}

impl Latency {
    /// Summarises a histogram of nanoseconds (all zeros when empty).
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Latency::default();
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Latency {
            min: us(h.min()),
            mean: h.mean() / 1000.0,
            stdev: h.stdev() / 1000.0,
            p50: us(h.value_at_quantile(0.50)),
            p90: us(h.value_at_quantile(0.90)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
        }
    }
}

/// Everything the report needs.
#[derive(Debug)]
pub struct Summary<'a> {
    /// The command line.
    pub args: &'a Args,
    /// The resolved target.
    pub target: String,
    /// Merged totals of all workers.
    pub totals: Totals,
    /// Per-second timeline of the measured window.
    pub timeline: Vec<Second>,
    /// Length of the measured window (shorter than `--duration` when the
    /// run was interrupted).
    pub duration: Duration,
    /// Ctrl-C ended the run early.
    pub interrupted: bool,
    /// When the run started (wall clock), for the JSON record.
    pub started: std::time::SystemTime,
}

impl Summary<'_> {
    fn secs(&self) -> f64 {
        self.duration.as_secs_f64()
    }

    /// Successful requests per second.
    pub fn rps(&self) -> f64 {
        self.totals.requests as f64 / self.secs()
    }

    /// Echoed payload bytes received per second (one direction).
    pub fn bytes_per_s(&self) -> f64 {
        self.totals.requests as f64 * f64::from(self.args.size) / self.secs()
    }

    /// The report as a JSON value.
    pub fn json(&self) -> Value {
        let t = &self.totals;
        let l = Latency::of(&t.hist);
        let mut errors = serde_json::Map::new();
        for k in ErrorKind::ALL {
            errors.insert(k.name().into(), json!(t.errors.get(k)));
        }
        errors.insert("total".into(), json!(t.errors.total()));
        let timeline: Vec<Value> = self
            .timeline
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let q = |q| s.hist.value_at_quantile(q) as f64 / 1000.0;
                json!({
                    "second": i,
                    "requests": s.requests,
                    "errors": s.errors,
                    "p50_us": q(0.5),
                    "p99_us": q(0.99),
                    "max_us": s.hist.max() as f64 / 1000.0,
                })
            })
            .collect();
        let mut v = json!({
            // Enough to compare a saved result with a later one: which
            // client, when, and exactly how it was run.
            "tool": "loadtest",
            "version": env!("CARGO_PKG_VERSION"),
            "started_utc": humantime::format_rfc3339_seconds(self.started).to_string(),
            "command_line": std::env::args().collect::<Vec<_>>(),
            "target": self.target,
            "protocol": if self.args.udp { "udp" } else { "tcp" },
            "mode": self.args.mode(),
            "connections": self.args.connections,
            "threads": self.args.load_threads(),
            "size": self.args.size,
            "rate": self.args.rate,
            "duration_s": self.secs(),
            "interrupted": self.interrupted,
            "warmup_s": self.args.warmup.as_secs_f64(),
            "requests": t.requests,
            "rps": self.rps(),
            "bytes_per_s": self.bytes_per_s(),
            "connections_opened": t.connections_opened,
            "connections_per_s": t.connections_opened as f64 / self.secs(),
            "latency_us": {
                "min": l.min, "mean": l.mean, "stdev": l.stdev,
                "p50": l.p50, "p90": l.p90, "p99": l.p99, "p999": l.p999, "max": l.max,
            },
            "errors": errors,
            "timeline": timeline,
        });
        if self.args.udp {
            v["sent"] = json!(t.sent);
            v["lost"] = json!(t.lost);
            v["loss_ratio"] = json!(if t.sent > 0 {
                t.lost as f64 / t.sent as f64
            } else {
                0.0
            });
            v["reordered"] = json!(t.reordered);
            v["duplicates"] = json!(t.duplicates);
            v["late"] = json!(t.late);
        }
        v
    }

    /// The human-readable summary.
    pub fn human(&self) -> String {
        let a = self.args;
        let t = &self.totals;
        let l = Latency::of(&t.hist);
        let mut s = String::new();
        let warm = if a.warmup.is_zero() {
            String::new()
        } else {
            format!(" after {} warm-up", humantime::format_duration(a.warmup))
        };
        let rate = a.rate.map(|r| format!(" at {r} req/s")).unwrap_or_default();
        let warm = if self.interrupted {
            format!("{warm} (interrupted)")
        } else {
            warm
        };
        let _ = writeln!(
            s,
            "loadtest {}: {}{rate}, {} connections on {} thread{}, {}-byte messages, {:.2} s measured{warm}",
            self.target,
            a.mode(),
            a.connections,
            a.load_threads(),
            if a.load_threads() == 1 { "" } else { "s" },
            a.size,
            self.secs()
        );
        let _ = writeln!(
            s,
            "  requests     {:>12}   {:.1} req/s",
            t.requests,
            self.rps()
        );
        let _ = writeln!(
            s,
            "  throughput   {:>12.3} MB/s echoed",
            self.bytes_per_s() / 1e6
        );
        if a.churn {
            let _ = writeln!(
                s,
                "  connections  {:>12}   {:.1} opened/s",
                t.connections_opened,
                t.connections_opened as f64 / self.secs()
            );
        } else if !a.udp {
            let _ = writeln!(
                s,
                "  connections  {:>12}   {} opened while measuring",
                a.connections, t.connections_opened
            );
        }
        let _ = writeln!(
            s,
            "  latency      p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            fmt_us(l.p50),
            fmt_us(l.p90),
            fmt_us(l.p99),
            fmt_us(l.p999),
            fmt_us(l.max)
        );
        let _ = writeln!(
            s,
            "               min {}  mean {}  stdev {}",
            fmt_us(l.min),
            fmt_us(l.mean),
            fmt_us(l.stdev)
        );
        if a.udp {
            let pct = if t.sent > 0 {
                100.0 * t.lost as f64 / t.sent as f64
            } else {
                0.0
            };
            let _ = writeln!(
                s,
                "  datagrams    sent {}  lost {} ({pct:.2}%)  reordered {}  duplicates {}  late {}",
                t.sent, t.lost, t.reordered, t.duplicates, t.late
            );
        }
        let kinds: Vec<String> = ErrorKind::ALL
            .iter()
            .filter(|k| t.errors.get(**k) > 0)
            .map(|k| format!("{} {}", k.name(), t.errors.get(*k)))
            .collect();
        let detail = if kinds.is_empty() {
            String::new()
        } else {
            format!("   ({})", kinds.join(", "))
        };
        let _ = writeln!(s, "  errors       {:>12}{detail}", t.errors.total());
        s
    }
}

/// Formats microseconds with a unit that keeps 3–4 significant digits.
pub fn fmt_us(us: f64) -> String {
    if us >= 1_000_000.0 {
        format!("{:.2}s", us / 1e6)
    } else if us >= 1000.0 {
        format!("{:.2}ms", us / 1e3)
    } else {
        format!("{us:.1}µs")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(fmt_us(12.34), "12.3µs");
        assert_eq!(fmt_us(1500.0), "1.50ms");
        assert_eq!(fmt_us(2_500_000.0), "2.50s");
    }
}
