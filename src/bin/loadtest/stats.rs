//! Measurement: per-worker recorders that merge into run totals, a shared
//! per-second timeline (for the plot) and live counters (for the progress
//! line).

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// The phases of a run: warm-up from `start` to `measure`, measured window
/// from `measure` to `end`.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// When the workers started.
    pub start: Instant,
    /// End of warm-up; results before this are discarded.
    pub measure: Instant,
    /// End of the measured window: no request is started after it.
    pub end: Instant,
}

impl Window {
    /// A window starting now.
    pub fn new(warmup: Duration, duration: Duration) -> Self {
        let start = Instant::now();
        Window {
            start,
            measure: start + warmup,
            end: start + warmup + duration,
        }
    }

    /// Whether an event at `t` is counted.
    pub fn measured(&self, t: Instant) -> bool {
        t >= self.measure && t < self.end
    }
}

/// What went wrong with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The connection could not be established.
    Connect,
    /// No complete echo within `--timeout`.
    Timeout,
    /// The peer reset or aborted the connection.
    Reset,
    /// The peer closed the connection before the whole echo arrived.
    ShortRead,
    /// The echo differed from what was sent.
    Mismatch,
    /// Any other I/O error.
    Other,
}

impl ErrorKind {
    /// Every kind, in report order.
    pub const ALL: [ErrorKind; 6] = [
        ErrorKind::Connect,
        ErrorKind::Timeout,
        ErrorKind::Reset,
        ErrorKind::ShortRead,
        ErrorKind::Mismatch,
        ErrorKind::Other,
    ];

    /// Name used in the JSON object and the summary.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Reset => "reset",
            ErrorKind::ShortRead => "short_read",
            ErrorKind::Mismatch => "mismatch",
            ErrorKind::Other => "other",
        }
    }

    /// Classifies an I/O error from sending or reading an echo.
    pub fn of_io(e: &io::Error) -> ErrorKind {
        match e.kind() {
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => ErrorKind::Reset,
            io::ErrorKind::UnexpectedEof | io::ErrorKind::WriteZero => ErrorKind::ShortRead,
            io::ErrorKind::TimedOut => ErrorKind::Timeout,
            io::ErrorKind::ConnectionRefused => ErrorKind::Connect,
            _ => ErrorKind::Other,
        }
    }
}

/// Error counts by kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorCounts([u64; 6]);

impl ErrorCounts {
    /// Count for one kind.
    pub fn get(&self, k: ErrorKind) -> u64 {
        self.0[k as usize]
    }
    /// Sum over all kinds.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
    fn add(&mut self, k: ErrorKind) {
        self.0[k as usize] += 1;
    }
    fn merge(&mut self, o: &ErrorCounts) {
        for (a, b) in self.0.iter_mut().zip(o.0) {
            *a += b;
        }
    }
}

/// One second of the measured window, for the latency-over-time chart.
#[derive(Debug, Clone)]
pub struct Second {
    /// Latencies (ns) of requests completed in this second.
    pub hist: Histogram<u64>,
    /// Requests completed.
    pub requests: u64,
    /// Errors counted.
    pub errors: u64,
}

impl Second {
    fn new() -> Self {
        Second {
            hist: new_hist(2),
            requests: 0,
            errors: 0,
        }
    }
}

fn new_hist(sigfig: u8) -> Histogram<u64> {
    // Auto-resizing: memory follows the latencies actually seen.
    Histogram::new(sigfig).expect("sigfig 2 or 3 is valid")
}

/// State shared by all workers of a run.
#[derive(Debug)]
pub struct Shared {
    /// The run's phases.
    pub window: Window,
    /// Requests completed so far (warm-up included), for the progress line.
    pub live_requests: AtomicU64,
    /// Errors so far (warm-up included), for the progress line.
    pub live_errors: AtomicU64,
    timeline: Mutex<Vec<Second>>,
}

impl Shared {
    /// Shared state for a run with the given window.
    pub fn new(window: Window) -> Arc<Self> {
        Arc::new(Shared {
            window,
            live_requests: AtomicU64::new(0),
            live_errors: AtomicU64::new(0),
            timeline: Mutex::new(Vec::new()),
        })
    }

    /// The per-second timeline gathered so far.
    pub fn timeline(&self) -> Vec<Second> {
        self.timeline.lock().map(|t| t.clone()).unwrap_or_default()
    }
}

/// Totals of a run (or of one worker, before merging).
#[derive(Debug, Clone)]
pub struct Totals {
    /// Latencies (ns) of successful requests.
    pub hist: Histogram<u64>,
    /// Successful requests.
    pub requests: u64,
    /// Errors by kind.
    pub errors: ErrorCounts,
    /// Connections established.
    pub connections_opened: u64,
    /// UDP: datagrams sent.
    pub sent: u64,
    /// UDP: datagrams with no echo within the timeout.
    pub lost: u64,
    /// UDP: echoes that arrived after one with a higher sequence number.
    pub reordered: u64,
    /// UDP: echoes received twice.
    pub duplicates: u64,
    /// UDP: echoes that arrived after their datagram was counted lost.
    pub late: u64,
}

