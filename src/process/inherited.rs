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

/// Replaces the process image with `program` (keeping the pid), with
/// `fds` open at descriptors 3, 4, … and `LISTEN_FDS`/`LISTEN_PID` set in
/// the environment: the socket-activation protocol, spoken to ourselves.
/// Returns only on failure.
///
/// The descriptors are first duplicated above the target range (so a
/// listener already sitting at 3 or 4 is not clobbered before it is
/// copied), then `dup2`'d into place, which also clears close-on-exec on
/// the copies; every other descriptor this crate opened is close-on-exec
/// and disappears with the old image.
///
/// # Errors
/// `dup` or `execve` failed. Descriptors 3.. of this process may then
/// have been replaced: the caller should exit rather than keep serving.
pub(crate) fn exec_with_listen_fds(
    program: &std::ffi::CStr,
    args: &[std::ffi::CString],
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> Result<std::convert::Infallible> {
    use std::ffi::CString;
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;

    let n = fds.len() as RawFd;
    let mut temps = Vec::with_capacity(fds.len());
    for fd in fds {
        let raw = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3 + n))?;
        // SAFETY: F_DUPFD_CLOEXEC just returned this new descriptor; we are
        // its only owner.
        temps.push(unsafe { OwnedFd::from_raw_fd(raw) });
    }
    for (i, t) in temps.iter().enumerate() {
        let target = 3 + i as RawFd;
        // SAFETY: dup2 onto 3+i silently closes whatever this process had
        // there. We are about to exec, and no Rust code touches those
        // descriptors again unless exec fails, in which case the caller is
        // told to exit (documented above). dup2 clears FD_CLOEXEC on the
        // new descriptor, which is what lets it survive the exec.
        if unsafe { libc::dup2(t.as_raw_fd(), target) } < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
    }
    let mut env: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| {
            let k = k.as_bytes();
            k != b"LISTEN_FDS" && k != b"LISTEN_PID" && k != b"LISTEN_FDNAMES"
        })
        .filter_map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            CString::new(kv).ok()
        })
        .collect();
    env.push(
        CString::new(format!("LISTEN_FDS={n}"))
            .map_err(|e| Error::InvalidArgument(e.to_string()))?,
    );
    env.push(
        CString::new(format!("LISTEN_PID={}", std::process::id()))
            .map_err(|e| Error::InvalidArgument(e.to_string()))?,
    );
    let err = nix::unistd::execve(program, args, &env);
    drop(temps);
    Ok(err?)
}

/// Starts `program` with `args` as a **new** process (not replacing this
/// one), with `fds` open at descriptors 3, 4, … and
/// `LISTEN_FDS`/`LISTEN_PID` naming the new process: socket activation
/// spoken to a successor, which serves the same sockets while this
/// process drains. `LISTEN_PID` is set by `/bin/sh`, which `exec`s the
/// program with its own pid (`$$`), so no allocation happens between
/// `fork` and `exec`.
///
/// # Errors
/// `dup` or spawning failed.
pub(crate) fn spawn_with_listen_fds(
    program: &std::path::Path,
    args: &[std::ffi::OsString],
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> Result<std::process::Child> {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;

    let n = fds.len() as RawFd;
    let mut temps = Vec::with_capacity(fds.len());
    for fd in fds {
        let raw = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3 + n))?;
        // SAFETY: F_DUPFD_CLOEXEC just returned this new descriptor; we are
        // its only owner.
        temps.push(unsafe { OwnedFd::from_raw_fd(raw) });
    }
    let raws: Vec<RawFd> = temps.iter().map(AsRawFd::as_raw_fd).collect();
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("LISTEN_PID=$$ exec \"$0\" \"$@\"")
        .arg(program)
        .args(args)
        .env("LISTEN_FDS", n.to_string())
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES");
    // SAFETY: the closure runs in the forked child before exec and only
    // calls dup2, which is async-signal-safe; it allocates nothing and
    // touches no lock. The temporaries are above the target range (so no
    // source is overwritten before it is copied) and close-on-exec; dup2
    // clears close-on-exec on the copies at 3.., which is what lets them
    // survive the exec of /bin/sh and of the program.
    unsafe {
        cmd.pre_exec(move || {
            for (i, &raw) in raws.iter().enumerate() {
                if libc::dup2(raw, 3 + i as RawFd) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    drop(temps);
    Ok(child)
}
