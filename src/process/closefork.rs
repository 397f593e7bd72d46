//! "Close this descriptor in children": the `O_CLOFORK` Linux lacks.
//!
//! After `fork()` a child holds a copy of every descriptor of its parent,
//! including the parent's end of a `Pipe`. A child waiting for end-of-file
//! on its own end then waits forever, because it holds the other end open
//! itself. [`Connection::close_on_fork`](super::Connection::close_on_fork)
//! registers a descriptor here, and [`fork_child`](super::fork_child)
//! closes every registered descriptor in the child right after the fork.
//!
//! Like the daemon registry this is a fixed array of atomic slots, not a
//! mutex, so it is safe to read in a child forked from a busy process.

use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

const SLOTS: usize = 1024;

struct Slot {
    /// Pid of the process whose descriptor this is; 0 = free.
    owner: AtomicI32,
    fd: AtomicI32,
}

#[allow(clippy::declare_interior_mutable_const)]
const FREE: Slot = Slot {
    owner: AtomicI32::new(0),
    fd: AtomicI32::new(-1),
};

static FDS: [Slot; SLOTS] = [FREE; SLOTS];
/// One past the highest slot ever used: scans stop here, so a process that
/// never registered anything does not touch the table at all (in a fresh
/// child every untouched page read is a page fault).
static HIGH: AtomicUsize = AtomicUsize::new(0);

fn used() -> &'static [Slot] {
    &FDS[..HIGH.load(Ordering::Acquire).min(SLOTS)]
}

/// Registers `fd` of process `owner` (this process); `None` if the table
/// is full.
pub(crate) fn register(owner: i32, fd: RawFd) -> Option<usize> {
    forget_stale(owner);
    for (i, slot) in FDS.iter().enumerate() {
        if slot
            .owner
            .compare_exchange(0, -1, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            HIGH.fetch_max(i + 1, Ordering::AcqRel);
            slot.fd.store(fd, Ordering::Release);
            slot.owner.store(owner, Ordering::Release);
            return Some(i);
        }
    }
    None
}

/// Releases a slot before its descriptor is closed.
pub(crate) fn unregister(slot: usize) {
    if let Some(s) = FDS.get(slot) {
        s.fd.store(-1, Ordering::Release);
        s.owner.store(0, Ordering::Release);
    }
}

/// In a freshly forked child: closes the parent's registered descriptors
/// except `keep` (a forking server's child keeps the write end of its exit
/// notes). Reads the table only: a write would be a copy-on-write fault in
/// every child, and most children never fork or register anything. The
/// parent's entries, now stale here, are freed by [`forget_stale`] before
/// this process forks or registers.
pub(crate) fn close_in_child(parent: i32, keep: Option<RawFd>) {
    for slot in used() {
        if slot.owner.load(Ordering::Acquire) != parent {
            continue;
        }
        let fd = slot.fd.load(Ordering::Acquire);
        if fd >= 0 && Some(fd) != keep {
            // SAFETY: closing a raw descriptor number the parent registered
            // as "parent only". The child's copy of the owning `Connection`
            // knows (by pid) that it must not touch or close it again.
            unsafe { libc::close(fd) };
        }
    }
}

/// Frees the entries of other processes than `me` (an ancestor's, inherited
/// through a fork): their numbers may have been reused here, and the
/// ancestor's pid by another process, so a child of ours must never act
/// on them. Writes nothing when there are none (the usual case in a
/// process that registers and forks).
pub(crate) fn forget_stale(me: i32) {
    for slot in used() {
        let owner = slot.owner.load(Ordering::Acquire);
        // -1: a slot another thread of ours is registering right now.
        if owner != 0 && owner != -1 && owner != me {
            slot.fd.store(-1, Ordering::Release);
            let _ = slot
                .owner
                .compare_exchange(owner, 0, Ordering::AcqRel, Ordering::Relaxed);
        }
    }
}

/// A descriptor only the process that created it holds: registered
/// close-on-fork when wrapped, so every child this crate forks afterwards
/// closes its copy (a sibling's pidfd, the pool's wake-up eventfd). In
/// such a child the value must not close the number again (it may have
/// been reused there): its drop closes the descriptor only in the process
/// that wrapped it, or where the table was full and the child really
/// holds a copy.
pub(crate) struct ParentOnly<T: AsRawFd> {
    inner: ManuallyDrop<T>,
    owner: i32,
    slot: Option<usize>,
}

