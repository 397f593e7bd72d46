//! Command-line arguments: the exact contract of issue 4, parsed by clap.

use std::time::Duration;

use clap::Parser;

/// Smallest UDP datagram: sequence number, send timestamp and socket id.
pub use crate::reply::UDP_HEADER;

/// Connections one default load thread drives. One event loop handles
/// about 100k requests/s here; more threads than needed cost CPU per
/// request, because each `epoll_wait` then returns fewer events (measured
/// with `cargo bench --bench loadtest`: 50 connections on one thread cost
/// 0.87–0.93× a blocking client's CPU per request, on two 0.95–1.04×).
pub const CONNECTIONS_PER_THREAD: usize = 64;

/// Echo-server load generator: every echoed byte is checked.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "loadtest",
    version,
    about = "Load generator for echo-style TCP/UDP servers: checks every echoed byte and reports latency percentiles, throughput and errors by kind.",
    after_help = "Examples:\n  loadtest 127.0.0.1:9000 -c 50 -d 10s\n  loadtest 127.0.0.1:9000 --rate 20000 --plot latency.svg\n  loadtest 127.0.0.1:9000 --churn --connect-rate 2000\n  loadtest 127.0.0.1:9000 --udp --json"
)]
pub struct Args {
    /// Target address, e.g. 127.0.0.1:9000. Only this address is ever contacted.
    #[arg(value_name = "ADDR")]
    pub addr: String,

    /// Send UDP datagrams (sequence number + timestamp) instead of TCP.
    #[arg(long)]
    pub udp: bool,

    /// Concurrent connections (UDP: sockets); in closed loop each has one
    /// request in flight.
    #[arg(short = 'c', long = "connections", value_name = "N", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub connections: u32,

    /// How long to measure, e.g. 10s, 500ms, 1m.
    #[arg(short = 'd', long = "duration", value_name = "DURATION", default_value = "10s", value_parser = parse_positive_duration)]
    pub duration: Duration,

    /// Message size in bytes.
    #[arg(short = 's', long = "size", value_name = "BYTES", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=(64 * 1024 * 1024)))]
    pub size: u32,

    /// Open loop: total requests per second across all connections; latency
    /// is measured from each request's intended send time.
    #[arg(long, value_name = "REQ_PER_S", value_parser = parse_rate)]
    pub rate: Option<f64>,

    /// Open a new connection for every request (connect, one echo, close).
    #[arg(long, conflicts_with = "udp")]
    pub churn: bool,

    /// Limit on new connections per second (all connections together).
    #[arg(long, value_name = "N", value_parser = parse_rate)]
    pub connect_rate: Option<f64>,

    /// Run this long before measuring; results from the warm-up are discarded.
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,

    /// Per-request timeout (connect, or send + full echo).
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_positive_duration)]
    pub timeout: Duration,

    /// Load threads, each with its own event loop and its share of the
    /// connections (like wrk's -t). Default: one per 64 connections, at
    /// most one per CPU core. Raise it if the target outruns the client.
    #[arg(short = 't', long = "threads", value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: Option<u32>,

    /// Print one JSON object on stdout instead of the human summary.
    #[arg(long)]
    pub json: bool,

    /// Write an SVG chart (latency over time, percentile distribution).
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<std::path::PathBuf>,
}

impl Args {
    /// Checks that depend on more than one flag.
    ///
    /// # Errors
    /// A message suitable for the user when the combination is invalid.
    pub fn validate(&self) -> Result<(), String> {
        if self.udp && (self.size as usize) < UDP_HEADER {
            return Err(format!(
                "--size must be at least {UDP_HEADER} bytes with --udp (sequence number, timestamp and socket id travel in each datagram)"
            ));
        }
        if self.udp && self.size > 65_507 {
            return Err("--size must be at most 65507 bytes with --udp".into());
        }
        if self.udp && self.connect_rate.is_some() {
            return Err("--connect-rate has no meaning with --udp".into());
        }
        Ok(())
    }

    /// How many load threads run: `--threads`, or by default one per
    /// [`CONNECTIONS_PER_THREAD`] connections and at most one per core;
    /// never more than there are connections.
    pub fn load_threads(&self) -> usize {
        let wanted = match self.threads {
            Some(n) => n as usize,
            None => {
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                (self.connections as usize)
                    .div_ceil(CONNECTIONS_PER_THREAD)
                    .min(cores)
            }
        };
        wanted.clamp(1, self.connections as usize)
    }

    /// Short name of the workload, used in reports.
    pub fn mode(&self) -> &'static str {
        match (self.udp, self.churn, self.rate.is_some()) {
            (true, _, false) => "udp closed loop",
            (true, _, true) => "udp open loop",
            (false, true, false) => "tcp churn closed loop",
            (false, true, true) => "tcp churn open loop",
            (false, false, false) => "tcp closed loop",
            (false, false, true) => "tcp open loop",
        }
    }
}

fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 10s, 500ms, 1m)"))?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let r: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number (requests per second)"))?;
    if !(r.is_finite() && r > 0.0) {
        return Err("must be a positive number".into());
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_contract() {
        let a = Args::try_parse_from(["loadtest", "127.0.0.1:9"]).unwrap();
        assert_eq!(a.connections, 50);
        assert_eq!(a.duration, Duration::from_secs(10));
        assert_eq!(a.size, 64);
        assert!(a.rate.is_none() && !a.churn && !a.udp);
        assert_eq!(a.mode(), "tcp closed loop");
        assert!(a.threads.is_none());
        assert_eq!(a.load_threads(), 1, "50 connections: one thread");
    }

    #[test]
    fn threads_are_capped_by_connections() {
        let a = Args::try_parse_from(["loadtest", "a:1", "-c", "3", "-t", "8"]).unwrap();
        assert_eq!(a.load_threads(), 3);
        let a = Args::try_parse_from(["loadtest", "a:1", "-c", "30", "--threads", "2"]).unwrap();
        assert_eq!(a.load_threads(), 2);
        assert!(Args::try_parse_from(["loadtest", "a:1", "-t", "0"]).is_err());
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let a = Args::try_parse_from(["loadtest", "a:1", "-c", "1000"]).unwrap();
        assert_eq!(a.load_threads(), cores.min(16));
    }

    #[test]
    fn rejects_bad_values() {
        for bad in [
            vec!["loadtest", "a:1", "-c", "0"],
            vec!["loadtest", "a:1", "-d", "0s"],
            vec!["loadtest", "a:1", "-d", "ten"],
            vec!["loadtest", "a:1", "--rate", "-5"],
            vec!["loadtest", "a:1", "--udp", "--churn"],
            vec!["loadtest"],
        ] {
            assert!(Args::try_parse_from(&bad).is_err(), "{bad:?}");
        }
        let a = Args::try_parse_from(["loadtest", "a:1", "--udp", "-s", "8"]).unwrap();
        assert!(a.validate().is_err());
    }
}
