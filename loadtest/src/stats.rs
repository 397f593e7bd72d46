//! Measurement: per-worker recorders that merge into run totals, a shared
//! per-second timeline (for the plot) and live counters (for the progress
//! line).

use std::cell::RefCell;
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

/// Latencies recorded by one thread: the whole-run histogram and one
/// histogram per second.
///
/// Why per thread rather than per connection: recording into a histogram
/// touches a random cache line of a ~100 KB array. With one histogram per
/// connection (hundreds of them) nearly every record was a cache miss and
/// hdrhistogram was the largest user-space cost of the client; with one
/// per runtime thread the arrays stay in cache.
#[derive(Debug)]
struct ThreadLatencies {
    hist: Histogram<u64>,
    seconds: Vec<Second>,
    /// Requests and errors so far, warm-up included (progress line). Kept
    /// per thread so that counting does not bounce a shared cache line.
    live: (u64, u64),
}

impl ThreadLatencies {
    fn second(&mut self, idx: usize) -> &mut Second {
        while self.seconds.len() <= idx {
            self.seconds.push(Second::new());
        }
        &mut self.seconds[idx]
    }
}

type Slot = Arc<Mutex<ThreadLatencies>>;

thread_local! {
    /// This thread's latencies for the run with the given id.
    static LOCAL: RefCell<Option<(u64, Slot)>> = const { RefCell::new(None) };
}

/// State shared by all workers of a run.
#[derive(Debug)]
pub struct Shared {
    /// The run's phases.
    pub window: Window,
    id: u64,
    threads: Mutex<Vec<Slot>>,
    /// Totals of workers dropped before they finished (the run was
    /// interrupted): what they had counted is kept, not lost.
    dropped: Mutex<Totals>,
}

