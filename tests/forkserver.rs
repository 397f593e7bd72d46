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
use forktest::{e, run, stat, Test, TestResult};

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

/// Made in `main` before the server starts: shared with its children.
static QUEUE: std::sync::OnceLock<process::Queue<Vec<u8>>> = std::sync::OnceLock::new();

/// Puts a message far larger than the queue's ring (it travels through
/// the queue's side channel, which the server keeps open) and a small one.
fn put_big(len: usize) -> bool {
    let Some(q) = QUEUE.get() else { return false };
    q.put(&vec![7u8; len]).is_ok() && q.put(&vec![1u8; 3]).is_ok()
}

/// The server closes what it inherited, but not the side channel of a
/// queue made before it: a large message from its child arrives.
fn queue_made_before_the_server_still_carries_large_messages() -> TestResult {
    let q = QUEUE.get().ok_or("no queue")?;
    let len = process::QUEUE_DEFAULT_CAPACITY * 4;
    let ctx = get_context(StartMethod::ForkServer).map_err(e)?;
    let mut p = ctx.process(put_big, len);
    p.start().map_err(e)?;
    let big = q.get_timeout(Duration::from_secs(20)).map_err(e)?;
    let small = q.get_timeout(Duration::from_secs(20)).map_err(e)?;
    check!(p.join().map_err(e)? == 0);
    check!(p.result::<bool>().map_err(e)? == Some(true));
    check!(big.len() == len && big.iter().all(|&b| b == 7));
    check!(small == vec![1u8; 3]);
    Ok(())
}

fn filled(len: usize) -> Vec<u8> {
    vec![7u8; len]
}

/// A `from_fn` result over a `Connection`'s 32 MiB default arrives through
/// the fork server too (its status connection used that default, and the
/// child dropped the result without a word: exit code 0, no result).
fn result_over_32_mib_arrives_through_the_fork_server() -> TestResult {
    let ctx = get_context(StartMethod::ForkServer).map_err(e)?;
    let mut p = ctx.process(filled, 33 << 20);
    p.start().map_err(e)?;
    check!(p.join().map_err(e)? == 0);
    let got = p.result::<Vec<u8>>().map_err(e)?;
    check!(
        got.as_ref()
            .is_some_and(|v| v.len() == 33 << 20 && v.iter().all(|&b| b == 7)),
        "result: {:?}",
        got.map(|v| v.len())
    );
    Ok(())
}

