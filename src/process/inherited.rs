//! Adopting descriptors inherited across `exec` (systemd socket activation,
//! re-exec on SIGHUP).
//!
//! A process started by systemd (or re-executed by itself) finds listening
//! sockets already open at descriptors 3, 4, …. Nothing in the process owns
//! them yet; this is the one place that turns those raw numbers into
//! `OwnedFd`s, which needs `unsafe` and a guarantee that no two owners are
//! made for one descriptor. That guarantee is a process-wide flag: the
//! descriptors can be adopted once.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::{Error, Result};

static ADOPTED: AtomicBool = AtomicBool::new(false);

/// Takes ownership of `count` inherited descriptors starting at `first`
/// and marks each close-on-exec, so they do not leak into programs this
/// process later runs.
///
/// # Errors
/// [`Error::InvalidArgument`] when descriptors were already adopted in
/// this process, or when one of them is not open.
pub(crate) fn adopt_inherited_fds(first: RawFd, count: usize) -> Result<Vec<OwnedFd>> {
    if first < 0 || count > 4096 {
        return Err(Error::InvalidArgument(format!(
            "implausible inherited descriptors: {count} from {first}"
        )));
    }
    if ADOPTED.swap(true, Ordering::SeqCst) {
        return Err(Error::InvalidArgument(
            "inherited descriptors were already adopted by this process".into(),
        ));
    }
    // Check every descriptor before owning any, so an error leaves nothing
    // half-adopted (and nothing closed that we did not own).
    let last = first + count as RawFd;
    for fd in first..last {
        // SAFETY: F_GETFD only reads the descriptor flags of `fd`; it is
        // valid for any integer and has no effect on the descriptor.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if flags < 0 {
            ADOPTED.store(false, Ordering::SeqCst);
            return Err(Error::InvalidArgument(format!(
                "inherited descriptor {fd} is not open"
            )));
        }
    }
    let mut out = Vec::with_capacity(count);
    for fd in first..last {
        // SAFETY: as above; setting FD_CLOEXEC changes only this flag.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
        }
        // SAFETY: `fd` is open (checked above) and nothing in this process
        // owns it: it was handed to us across exec, and the ADOPTED flag
        // ensures this conversion happens at most once per process.
        out.push(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    Ok(out)
}
