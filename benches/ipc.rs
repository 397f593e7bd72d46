//! Queue and Lock against Python's `multiprocessing`, in one run.
//!
//! ```sh
//! cargo bench --bench ipc
//! IPC_BENCH_ONLY=pipe cargo bench --bench ipc   # only the Pipe rows
//! ```
//!
//! Measures, each as the median of `RUNS` runs:
//! - `Queue` throughput, one producer process → one consumer process,
//!   small messages (a `u64`), vs `multiprocessing.Queue`;
//! - `Queue` round trip (parent → child → parent over two queues) vs the
//!   same with two `multiprocessing.Queue`s;
//! - uncontended `Lock` acquire + release vs `multiprocessing.Lock` (and
//!   std's process-local `Mutex` for scale);
//! - `Pipe` one-way 64-byte messages (`pipe(false)`, one `send_bytes` per
//!   message in a forked sender, `recv_bytes` here) vs a bare loop on a
//!   raw pipe in the same run: the sender `write`s the same 68-byte frame
//!   (4-byte header + 64 bytes) per message, the receiver `read`s 64 KiB
//!   at a time and only counts bytes. Runs alternate ours / bare.
//!
//! Every loop is bounded by a message count; the Python side runs under a
//! time limit and is killed if it overruns.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use socketserver::process::{pipe, Event, Lock, Process, Queue};

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

