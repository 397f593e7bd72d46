//! Precise sleeps for the open-loop schedule.
//!
//! Tokio's timer has a 1 ms granularity, so a request scheduled for time t
//! is typically sent 0.5–1 ms late. Latency in open loop is measured from t
//! (the coordinated-omission correction), so that lateness would show up as
//! server latency — an error larger than a loopback round trip. Sleeps
//! here use tokio's timer for all but the last 2 ms and then a helper
//! thread that waits on a condition variable with a nanosecond timeout
//! (the kernel wakes it within tens of microseconds) and wakes the task.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// Left to the helper thread; the rest is slept on tokio's timer.
const FINE_SPAN: Duration = Duration::from_millis(2);

/// One waiting task.
#[derive(Debug)]
struct Entry {
    at: Instant,
    seq: u64,
    wake: oneshot::Sender<()>,
}

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

#[derive(Debug, Default)]
struct State {
    heap: BinaryHeap<Reverse<Entry>>,
    seq: u64,
}

type Timer = Arc<(Mutex<State>, Condvar)>;

/// The helper thread, started on first use; it lives as long as the
/// process (it only ever waits or wakes tasks).
fn timer() -> &'static Timer {
    static TIMER: OnceLock<Timer> = OnceLock::new();
    TIMER.get_or_init(|| {
        let t: Timer = Arc::new((Mutex::new(State::default()), Condvar::new()));
        let t2 = t.clone();
        let spawned = std::thread::Builder::new()
            .name("loadtest-pacer".into())
            .spawn(move || run(&t2));
        if spawned.is_err() {
            // Without the thread, sleep_precise falls back to tokio's timer.
            t.0.lock().map(|mut s| s.seq = u64::MAX).ok();
        }
        t
    })
}

fn run(t: &Timer) {
    let (lock, cv) = &**t;
    let Ok(mut st) = lock.lock() else { return };
    loop {
        let now = Instant::now();
        while st.heap.peek().is_some_and(|e| e.0.at <= now) {
            if let Some(Reverse(e)) = st.heap.pop() {
                let _ = e.wake.send(()); // the task may have moved on
            }
        }
        let wait = st
            .heap
            .peek()
            .map(|e| e.0.at.saturating_duration_since(now))
            .unwrap_or(Duration::from_secs(3600));
        st = match cv.wait_timeout(st, wait) {
            Ok((g, _)) => g,
            Err(_) => return,
        };
    }
}

/// Queues a wake-up at `at` with the helper thread; `false` if the thread
/// is unavailable.
fn register(at: Instant, wake: oneshot::Sender<()>) -> bool {
    let (lock, cv) = &**timer();
    let Ok(mut st) = lock.lock() else {
        return false;
    };
    if st.seq == u64::MAX {
        return false;
    }
    st.seq += 1;
    let seq = st.seq;
    let earliest = st.heap.peek().is_none_or(|e| at < e.0.at);
    st.heap.push(Reverse(Entry { at, seq, wake }));
    if earliest {
        cv.notify_one();
    }
    true
}

/// Sleeps until `at` with sub-millisecond precision.
pub async fn sleep_precise(at: Instant) {
    let now = Instant::now();
    if at <= now {
        return;
    }
    if at - now > FINE_SPAN {
        tokio::time::sleep_until((at - FINE_SPAN).into()).await;
    }
    let (tx, rx) = oneshot::channel();
    if !register(at, tx) {
        tokio::time::sleep_until(at.into()).await;
        return;
    }
    let _ = rx.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wakes_close_to_the_deadline() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            for ms in [0u64, 1, 3] {
                let at = Instant::now() + Duration::from_millis(ms);
                sleep_precise(at).await;
                let late = Instant::now().saturating_duration_since(at);
                assert!(Instant::now() >= at);
                // Generous bound: the machine is shared.
                assert!(late < Duration::from_millis(50), "{late:?}");
            }
        });
    }
}
