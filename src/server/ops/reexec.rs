//! Zero-downtime restart: SIGHUP → drain → re-exec with the listening
//! sockets.
//!
//! A restart that closes the listening socket refuses every connection
//! that arrives until the new process has bound again. Here the socket is
//! never closed: the server stops accepting and drains (new connections
//! wait in the kernel's backlog), then the process `exec`s its own binary
//! — the same pid, so a supervisor sees no exit — with the socket at
//! descriptor 3 and `LISTEN_FDS`/`LISTEN_PID` set. The new image picks it
//! up with [`activation::tcp_listeners`](crate::server::activation::tcp_listeners),
//! exactly as under systemd socket activation, and serves the backlog.
//! Loading a new binary this way is also how an upgrade is deployed.
//! The whole sequence is the example of [`HangupRestart`].

use std::ffi::{CString, OsString};
use std::fmt;
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use signal_hook::consts::SIGHUP;

use crate::process::inherited::{exec_with_listen_fds, spawn_with_listen_fds};
use crate::{Error, Result};

use crate::server::wakeup::ShutdownHandle;

/// Re-executes this program (same pid, same arguments) with `listeners`
/// passed as descriptors 3, 4, … through `LISTEN_FDS`/`LISTEN_PID`.
/// Returns only on failure.
///
/// The program is the binary at the path this process was started from,
/// so a binary replaced on disk since (an upgrade) is the one loaded.
///
/// # Errors
/// The executable path or arguments cannot be passed to `execve`, or
/// `dup2`/`execve` failed; descriptors from 3 up may then have been
/// replaced, so the caller should exit.
pub fn reexec(listeners: &[BorrowedFd<'_>]) -> Result<std::convert::Infallible> {
    let exe = std::env::current_exe()?;
    // /proc/self/exe says "<path> (deleted)" once the file was replaced:
    // load whatever is at the original path now.
    let mut path = exe.into_os_string().into_vec();
    if let Some(stripped) = path.strip_suffix(b" (deleted)") {
        path = stripped.to_vec();
    }
    let program = CString::new(path)
        .map_err(|_| Error::InvalidArgument("executable path contains NUL".into()))?;
    let args = std::env::args_os()
        .map(|a: OsString| CString::new(a.as_bytes()))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|_| Error::InvalidArgument("an argument contains NUL".into()))?;
    exec_with_listen_fds(&program, &args, listeners)
}

/// Starts a successor: this program again (the binary now at its path,
/// same arguments) as a **new process** with `listeners` at descriptors
/// 3, 4, … through `LISTEN_FDS`/`LISTEN_PID`. Returns its pid.
///
/// This is the restart that never stalls: the successor accepts on the
/// inherited sockets as soon as it is up, while this process stops
/// accepting, finishes its connections (bounded by the drain timeout)
/// and exits — nobody waits for the old process's clients. Compare
/// [`reexec`], which keeps the pid but serves nothing until the old image
/// has drained. Under systemd, send `MAINPID=<pid>` (with
/// `NotifyAccess=all`) so the unit follows the successor. A pid file
/// must be released before (the successor takes it again).
///
/// # Errors
/// The executable path cannot be found, or `dup`/spawning failed.
pub fn spawn_successor(listeners: &[BorrowedFd<'_>]) -> Result<u32> {
    let exe = std::env::current_exe()?;
    let mut path = exe.into_os_string().into_vec();
    if let Some(stripped) = path.strip_suffix(b" (deleted)") {
        path = stripped.to_vec();
    }
    let program = std::path::PathBuf::from(OsString::from_vec(path));
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let child = spawn_with_listen_fds(&program, &args, listeners)?;
    Ok(child.id())
}

/// Turns SIGHUP into "stop serving, then restart": it stops the server
/// like a shutdown and records that a restart was asked for, which the
/// caller checks with [`requested`](Self::requested) once the server has
/// drained. Dropping it removes the handler.
///
/// # Example
///
/// ```no_run
/// use std::os::fd::AsFd;
/// use socketserver::server::{activation, reexec, HangupRestart, PreforkTcpServer, Server};
/// # struct Echo;
/// # impl socketserver::RequestHandler for Echo {
/// #     fn handle(&mut self, _: &mut socketserver::Request) -> std::io::Result<()> { Ok(()) }
/// # }
/// let listener = match activation::tcp_listeners()?.pop() {
///     Some(l) => l,                                       // restarted
///     None => std::net::TcpListener::bind("127.0.0.1:9000")?, // first start
/// };
/// let keep = listener.try_clone()?; // outlives the server for the re-exec
/// let mut server = PreforkTcpServer::builder().from_socket(listener, || Echo)?;
/// let hup = HangupRestart::for_server(&server.shutdown_handle())?;
/// server.serve_forever()?;
/// server.server_close(); // drains the workers
/// if hup.requested() {
///     reexec(&[keep.as_fd()])?; // only returns on failure
/// }
/// # Ok::<(), socketserver::Error>(())
/// ```
pub struct HangupRestart {
    requested: Arc<AtomicBool>,
    ids: Vec<signal_hook::SigId>,
}

impl fmt::Debug for HangupRestart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HangupRestart")
            .field("requested", &self.requested())
            .finish()
    }
}

impl HangupRestart {
    /// For any server (every strategy shares one [`ShutdownHandle`]):
    /// SIGHUP sets the restart flag and the server's shutdown flag and
    /// wakes its loop — async-signal-safe, no thread, so the process stays
    /// single-threaded for forking.
    ///
    /// # Errors
    /// The signal handler could not be installed.
    pub fn for_server(handle: &ShutdownHandle) -> Result<Self> {
        let requested = Arc::new(AtomicBool::new(false));
        let ids = vec![
            signal_hook::flag::register(SIGHUP, requested.clone())?,
            signal_hook::flag::register(SIGHUP, handle.0.flag())?,
            signal_hook::low_level::pipe::register(SIGHUP, handle.0.sender()?)?,
        ];
        Ok(HangupRestart { requested, ids })
    }

    /// Whether SIGHUP arrived.
    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }
}

impl Drop for HangupRestart {
    fn drop(&mut self) {
        for id in self.ids.drain(..) {
            signal_hook::low_level::unregister(id);
        }
    }
}