/// Microseconds per round trip (parent → echo child → parent): the median
/// trip and the mean (which includes every preemption on a busy machine).
fn queue_round_trip() -> (f64, f64) {
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
    let mut trips = Vec::with_capacity(RTT_ITERS as usize);
    let t = Instant::now();
    for i in 0..RTT_ITERS {
        let t = Instant::now();
        ping.put(&i).expect("put");
        assert_eq!(pong.get().expect("get"), i);
        trips.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let mean = t.elapsed().as_secs_f64() * 1e6 / RTT_ITERS as f64;
    assert_eq!(echo.join().expect("join"), 0);
    (median(trips), mean)
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

/// Messages per `Pipe` one-way run, and their size.
const PIPE_MSGS: u64 = 400_000;
const PIPE_MSG: usize = 64;

/// `Pipe` one-way: messages per second from a forked sender.
fn pipe_one_way_ours() -> f64 {
    let (mut r, mut w) = pipe(false).expect("pipe");
    r.close_on_fork();
    let go = Event::new().expect("event");
    let pgo = go.clone();
    let mut sender = Process::new(move || {
        pgo.wait(None).expect("wait");
        let msg = [1u8; PIPE_MSG];
        for _ in 0..PIPE_MSGS {
            w.send_bytes(&msg).expect("send");
        }
    });
    sender.start().expect("start");
    let t = Instant::now();
    go.set().expect("set");
    for _ in 0..PIPE_MSGS {
        assert_eq!(r.recv_bytes().expect("recv").len(), PIPE_MSG);
    }
    let rate = PIPE_MSGS as f64 / t.elapsed().as_secs_f64();
    assert_eq!(sender.join().expect("join"), 0);
    rate
}

/// The same stream with bare system calls: one `write` of the 68-byte
/// frame per message, `read`s of 64 KiB that only count bytes.
fn pipe_one_way_bare() -> f64 {
    let (r, w) = nix::unistd::pipe().expect("pipe");
    let go = Event::new().expect("event");
    let pgo = go.clone();
    let mut sender = Process::new(move || {
        pgo.wait(None).expect("wait");
        let mut frame = [1u8; 4 + PIPE_MSG];
        frame[..4].copy_from_slice(&(PIPE_MSG as u32).to_be_bytes());
        for _ in 0..PIPE_MSGS {
            let mut left = &frame[..];
            while !left.is_empty() {
                match nix::unistd::write(&w, left) {
                    Ok(n) => left = &left[n..],
                    Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => panic!("write: {e}"),
                }
            }
        }
    });
    sender.start().expect("start");
    let mut buf = vec![0u8; 64 << 10];
    let total = PIPE_MSGS as usize * (4 + PIPE_MSG);
    let t = Instant::now();
    go.set().expect("set");
    let mut got = 0;
    while got < total {
        match nix::unistd::read(&r, &mut buf) {
            Ok(0) => panic!("bare pipe: EOF after {got} of {total} bytes"),
            Ok(n) => got += n,
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    let rate = PIPE_MSGS as f64 / t.elapsed().as_secs_f64();
    assert_eq!(sender.join().expect("join"), 0);
    rate
}

/// Alternating runs of [`pipe_one_way_ours`] and [`pipe_one_way_bare`];
/// prints their medians, the ratio run by run and the goal.
fn pipe_rows() {
    let (mut ours, mut bare) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        ours.push(pipe_one_way_ours());
        bare.push(pipe_one_way_bare());
    }
    let ratios: Vec<String> = ours
        .iter()
        .zip(&bare)
        .map(|(o, b)| format!("{:.2}", o / b))
        .collect();
    let (o, b) = (median(ours.clone()), median(bare.clone()));
    let m = |r: f64| format!("{:.2} M msg/s", r / 1e6);
    println!();
    println!("| Pipe one-way {PIPE_MSG} B, {PIPE_MSGS} msgs | socketserver | bare write()/read() | ratio (ours / bare), per run | goal |");
    println!("|---|---|---|---|---|");
    println!(
        "| medians of {RUNS} alternating runs | {} (runs: {}) | {} (runs: {}) | {:.2} ({}) | ours ≥ 1.5 M msg/s: {} |",
        m(o),
        ours.iter().map(|r| format!("{:.2}", r / 1e6)).collect::<Vec<_>>().join(", "),
        m(b),
        bare.iter().map(|r| format!("{:.2}", r / 1e6)).collect::<Vec<_>>().join(", "),
        o / b,
        ratios.join(", "),
        if o >= 1.5e6 { "yes" } else { "NO" }
    );
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
N, RTT, LOCKN = (int(a) for a in sys.argv[1:4])

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
    trips = []
    t = time.perf_counter()
    for i in range(RTT):
        t1 = time.perf_counter()
        a.put(i)
        assert b.get() == i
        trips.append((time.perf_counter() - t1) * 1e6)
    mean = (time.perf_counter() - t) * 1e6 / RTT
    p.join()
    return statistics.median(trips), mean

def lock():
    l = mp.Lock()
    t = time.perf_counter()
    for _ in range(LOCKN):
        l.acquire(); l.release()
    return (time.perf_counter() - t) * 1e9 / LOCKN

if __name__ == "__main__":
    mp.set_start_method("fork")
    rtt, rtt_mean = round_trip()
    print(json.dumps({
        "throughput": throughput(),
        "round_trip": rtt,
        "round_trip_mean": rtt_mean,
        "lock": lock(),
    }))
"#;

/// One run's figures: msg/s, median µs per trip, mean µs per trip,
/// ns per lock.
#[derive(Clone, Copy)]
struct Run {
    throughput: f64,
    round_trip: f64,
    round_trip_mean: f64,
    lock: f64,
}

fn ours() -> Run {
    let throughput = queue_throughput();
    let (round_trip, round_trip_mean) = queue_round_trip();
    Run {
        throughput,
        round_trip,
        round_trip_mean,
        lock: lock_uncontended(),
    }
}

/// Runs the Python side once under a time limit; `None` if Python is
/// missing, fails or overruns.
fn python() -> Option<Run> {
    let mut child = Command::new("python3")
        .args(["-c", PYTHON])
        .args([PY_THROUGHPUT_MSGS, PY_RTT_ITERS, PY_LOCK_ITERS].map(|n| n.to_string()))
        .stdout(Stdio::piped())
        .spawn()
        .ok()?;
    let end = Instant::now() + Duration::from_secs(120);
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
    Some(Run {
        throughput: v["throughput"].as_f64()?,
        round_trip: v["round_trip"].as_f64()?,
        round_trip_mean: v["round_trip_mean"].as_f64()?,
        lock: v["lock"].as_f64()?,
    })
}

/// Medians over runs, field by field.
fn medians(runs: &[Run]) -> Run {
    let m = |f: fn(&Run) -> f64| median(runs.iter().map(f).collect());
    Run {
        throughput: m(|r| r.throughput),
        round_trip: m(|r| r.round_trip),
        round_trip_mean: m(|r| r.round_trip_mean),
        lock: m(|r| r.lock),
    }
}

fn main() {
    if std::env::var("IPC_BENCH_ONLY").as_deref() == Ok("pipe") {
        pipe_rows();
        return;
    }
    // `cargo bench` passes `--bench`; nothing else to parse. Ours and
    // Python's runs alternate so both see the same (shared, noisy) machine.
    let mut us = Vec::new();
    let mut py = Vec::new();
    for _ in 0..RUNS {
        us.push(ours());
        if let Some(p) = python() {
            py.push(p);
        }
    }
    let mutex = median((0..RUNS).map(|_| std_mutex_uncontended()).collect());
    let o = medians(&us);

    println!("ipc benchmark: medians of {RUNS} alternating runs (ours: {THROUGHPUT_MSGS} msgs, {RTT_ITERS} trips, {LOCK_ITERS} locks per run; python: {PY_THROUGHPUT_MSGS}, {PY_RTT_ITERS}, {PY_LOCK_ITERS})");
    println!();
    println!("| measurement                          | socketserver      | python multiprocessing | ratio    |");
    println!("|--------------------------------------|-------------------|------------------------|----------|");
    let row = |name: &str, ours: String, theirs: Option<String>, ratio: Option<f64>| {
        println!(
            "| {name:<36} | {ours:>17} | {:>22} | {:>8} |",
            theirs.unwrap_or_else(|| "(python unavailable)".into()),
            ratio.map_or(String::new(), |r| format!("{r:.1}×"))
        );
    };
    let p = (py.len() == RUNS).then(|| medians(&py));
    row(
        "Queue throughput, 1 → 1 process",
        format!("{:.0} msg/s", o.throughput),
        p.map(|p| format!("{:.0} msg/s", p.throughput)),
        p.map(|p| o.throughput / p.throughput),
    );
    row(
        "Queue round trip (median trip)",
        format!("{:.2} µs", o.round_trip),
        p.map(|p| format!("{:.2} µs", p.round_trip)),
        p.map(|p| p.round_trip / o.round_trip),
    );
    row(
        "Queue round trip (mean trip)",
        format!("{:.2} µs", o.round_trip_mean),
        p.map(|p| format!("{:.2} µs", p.round_trip_mean)),
        p.map(|p| p.round_trip_mean / o.round_trip_mean),
    );
    row(
        "Lock acquire+release, uncontended",
        format!("{:.1} ns", o.lock),
        p.map(|p| format!("{:.1} ns", p.lock)),
        p.map(|p| p.lock / o.lock),
    );
    row(
        "std::sync::Mutex (one process only)",
        format!("{mutex:.1} ns"),
        Some(String::new()),
        None,
    );
    println!();
    println!("ratio: how many times faster ours is than Python's.");
    pipe_rows();
}
