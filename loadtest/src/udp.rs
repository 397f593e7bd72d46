//! UDP workers: each socket sends datagrams carrying a sequence number, the
//! (intended) send time and the socket id, then matches echoes to what was
//! sent. Echoes that never come within `--timeout` are lost; echoes that
//! arrive after a later one are reordered.
//!
//! Closed loop keeps one datagram in flight per socket; open loop (`--rate`)
//! sends on a fixed schedule whatever comes back, and measures latency from
//! the scheduled time.

use std::collections::{HashSet, VecDeque};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::time::sleep_until;

use crate::pacer::sleep_precise;
use crate::payload::Payloads;
use crate::reply::{classify_udp, datagram, UdpReply, UDP_HEADER};
use crate::stats::{ErrorKind, Recorder, Totals, Window};

/// What every UDP worker of a run shares.
#[derive(Debug)]
pub struct UdpConfig {
    /// The target.
    pub addr: SocketAddr,
    /// Datagram size (at least [`UDP_HEADER`]).
    pub size: usize,
    /// Number of sockets.
    pub connections: u32,
    /// Total datagrams per second (open loop), or `None` (closed loop).
    pub rate: Option<f64>,
    /// How long to wait for an echo before counting the datagram lost.
    pub timeout: Duration,
}

/// Remember at most this many lost sequence numbers per socket, to tell
/// late echoes from duplicates.
const MAX_LOST_REMEMBERED: usize = 100_000;

