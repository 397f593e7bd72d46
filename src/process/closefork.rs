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

use std::os::fd::RawFd;
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

/// Registers `fd` of process `owner`; `None` if the table is full.
pub(crate) fn register(owner: i32, fd: RawFd) -> Option<usize> {
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
/// notes) and frees every slot (entries of older ancestors are stale:
/// their numbers may have been reused by the parent, so they are not
/// closed).
pub(crate) fn close_in_child(parent: i32, keep: Option<RawFd>) {
    for slot in used() {
        let owner = slot.owner.load(Ordering::Acquire);
        if owner == 0 {
            continue;
        }
        let fd = slot.fd.load(Ordering::Acquire);
        if owner == parent && fd >= 0 && Some(fd) != keep {
            // SAFETY: closing a raw descriptor number the parent registered
            // as "parent only". The child's copy of the owning `Connection`
            // knows (by pid) that it must not touch or close it again.
            unsafe { libc::close(fd) };
        }
        slot.fd.store(-1, Ordering::Release);
        slot.owner.store(0, Ordering::Release);
    }
}
