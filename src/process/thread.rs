//! A lean thread start for the threading strategy's handler threads:
//! `pthread_create` of a detached thread, without what
//! [`std::thread::Builder::spawn`] adds around it.
//!
//! Measured on a 2-core VM (a program starting 5,000 threads that wait on
//! one barrier; see `notes/18-threadscale.md`): std's spawn costs about
//! 45–50 µs per thread in the spawning loop against 30 µs here, and about
//! twice the CPU. std adds, per thread: the `Thread` and result-packet
//! allocations, and in the new thread a signal stack for its stack-overflow
//! message — `mmap` + `mprotect` + `sigaltstack` ×2 at start, and
//! `sigaltstack` and `munmap` at exit. The `munmap` (and glibc's `madvise` of the freed
//! stack) flushes the TLB of every CPU running the process (IPIs): with
//! thousands of handler threads that was a sixth of the server's CPU time
//! while 5,000 connections closed.
//!
//! What a thread started here does not have, against a std thread:
//! - no signal stack: a stack overflow in it kills the process with
//!   `SIGSEGV`, without std's "has overflowed its stack" message (a std
//!   thread's overflow aborts the process too, with that message);
//! - no `JoinHandle`: it is detached. Whoever needs to wait for it counts
//!   it (the threading strategy decrements a count as the thread's last
//!   step; what glibc does after that — thread-local destructors, freeing
//!   the stack — is not waited for);
//! - `std::thread::current().name()` is `None` (panic messages say
//!   `'<unnamed>'`); the kernel name (`/proc/PID/task/TID/comm`, `top -H`,
//!   `ps -L`) is set as before.
//!
//! Its stack size is std's: `RUST_MIN_STACK` if set, else 2 MiB.

use std::ffi::{c_void, CStr};
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;

/// std's default stack size for spawned threads.
const DEFAULT_STACK: usize = 2 * 1024 * 1024;

/// The stack size std would use: `RUST_MIN_STACK`, else 2 MiB (read once).
fn stack_size() -> usize {
    static SIZE: OnceLock<usize> = OnceLock::new();
    *SIZE.get_or_init(|| {
        let wanted = std::env::var("RUST_MIN_STACK")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .unwrap_or(DEFAULT_STACK);
        wanted.max(libc::PTHREAD_STACK_MIN)
    })
}

/// What the new thread receives: its name and body, in one allocation.
struct Start<F> {
    name: &'static CStr,
    body: F,
}

extern "C" fn thread_main<F: FnOnce() + Send + 'static>(arg: *mut c_void) -> *mut c_void {
    // SAFETY: `arg` is the `Box<Start<F>>` that `spawn_detached::<F>`
    // leaked with `Box::into_raw` and handed to `pthread_create`, which
    // succeeded; this thread is its only owner from here on.
    let start = unsafe { Box::from_raw(arg.cast::<Start<F>>()) };
    let Start { name, body } = *start;
    // SAFETY: PR_SET_NAME reads a NUL-terminated string (the kernel copies
    // at most 16 bytes); `name` is a `'static` C string. A failure only
    // leaves the inherited name.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, name.as_ptr());
    }
    // A panic must not unwind out of an `extern "C"` function (that
    // aborts the process): the panic hook has already reported it, and
    // the body's own guards ran while it unwound. Dropping the payload
    // could panic again, so that is caught too.
    if let Err(payload) = catch_unwind(AssertUnwindSafe(body)) {
        let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
    }
    std::ptr::null_mut()
}

/// Starts `body` on a new detached thread named `name` (the kernel keeps
/// its first 15 bytes). On failure (`EAGAIN`: thread or memory limit) the
/// body is handed back, not run, so the caller can clean up what it owns.
pub(crate) fn spawn_detached<F>(name: &'static CStr, body: F) -> Result<(), (io::Error, F)>
where
    F: FnOnce() + Send + 'static,
{
    let arg = Box::into_raw(Box::new(Start { name, body }));
    // SAFETY: `attr` is initialised by `pthread_attr_init` before any other
    // use and destroyed once, after `pthread_create` copied it. `arg` stays
    // valid until the new thread takes it, or is taken back below when no
    // thread was created (`pthread_create` failed: nothing else saw it).
    unsafe {
        let mut attr = std::mem::MaybeUninit::<libc::pthread_attr_t>::uninit();
        let rc = libc::pthread_attr_init(attr.as_mut_ptr());
        if rc != 0 {
            let start = Box::from_raw(arg);
            return Err((io::Error::from_raw_os_error(rc), start.body));
        }
        let mut attr = attr.assume_init();
        let mut rc = libc::pthread_attr_setdetachstate(&mut attr, libc::PTHREAD_CREATE_DETACHED);
        if rc == 0 {
            rc = libc::pthread_attr_setstacksize(&mut attr, stack_size());
        }
        if rc == 0 {
            let mut tid = std::mem::MaybeUninit::<libc::pthread_t>::uninit();
            rc = libc::pthread_create(tid.as_mut_ptr(), &attr, thread_main::<F>, arg.cast());
        }
        libc::pthread_attr_destroy(&mut attr);
        if rc != 0 {
            let start = Box::from_raw(arg);
            return Err((io::Error::from_raw_os_error(rc), start.body));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn runs_the_body_on_another_named_thread() {
        let (tx, rx) = mpsc::channel();
        let here = std::thread::current().id();
        spawn_detached(c"ss-test-thread", move || {
            let comm = std::fs::read_to_string("/proc/thread-self/comm").unwrap_or_default();
            tx.send((std::thread::current().id(), comm)).unwrap();
        })
        .map_err(|(e, _)| e)
        .unwrap();
        let (id, comm) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_ne!(id, here);
        assert_eq!(comm.trim_end(), "ss-test-thread");
    }

    #[test]
    fn a_panicking_body_ends_only_its_thread() {
        let (tx, rx) = mpsc::channel::<()>();
        spawn_detached(c"ss-test-panic", move || {
            let _tx = tx; // dropped while unwinding: the channel closes
            panic!("a handler bug");
        })
        .map_err(|(e, _)| e)
        .unwrap();
        // The sender was dropped by the unwinding, and this process lives on.
        assert!(rx.recv_timeout(Duration::from_secs(10)).is_err());
        let (tx, rx) = mpsc::channel();
        spawn_detached(c"ss-test-after", move || tx.send(7).unwrap())
            .map_err(|(e, _)| e)
            .unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), 7);
    }

    #[test]
    fn the_stack_is_std_sized() {
        assert!(stack_size() >= libc::PTHREAD_STACK_MIN);
        let (tx, rx) = mpsc::channel();
        spawn_detached(c"ss-test-stack", move || {
            // 1 MiB on the stack: fine in a 2 MiB stack (std's default),
            // fatal in a small one.
            let big = [7u8; 1 << 20];
            tx.send(
                std::hint::black_box(&big)
                    .iter()
                    .map(|&b| b as usize)
                    .sum::<usize>(),
            )
            .unwrap();
        })
        .map_err(|(e, _)| e)
        .unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), 7 << 20);
    }
}
