//! `loadtest`: the bundled load generator for echo-style TCP and UDP
//! servers.
//!
//! ```text
//! cargo run --release --bin loadtest -- 127.0.0.1:9000 -c 50 -d 10s
//! ```
//!
//! Every echoed byte is checked; errors are counted by kind and never end a
//! connection's run (it reconnects). See `docs/loadtest.md` for the flags
//! and what each output field means.

mod cli;
mod connect;
mod pacer;
mod payload;
mod plot;
mod progress;
mod reply;
mod report;
mod stats;
mod tcp;
mod udp;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;

use cli::Args;
use stats::{Shared, Totals, Window};

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(msg) = args.validate() {
        eprintln!("loadtest: error: {msg}");
        return ExitCode::from(2);
    }
    raise_fd_limit(u64::from(args.connections));
    // The main runtime only resolves, checks the target, shows progress
    // and gathers results; the load itself runs on `run_thread`s.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadtest: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(run(&args));
    rt.shutdown_timeout(Duration::from_millis(200));
    match result {
        Ok(Outcome::Complete) => ExitCode::SUCCESS,
        // As a shell reports a program ended by SIGINT.
        Ok(Outcome::Interrupted) => ExitCode::from(130),
        Err(e) => {
            eprintln!("loadtest: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Many connections need many descriptors: raise the soft limit to the
/// hard one, and warn when even that is too few (connects would then fail
/// with "too many open files" and be counted as connect errors).
fn raise_fd_limit(connections: u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let mut limit = soft;
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        limit = hard;
    }
    // Churn can hold a few extra sockets per worker while they close.
    if connections + 64 > limit {
        eprintln!(
            "loadtest: warning: {connections} connections but only {limit} file descriptors allowed (ulimit -n)"
        );
    }
}

/// What the load threads run.
#[derive(Clone)]
enum Job {
    Tcp(Arc<tcp::TcpConfig>),
    Udp(Arc<udp::UdpConfig>),
}

/// One load thread: a single-threaded runtime driving the workers `ids`.
/// Each thread keeps its connections to itself (as wrk's threads do), so
/// a request's wake-up never crosses threads and no work is stolen: with
/// one multi-threaded runtime, the client cost up to 1.3× a blocking
/// client's CPU per request.
///
/// When `stop` turns true (Ctrl-C) every worker is cancelled at once;
/// what they counted reaches the shared totals through their recorders.
fn run_thread(
    job: &Job,
    shared: &Arc<Shared>,
    ids: Vec<u32>,
    hard_stop: std::time::Instant,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Totals> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a load thread's runtime")?;
    rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for id in ids {
            let rec = stats::Recorder::new(shared.clone());
            match job {
                Job::Tcp(cfg) => tasks.spawn(tcp::worker(id, cfg.clone(), rec)),
                Job::Udp(cfg) => tasks.spawn(udp::worker(id, cfg.clone(), rec)),
            };
        }
        let mut totals = Totals::new();
        loop {
            let next = tokio::select! {
                next = tokio::time::timeout_at(hard_stop.into(), tasks.join_next()) => next,
                _ = stop.wait_for(|stop| *stop) => {
                    tasks.abort_all();
                    // Joining drops the cancelled workers here, on their
                    // own thread, which hands their counts over.
                    while tasks.join_next().await.is_some() {}
                    break;
                }
            };
            match next {
                Ok(Some(Ok(t))) => totals.merge(&t),
                Ok(Some(Err(e))) => bail!("a worker failed: {e}"),
                Ok(None) => break,
                Err(_) => {
                    tasks.abort_all();
                    eprintln!("loadtest: warning: workers did not stop in time; partial results");
                    break;
                }
            }
        }
        Ok(totals)
    })
}

/// Resolves ADDR to its addresses (one when ADDR is an IP address).
async fn resolve(addr: &str) -> anyhow::Result<Vec<SocketAddr>> {
    if let Ok(a) = addr.parse() {
        return Ok(vec![a]);
    }
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(addr)
        .await
        .with_context(|| {
            format!("cannot resolve `{addr}` (expected HOST:PORT, e.g. 127.0.0.1:9000)")
        })?
        .collect();
    if addrs.is_empty() {
        bail!("`{addr}` resolves to no address");
    }
    Ok(addrs)
}

/// How a run ended.
enum Outcome {
    /// The whole window was measured.
    Complete,
    /// Ctrl-C cut it short; a summary of what was measured was printed.
    Interrupted,
}

