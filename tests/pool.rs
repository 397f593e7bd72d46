//! Fork-heavy tests of `Pool` and `ProcessPoolExecutor`.
//!
//! `harness = false`: tests run one after another on the main thread.
//! Run with `cargo test --test pool [FILTER]`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use socketserver::process::{Pool, Process, ProcessPoolExecutor, Value};
use socketserver::Error;

mod forktest;
use forktest::{count_links, e, run, Test, TestResult};

fn square(x: u64) -> u64 {
    x * x
}

fn pid_of_worker(_: u32) -> u32 {
    std::process::id()
}

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn boom(x: u32) -> u32 {
    if x == 3 {
        panic!("boom at {x}");
    }
    x
}

fn abort_now(_: ()) -> u32 {
    std::process::abort()
}

/// Writes this worker's pid to `path`, then sleeps for a long time.
fn report_pid_and_hang(path: String) -> u32 {
    let _ = std::fs::write(&path, std::process::id().to_string());
    std::thread::sleep(Duration::from_secs(60));
    0
}

fn add(a: i64, b: i64) -> i64 {
    a + b
}

/// Reads the pid a task wrote to `path`, waiting at most 10 s.
fn wait_for_pid(path: &Path) -> Result<i32, String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(text) = std::fs::read_to_string(path) {
            if let Ok(pid) = text.trim().parse::<i32>() {
                return Ok(pid);
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Err(format!("no pid appeared in {}", path.display()))
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("pool-test-{}-{name}", std::process::id()))
}

/// Whether `pid` still exists (a zombie counts: it is not reaped).
fn exists(pid: i32) -> bool {
    kill(Pid::from_raw(pid), None).is_ok()
}

fn map_and_starmap_keep_order() -> TestResult {
    let pool = Pool::new(3).map_err(e)?;
    let expect: Vec<u64> = (0..1000u64).map(|x| x * x).collect();
    check!(pool.map(square, 0..1000u64).map_err(e)? == expect);
    for chunk in [1, 7, 1000, 5000] {
        check!(pool.map_chunked(square, 0..1000u64, chunk).map_err(e)? == expect);
    }
    check!(pool.map(square, Vec::<u64>::new()).map_err(e)?.is_empty());
    // A closure that captures nothing works too.
    check!(pool.map(|x: u64| x + 1, 0..5u64).map_err(e)? == vec![1, 2, 3, 4, 5]);
    let sums = pool
        .starmap((0..100i64).map(|i| (i, 10 * i)), add)
        .map_err(e)?;
    check!(sums == (0..100i64).map(|i| 11 * i).collect::<Vec<_>>());
    // Every arity from 0 to 4, with function items and closures that
    // capture nothing.
    check!(pool.starmap(vec![(), ()], || 7u8).map_err(e)? == vec![7, 7]);
    check!(pool.starmap(vec![(2u64,), (3,)], square).map_err(e)? == vec![4, 9]);
    let triples = pool
        .starmap(vec![(1u8, 2u16, 3u32)], |a: u8, b: u16, c: u32| {
            u64::from(a) + u64::from(b) + u64::from(c)
        })
        .map_err(e)?;
    check!(triples == vec![6]);
    let words = pool
        .starmap(
            vec![
                (String::from("a"), 1usize, 'x', true),
                (String::from("b"), 0, 'y', false),
            ],
            |s: String, n: usize, c: char, up: bool| {
                let w = format!("{s}{}", c.to_string().repeat(n));
                if up {
                    w.to_uppercase()
                } else {
                    w
                }
            },
        )
        .map_err(e)?;
    check!(words == vec!["AX".to_string(), "b".to_string()]);
    check!(pool.apply(square, 12).map_err(e)? == 144);
    Ok(())
}

fn big_chunks_do_not_deadlock() -> TestResult {
    // Chunks far larger than a socket buffer, both ways, with two chunks
    // per worker: a blocking send queued behind a busy worker would wait
    // forever for a worker that waits to send its reply.
    let pool = Pool::new(2).map_err(e)?;
    let base = 1u64 << 40;
    let got = pool
        .map_chunked(square_mod, (0..400_000u64).map(|x| x + base), 50_000)
        .map_err(e)?;
    check!(got.len() == 400_000);
    check!(got
        .iter()
        .enumerate()
        .all(|(i, &v)| v == square_mod(i as u64 + base)));
    Ok(())
}