/// Whether `pid` is gone (or a zombie) within `limit`.
fn gone_within(pid: i32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if !matches!(stat(pid), Some((s, _)) if s != 'Z' && s != 'X') {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sleeps, then writes `done` into the directory it is given.
fn sleep_then_mark(dir: String) {
    std::thread::sleep(Duration::from_millis(800));
    let _ = std::fs::write(
        std::path::Path::new(&dir).join(process::current_process().name),
        b"done",
    );
}

/// The scenario program: starts two non-daemon fork-server children
/// (one kept, one dropped while it runs) and returns from `main` at once.
const AT_EXIT_SCENARIO: &str = "SOCKETSERVER_FORKSERVER_AT_EXIT";

fn at_exit_scenario(dir: String) {
    let ctx = get_context(StartMethod::ForkServer).expect("context");
    let mut kept = ctx.process(sleep_then_mark, dir.clone());
    kept.start().expect("start");
    let mut dropped = ctx.process(sleep_then_mark, dir.clone());
    dropped.start().expect("start");
    let pids = format!("{} {}", kept.pid().unwrap_or(0), dropped.pid().unwrap_or(0));
    let _ = std::fs::write(std::path::Path::new(&dir).join("pids"), pids);
    drop(dropped);
    // Returning from main: the at-exit hook waits for both.
}

/// As with `fork`, a program that returns from `main` waits for the
/// non-daemon children it started through the fork server, kept or
/// dropped (they are the server's children: they are waited for on their
/// pidfds, not with `waitpid`).
fn served_children_waited_for_at_exit() -> TestResult {
    let dir = tempfile::tempdir().map_err(e)?;
    let started = Instant::now();
    let mut scenario = std::process::Command::new(std::env::current_exe().map_err(e)?)
        .env(AT_EXIT_SCENARIO, dir.path())
        .spawn()
        .map_err(e)?;
    let status = loop {
        if let Some(status) = scenario.try_wait().map_err(e)? {
            break status;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = scenario.kill();
            let _ = scenario.wait();
            return Err("the scenario did not end within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = started.elapsed();
    let marks = std::fs::read_dir(dir.path())
        .map_err(e)?
        .flatten()
        .filter(|f| f.file_name() != "pids")
        .count();
    let pids = std::fs::read_to_string(dir.path().join("pids")).unwrap_or_default();
    // Whatever happened, leave no child running.
    for pid in pids
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        if pid > 0 && !gone_within(pid, Duration::from_secs(5)) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    check!(status.success(), "scenario: {status:?}");
    check!(
        marks == 2,
        "main ended after {took:?} with {marks} of its 2 fork-server children finished"
    );
    Ok(())
}

/// A fork server killed with SIGKILL is noticed: `start_forkserver` starts
/// a new one (Python's `ensure_running`), processes start through it as
/// before, and a process the dead one had started reports a clear error
/// on `join`.
fn dead_fork_server_is_replaced() -> TestResult {
    fn sleeps(ms: u64) {
        std::thread::sleep(Duration::from_millis(ms))
    }
    let ctx = get_context(StartMethod::ForkServer).map_err(e)?;
    let mut orphan = ctx.process(sleeps, 30_000);
    orphan.start().map_err(e)?;
    let child = orphan.pid().ok_or("no pid")?;
    let server = stat(child).ok_or("child gone")?.1;
    check!(server != std::process::id() as i32);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server),
        nix::sys::signal::Signal::SIGKILL,
    )
    .map_err(e)?;
    check!(
        gone_within(server, Duration::from_secs(10)),
        "server survived SIGKILL"
    );
    orphan.kill().map_err(e)?;
    let joined = orphan.join();
    check!(
        joined.is_err(),
        "join of the dead server's child: {joined:?}"
    );
    check!(
        gone_within(child, Duration::from_secs(10)),
        "orphan survived SIGKILL"
    );
    start_forkserver().map_err(e)?;
    let mut p = ctx.process(square, 9);
    p.start().map_err(e)?;
    let new_server = p.pid().and_then(stat).map(|(_, ppid)| ppid);
    check!(p.join().map_err(e)? == 0);
    check!(p.result::<u64>().map_err(e)? == Some(81));
    check!(new_server != Some(server), "still the old server?");
    // Without calling start_forkserver first, too.
    let mut q = ctx.process(square, 5);
    q.start().map_err(e)?;
    check!(q.join().map_err(e)? == 0);
    check!(q.result::<u64>().map_err(e)? == Some(25));
    Ok(())
}

fn main() {
    if let Some(dir) = std::env::var_os(AT_EXIT_SCENARIO) {
        start_forkserver().expect("fork server");
        at_exit_scenario(dir.to_string_lossy().into_owned());
        return;
    }
    let _ = QUEUE.set(process::Queue::new().expect("queue"));
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
        (
            stringify!(served_children_waited_for_at_exit),
            served_children_waited_for_at_exit,
        ),
        (
            stringify!(queue_made_before_the_server_still_carries_large_messages),
            queue_made_before_the_server_still_carries_large_messages,
        ),
        (
            stringify!(result_over_32_mib_arrives_through_the_fork_server),
            result_over_32_mib_arrives_through_the_fork_server,
        ),
        // Last: it kills the server (a new one takes its place).
        (
            stringify!(dead_fork_server_is_replaced),
            dead_fork_server_is_replaced,
        ),
    ];
    run(tests);
}
