//! Lock-free counters in shared memory: [`SharedAtomics`].
//!
//! A fixed array of `AtomicU64` in an anonymous `MAP_SHARED` mapping,
//! created before `fork` and seen by every child. Atomic loads and stores
//! on shared pages are coherent across processes exactly as across
//! threads, so no lock is needed — and no lock can be left held by a
//! process that dies. The prefork server's scoreboard (each worker's
//! state, request count and busy-since time) is built on it.

use std::fmt;
use std::sync::atomic::AtomicU64;

use crate::process::shared::SharedMemory;
use crate::{Error, Result};

/// `len` zero-initialised `AtomicU64`s shared with children forked later.
pub struct SharedAtomics {
    mem: SharedMemory,
    len: usize,
}

impl fmt::Debug for SharedAtomics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedAtomics")
            .field("len", &self.len)
            .finish()
    }
}

impl SharedAtomics {
    /// Maps `len` counters, all zero.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when `len` is zero or too large;
    /// [`Error::Io`] when `mmap` fails.
    pub fn new(len: usize) -> Result<Self> {
        let bytes = len
            .checked_mul(std::mem::size_of::<AtomicU64>())
            .filter(|&b| b > 0)
            .ok_or_else(|| Error::InvalidArgument(format!("cannot map {len} counters")))?;
        Ok(SharedAtomics {
            mem: SharedMemory::new(bytes)?,
            len,
        })
    }

    /// Number of counters.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always `false`: an empty array cannot be created.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Counter `i`, or `None` past the end.
    pub fn get(&self, i: usize) -> Option<&AtomicU64> {
        if i >= self.len {
            return None;
        }
        // SAFETY: the mapping is page aligned (so 8-byte aligned), at least
        // `len * 8` bytes long, zero filled, and lives as long as `self`;
        // `AtomicU64` has the size and alignment of `u64` and every bit
        // pattern is a valid value. All access goes through atomics, so
        // concurrent writers in other processes are not a data race.
        Some(unsafe { &*(self.mem.as_ptr() as *const AtomicU64).add(i) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn zeroed_bounded_and_writable() {
        let a = SharedAtomics::new(4).unwrap();
        assert_eq!(a.len(), 4);
        assert!(a.get(4).is_none());
        for i in 0..4 {
            assert_eq!(a.get(i).unwrap().load(Ordering::SeqCst), 0);
        }
        a.get(3).unwrap().store(7, Ordering::SeqCst);
        assert_eq!(a.get(3).unwrap().fetch_add(1, Ordering::SeqCst), 7);
        assert!(SharedAtomics::new(0).is_err());
    }
}