impl<T: AsRawFd> ParentOnly<T> {
    /// Wraps `inner`, an object of this process, and registers its
    /// descriptor close-on-fork.
    pub(crate) fn new(inner: T) -> Self {
        let owner = super::current::cached_pid();
        let slot = register(owner, inner.as_raw_fd());
        if slot.is_none() {
            tracing::warn!("close-on-fork table full; descriptor stays open in children");
        }
        ParentOnly {
            inner: ManuallyDrop::new(inner),
            owner,
            slot,
        }
    }
}

impl<T: AsRawFd> std::ops::Deref for ParentOnly<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsRawFd> std::fmt::Debug for ParentOnly<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParentOnly")
            .field("fd", &self.inner.as_raw_fd())
            .field("owner", &self.owner)
            .finish()
    }
}

impl<T: AsRawFd> Drop for ParentOnly<T> {
    fn drop(&mut self) {
        let mine = super::current::cached_pid() == self.owner;
        if mine {
            if let Some(slot) = self.slot {
                unregister(slot);
            }
        }
        if mine || self.slot.is_none() {
            // SAFETY: `inner` is dropped exactly once, here, and never
            // used again: this is the value's own drop.
            unsafe { ManuallyDrop::drop(&mut self.inner) };
        }
        // Otherwise: a forked copy whose descriptor the close-on-fork pass
        // already closed; the number is not ours to close.
    }
}

/// Descriptors that shared objects of this crate need in every process
/// that uses them (a [`Queue`](super::Queue)'s side channel for large
/// messages): the fork server keeps these open, and so do its children,
/// while it closes every other descriptor it inherited. Every process
/// holds a copy of both the table and the descriptors, so the table is
/// right wherever it is read.
static SHARED: [AtomicI32; 256] = [const { AtomicI32::new(-1) }; 256];

/// Records `fd` as needed by a shared object; `None` if the table is full
/// (the descriptor is then closed in the fork server like any other).
pub(crate) fn share(fd: RawFd) -> Option<usize> {
    SHARED.iter().position(|s| {
        s.compare_exchange(-1, fd, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    })
}

/// Forgets a [`share`]d descriptor before it is closed.
pub(crate) fn unshare(slot: usize) {
    if let Some(s) = SHARED.get(slot) {
        s.store(-1, Ordering::Release);
    }
}

/// The descriptors shared objects need (see [`share`]).
pub(crate) fn shared_fds() -> Vec<RawFd> {
    SHARED
        .iter()
        .map(|s| s.load(Ordering::Acquire))
        .filter(|&fd| fd >= 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::{fork_child, ForkOptions};
    use std::os::fd::IntoRawFd;

    fn is_open(fd: RawFd) -> bool {
        // SAFETY: F_GETFD only asks about the number.
        unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
    }

    /// The parent's entry is closed in the child; a descriptor the child
    /// then opens under the same number is the child's own, kept by the
    /// grandchild; what the child registers itself is closed there.
    #[test]
    fn stale_entries_never_close_a_grandchilds_descriptors() {
        let me = crate::process::current::cached_pid();
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let number = r.into_raw_fd();
        let slot = register(me, number).unwrap();
        let mut child = fork_child(&ForkOptions::new(), move || {
            if is_open(number) {
                return 2;
            }
            // The lowest free number: most likely `number` again.
            let (again, _keep) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
            let again = again.into_raw_fd();
            let (mine, _keep2) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
            let mine = mine.into_raw_fd();
            let child = crate::process::current::cached_pid();
            if register(child, mine).is_none() {
                return 3;
            }
            let Ok(mut grandchild) = fork_child(&ForkOptions::new(), move || {
                match (is_open(again), is_open(mine)) {
                    (true, false) => 0,
                    (false, _) => 4,
                    (true, true) => 5,
                }
            }) else {
                return 6;
            };
            grandchild.wait().unwrap_or(7)
        })
        .unwrap();
        assert_eq!(child.wait().unwrap(), 0);
        assert!(
            is_open(number),
            "the parent's own descriptor stays open here"
        );
        unregister(slot);
        // SAFETY: `number` is the read end taken above, closed once here.
        unsafe { libc::close(number) };
        drop(w);
    }
}