/// A socket bound to the wildcard address of the target's family,
/// connected to the target (so only its echoes are received).
pub async fn socket(addr: SocketAddr) -> io::Result<UdpSocket> {
    let local: IpAddr = match addr {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let sock = UdpSocket::bind(SocketAddr::new(local, 0)).await?;
    sock.connect(addr).await?;
    Ok(sock)
}

/// A datagram in flight.
#[derive(Debug, Clone, Copy)]
struct Pending {
    /// When it was (supposed to be) sent.
    sent: Instant,
}

/// Runs one socket until the window ends and its last datagram is
/// answered or timed out; returns its totals.
pub async fn worker(id: u32, cfg: Arc<UdpConfig>, mut rec: Recorder) -> Totals {
    let w = rec.window();
    let sock = match socket(cfg.addr).await {
        Ok(s) => s,
        Err(_) => {
            rec.error(w.measure, ErrorKind::Other);
            return rec.finish();
        }
    };
    let payloads = Payloads::new(u64::from(id) | 1 << 40, cfg.size);
    let mut tx = Vec::with_capacity(cfg.size);
    let mut expect = Vec::with_capacity(cfg.size);
    let mut rx = vec![0u8; cfg.size.max(UDP_HEADER) + 1];

    // pending[i] is datagram base + i; None once answered.
    let mut pending: VecDeque<Option<Pending>> = VecDeque::new();
    let mut base: u64 = 0;
    let mut in_flight = 0usize;
    let mut lost_seqs: HashSet<u64> = HashSet::new();
    let mut highest: Option<u64> = None;
    let mut next_seq: u64 = 0;
    let mut slot_k: f64 = 0.0;
    let interval = cfg.rate.map(|r| f64::from(cfg.connections) / r);
    let slot_of = |k: f64| -> Instant {
        let i = interval.unwrap_or(0.0);
        w.start + Duration::from_secs_f64((f64::from(id) / f64::from(cfg.connections) + k) * i)
    };
    let mut backoff_until = w.start;

    loop {
        let now = Instant::now();
        let sending = now < w.end;

        // Expire datagrams whose echo is overdue.
        while let Some(front) = pending.front() {
            match front {
                None => {}
                Some(p) if p.sent + cfg.timeout <= now => {
                    rec_lost(&mut rec, &w, p.sent);
                    in_flight -= 1;
                    if lost_seqs.len() < MAX_LOST_REMEMBERED {
                        lost_seqs.insert(base);
                    }
                }
                Some(_) => break,
            }
            pending.pop_front();
            base += 1;
        }
        if !sending && in_flight == 0 {
            break;
        }

        // Send if it is time to.
        let due = match interval {
            None => sending && in_flight == 0 && now >= backoff_until,
            Some(_) => sending && slot_of(slot_k) <= now,
        };
        if due {
            let intended = if interval.is_some() {
                let t = slot_of(slot_k);
                slot_k += 1.0;
                t
            } else {
                now
            };
            let seq = next_seq;
            next_seq += 1;
            let stamp = intended.duration_since(w.start).as_nanos() as u64;
            datagram(&payloads, id, seq, stamp, &mut tx);
            match sock.send(&tx).await {
                Ok(_) => {
                    pending.push_back(Some(Pending { sent: intended }));
                    in_flight += 1;
                    if w.measured(intended) {
                        rec.totals.sent += 1;
                    }
                }
                Err(e) => {
                    rec.error(intended, ErrorKind::of_io(&e));
                    // Keep the numbering dense: this seq is not in flight.
                    pending.push_back(None);
                    backoff_until = Instant::now() + Duration::from_millis(1);
                }
            }
            continue;
        }

        // Wait for an echo, the next expiry or the next send.
        let mut wake = pending
            .iter()
            .flatten()
            .next()
            .map(|p| p.sent + cfg.timeout)
            .unwrap_or(now + cfg.timeout);
        let mut precise = false;
        if sending {
            wake = wake.min(w.end);
            match interval {
                Some(_) => {
                    let slot = slot_of(slot_k);
                    if slot < wake {
                        // The next send: latency is measured from it.
                        wake = slot;
                        precise = true;
                    }
                }
                None if in_flight == 0 => wake = wake.min(backoff_until),
                None => {}
            }
        }
        let got = tokio::select! {
            r = sock.recv(&mut rx) => Some(r),
            _ = sleep_precise(wake), if precise => None,
            _ = sleep_until(wake.into()), if !precise => None,
        };
        let Some(r) = got else { continue };
        let now = Instant::now();
        let n = match r {
            Ok(n) => n,
            Err(e) => {
                // E.g. ECONNREFUSED: the port went away (ICMP unreachable).
                rec.error(now, ErrorKind::of_io(&e));
                continue;
            }
        };
        let data = &rx[..n];
        let waiting = |i: usize| matches!(pending.get(i), Some(Some(_)));
        let (seq, entry) = match classify_udp(data, id, base, waiting, &mut lost_seqs, next_seq) {
            UdpReply::Waiting { seq, index } => match pending[index].take() {
                Some(p) => (seq, p),
                None => continue,
            },
            UdpReply::Late => {
                rec.totals.late += 1;
                continue;
            }
            UdpReply::Duplicate => {
                rec.totals.duplicates += 1;
                continue;
            }
            UdpReply::Mismatch => {
                // Too short, not something this socket sent, or garbled.
                rec.error(now, ErrorKind::Mismatch);
                continue;
            }
        };
        in_flight -= 1;
        let stamp = entry.sent.duration_since(w.start).as_nanos() as u64;
        datagram(&payloads, id, seq, stamp, &mut expect);
        if data != expect.as_slice() {
            rec.error(entry.sent, ErrorKind::Mismatch);
            continue;
        }
        match highest {
            Some(h) if seq < h => {
                if w.measured(entry.sent) {
                    rec.totals.reordered += 1;
                }
            }
            _ => highest = Some(seq),
        }
        // Attributed to the send time: an echo that arrives during the
        // drain still belongs to the measured window.
        rec.ok(entry.sent, now.saturating_duration_since(entry.sent));
    }
    rec.finish()
}

fn rec_lost(rec: &mut Recorder, w: &Window, sent: Instant) {
    if w.measured(sent) {
        rec.totals.lost += 1;
    }
}

/// Checks that the target is not refusing datagrams: up to three probes,
/// each waiting up to `timeout` (at most 1 s) for an echo.
///
/// # Errors
/// The last error when every probe was refused (ICMP port unreachable),
/// or the socket could not be set up.
pub async fn preflight(addr: SocketAddr, size: usize, timeout: Duration) -> io::Result<bool> {
    let sock = socket(addr).await?;
    let timeout = timeout.min(Duration::from_secs(1));
    let probe = vec![0xA5u8; size];
    let mut buf = vec![0u8; size + 1];
    let mut refused = None;
    for _ in 0..3 {
        if let Err(e) = sock.send(&probe).await {
            refused = Some(e);
            continue;
        }
        match tokio::time::timeout(timeout, sock.recv(&mut buf)).await {
            Ok(Ok(_)) => return Ok(true),
            Ok(Err(e)) => refused = Some(e),
            Err(_) => refused = None,
        }
    }
    match refused {
        Some(e) => Err(e),
        None => Ok(false),
    }
}