impl Shared {
    /// Shared state for a run with the given window.
    pub fn new(window: Window) -> Arc<Self> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        Arc::new(Shared {
            window,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            threads: Mutex::new(Vec::new()),
            dropped: Mutex::new(Totals::new()),
        })
    }

    /// The totals of workers that were dropped unfinished (see
    /// [`Recorder`]'s `Drop`), taken out.
    pub fn take_dropped(&self) -> Totals {
        match self.dropped.lock() {
            Ok(mut d) => std::mem::replace(&mut *d, Totals::new()),
            Err(_) => Totals::new(),
        }
    }

    /// Runs `f` on the calling thread's latencies for this run.
    fn with_local(&self, f: impl FnOnce(&mut ThreadLatencies)) {
        LOCAL.with_borrow_mut(|local| {
            let slot = match local {
                Some((id, slot)) if *id == self.id => slot,
                _ => {
                    let slot = Arc::new(Mutex::new(ThreadLatencies {
                        hist: new_hist(3),
                        seconds: Vec::new(),
                        live: (0, 0),
                    }));
                    if let Ok(mut threads) = self.threads.lock() {
                        threads.push(slot.clone());
                    }
                    &mut local.insert((self.id, slot)).1
                }
            };
            // Only this thread locks it until the run is over.
            if let Ok(mut l) = slot.lock() {
                f(&mut l);
            }
        });
    }

    /// Requests and errors so far (warm-up included), for the progress line.
    pub fn live(&self) -> (u64, u64) {
        let threads = self.threads.lock().map(|t| t.clone()).unwrap_or_default();
        threads
            .iter()
            .filter_map(|t| t.lock().ok().map(|t| t.live))
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    }

    /// Latencies of the whole run and per second, merged over threads.
    /// Call once the workers are done.
    pub fn latencies(&self) -> (Histogram<u64>, Vec<Second>) {
        let mut hist = new_hist(3);
        let mut seconds: Vec<Second> = Vec::new();
        let threads = self.threads.lock().map(|t| t.clone()).unwrap_or_default();
        for t in threads {
            let Ok(t) = t.lock() else { continue };
            let _ = hist.add(&t.hist);
            for (i, s) in t.seconds.iter().enumerate() {
                while seconds.len() <= i {
                    seconds.push(Second::new());
                }
                let _ = seconds[i].hist.add(&s.hist);
                seconds[i].requests += s.requests;
                seconds[i].errors += s.errors;
            }
        }
        (hist, seconds)
    }

    fn second_of(&self, t: Instant) -> usize {
        t.duration_since(self.window.measure).as_secs() as usize
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

/// One worker's recorder: counts locally; latencies go to the calling
/// thread's histograms (see [`Shared::latencies`]).
#[derive(Debug)]
pub struct Recorder {
    shared: Arc<Shared>,
    /// This worker's totals (its `hist` stays empty).
    pub totals: Totals,
}

impl Recorder {
    /// A recorder for one worker.
    pub fn new(shared: Arc<Shared>) -> Self {
        Recorder {
            shared,
            totals: Totals::new(),
        }
    }

    /// The run's window.
    pub fn window(&self) -> Window {
        self.shared.window
    }

    /// A successful request attributed to time `now` (TCP: when it
    /// completed; UDP: when it was sent) that took `latency`.
    pub fn ok(&mut self, now: Instant, latency: Duration) {
        if !self.shared.window.measured(now) {
            self.shared.with_local(|l| l.live.0 += 1);
            return;
        }
        self.totals.requests += 1;
        let ns = (latency.as_nanos() as u64).max(1);
        let idx = self.shared.second_of(now);
        self.shared.with_local(|l| {
            l.live.0 += 1;
            // Auto-resizing histograms: recording cannot fail.
            let _ = l.hist.record(ns);
            let s = l.second(idx);
            let _ = s.hist.record(ns);
            s.requests += 1;
        });
    }

    /// An error of kind `kind` attributed to time `now`.
    pub fn error(&mut self, now: Instant, kind: ErrorKind) {
        if !self.shared.window.measured(now) {
            self.shared.with_local(|l| l.live.1 += 1);
            return;
        }
        self.totals.errors.add(kind);
        let idx = self.shared.second_of(now);
        self.shared.with_local(|l| {
            l.live.1 += 1;
            l.second(idx).errors += 1;
        });
    }

    /// A connection established at `now`.
    pub fn connected(&mut self, now: Instant) {
        if self.shared.window.measured(now) {
            self.totals.connections_opened += 1;
        }
    }

    /// This worker's totals.
    pub fn finish(mut self) -> Totals {
        std::mem::replace(&mut self.totals, Totals::new())
    }
}

impl Drop for Recorder {
    /// A worker cancelled mid-run (Ctrl-C) never calls `finish`: its
    /// counts go to the shared totals instead. After `finish` this adds
    /// empty totals, i.e. nothing.
    fn drop(&mut self) {
        if let Ok(mut d) = self.shared.dropped.lock() {
            d.merge(&self.totals);
        }
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
        let (hist, tl) = shared.latencies();
        assert_eq!(hist.len(), 2);
        assert!(hist.max() >= 19_900);
        assert_eq!(tl.len(), 2);
        assert_eq!((tl[0].requests, tl[1].requests, tl[1].errors), (1, 1, 1));
        assert_eq!(shared.live(), (4, 1));
        // finish() took the totals: nothing is left to merge on drop.
        assert_eq!(shared.take_dropped().requests, 0);
    }

    #[test]
    fn a_dropped_recorder_keeps_its_counts() {
        let w = Window::new(Duration::ZERO, Duration::from_secs(3));
        let shared = Shared::new(w);
        let mut r = Recorder::new(shared.clone());
        r.ok(w.measure, Duration::from_micros(10));
        r.error(w.measure, ErrorKind::Reset);
        drop(r);
        let t = shared.take_dropped();
        assert_eq!((t.requests, t.errors.total()), (1, 1));
        assert_eq!(shared.take_dropped().requests, 0, "taken once");
    }

    #[test]
    fn io_errors_are_classified() {
        let k = |k| ErrorKind::of_io(&io::Error::from(k));
        assert_eq!(k(io::ErrorKind::ConnectionReset), ErrorKind::Reset);
        assert_eq!(k(io::ErrorKind::UnexpectedEof), ErrorKind::ShortRead);
        assert_eq!(k(io::ErrorKind::Other), ErrorKind::Other);
    }
}
