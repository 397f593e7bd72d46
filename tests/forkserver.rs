//! The `forkserver` start method, from a program that is as hostile to
//! `fork()` as it gets: eight busy threads, one of them holding a `Mutex`
//! for the whole run, all of them hammering the allocator. 1,000 children
//! started through the fork server run, lock that same `Mutex` (free in
//! the server's image), allocate, and return results; nothing deadlocks
//! and the whole run is bounded in time. The same children started with
//! plain `fork` would inherit the `Mutex` locked (the hazard is described
//! in docs/process.md, not exercised here: the test must not hang).
//!
//! `harness = false`: the fork server must be started while this process
//! still has one thread. Run with `cargo test --test forkserver`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use socketserver::process::{
    self, get_context, set_start_method, start_forkserver, Pool, Process, StartMethod,
};

mod forktest;
use forktest::{e, run, Test, TestResult};

/// Held by a busy thread of the parent for the whole run.
static HELD: Mutex<u64> = Mutex::new(0);
static STOP: AtomicBool = AtomicBool::new(false);

/// The child's work: take the lock the parent holds, allocate, compute.
fn work(x: u64) -> (u64, u32) {
    let mut guard = HELD.lock().unwrap_or_else(|p| p.into_inner());
    *guard += 1;
    let v: Vec<u64> = (0..1000).map(|i| i * x).collect();
    (v.iter().sum(), process::current_process().pid as u32)
}

fn square(x: u64) -> u64 {
    x * x
}

fn busy_threads() -> Vec<std::thread::JoinHandle<()>> {
    let mut threads = Vec::new();
    threads.push(std::thread::spawn(|| {
        let _g = HELD.lock().unwrap_or_else(|p| p.into_inner());
        while !STOP.load(Ordering::Relaxed) {
            let v: Vec<String> = (0..64).map(|i| i.to_string()).collect();
            std::hint::black_box(v);
        }
    }));
    for t in 0..7 {
        threads.push(std::thread::spawn(move || {
            let mut keep: Vec<Vec<u8>> = Vec::new();
            let mut n = 0usize;
            while !STOP.load(Ordering::Relaxed) {
                keep.push(vec![t as u8; 1 + (n * 7919) % 4096]);
                if keep.len() > 256 {
                    keep.drain(..128);
                }
                n += 1;
            }
        }));
    }
    threads
}

fn thousand_children_from_a_busy_process() -> TestResult {
    let threads = busy_threads();
    // Wait until the lock is really held by the busy thread.
    let deadline = Instant::now() + Duration::from_secs(10);
    while HELD.try_lock().is_ok() {
        check!(Instant::now() < deadline, "busy thread never took the lock");
        std::thread::yield_now();
    }
    let ctx = get_context(StartMethod::ForkServer).map_err(e)?;
    let started = Instant::now();
    let limit = Duration::from_secs(240);
    let mut pids = std::collections::HashSet::new();
    for batch in 0..50u64 {
        let mut procs: Vec<Process> = (0..20u64)
            .map(|i| ctx.process(work, batch * 20 + i + 1))
            .collect();
        for p in &mut procs {
            p.start().map_err(e)?;
        }
        for (i, p) in procs.iter_mut().enumerate() {
            let x = batch * 20 + i as u64 + 1;
            let left = limit.saturating_sub(started.elapsed());
            let code = p.join_timeout(left).map_err(e)?;
            check!(code == Some(0), "child {x}: exit {code:?} (deadlock?)");
            let (sum, pid) = p.result::<(u64, u32)>().map_err(e)?.ok_or("no result")?;
            check!(sum == x * 999 * 1000 / 2, "child {x}: wrong sum {sum}");
            check!(Some(pid as i32) == p.pid(), "result from another process");
            pids.insert(pid);
        }
    }
    check!(pids.len() == 1000, "{} distinct children", pids.len());
    println!(
        "  1000 forkserver children in {:?} with 8 busy threads",
        started.elapsed()
    );
    STOP.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    STOP.store(false, Ordering::Relaxed);
    Ok(())
}

fn pool_and_executor_on_the_fork_server() -> TestResult {
    let threads = busy_threads();
    let pool = Pool::builder()
        .processes(2)
        .maxtasksperchild(Some(10))
        .start_method(StartMethod::ForkServer)
        .build()
        .map_err(e)?;
    // maxtasksperchild makes the dispatcher thread start replacements:
    // through the fork server too.
    let out = pool.map(square, 0..200u64).map_err(e)?;
    check!(out == (0..200u64).map(|x| x * x).collect::<Vec<_>>());
    let locked = pool.map(work, 1..=20u64).map_err(e)?;
    check!(locked.len() == 20);
    pool.close();
    pool.join().map_err(e)?;
    check!(
        Pool::builder()
            .processes(1)
            .initializer(|| {})
            .start_method(StartMethod::ForkServer)
            .build()
            .is_err(),
        "initializer closure accepted by the fork server"
    );
    set_start_method(StartMethod::ForkServer).map_err(e)?;
    check!(process::get_start_method() == StartMethod::ForkServer);
    let mut ex = process::ProcessPoolExecutor::new(Some(2)).map_err(e)?;
    let f = ex.submit(work, 5).map_err(e)?;
    check!(f.result().map_err(e)?.0 == 5 * 999 * 1000 / 2);
    ex.shutdown(true);
    let mut p = Process::from_fn(square, 12);
    p.start().map_err(e)?;
    check!(p.join().map_err(e)? == 0);
    check!(p.result::<u64>().map_err(e)? == Some(144));
    set_start_method(StartMethod::Fork).map_err(e)?;
    STOP.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    STOP.store(false, Ordering::Relaxed);
    Ok(())
}

/// Exit codes, panics, signals and daemons behave as under `fork`.
fn life_cycle_through_the_fork_server() -> TestResult {
    fn exits(code: i32) {
        process::exit(code)
    }
    fn panics(_: ()) {
        std::panic::set_hook(Box::new(|_| {}));
        panic!("expected")
    }
    fn sleeps(ms: u64) {
        std::thread::sleep(Duration::from_millis(ms))
    }
    let ctx = get_context(StartMethod::ForkServer).map_err(e)?;
    let mut a = ctx.process(exits, 7);
    let mut b = ctx.process(panics, ());
    let mut c = ctx.process(sleeps, 30_000);
    for p in [&mut a, &mut b, &mut c] {
        p.start().map_err(e)?;
    }
    check!(a.join().map_err(e)? == 7);
    check!(b.join().map_err(e)? == 1);
    check!(c.is_alive());
    c.terminate().map_err(e)?;
    check!(c.join().map_err(e)? == -15);
    check!(c.result::<()>().map_err(e)?.is_none());
    Ok(())
}

fn main() {
    // Before any thread exists: the server is a copy of this image.
    start_forkserver().expect("fork server");
    let tests: &[Test] = &[
        (
            stringify!(thousand_children_from_a_busy_process),
            thousand_children_from_a_busy_process,
        ),
        (
            stringify!(pool_and_executor_on_the_fork_server),
            pool_and_executor_on_the_fork_server,
        ),
        (
            stringify!(life_cycle_through_the_fork_server),
            life_cycle_through_the_fork_server,
        ),
    ];
    run(tests);
}
