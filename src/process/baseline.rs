//! Raw system-call baselines for the benchmarks. Not part of the API.
//!
//! A benchmark compares our types with the bare system calls they wrap.
//! The bare versions need `unsafe`, which this crate keeps under
//! `src/process/`, so they live here rather than in `benches/`.

use crate::error::Result;

/// One bare `fork` + `_exit(0)` in the child + `waitpid` in the parent:
/// the floor that `Process::start` + `join` is measured against.
///
/// # Errors
/// `fork` or `waitpid` failed.
#[doc(hidden)]
pub fn bare_fork_exit_waitpid() -> Result<()> {
    // SAFETY: the child calls only the async-signal-safe `_exit`, so it
    // touches no lock or allocator state another thread may have held.
    match unsafe { nix::unistd::fork() }? {
        // SAFETY: `_exit` ends the child at once without running the
        // parent's destructors or atexit handlers.
        nix::unistd::ForkResult::Child => unsafe { libc::_exit(0) },
        nix::unistd::ForkResult::Parent { child } => {
            nix::sys::wait::waitpid(child, None)?;
            Ok(())
        }
    }
}
