//! Queue and Lock against Python's `multiprocessing`, in one run.
//!
//! ```sh
//! cargo bench --bench ipc
//! ```
//!
//! Measures, each as the median of `RUNS` runs:
//! - `Queue` throughput, one producer process → one consumer process,
//!   small messages (a `u64`), vs `multiprocessing.Queue`;
//! - `Queue` round trip (parent → child → parent over two queues) vs the
//!   same with two `multiprocessing.Queue`s;
//! - uncontended `Lock` acquire + release vs `multiprocessing.Lock` (and
//!   std's process-local `Mutex` for scale).
//!
//! Every loop is bounded by a message count; the Python side runs under a
//! time limit and is killed if it overruns.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use socketserver::process::{Event, Lock, Process, Queue};

const RUNS: usize = 5;
const THROUGHPUT_MSGS: u64 = 200_000;
const RTT_ITERS: u64 = 20_000;
const LOCK_ITERS: u64 = 1_000_000;
const PY_THROUGHPUT_MSGS: u64 = 50_000;
const PY_RTT_ITERS: u64 = 5_000;
const PY_LOCK_ITERS: u64 = 300_000;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Messages per second, one producer process to this (consumer) process.
fn queue_throughput() -> f64 {
    let q: Queue<u64> = Queue::new().expect("queue");
    let go = Event::new().expect("event");
    let (pq, pgo) = (q.clone(), go.clone());
    let mut producer = Process::new(move || {
        pgo.wait(None).expect("wait");
        for i in 0..THROUGHPUT_MSGS {
            pq.put(&i).expect("put");
        }
    });
    producer.start().expect("start");
    let t = Instant::now();
    go.set().expect("set");
    let mut sum = 0u64;
    for _ in 0..THROUGHPUT_MSGS {
        sum = sum.wrapping_add(q.get().expect("get"));
    }
    let rate = THROUGHPUT_MSGS as f64 / t.elapsed().as_secs_f64();
    assert_eq!(sum, THROUGHPUT_MSGS * (THROUGHPUT_MSGS - 1) / 2);
    assert_eq!(producer.join().expect("join"), 0);
    rate
}

/// Microseconds per round trip: parent → echo child → parent.
fn queue_round_trip() -> f64 {
    let ping: Queue<u64> = Queue::new().expect("queue");
    let pong: Queue<u64> = Queue::new().expect("queue");
    let (cping, cpong) = (ping.clone(), pong.clone());
    let mut echo = Process::new(move || {
        for _ in 0..RTT_ITERS + 1 {
            let v = cping.get().expect("get");
            cpong.put(&v).expect("put");
        }
    });
    echo.start().expect("start");
    // One warm-up trip so the child is running before the clock starts.
    ping.put(&0).expect("put");
    pong.get().expect("get");
    let t = Instant::now();
    for i in 0..RTT_ITERS {
        ping.put(&i).expect("put");
        assert_eq!(pong.get().expect("get"), i);
    }
    let us = t.elapsed().as_secs_f64() * 1e6 / RTT_ITERS as f64;
    assert_eq!(echo.join().expect("join"), 0);
    us
}

/// Nanoseconds per uncontended acquire + release.
fn lock_uncontended() -> f64 {
    let lock = Lock::new().expect("lock");
    let t = Instant::now();
    for _ in 0..LOCK_ITERS {
        drop(std::hint::black_box(lock.acquire().expect("acquire")));
    }
    t.elapsed().as_secs_f64() * 1e9 / LOCK_ITERS as f64
}

fn std_mutex_uncontended() -> f64 {
    let m = std::sync::Mutex::new(());
    let t = Instant::now();
    for _ in 0..LOCK_ITERS {
        drop(std::hint::black_box(m.lock().expect("lock")));
    }
    t.elapsed().as_secs_f64() * 1e9 / LOCK_ITERS as f64
}

const PYTHON: &str = r#"
import json, multiprocessing as mp, statistics, sys, time
RUNS, N, RTT, LOCKN = (int(a) for a in sys.argv[1:5])

def producer(q, n):
    for i in range(n):
        q.put(i)

def echo(a, b, n):
    for _ in range(n + 1):
        b.put(a.get())

def throughput():
    q = mp.Queue()
    p = mp.Process(target=producer, args=(q, N))
    p.start()
    t = time.perf_counter()
    s = 0
    for _ in range(N):
        s += q.get()
    rate = N / (time.perf_counter() - t)
    p.join()
    assert s == N * (N - 1) // 2
    return rate

