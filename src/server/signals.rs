//! SIGINT/SIGTERM → graceful shutdown.
//!
//! Python turns Ctrl-C into `KeyboardInterrupt`, which unwinds out of
//! `serve_forever` wherever it happens to be. Here a signal only *requests*
//! a shutdown. No thread is started and no code of ours runs inside the
//! signal handler: `signal-hook` sets the server's shutdown flag and writes
//! one byte to its wake-up socket, both async-signal-safe. `serve_forever`
//! returns at once, and `server_close` lets in-flight handlers finish per
//! `block_on_close`. Staying single-threaded matters for the forking
//! server, which forks from the serving thread.
//!
//! A second signal exits the process at once with status 1, for handlers
//! that never finish. Forked children inherit the handlers, so a Ctrl-C
//! (which reaches the whole process group) lets each child finish its
//! connection; a second Ctrl-C ends them too.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::SigId;

use crate::error::Result;

use super::wakeup::ShutdownHandle;

/// Keeps the signal handlers installed; dropping it removes them.
///
/// After the last guard is dropped SIGINT and SIGTERM no longer shut the
/// server down: they end the process, as they did before (their default
/// action). A program that handles them itself through `signal-hook` or
/// `tokio::signal` should do so while a guard is alive, or not drop it:
/// once none is, the process ends on them after those handlers ran.
#[must_use = "dropping the guard at once removes the handlers: keep it alive while serving"]
pub struct SignalGuard {
    ids: Vec<SigId>,
}

/// Guards alive in this process.
static GUARDS: Mutex<usize> = Mutex::new(0);

/// Read by an action registered first, once per process, for each signal:
/// while no guard is alive it performs the signal's default action.
/// (`signal-hook` cannot uninstall its handler: without this, removing
/// the last action would leave SIGINT and SIGTERM ignored.)
fn default_when_unguarded() -> Result<&'static Arc<AtomicBool>> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    if let Some(flag) = FLAG.get() {
        return Ok(flag);
    }
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        signal_hook::flag::register_conditional_default(sig, flag.clone())?;
    }
    Ok(FLAG.get_or_init(|| flag))
}

impl fmt::Debug for SignalGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignalGuard")
            .field("handlers", &self.ids.len())
            .finish()
    }
}

impl Drop for SignalGuard {
    fn drop(&mut self) {
        for id in self.ids.drain(..) {
            signal_hook::low_level::unregister(id);
        }
        let mut guards = GUARDS.lock().unwrap_or_else(|p| p.into_inner());
        *guards -= 1;
        if *guards == 0 {
            if let Ok(flag) = default_when_unguarded() {
                flag.store(true, Ordering::SeqCst);
            }
        }
    }
}

/// Makes SIGINT and SIGTERM shut the server behind `server` down
/// gracefully: the first one stops `serve_forever`; a second one exits the
/// process with status 1.
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
/// Installing a signal handler failed (for example `SIGKILL`-like
/// forbidden signals, which these are not) or the wake-up socket could not
/// be duplicated.
pub fn shutdown_on_signals(server: &ShutdownHandle) -> Result<SignalGuard> {
    let mut guards = GUARDS.lock().unwrap_or_else(|p| p.into_inner());
    default_when_unguarded()?.store(false, Ordering::SeqCst);
    *guards += 1;
    drop(guards);
    // From here on a failure drops the guard, which counts it out again.
    let mut guard = SignalGuard { ids: Vec::new() };
    // Never reset, unlike the server's flag, so a second signal during
    // `server_close` still forces the exit.
    let signalled = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        // Actions run in registration order: the exit check must see the
        // flag before this signal sets it.
        guard
            .ids
            .push(signal_hook::flag::register_conditional_shutdown(
                sig,
                1,
                signalled.clone(),
            )?);
        guard
            .ids
            .push(signal_hook::flag::register(sig, signalled.clone())?);
        guard
            .ids
            .push(signal_hook::flag::register(sig, server.0.flag())?);
        guard.ids.push(signal_hook::low_level::pipe::register(
            sig,
            server.0.sender()?,
        )?);
    }
    Ok(guard)
}
