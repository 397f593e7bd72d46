//! The wake-up descriptor and the [`ShutdownHandle`].
//!
//! Python's `serve_forever` wakes every `poll_interval` (0.5 s) to see
//! whether `shutdown()` was called. Here the loop sleeps in `poll(2)` on the
//! listening socket *and* the read end of a non-blocking socket pair; a
//! shutdown (or a worker that frees a slot, or `SIGCHLD` for the forking
//! server) writes one byte to the other end, so the loop wakes at once and
//! costs nothing while idle.

use std::fmt;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::ops::health::{Health, HealthState};
use super::ops::notify::notify_logged;

/// What a server does between "shutdown requested" and "stop accepting":
/// report `drain` (agent check, systemd) and keep accepting for `notice`.
#[derive(Debug)]
pub(crate) struct Departure {
    pub(crate) notice: Duration,
    pub(crate) health: Option<Health>,
    pub(crate) systemd: bool,
}

/// The shared state behind a [`ShutdownHandle`].
pub(crate) struct Wakeup {
    rx: UnixStream,
    tx: UnixStream,
    shutdown: Arc<AtomicBool>,
    departure: OnceLock<Departure>,
    /// When the shutdown request was first seen (the drain notice runs
    /// from here).
    noticed: Mutex<Option<Instant>>,
}

impl Wakeup {
    /// A new, non-blocking, close-on-exec socket pair.
    pub(crate) fn new() -> io::Result<Arc<Self>> {
        let (rx, tx) = UnixStream::pair()?;
        rx.set_nonblocking(true)?;
        tx.set_nonblocking(true)?;
        Ok(Arc::new(Wakeup {
            rx,
            tx,
            shutdown: Arc::new(AtomicBool::new(false)),
            departure: OnceLock::new(),
            noticed: Mutex::new(None),
        }))
    }

    /// Wakes the loop. Never blocks: when the pair's buffer is already full
    /// the loop has a wake-up pending anyway.
    pub(crate) fn wake(&self) {
        let _ = (&self.tx).write(&[1]);
    }

    /// Reads every pending wake-up byte.
    pub(crate) fn drain(&self) {
        let mut buf = [0u8; 64];
        loop {
            match (&self.rx).read(&mut buf) {
                Ok(0) => return,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            }
        }
    }

    /// A duplicate of the write end, for `signal-hook`'s pipe registration.
    pub(crate) fn sender(&self) -> io::Result<UnixStream> {
        self.tx.try_clone()
    }

    /// A duplicate of the read end, for the async strategy's reactor.
    #[cfg(feature = "async")]
    pub(crate) fn receiver(&self) -> io::Result<UnixStream> {
        self.rx.try_clone()
    }

    /// The shutdown flag, for `signal-hook`'s flag registration.
    pub(crate) fn flag(&self) -> Arc<AtomicBool> {
        self.shutdown.clone()
    }

