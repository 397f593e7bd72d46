//! The seed's CPU-bound counter demo: the same work done sequentially, in
//! threads and in processes (a `Pool`), with the times and speed-ups on
//! this machine's cores.
//!
//! ```sh
//! cargo run --release --example cpu_bound
//! ```
//!
//! In Python the threaded run is no faster than the sequential one (the
//! GIL); in Rust both threads and processes use every core, and processes
//! pay a little extra for forking and shipping results.

use std::hint::black_box;
use std::time::{Duration, Instant};

use socketserver::process::{cpu_count, Pool};

/// How far each job counts down.
const COUNT: u64 = 1_000_000_000;

/// The CPU-bound job: count down, the way the seed's `countdown(n)` does.
fn countdown(n: u64) -> u64 {
    let mut n = black_box(n);
    let mut steps = 0u64;
    while n > 0 {
        n = black_box(n - 1);
        steps += 1;
    }
    steps
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let out = f();
    (out, start.elapsed())
}

fn main() -> anyhow::Result<()> {
    let jobs = cpu_count().max(2);
    println!("{jobs} jobs of countdown({COUNT}) on {} CPUs", cpu_count());

    // Warm-up, so the CPU is at full clock before the sequential run.
    black_box(countdown(COUNT));

    let (seq, t_seq) = timed(|| (0..jobs).map(|_| countdown(COUNT)).sum::<u64>());
    println!("sequential: {:>8.3} s", t_seq.as_secs_f64());

    let (thr, t_thr) = timed(|| {
        let handles: Vec<_> = (0..jobs)
            .map(|_| std::thread::spawn(|| countdown(COUNT)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(0))
            .sum::<u64>()
    });
    println!(
        "threads:    {:>8.3} s  speed-up {:.2}x",
        t_thr.as_secs_f64(),
        t_seq.as_secs_f64() / t_thr.as_secs_f64()
    );

    let pool = Pool::new(jobs)?;
    let (procs, t_proc) = timed(|| pool.map_chunked(countdown, vec![COUNT; jobs], 1));
    let procs: u64 = procs?.into_iter().sum();
    println!(
        "processes:  {:>8.3} s  speed-up {:.2}x",
        t_proc.as_secs_f64(),
        t_seq.as_secs_f64() / t_proc.as_secs_f64()
    );
    anyhow::ensure!(
        seq == thr && thr == procs,
        "results differ: {seq} {thr} {procs}"
    );
    pool.close();
    pool.join()?;
    Ok(())
}
