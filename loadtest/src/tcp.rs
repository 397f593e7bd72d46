//! TCP workers: closed loop, open loop (`--rate`) and churn (`--churn`).
//!
//! One worker per connection. Closed loop: send, read the whole echo,
//! compare, repeat. Open loop: the same, but each request has a slot in a
//! fixed schedule and its latency is measured from that slot, so a server
//! that stalls is charged for every request it delayed (wrk2's correction
//! for coordinated omission). Churn: every request gets a fresh connection,
//! and its latency includes the connect.
//!
//! No request starts after the window closes, but one already started
//! (its connect included) keeps its `--timeout`: it is counted, as a
//! request or an error, as of the window's last instant. Dropping those
//! instead hid a server that stalled near the end (one that never answered
//! a 1 s run with a 2 s timeout reported 0 requests and 0 errors).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::sleep_until;

use crate::connect::{connect, Connect, ConnectLimiter};
use crate::pacer::sleep_precise;
use crate::payload::Payloads;
use crate::reply::tcp_echoed;
use crate::stats::{ErrorKind, Recorder, Totals, Window};

/// What every TCP worker of a run shares.
#[derive(Debug)]
pub struct TcpConfig {
    /// The target.
    pub addr: SocketAddr,
    /// Message size.
    pub size: usize,
    /// Number of workers (connections).
    pub connections: u32,
    /// Total requests per second (open loop), or `None` (closed loop).
    pub rate: Option<f64>,
    /// A new connection per request.
    pub churn: bool,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Optional limit on new connections per second.
    pub limiter: Option<ConnectLimiter>,
}

/// Longest pause between reconnect attempts after connect failures.
const MAX_BACKOFF: Duration = Duration::from_millis(100);

/// The open-loop schedule of one worker: slot k is at
/// `start + (id + k * connections) / rate`, so the workers' slots
/// interleave evenly.
#[derive(Debug)]
struct Schedule {
    start: Instant,
    id: f64,
    k: f64,
    connections: f64,
    rate: f64,
}

impl Schedule {
    fn next(&mut self) -> Instant {
        let t = (self.id + self.k * self.connections) / self.rate;
        self.k += 1.0;
        self.start + Duration::from_secs_f64(t)
    }
}

/// When an event at `now` is counted: `now`, or the window's last instant
/// for a request that started inside the window and ended after it.
fn counted_at(w: &Window, now: Instant) -> Instant {
    match w.end.checked_sub(Duration::from_nanos(1)) {
        Some(last) => now.min(last),
        None => now,
    }
}

/// Runs one worker until the window ends (and its last request, begun
/// inside the window, ends); returns its totals.
pub async fn worker(id: u32, cfg: Arc<TcpConfig>, mut rec: Recorder) -> Totals {
    let w = rec.window();
    let mut payloads = Payloads::new(u64::from(id), cfg.size);
    let mut tx = Vec::with_capacity(cfg.size);
    // One byte more than a message: see `exchange`.
    let mut rx = vec![0u8; cfg.size + 1];
    let mut schedule = cfg.rate.map(|rate| Schedule {
        start: w.start,
        id: f64::from(id),
        k: 0.0,
        connections: f64::from(cfg.connections),
        rate,
    });
    let mut stream: Option<TcpStream> = None;
    let mut backoff = Duration::from_millis(1);
    // One timer per worker, re-armed lazily: it is always set no later than
    // the current request's deadline (deadlines only move forward), and when
    // it fires early it is pushed to the current deadline. So a request
    // costs no timer registration, yet a stuck one still times out on time.
    let timer = tokio::time::sleep_until(Instant::now().into());
    tokio::pin!(timer);

    loop {
        // When this request should start.
        let slot = match schedule.as_mut() {
            Some(s) => {
                let slot = s.next();
                if slot >= w.end {
                    break;
                }
                sleep_precise(slot).await;
                Some(slot)
            }
            None => None,
        };
        // Clock reads are a visible share of the client's CPU: read it
        // once here and once when the echo is complete.
        let mut t0 = Instant::now();
        if t0 >= w.end {
            break;
        }

        let s = match stream.as_mut() {
            Some(s) => s,
            None => {
                if let Some(l) = &cfg.limiter {
                    if !l.wait(w.end).await {
                        break;
                    }
                    // Waiting for a connect slot is not the server's time.
                    t0 = Instant::now();
                }
                // Started inside the window: the connect gets its whole
                // timeout, even past the end.
                let until = Instant::now() + cfg.timeout;
                match connect(cfg.addr, cfg.timeout, until, cfg.churn).await {
                    Connect::Ok(s) => {
                        let now = Instant::now();
                        // A churn request's connect belongs to the request.
                        rec.connected(if cfg.churn { counted_at(&w, now) } else { now });
                        backoff = Duration::from_millis(1);
                        // In churn mode the connect is part of the request.
                        // Otherwise the request starts now, so not after
                        // the window.
                        if !cfg.churn {
                            if now >= w.end {
                                break;
                            }
                            t0 = now;
                        }
                        stream.insert(s)
                    }
                    Connect::Failed(_) => {
                        rec.error(counted_at(&w, Instant::now()), ErrorKind::Connect);
                        // Do not spin on a refusing target.
                        let wake = (Instant::now() + backoff).min(w.end);
                        sleep_until(wake.into()).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                    Connect::RunOver => break,
                }
            }
        };

        let start = slot.unwrap_or(t0);
        payloads.next_into(&mut tx);
        let deadline = t0 + cfg.timeout;
        let res = {
            let io = exchange(s, &tx, &mut rx);
            tokio::pin!(io);
            loop {
                tokio::select! {
                    biased;
                    r = &mut io => break Some(r),
                    _ = &mut timer => {
                        if Instant::now() >= deadline {
                            break None;
                        }
                        timer.as_mut().reset(deadline.into());
                    }
                }
            }
        };
        let now = Instant::now();
        let at = counted_at(&w, now);
        match res {
            Some(Ok(n)) if tcp_echoed(&tx, &rx, n) => {
                rec.ok(at, now.saturating_duration_since(start));
                if cfg.churn {
                    // SO_LINGER 0 was set at connect: this close resets.
                    stream = None;
                }
            }
            Some(Ok(_)) => {
                rec.error(at, ErrorKind::Mismatch);
                // The stream may be out of step with the server now.
                stream = None;
            }
            Some(Err(e)) => {
                rec.error(at, ErrorKind::of_io(&e));
                stream = None;
            }
            None => {
                rec.error(at, ErrorKind::Timeout);
                stream = None;
            }
        }
    }
    rec.finish()
}

/// Sends `tx` and reads until as many bytes came back; returns how many
/// bytes were read (more than sent means the server added bytes).
///
/// `rx` is one byte longer than `tx` on purpose. Besides catching a server
/// that sends extra bytes, a read that returns less than the buffer tells
/// tokio the socket is drained, so the next request's read waits for
/// readiness instead of first trying a `recv` that fails with EAGAIN —
/// `read_exact` into an exact-size buffer costs that extra system call on
/// almost every request.
async fn exchange(s: &mut TcpStream, tx: &[u8], rx: &mut [u8]) -> std::io::Result<usize> {
    s.write_all(tx).await?;
    let mut got = 0;
    while got < tx.len() {
        let n = s.read(&mut rx[got..]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        got += n;
    }
    Ok(got)
}
