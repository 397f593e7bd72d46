//! systemd readiness notifications (`sd_notify(3)`), for `Type=notify`
//! units.
//!
//! systemd passes the path of a Unix datagram socket in `$NOTIFY_SOCKET`
//! (a file path, or `@name` for the abstract namespace); the service sends
//! `READY=1` once it serves and `STOPPING=1` when it begins to stop. With
//! [`ServerBuilder::systemd_notify`](crate::server::ServerBuilder::systemd_notify)
//! the server sends both itself: `READY=1` when `serve_forever` starts,
//! `STOPPING=1` when a shutdown or restart begins (with the drain notice).
//! Without `$NOTIFY_SOCKET` nothing is sent.
//!
//! ```
//! // Not under systemd: nothing to notify.
//! std::env::remove_var("NOTIFY_SOCKET");
//! assert!(!socketserver::server::notify::notify("READY=1").unwrap());
//! ```

use std::os::unix::net::{SocketAddr, UnixDatagram};

use crate::{Error, Result};

/// Sends `state` (`READY=1`, `STOPPING=1`, `STATUS=…`, `MAINPID=…`, one
/// assignment per line) to `$NOTIFY_SOCKET`. `Ok(false)` when the variable
/// is not set.
///
/// # Errors
/// The variable is malformed, or sending failed.
pub fn notify(state: &str) -> Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let path = path.to_string_lossy().into_owned();
    let addr = if let Some(name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        SocketAddr::from_abstract_name(name.as_bytes())?
    } else if path.starts_with('/') {
        SocketAddr::from_pathname(&path)?
    } else {
        return Err(Error::InvalidArgument(format!(
            "NOTIFY_SOCKET is neither a path nor @abstract: {path:?}"
        )));
    };
    let sock = UnixDatagram::unbound()?;
    sock.send_to_addr(state.as_bytes(), &addr)?;
    Ok(true)
}

/// [`notify`], with a failure logged instead of returned (a server keeps
/// serving when systemd cannot be told).
pub(crate) fn notify_logged(state: &str) {
    if let Err(e) = notify(state) {
        tracing::warn!(error = %e, state, "cannot notify systemd");
    }
}
