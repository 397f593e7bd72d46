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
use std::sync::Arc;

/// The shared state behind a [`ShutdownHandle`].
pub(crate) struct Wakeup {
    rx: UnixStream,
    tx: UnixStream,
    shutdown: Arc<AtomicBool>,
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

    pub(crate) fn shutdown_requested(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst)
    }

    /// Clears the request once `serve_forever` has returned, as Python
    /// resets `__shutdown_request`, so the server can be served again.
    pub(crate) fn reset(&self) {
        self.shutdown.store(false, Ordering::SeqCst);
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
        self.0.shutdown_requested()
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
