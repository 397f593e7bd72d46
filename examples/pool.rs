//! The seed documents' pool program: a `Pool` runs tasks with
//! `apply_async`, then `close` and `join`; then `map` over a range. Last,
//! the same `map` on a pool whose workers come from the fork server,
//! while this process runs a busy thread (the multi-threaded program that
//! `fork()` is not safe for).
//!
//! ```sh
//! cargo run --release --example pool
//! ```

use std::time::Duration;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use socketserver::process::{current_process, start_forkserver, Pool, StartMethod};

/// A task: pretends to work for a moment, reports who ran it.
fn work(n: u64) -> (u64, u64, String) {
    std::thread::sleep(Duration::from_millis(50));
    (n, n * n, current_process().name)
}

fn square(x: u64) -> u64 {
    x * x
}

fn main() -> anyhow::Result<()> {
    // First thing, while this process has one thread: the fork server is
    // a copy of this image, and so is every child it forks later.
    start_forkserver()?;
    let pool = Pool::new(4)?;
    println!("pool of {} workers: {:?}", pool.processes(), pool.pids());

    // apply_async: start every task, then collect the results.
    let pending = (0..8u64)
        .map(|n| pool.apply_async(work, n))
        .collect::<Result<Vec<_>, _>>()?;
    for result in &pending {
        let (n, sq, worker) = result.get_timeout(Duration::from_secs(10))?;
        println!("task {n}: {n}^2 = {sq} (ran in {worker})");
    }

    // map over a range: results come back in order.
    let squares = pool.map(square, 0..20u64)?;
    println!("map(square, 0..20) = {squares:?}");

    // No more work: let the workers finish and exit.
    pool.close();
    pool.join()?;
    println!("pool closed and joined");

    // A multi-threaded program: workers from the fork server never inherit
    // this thread (or a lock it might hold at the wrong moment).
    let stop = Arc::new(AtomicBool::new(false));
    let busy = std::thread::spawn({
        let stop = stop.clone();
        move || {
            while !stop.load(Ordering::Relaxed) {
                std::hint::black_box(vec![0u8; 4096]);
            }
        }
    });
    let served = Pool::builder()
        .processes(2)
        .start_method(StartMethod::ForkServer)
        .build()?;
    let squares = served.map(square, 0..20u64)?;
    println!("forkserver pool: map(square, 0..20) = {squares:?}");
    served.close();
    served.join()?;
    stop.store(true, Ordering::Relaxed);
    let _ = busy.join();
    Ok(())
}