/// An iterator whose `size_hint` claims an exact length it does not have.
struct Lying {
    left: u64,
    claimed: usize,
}

impl Iterator for Lying {
    type Item = u64;
    fn next(&mut self) -> Option<u64> {
        self.left = self.left.checked_sub(1)?;
        Some(self.left)
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.claimed, Some(self.claimed))
    }
}

fn unit_to_seven(_: ()) -> u8 {
    7
}

fn double_string(s: String) -> String {
    s.repeat(2)
}

fn chunks_are_exact_for_any_iterator_and_item_size() -> TestResult {
    // `map` encodes straight from an iterator that reports an exact
    // length and collects the others first; every chunk carries its item
    // count, so items that encode to zero bytes and iterators that lie
    // about their length still give every result once, in order.
    let pool = Pool::new(2).map_err(e)?;
    let odd: Vec<u64> = (0..2000u64).filter(|x| x % 2 == 1).collect();
    let got = pool
        .map(square, (0..2000u64).filter(|x| x % 2 == 1))
        .map_err(e)?;
    check!(got == odd.iter().map(|x| x * x).collect::<Vec<_>>());
    for claimed in [0, 10, 100, 5000] {
        let got = pool.map(square, Lying { left: 100, claimed }).map_err(e)?;
        let want: Vec<u64> = (0..100u64).rev().map(|x| x * x).collect();
        check!(got == want, "claimed {claimed}: {} results", got.len());
    }
    check!(pool.map(unit_to_seven, vec![(); 1000]).map_err(e)? == vec![7u8; 1000]);
    check!(pool.map_chunked(unit_to_seven, vec![(); 5], 2).map_err(e)? == vec![7u8; 5]);
    let words: Vec<String> = (0..300).map(|i| "x".repeat(i % 17)).collect();
    let got = pool.map(double_string, words.clone()).map_err(e)?;
    check!(got == words.iter().map(|w| w.repeat(2)).collect::<Vec<_>>());
    let mut unordered: Vec<u64> = pool
        .imap_unordered(
            square,
            Lying {
                left: 50,
                claimed: 3,
            },
            7,
        )
        .map_err(e)?
        .collect::<Result<_, _>>()
        .map_err(e)?;
    unordered.sort_unstable();
    check!(unordered == (0..50u64).map(|x| x * x).collect::<Vec<_>>());
    Ok(())
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
enum Shape {
    Dot,
    Circle { r: f64 },
    Label(String, Option<char>),
}

fn grow(s: Shape) -> Shape {
    match s {
        Shape::Dot => Shape::Circle { r: 1.0 },
        Shape::Circle { r } => Shape::Circle { r: r * 2.0 },
        Shape::Label(t, c) => Shape::Label(t.to_uppercase(), c.or(Some('!'))),
    }
}

fn reused_buffers_never_leak_old_bytes() -> TestResult {
    // Large messages' buffers are recycled (in the pool and in each
    // worker) and hold the previous message's bytes: smaller and
    // differently shaped messages afterwards must decode exactly.
    let pool = Pool::new(2).map_err(e)?;
    for round in 0..3u64 {
        let big = pool.map(square, 0..300_000u64).map_err(e)?;
        check!(big.len() == 300_000 && big[299_999] == 299_999 * 299_999);
        let words: Vec<String> = (0..2000).map(|i| format!("w{i}-{round}")).collect();
        let got = pool
            .map_chunked(double_string, words.clone(), 500)
            .map_err(e)?;
        check!(got == words.iter().map(|w| w.repeat(2)).collect::<Vec<_>>());
        let shapes: Vec<Shape> = (0..1000)
            .map(|i| match i % 3 {
                0 => Shape::Dot,
                1 => Shape::Circle { r: i as f64 },
                _ => Shape::Label(format!("l{i}"), (i % 2 == 0).then_some('x')),
            })
            .collect();
        let got = pool.map(grow, shapes.clone()).map_err(e)?;
        check!(got == shapes.into_iter().map(grow).collect::<Vec<_>>());
        check!(pool.apply(square, round + 3).map_err(e)? == (round + 3) * (round + 3));
    }
    Ok(())
}

fn square_mod(x: u64) -> u64 {
    x.wrapping_mul(x) | (1 << 40)
}

fn imap_is_ordered_and_unordered_returns_each_once() -> TestResult {
    let pool = Pool::new(3).map_err(e)?;
    for chunk in [1, 3, 50] {
        let got: Vec<u64> = pool
            .imap(square, 0..200u64, chunk)
            .map_err(e)?
            .collect::<Result<_, _>>()
            .map_err(e)?;
        check!(got == (0..200u64).map(|x| x * x).collect::<Vec<_>>());
    }
    // Descending sleeps: completion order differs from input order.
    let items: Vec<u64> = (0..12u64).rev().map(|i| i * 5).collect();
    let mut got: Vec<u64> = pool
        .imap_unordered(sleep_ms, items.clone(), 1)
        .map_err(e)?
        .collect::<Result<_, _>>()
        .map_err(e)?;
    check!(got.len() == items.len(), "got {} results", got.len());
    got.sort_unstable();
    let mut want = items;
    want.sort_unstable();
    check!(got == want);
    Ok(())
}

fn apply_async_callbacks_and_timeouts() -> TestResult {
    let pool = Pool::new(2).map_err(e)?;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let (s, er) = (seen.clone(), errors.clone());
    let ok = pool
        .apply_async_with(square, 9, move |r| s.lock().unwrap().push(*r), |_| {})
        .map_err(e)?;
    let bad = pool
        .apply_async_with(
            boom,
            3,
            |_| {},
            move |err| er.lock().unwrap().push(err.to_string()),
        )
        .map_err(e)?;
    check!(ok.get().map_err(e)? == 81);
    check!(seen.lock().unwrap().as_slice() == [81]);
    check!(bad.get().is_err());
    check!(bad.successful() == Some(false));
    check!(errors.lock().unwrap().len() == 1);
    check!(
        ok.get().is_err(),
        "a second get() must not return the value again"
    );
    let slow = pool.apply_async(sleep_ms, 400).map_err(e)?;
    check!(slow.successful().is_none());
    check!(matches!(
        slow.get_timeout(Duration::from_millis(20)),
        Err(Error::Timeout(_))
    ));
    check!(!slow.ready());
    slow.wait();
    check!(slow.ready() && slow.successful() == Some(true));
    check!(slow.get().map_err(e)? == 400);
    Ok(())
}

fn panic_becomes_error_result() -> TestResult {
    let pool = Pool::new(2).map_err(e)?;
    let pids_before = pool.pids();
    match pool.apply(boom, 3) {
        Err(Error::Panicked(msg)) => check!(msg.contains("boom at 3"), "message {msg:?}"),
        other => return Err(format!("expected Panicked, got {other:?}")),
    }
    match pool.map_chunked(boom, 0..10u32, 2) {
        Err(Error::Panicked(msg)) => check!(msg.contains("boom")),
        other => return Err(format!("expected Panicked from map, got {other:?}")),
    }
    // The workers survived the panics.
    check!(
        pool.pids() == pids_before,
        "{:?} vs {pids_before:?}",
        pool.pids()
    );
    check!(pool.apply(boom, 4).map_err(e)? == 4);
    Ok(())
}

fn maxtasksperchild_replaces_workers() -> TestResult {
    let pool = Pool::builder()
        .processes(2)
        .maxtasksperchild(Some(2))
        .build()
        .map_err(e)?;
    let first = pool.pids();
    let mut pids = std::collections::HashSet::new();
    for _ in 0..5 {
        let rs: Vec<_> = (0..2)
            .map(|i| pool.apply_async(pid_of_worker, i))
            .collect::<Result<_, _>>()
            .map_err(e)?;
        for r in rs {
            pids.insert(r.get().map_err(e)?);
        }
    }
    // 10 tasks, at most 2 per worker: at least 5 different workers.
    check!(pids.len() >= 5, "only {} distinct worker pids", pids.len());
    let deadline = Instant::now() + Duration::from_secs(5);
    while pool.pids().iter().any(|p| first.contains(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    check!(!pool.pids().iter().any(|p| first.contains(p)));
    Ok(())
}

/// How many descriptors of `pid` refer to `what` once it is at most
/// `max` (a worker just forked may still be closing what it inherited),
/// or after 5 s.
fn settled_links(pid: i32, what: &str, max: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = count_links(pid, what);
        if n <= max || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Workers, first ones and replacements alike, hold neither the other
/// workers' pidfds nor the pool's wake-up eventfd: only what this process
/// held before the pool existed.
fn workers_hold_no_sibling_pidfds_nor_the_wake_eventfd() -> TestResult {
    let me = std::process::id() as i32;
    let pidfds = count_links(me, "anon_inode:[pidfd]");
    let eventfds = count_links(me, "anon_inode:[eventfd]");
    let pool = Pool::builder()
        .processes(3)
        .maxtasksperchild(Some(1))
        .build()
        .map_err(e)?;
    check!(count_links(me, "anon_inode:[eventfd]") > eventfds);
    let first = pool.pids();
    let mut seen = Vec::new();
    let mut inspect = |pids: Vec<i32>| {
        for pid in pids {
            seen.push((
                pid,
                settled_links(pid, "anon_inode:[pidfd]", pidfds),
                settled_links(pid, "anon_inode:[eventfd]", eventfds),
            ));
        }
    };
    inspect(first.clone());
    // One task per worker: six tasks need at least three replacements,
    // forked by the dispatcher thread.
    let out = pool.map(square, 0..6u64).map_err(e)?;
    check!(out == vec![0, 1, 4, 9, 16, 25]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while (pool.pids().len() < 3 || pool.pids().iter().any(|p| first.contains(p)))
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    let later = pool.pids();
    check!(!later.iter().any(|p| first.contains(p)), "no replacement");
    inspect(later);
    pool.terminate();
    check!(
        seen.iter().all(|&(_, p, v)| p <= pidfds && v <= eventfds),
        "(worker, pidfds, eventfds): {seen:?}; this process had {pidfds} pidfds and \
         {eventfds} eventfds before the pool"
    );
    Ok(())
}

static INIT_RUNS: AtomicU32 = AtomicU32::new(0);

fn init_runs(_: u32) -> (u32, u32) {
    (std::process::id(), INIT_RUNS.load(Ordering::SeqCst))
}

fn initializer_runs_once_per_worker() -> TestResult {
    let counter = Value::new(0u32).map_err(e)?;
    let c = counter.clone();
    let pool = Pool::builder()
        .processes(3)
        .initializer(move || {
            INIT_RUNS.fetch_add(1, Ordering::SeqCst);
            if let Ok(mut g) = c.lock() {
                *g += 1;
            }
        })
        .build()
        .map_err(e)?;
    let results = pool.map_chunked(init_runs, 0..60u32, 1).map_err(e)?;
    check!(results.iter().all(|&(_, n)| n == 1), "{results:?}");
    pool.close();
    pool.join().map_err(e)?;
    check!(
        counter.get().map_err(e)? == 3,
        "initializer ran {} times",
        counter.get().map_err(e)?
    );
    check!(INIT_RUNS.load(Ordering::SeqCst) == 0, "ran in the parent");
    Ok(())
}

fn sigkilled_worker_fails_its_task_only() -> TestResult {
    let pool = Pool::new(2).map_err(e)?;
    let path = temp_path("sigkill");
    let _ = std::fs::remove_file(&path);
    let victim = pool
        .apply_async(report_pid_and_hang, path.display().to_string())
        .map_err(e)?;
    let pid = wait_for_pid(&path)?;
    let _ = std::fs::remove_file(&path);
    let others: Vec<_> = (0..6u64)
        .map(|i| pool.apply_async(sleep_ms, 20 + i))
        .collect::<Result<_, _>>()
        .map_err(e)?;
    let killed_at = Instant::now();
    kill(Pid::from_raw(pid), Signal::SIGKILL).map_err(e)?;
    match victim.get_timeout(Duration::from_secs(10)) {
        Err(Error::WorkerDied { pid: p, reason }) => {
            check!(p == pid);
            check!(reason.contains("signal 9"), "reason {reason:?}");
        }
        other => return Err(format!("expected WorkerDied, got {other:?}")),
    }
    check!(
        killed_at.elapsed() < Duration::from_secs(2),
        "took {:?}",
        killed_at.elapsed()
    );
    for (i, r) in others.iter().enumerate() {
        check!(r.get_timeout(Duration::from_secs(10)).map_err(e)? == 20 + i as u64);
    }
    check!(pool.map(square, 0..100u64).map_err(e)?.len() == 100);
    let deadline = Instant::now() + Duration::from_secs(5);
    while pool.pids().len() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    check!(
        pool.pids().len() == 2 && !pool.pids().contains(&pid),
        "{:?}",
        pool.pids()
    );
    Ok(())
}

fn aborting_worker_is_reported() -> TestResult {
    let pool = Pool::new(1).map_err(e)?;
    match pool.apply(abort_now, ()) {
        Err(Error::WorkerDied { reason, .. }) => check!(reason.contains("signal 6"), "{reason}"),
        other => return Err(format!("expected WorkerDied, got {other:?}")),
    }
    check!(pool.apply(square, 3).map_err(e)? == 9);
    Ok(())
}

fn terminate_with_pending_tasks_is_prompt() -> TestResult {
    let pool = Pool::new(2).map_err(e)?;
    let pids = pool.pids();
    let rs: Vec<_> = (0..20)
        .map(|_| pool.apply_async(sleep_ms, 2000))
        .collect::<Result<_, _>>()
        .map_err(e)?;
    std::thread::sleep(Duration::from_millis(50));
    let started = Instant::now();
    pool.terminate();
    check!(
        started.elapsed() < Duration::from_secs(1),
        "terminate took {:?}",
        started.elapsed()
    );
    for r in &rs {
        check!(matches!(
            r.get_timeout(Duration::from_secs(1)),
            Err(Error::BrokenPool(_))
        ));
    }
    for pid in &pids {
        check!(
            !exists(*pid),
            "worker {pid} still exists (running or zombie)"
        );
    }
    check!(pool.apply_async(square, 1).is_err());
    pool.join().map_err(e)?;
    Ok(())
}

/// A task that never ends must not hold up an unrelated task: a job that
/// was sent to a busy worker (to wait in its socket) cannot be taken back,
/// so only chunks of the same `map` may wait behind a running one.
fn tasks_never_wait_behind_a_stuck_task_while_a_worker_is_free() -> TestResult {
    let pool = Pool::new(2).map_err(e)?;
    let pids = pool.pids();
    // One worker is stuck for a minute; the other is busy for a moment,
    // so at the next submissions no worker is idle.
    let stuck = pool.apply_async(sleep_ms, 60_000).map_err(e)?;
    let brief = pool.apply_async(sleep_ms, 300).map_err(e)?;
    std::thread::sleep(Duration::from_millis(50));
    let r = pool.apply_async(square, 5).map_err(e)?;
    let m = pool.imap(square, 0..4u64, 1).map_err(e)?;
    // Generous deadlines: the free worker needs about 0.3 s for all this.
    check!(brief.get_timeout(Duration::from_secs(20)).map_err(e)? == 300);
    let got = r.get_timeout(Duration::from_secs(20));
    check!(
        matches!(got, Ok(25)),
        "apply behind the stuck task: {got:?}"
    );
    let mut squares = Vec::new();
    for x in m {
        squares.push(x.map_err(e)?);
    }
    check!(squares == vec![0, 1, 4, 9], "imap gave {squares:?}");
    check!(!stuck.ready());
    pool.terminate();
    check!(matches!(stuck.get(), Err(Error::BrokenPool(_))));
    for pid in &pids {
        check!(!exists(*pid), "worker {pid} left behind");
    }
    Ok(())
}

/// A timeout too large for the clock (`Duration::MAX`) means "wait for
/// ever", as `None` does elsewhere; it must not panic on an overflowing
/// deadline.
fn huge_timeouts_wait_instead_of_panicking() -> TestResult {
    let pool = Pool::new(1).map_err(e)?;
    let r = pool.apply_async(square, 3).map_err(e)?;
    check!(r.wait_timeout(Duration::MAX));
    check!(r.get_timeout(Duration::MAX).map_err(e)? == 9);
    let r = pool.apply_async(square, 4).map_err(e)?;
    check!(r.get_timeout(Duration::MAX).map_err(e)? == 16);
    drop(pool);
    let ex = ProcessPoolExecutor::new(Some(1)).map_err(e)?;
    let f = ex.submit(square, 5).map_err(e)?;
    check!(f.result_timeout(Duration::MAX).map_err(e)? == 25);
    drop(ex);
    let mut p = Process::new(|| {});
    p.start().map_err(e)?;
    check!(p.join_timeout(Duration::MAX).map_err(e)? == Some(0));
    Ok(())
}

/// Every `join` waits, not only the first: with two threads in `join`
/// after `close`, each returns once every queued task has finished; and a
/// `terminate` while another thread is in `join` returns only once the
/// workers are reaped, as it promises.
fn concurrent_joins_and_terminate_all_wait_for_the_end() -> TestResult {
    let pool = Pool::new(2).map_err(e)?;
    let rs: Vec<_> = (0..6)
        .map(|_| pool.apply_async(sleep_ms, 100))
        .collect::<Result<_, _>>()
        .map_err(e)?;
    pool.close();
    let early = std::thread::scope(|s| {
        let joins: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    let joined = pool.join();
                    // Counted right after this thread's join returned.
                    let unfinished = rs.iter().filter(|r| !r.ready()).count();
                    (joined.is_ok(), unfinished)
                })
            })
            .collect();
        joins
            .into_iter()
            .map(|h| h.join().unwrap_or((false, usize::MAX)))
            .collect::<Vec<_>>()
    });
    check!(
        early.iter().all(|&(ok, unfinished)| ok && unfinished == 0),
        "join returned with tasks unfinished (ok, unfinished): {early:?}"
    );
    for r in &rs {
        check!(r.get().map_err(e)? == 100);
    }

    let pool = Pool::new(2).map_err(e)?;
    let pids = pool.pids();
    let _stuck: Vec<_> = (0..2)
        .map(|_| pool.apply_async(sleep_ms, 60_000))
        .collect::<Result<_, _>>()
        .map_err(e)?;
    pool.close();
    let left = std::thread::scope(|s| {
        // This one waits for tasks that take a minute...
        let joiner = s.spawn(|| pool.join());
        std::thread::sleep(Duration::from_millis(100));
        // ...until this terminate ends them.
        pool.terminate();
        let left: Vec<i32> = pids.iter().copied().filter(|&p| exists(p)).collect();
        let _ = joiner.join();
        left
    });
    check!(
        left.is_empty(),
        "terminate returned with workers {left:?} not yet reaped"
    );
    Ok(())
}

/// An initializer that panics breaks the pool with its message, instead
/// of forking replacements that fail the same way for ever (thousands a
/// second, each printing its panic).
fn failing_initializer_breaks_the_pool_with_its_message() -> TestResult {
    let starts = Value::new(0u32).map_err(e)?;
    let counter = starts.clone();
    let pool = Pool::builder()
        .processes(2)
        .initializer(move || {
            if let Ok(mut n) = counter.lock() {
                *n += 1;
            }
            panic!("no database here");
        })
        .build()
        .map_err(e)?;
    // The workers may already have failed by the time it is submitted.
    let got = pool
        .apply_async(square, 3)
        .and_then(|r| r.get_timeout(Duration::from_secs(10)));
    check!(
        matches!(&got, Err(Error::BrokenPool(m)) if m.contains("no database here")),
        "the task got {got:?}"
    );
    // Let a respawn loop, if there were one, show itself.
    std::thread::sleep(Duration::from_millis(300));
    let n = starts.get().map_err(e)?;
    check!(n <= 2, "the initializer ran {n} times for 2 workers");
    let later = pool.apply_async(square, 4);
    check!(
        matches!(&later, Err(Error::BrokenPool(m)) if m.contains("no database here")),
        "a later submit got {later:?}"
    );
    let pids = pool.pids();
    drop(pool);
    for pid in &pids {
        check!(!exists(*pid), "worker {pid} left behind");
    }
    Ok(())
}

fn close_join_finishes_queued_work() -> TestResult {
    let pool = Pool::new(2).map_err(e)?;
    check!(matches!(pool.join(), Err(Error::InvalidArgument(_))));
    let rs: Vec<_> = (0..10u64)
        .map(|i| pool.apply_async(sleep_ms, i * 3))
        .collect::<Result<_, _>>()
        .map_err(e)?;
    let pids = pool.pids();
    pool.close();
    check!(matches!(
        pool.apply_async(square, 2),
        Err(Error::InvalidArgument(_))
    ));
    pool.join().map_err(e)?;
    for (i, r) in rs.iter().enumerate() {
        check!(r.ready());
        check!(r.get().map_err(e)? == i as u64 * 3);
    }
    for pid in &pids {
        check!(!exists(*pid), "worker {pid} left behind");
    }
    Ok(())
}

fn dropping_pool_leaves_no_children() -> TestResult {
    let pids = {
        let pool = Pool::new(2).map_err(e)?;
        let _pending = pool.apply_async(sleep_ms, 5000).map_err(e)?;
        pool.pids()
    };
    for pid in &pids {
        check!(!exists(*pid), "worker {pid} left behind");
    }
    Ok(())
}

fn pool_dropped_in_forked_child_does_not_hang() -> TestResult {
    let pool = Pool::new(1).map_err(e)?;
    check!(pool.apply(square, 2).map_err(e)? == 4);
    let pids = pool.pids();
    // The child gets a copy of the pool and drops it; the parent drops its
    // own copy when `start` drops the closure.
    let mut child = Process::new(move || drop(pool));
    child.start().map_err(e)?;
    let code = child.join_timeout(Duration::from_secs(10)).map_err(e)?;
    if code.is_none() {
        let _ = child.kill();
        let _ = child.join();
    }
    check!(code == Some(0), "child exit {code:?}");
    for pid in &pids {
        check!(!exists(*pid), "worker {pid} left behind");
    }
    Ok(())
}

fn executor_results_map_and_cancel() -> TestResult {
    let mut ex = ProcessPoolExecutor::new(Some(1)).map_err(e)?;
    let f = ex.submit(square, 5).map_err(e)?;
    check!(f.result().map_err(e)? == 25);
    let long = ex.submit(sleep_ms, 300).map_err(e)?;
    let second = ex.submit(sleep_ms, 1).map_err(e)?;
    let third = ex.submit(sleep_ms, 2).map_err(e)?;
    check!(third.cancel(), "a queued call must be cancellable");
    check!(matches!(third.result(), Err(Error::Cancelled)));
    check!(matches!(
        long.result_timeout(Duration::from_millis(10)),
        Err(Error::Timeout(_))
    ));
    check!(!long.done());
    check!(long.result().map_err(e)? == 300);
    check!(!long.cancel(), "a finished call cannot be cancelled");
    check!(second.result().map_err(e)? == 1);
    let got: Vec<u64> = ex
        .map(square, 0..50u64, 4)
        .map_err(e)?
        .collect::<Result<_, _>>()
        .map_err(e)?;
    check!(got == (0..50u64).map(|x| x * x).collect::<Vec<_>>());
    let pending = ex.submit(sleep_ms, 50).map_err(e)?;
    ex.shutdown(true);
    check!(pending.done() && pending.result().map_err(e)? == 50);
    check!(matches!(
        ex.submit(square, 1),
        Err(Error::InvalidArgument(_))
    ));
    Ok(())
}

fn executor_broken_after_worker_death() -> TestResult {
    let ex = ProcessPoolExecutor::new(Some(2)).map_err(e)?;
    let path = temp_path("executor");
    let _ = std::fs::remove_file(&path);
    let victim = ex
        .submit(report_pid_and_hang, path.display().to_string())
        .map_err(e)?;
    let pid = wait_for_pid(&path)?;
    let _ = std::fs::remove_file(&path);
    let pending: Vec<_> = (0..8)
        .map(|_| ex.submit(sleep_ms, 3000))
        .collect::<Result<_, _>>()
        .map_err(e)?;
    let pids = ex.pids();
    let killed_at = Instant::now();
    kill(Pid::from_raw(pid), Signal::SIGKILL).map_err(e)?;
    check!(matches!(
        victim.result_timeout(Duration::from_secs(5)),
        Err(Error::BrokenPool(_))
    ));
    for f in &pending {
        let r = f.result_timeout(Duration::from_secs(5));
        check!(matches!(r, Err(Error::BrokenPool(_))), "got {r:?}");
    }
    check!(
        killed_at.elapsed() < Duration::from_secs(2),
        "took {:?}",
        killed_at.elapsed()
    );
    check!(ex.broken().is_some());
    check!(matches!(ex.submit(square, 1), Err(Error::BrokenPool(_))));
    drop(ex);
    for pid in &pids {
        check!(!exists(*pid), "worker {pid} left behind");
    }
    Ok(())
}

fn main() {
    let tests: &[Test] = &[
        ("map_and_starmap_keep_order", map_and_starmap_keep_order),
        (
            "workers_hold_no_sibling_pidfds_nor_the_wake_eventfd",
            workers_hold_no_sibling_pidfds_nor_the_wake_eventfd,
        ),
        ("big_chunks_do_not_deadlock", big_chunks_do_not_deadlock),
        (
            "reused_buffers_never_leak_old_bytes",
            reused_buffers_never_leak_old_bytes,
        ),
        (
            "chunks_are_exact_for_any_iterator_and_item_size",
            chunks_are_exact_for_any_iterator_and_item_size,
        ),
        (
            "imap_is_ordered_and_unordered_returns_each_once",
            imap_is_ordered_and_unordered_returns_each_once,
        ),
        (
            "apply_async_callbacks_and_timeouts",
            apply_async_callbacks_and_timeouts,
        ),
        ("panic_becomes_error_result", panic_becomes_error_result),
        (
            "maxtasksperchild_replaces_workers",
            maxtasksperchild_replaces_workers,
        ),
        (
            "initializer_runs_once_per_worker",
            initializer_runs_once_per_worker,
        ),
        (
            "sigkilled_worker_fails_its_task_only",
            sigkilled_worker_fails_its_task_only,
        ),
        ("aborting_worker_is_reported", aborting_worker_is_reported),
        (
            "terminate_with_pending_tasks_is_prompt",
            terminate_with_pending_tasks_is_prompt,
        ),
        (
            "tasks_never_wait_behind_a_stuck_task_while_a_worker_is_free",
            tasks_never_wait_behind_a_stuck_task_while_a_worker_is_free,
        ),
        (
            "huge_timeouts_wait_instead_of_panicking",
            huge_timeouts_wait_instead_of_panicking,
        ),
        (
            "concurrent_joins_and_terminate_all_wait_for_the_end",
            concurrent_joins_and_terminate_all_wait_for_the_end,
        ),
        (
            "failing_initializer_breaks_the_pool_with_its_message",
            failing_initializer_breaks_the_pool_with_its_message,
        ),
        (
            "close_join_finishes_queued_work",
            close_join_finishes_queued_work,
        ),
        (
            "dropping_pool_leaves_no_children",
            dropping_pool_leaves_no_children,
        ),
        (
            "pool_dropped_in_forked_child_does_not_hang",
            pool_dropped_in_forked_child_does_not_hang,
        ),
        (
            "executor_results_map_and_cancel",
            executor_results_map_and_cancel,
        ),
        (
            "executor_broken_after_worker_death",
            executor_broken_after_worker_death,
        ),
    ];
    run(tests);
}