def round_trip():
    a, b = mp.Queue(), mp.Queue()
    p = mp.Process(target=echo, args=(a, b, RTT))
    p.start()
    a.put(0); b.get()
    t = time.perf_counter()
    for i in range(RTT):
        a.put(i)
        assert b.get() == i
    us = (time.perf_counter() - t) * 1e6 / RTT
    p.join()
    return us

def lock():
    l = mp.Lock()
    t = time.perf_counter()
    for _ in range(LOCKN):
        l.acquire(); l.release()
    return (time.perf_counter() - t) * 1e9 / LOCKN

if __name__ == "__main__":
    mp.set_start_method("fork")
    print(json.dumps({
        "throughput": statistics.median(throughput() for _ in range(RUNS)),
        "round_trip": statistics.median(round_trip() for _ in range(RUNS)),
        "lock": statistics.median(lock() for _ in range(RUNS)),
    }))
"#;

struct PyResults {
    throughput: f64,
    round_trip: f64,
    lock: f64,
}

/// Runs the Python side under a time limit; `None` if Python is missing,
/// fails or overruns.
fn python() -> Option<PyResults> {
    let mut child = Command::new("python3")
        .args(["-c", PYTHON])
        .args([RUNS as u64, PY_THROUGHPUT_MSGS, PY_RTT_ITERS, PY_LOCK_ITERS].map(|n| n.to_string()))
        .stdout(Stdio::piped())
        .spawn()
        .ok()?;
    let end = Instant::now() + Duration::from_secs(300);
    loop {
        match child.try_wait().ok()? {
            Some(status) if status.success() => break,
            Some(_) => return None,
            None if Instant::now() >= end => {
                let _ = child.kill();
                let _ = child.wait();
                eprintln!("python side overran its time limit");
                return None;
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    let mut out = String::new();
    child.stdout.take()?.read_to_string(&mut out).ok()?;
    let v: serde_json::Value = serde_json::from_str(out.trim()).ok()?;
    Some(PyResults {
        throughput: v["throughput"].as_f64()?,
        round_trip: v["round_trip"].as_f64()?,
        lock: v["lock"].as_f64()?,
    })
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let thr = median((0..RUNS).map(|_| queue_throughput()).collect());
    let rtt = median((0..RUNS).map(|_| queue_round_trip()).collect());
    let lock = median((0..RUNS).map(|_| lock_uncontended()).collect());
    let mutex = median((0..RUNS).map(|_| std_mutex_uncontended()).collect());
    let py = python();

    println!("ipc benchmark: medians of {RUNS} runs (ours: {THROUGHPUT_MSGS} msgs, {RTT_ITERS} trips, {LOCK_ITERS} locks; python: {PY_THROUGHPUT_MSGS}, {PY_RTT_ITERS}, {PY_LOCK_ITERS})");
    println!();
    println!("| measurement                         | socketserver      | python multiprocessing | ratio    |");
    println!("|-------------------------------------|-------------------|------------------------|----------|");
    match &py {
        Some(p) => {
            println!(
                "| Queue throughput, 1 → 1 process     | {:>10.0} msg/s | {:>16.0} msg/s | {:>6.1}× |",
                thr,
                p.throughput,
                thr / p.throughput
            );
            println!(
                "| Queue round trip                    | {:>12.2} µs | {:>19.2} µs | {:>6.1}× |",
                rtt,
                p.round_trip,
                p.round_trip / rtt
            );
            println!(
                "| Lock acquire+release, uncontended   | {:>12.1} ns | {:>19.1} ns | {:>6.1}× |",
                lock,
                p.lock,
                p.lock / lock
            );
        }
        None => {
            println!("| Queue throughput, 1 → 1 process     | {thr:>10.0} msg/s | (python unavailable)   |          |");
            println!("| Queue round trip                    | {rtt:>12.2} µs | (python unavailable)   |          |");
            println!("| Lock acquire+release, uncontended   | {lock:>12.1} ns | (python unavailable)   |          |");
        }
    }
    println!(
        "| std::sync::Mutex (one process only) | {:>12.1} ns |                        | {:>6.2}× |",
        mutex,
        lock / mutex
    );
    println!();
    println!("ratio: how many times faster ours is (for the Mutex row: our Lock's cost relative to std's Mutex).");
}
