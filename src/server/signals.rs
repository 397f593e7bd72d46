//! SIGINT/SIGTERM → graceful shutdown.
//!
//! Python turns Ctrl-C into `KeyboardInterrupt`, which unwinds out of
//! `serve_forever` wherever it happens to be. Here a signal only *requests*
//! a shutdown: a small thread (fed by `signal-hook`'s self-pipe, so no code
//! runs inside the signal handler) calls [`ShutdownHandle::shutdown`];
//! `serve_forever` returns, and `server_close` lets in-flight handlers
//! finish per `block_on_close`. A second signal while that is under way
//! exits at once with status 1, for handlers that never finish.

use std::fmt;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::{Handle, Signals};

use crate::error::Result;

use super::wakeup::ShutdownHandle;

/// Keeps the signal watcher alive; dropping it stops watching.
///
/// After it is dropped SIGINT/SIGTERM are no longer turned into shutdowns,
/// and (a `signal-hook` limitation) they do not return to their default
/// action either: they are ignored.
pub struct SignalGuard {
    handle: Handle,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for SignalGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignalGuard").finish_non_exhaustive()
    }
}

impl Drop for SignalGuard {
    fn drop(&mut self) {
        self.handle.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Makes SIGINT and SIGTERM shut `server` down gracefully: the first one
/// stops `serve_forever`; a second one exits the process with status 1.
///
/// ```no_run
/// use socketserver::server::{shutdown_on_signals, Server, ThreadingTcpServer};
/// # struct Echo;
/// # impl socketserver::RequestHandler for Echo {
/// #     fn handle(&mut self, _: &mut socketserver::Request) -> std::io::Result<()> { Ok(()) }
/// # }
/// let mut server = ThreadingTcpServer::bind("127.0.0.1:9000", || Echo)?;
/// let _signals = shutdown_on_signals(&server.shutdown_handle())?;
/// server.serve_forever()?; // returns after SIGINT/SIGTERM
/// server.server_close();   // waits for running handlers
/// # Ok::<(), socketserver::Error>(())
/// ```
///
/// # Errors
/// Installing the signal handlers or starting the watcher thread failed.
pub fn shutdown_on_signals(server: &ShutdownHandle) -> Result<SignalGuard> {
    let second = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 1, second.clone())?;
    }
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    let handle = signals.handle();
    let server = server.clone();
    let thread = std::thread::Builder::new()
        .name("socketserver-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                let name = if sig == SIGINT { "SIGINT" } else { "SIGTERM" };
                tracing::info!("received {name}; shutting down");
                second.store(true, std::sync::atomic::Ordering::SeqCst);
                server.shutdown();
            }
        })?;
    Ok(SignalGuard {
        handle,
        thread: Some(thread),
    })
}
