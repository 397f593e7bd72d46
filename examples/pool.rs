//! The seed documents' pool program: a `Pool` runs tasks with
//! `apply_async`, then `close` and `join`; then `map` over a range.
//!
//! ```sh
//! cargo run --release --example pool
//! ```

use std::time::Duration;

use socketserver::process::{current_process, Pool};

/// A task: pretends to work for a moment, reports who ran it.
fn work(n: u64) -> (u64, u64, String) {
    std::thread::sleep(Duration::from_millis(50));
    (n, n * n, current_process().name)
}

fn square(x: u64) -> u64 {
    x * x
}

fn main() -> anyhow::Result<()> {
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
    Ok(())
}
