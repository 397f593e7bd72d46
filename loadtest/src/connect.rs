//! Opening TCP connections: the `--connect-rate` limiter and connect with
//! a deadline.

use std::io;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::time::{sleep_until, timeout_at};

/// Spaces new connections evenly: at most `rate` per second across all
/// workers. Each caller reserves the next free slot and sleeps until it.
#[derive(Debug)]
pub struct ConnectLimiter {
    interval: Duration,
    next: Mutex<Instant>,
}

impl ConnectLimiter {
    /// A limiter allowing `rate` connections per second.
    pub fn new(rate: f64) -> Self {
        ConnectLimiter {
            interval: Duration::from_secs_f64(1.0 / rate),
            next: Mutex::new(Instant::now()),
        }
    }

    /// Waits for this caller's slot. Returns `false` (without waiting) when
    /// the slot would fall at or after `end`.
    pub async fn wait(&self, end: Instant) -> bool {
        let slot = {
            let Ok(mut next) = self.next.lock() else {
                return false;
            };
            let slot = (*next).max(Instant::now());
            if slot >= end {
                return false;
            }
            *next = slot + self.interval;
            slot
        };
        sleep_until(slot.into()).await;
        true
    }
}

/// How a connection attempt ended.
#[derive(Debug)]
pub enum Connect {
    /// Connected.
    Ok(TcpStream),
    /// Refused, unreachable, or no answer within the timeout.
    Failed(io::Error),
    /// The run ended while connecting; nothing to count.
    RunOver,
}

/// Connects to `addr` within `timeout`, but never past `end`. With
/// `linger0` the socket is set to reset on close (SO_LINGER 0), so
/// closing it leaves no TIME_WAIT entry behind: a churn run opens tens of
/// thousands of connections and would otherwise run out of loopback ports.
pub async fn connect(addr: SocketAddr, timeout: Duration, end: Instant, linger0: bool) -> Connect {
    let by_timeout = Instant::now() + timeout;
    let deadline = by_timeout.min(end);
    match timeout_at(deadline.into(), TcpStream::connect(addr)).await {
        Ok(Ok(s)) => {
            // Small echo messages: send each at once.
            let _ = s.set_nodelay(true);
            if linger0 {
                let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
            }
            Connect::Ok(s)
        }
        Ok(Err(e)) => Connect::Failed(e),
        Err(_) if deadline < by_timeout => Connect::RunOver,
        Err(_) => Connect::Failed(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
    }
}

/// Checks that the target accepts connections at all: up to three
/// attempts, 100 ms apart, each within `timeout` (at most 2 s).
///
/// # Errors
/// The last connect error when every attempt failed.
pub async fn preflight(addr: SocketAddr, timeout: Duration) -> io::Result<()> {
    let timeout = timeout.min(Duration::from_secs(2));
    let mut last = None;
    for attempt in 0..3 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        match connect(addr, timeout, Instant::now() + timeout * 2, true).await {
            Connect::Ok(_) => return Ok(()),
            Connect::Failed(e) => last = Some(e),
            Connect::RunOver => {}
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no connection")))
}