async fn run(args: &Args) -> anyhow::Result<Outcome> {
    let started = std::time::SystemTime::now();
    let addrs = resolve(&args.addr).await?;
    let size = args.size as usize;

    // Refuse to "measure" a target that is not there at all. A host name
    // may resolve to several addresses (say ::1 and 127.0.0.1): the run
    // uses the first one that accepts a connection, and only that one.
    let mut addr = addrs[0];
    if args.udp {
        match udp::preflight(addr, size, args.timeout).await {
            Ok(true) => {}
            Ok(false) => eprintln!(
                "loadtest: warning: no echo from {addr} to 3 probe datagrams; running anyway"
            ),
            Err(e) => bail!("cannot reach {addr} over UDP: {e}"),
        }
    } else {
        let mut reachable = None;
        let mut last_err = None;
        for a in &addrs {
            match connect::preflight(*a, args.timeout).await {
                Ok(()) => {
                    reachable = Some(*a);
                    break;
                }
                Err(e) => last_err = Some((*a, e)),
            }
        }
        match (reachable, last_err) {
            (Some(a), _) => addr = a,
            (None, Some((a, e))) => bail!("cannot connect to {a}: {e}"),
            (None, None) => bail!("`{}` resolves to no address", args.addr),
        }
    }

    let window = Window::new(args.warmup, args.duration);
    let shared = Shared::new(window);
    let progress = progress::Progress::start(shared.clone());

    // Workers stop by themselves at the window's end (UDP: after a drain of
    // at most --timeout); this bound only guards against a bug.
    let hard_stop = window.end + args.timeout + Duration::from_secs(2);
    let job = if args.udp {
        Job::Udp(Arc::new(udp::UdpConfig {
            addr,
            size,
            connections: args.connections,
            rate: args.rate,
            timeout: args.timeout,
        }))
    } else {
        Job::Tcp(Arc::new(tcp::TcpConfig {
            addr,
            size,
            connections: args.connections,
            rate: args.rate,
            churn: args.churn,
            timeout: args.timeout,
            limiter: args.connect_rate.map(connect::ConnectLimiter::new),
        }))
    };
    let threads = args.load_threads();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    for t in 0..threads {
        let ids: Vec<u32> = (0..args.connections)
            .filter(|id| *id as usize % threads == t)
            .collect();
        let (job, shared, done) = (job.clone(), shared.clone(), done_tx.clone());
        let stop = stop_rx.clone();
        std::thread::Builder::new()
            .name(format!("loadtest-{t}"))
            .spawn(move || {
                let _ = done.send(run_thread(&job, &shared, ids, hard_stop, stop));
            })
            .context("cannot start a load thread")?;
    }
    drop(done_tx);
    let mut totals = Totals::new();
    let mut interrupted = None;
    loop {
        let result = tokio::select! {
            r = done_rx.recv() => r,
            signal = tokio::signal::ctrl_c(), if interrupted.is_none() => {
                if signal.is_ok() {
                    interrupted = Some(std::time::Instant::now());
                    let _ = stop_tx.send(true);
                }
                continue;
            }
        };
        match result {
            Some(Ok(t)) => totals.merge(&t),
            Some(Err(e)) => {
                progress.finish();
                bail!("{e}");
            }
            None => break,
        }
    }
    progress.finish();
    totals.merge(&shared.take_dropped());

    // An interrupted run reports the part of the window it measured.
    let duration = match interrupted {
        None => args.duration,
        Some(at) => at
            .saturating_duration_since(window.measure)
            .min(args.duration),
    };
    if duration.is_zero() {
        eprintln!("loadtest: interrupted during the warm-up: nothing was measured");
        return Ok(Outcome::Interrupted);
    }
    let (hist, timeline) = shared.latencies();
    totals.hist = hist;
    let summary = report::Summary {
        args,
        target: addr.to_string(),
        totals,
        timeline,
        duration,
        interrupted: interrupted.is_some(),
        started,
    };
    if let Some(path) = &args.plot {
        let svg = plot::render(&summary);
        std::fs::write(path, svg)
            .with_context(|| format!("cannot write the plot to {}", path.display()))?;
    }
    if args.json {
        println!("{}", summary.json());
    } else {
        print!("{}", summary.human());
        if let Some(path) = &args.plot {
            println!("  plot         {}", path.display());
        }
    }
    Ok(if interrupted.is_some() {
        Outcome::Interrupted
    } else {
        Outcome::Complete
    })
}