impl Totals {
    /// Empty totals.
    pub fn new() -> Self {
        Totals {
            hist: new_hist(3),
            requests: 0,
            errors: ErrorCounts::default(),
            connections_opened: 0,
            sent: 0,
            lost: 0,
            reordered: 0,
            duplicates: 0,
            late: 0,
        }
    }

    /// Adds another worker's totals.
    pub fn merge(&mut self, o: &Totals) {
        // Both are auto-resizing, so adding cannot fail for range reasons.
        let _ = self.hist.add(&o.hist);
        self.requests += o.requests;
        self.errors.merge(&o.errors);
        self.connections_opened += o.connections_opened;
        self.sent += o.sent;
        self.lost += o.lost;
        self.reordered += o.reordered;
        self.duplicates += o.duplicates;
        self.late += o.late;
    }
}

/// One worker's recorder: counts locally, flushes one second at a time
/// into the shared timeline.
#[derive(Debug)]
pub struct Recorder {
    shared: Arc<Shared>,
    /// This worker's totals.
    pub totals: Totals,
    sec_index: usize,
    sec: Second,
}

impl Recorder {
    /// A recorder for one worker.
    pub fn new(shared: Arc<Shared>) -> Self {
        Recorder {
            shared,
            totals: Totals::new(),
            sec_index: 0,
            sec: Second::new(),
        }
    }

    /// The run's window.
    pub fn window(&self) -> Window {
        self.shared.window
    }

    /// Second of the measured window that `now` falls in, flushing the
    /// previous one if it changed.
    fn second(&mut self, now: Instant) -> &mut Second {
        let idx = now.duration_since(self.shared.window.measure).as_secs() as usize;
        if idx != self.sec_index {
            self.flush();
            self.sec_index = idx;
        }
        &mut self.sec
    }

    /// A successful request attributed to time `now` (TCP: when it
    /// completed; UDP: when it was sent) that took `latency`.
    pub fn ok(&mut self, now: Instant, latency: Duration) {
        self.shared.live_requests.fetch_add(1, Ordering::Relaxed);
        if !self.shared.window.measured(now) {
            return;
        }
        let ns = (latency.as_nanos() as u64).max(1);
        let _ = self.totals.hist.record(ns); // auto-resizing: cannot fail
        self.totals.requests += 1;
        let s = self.second(now);
        let _ = s.hist.record(ns);
        s.requests += 1;
    }

    /// An error of kind `kind` attributed to time `now`.
    pub fn error(&mut self, now: Instant, kind: ErrorKind) {
        self.shared.live_errors.fetch_add(1, Ordering::Relaxed);
        if !self.shared.window.measured(now) {
            return;
        }
        self.totals.errors.add(kind);
        self.second(now).errors += 1;
    }

    /// A connection established at `now`.
    pub fn connected(&mut self, now: Instant) {
        if self.shared.window.measured(now) {
            self.totals.connections_opened += 1;
        }
    }

    fn flush(&mut self) {
        if self.sec.requests == 0 && self.sec.errors == 0 {
            return;
        }
        let sec = std::mem::replace(&mut self.sec, Second::new());
        if let Ok(mut tl) = self.shared.timeline.lock() {
            while tl.len() <= self.sec_index {
                tl.push(Second::new());
            }
            let slot = &mut tl[self.sec_index];
            let _ = slot.hist.add(&sec.hist);
            slot.requests += sec.requests;
            slot.errors += sec.errors;
        }
    }

    /// Flushes the current second and returns this worker's totals.
    pub fn finish(mut self) -> Totals {
        self.flush();
        self.totals
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_is_excluded_and_seconds_are_bucketed() {
        let w = Window::new(Duration::from_secs(1), Duration::from_secs(3));
        let shared = Shared::new(w);
        let mut r = Recorder::new(shared.clone());
        r.ok(w.start, Duration::from_micros(5)); // warm-up: not counted
        r.ok(w.measure, Duration::from_micros(10));
        r.ok(
            w.measure + Duration::from_millis(1500),
            Duration::from_micros(20),
        );
        r.error(w.measure + Duration::from_millis(1600), ErrorKind::Timeout);
        r.ok(w.end, Duration::from_micros(5)); // after the end: not counted
        let t = r.finish();
        assert_eq!(t.requests, 2);
        assert_eq!(t.errors.get(ErrorKind::Timeout), 1);
        assert_eq!(t.errors.total(), 1);
        let tl = shared.timeline();
        assert_eq!(tl.len(), 2);
        assert_eq!((tl[0].requests, tl[1].requests, tl[1].errors), (1, 1, 1));
        assert_eq!(shared.live_requests.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn io_errors_are_classified() {
        let k = |k| ErrorKind::of_io(&io::Error::from(k));
        assert_eq!(k(io::ErrorKind::ConnectionReset), ErrorKind::Reset);
        assert_eq!(k(io::ErrorKind::UnexpectedEof), ErrorKind::ShortRead);
        assert_eq!(k(io::ErrorKind::Other), ErrorKind::Other);
    }
}