    /// The descriptor the loop polls.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.rx.as_fd()
    }

    pub(crate) fn request_shutdown(&self) {
        self.shutdown.store(true, Ordering::SeqCst);
        self.wake();
    }

    /// Sets the drain notice, the health port and systemd notification
    /// (once, when the server is assembled).
    pub(crate) fn set_departure(&self, departure: Departure) {
        let _ = self.departure.set(departure);
    }

    /// The agent-check port, if the server has one.
    pub(crate) fn health(&self) -> Option<&Health> {
        self.departure.get().and_then(|d| d.health.as_ref())
    }

    /// Answers waiting agent checks (non-blocking; nothing without a
    /// health port).
    pub(crate) fn answer_health(&self) {
        if let Some(h) = self.health() {
            h.answer_pending();
        }
    }

    /// Whether the loop should stop accepting now: a shutdown was
    /// requested and the drain notice (if any) has run out. The first
    /// call that sees the request starts the notice: the agent check turns
    /// to `drain` and systemd is told `STOPPING=1`.
    pub(crate) fn shutdown_requested(&self) -> bool {
        if !self.shutdown.load(Ordering::SeqCst) {
            return false;
        }
        let Some(d) = self.departure.get() else {
            return true;
        };
        let mut noticed = self.noticed.lock().unwrap_or_else(|p| p.into_inner());
        let since = *noticed.get_or_insert_with(|| {
            if let Some(h) = &d.health {
                h.handle().set(HealthState::Drain);
            }
            if d.systemd {
                notify_logged("STOPPING=1");
            }
            if d.health.is_some() {
                tracing::info!(notice = ?d.notice, "stopping: health reports drain");
            } else if !d.notice.is_zero() {
                tracing::info!(notice = ?d.notice, "stopping");
            } else {
                tracing::info!("stopping");
            }
            Instant::now()
        });
        since.elapsed() >= d.notice
    }

    /// How long until the drain notice runs out (`None`: no notice is
    /// running, wait as long as you like). The loops cap their `poll`
    /// timeout with it.
    pub(crate) fn notice_left(&self) -> Option<Duration> {
        // A notice runs only after a shutdown request: until then no lock
        // is taken (each turn of a forking server's loop would write the
        // lock's heap page, a copy-on-write fault after every fork).
        if !self.shutdown.load(Ordering::SeqCst) {
            return None;
        }
        let since = (*self.noticed.lock().unwrap_or_else(|p| p.into_inner()))?;
        let notice = self.departure.get()?.notice;
        Some(notice.saturating_sub(since.elapsed()))
    }

    /// The serving loop started: tell systemd `READY=1`.
    pub(crate) fn serving_started(&self) {
        if self.departure.get().is_some_and(|d| d.systemd) {
            notify_logged("READY=1");
        }
    }

    /// Clears the request once `serve_forever` has returned, as Python
    /// resets `__shutdown_request`, so the server can be served again.
    pub(crate) fn reset(&self) {
        self.shutdown.store(false, Ordering::SeqCst);
        let was = self
            .noticed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let (Some(_), Some(h)) = (was, self.health()) {
            if h.handle().state() == HealthState::Drain {
                h.handle().set(HealthState::Up);
            }
        }
        self.drain();
    }
}

/// Stops a running (or not yet running) `serve_forever` from anywhere.
///
/// Cheap to clone, `Send + Sync`. Python's `server.shutdown()` blocks until
/// the loop has exited and deadlocks when called from the serving thread;
/// [`shutdown`](Self::shutdown) only *requests* the stop and returns, so it
/// is safe from a handler, another thread, or a signal-handling thread.
/// `serve_forever` returns as soon as it sees the request — immediately,
/// because the request also writes to the loop's wake-up descriptor.
///
/// ```
/// use std::io;
/// use std::time::{Duration, Instant};
/// use socketserver::server::{Server, ThreadingTcpServer};
/// use socketserver::{Request, RequestHandler};
///
/// struct Idle;
/// impl RequestHandler for Idle {
///     fn handle(&mut self, _req: &mut Request) -> io::Result<()> {
///         Ok(())
///     }
/// }
///
/// let mut server = ThreadingTcpServer::bind("127.0.0.1:0", || Idle)?;
/// let handle = server.shutdown_handle();
/// let stopper = std::thread::spawn(move || {
///     std::thread::sleep(Duration::from_millis(50));
///     handle.shutdown(); // returns at once; the loop sees it at once
/// });
/// let started = Instant::now();
/// server.serve_forever()?;
/// assert!(started.elapsed() < Duration::from_secs(5));
/// stopper.join().unwrap();
/// server.server_close();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct ShutdownHandle(pub(crate) Arc<Wakeup>);

impl ShutdownHandle {
    /// Asks `serve_forever` to return. If the loop has not started yet, it
    /// returns right after it starts. Never blocks.
    pub fn shutdown(&self) {
        self.0.request_shutdown();
    }

    /// `true` once [`shutdown`](Self::shutdown) was called and the loop has
    /// not yet consumed the request.
    pub fn is_shutdown_requested(&self) -> bool {
        self.0.shutdown.load(Ordering::SeqCst)
    }
}

impl fmt::Debug for ShutdownHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShutdownHandle")
            .field("requested", &self.is_shutdown_requested())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

    #[test]
    fn wake_makes_fd_readable_and_drain_clears_it() {
        let w = Wakeup::new().unwrap();
        let ready = |w: &Wakeup| {
            let mut fds = [PollFd::new(w.fd(), PollFlags::POLLIN)];
            poll(&mut fds, PollTimeout::ZERO).unwrap()
        };
        assert_eq!(ready(&w), 0);
        let h = ShutdownHandle(w.clone());
        h.shutdown();
        assert!(h.is_shutdown_requested());
        assert_eq!(ready(&w), 1);
        w.reset();
        assert_eq!(ready(&w), 0);
        assert!(!h.is_shutdown_requested());
    }
}
