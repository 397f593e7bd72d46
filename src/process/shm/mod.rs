//! Synchronisation in anonymous shared memory: the raw robust mutex and
//! futex condition variable (`raw`), locks, semaphores and events,
//! condition and barrier, lock-free atomics, the queue (and its side
//! channel for large messages), `Value` and `Array`.

pub(crate) mod atomics;
pub(crate) mod condition;
pub(crate) mod queue;
pub(crate) mod raw;
pub(crate) mod semaphore;
pub(crate) mod shared;
pub(crate) mod spill;
pub(crate) mod sync;

pub use atomics::SharedAtomics;
pub use condition::{Barrier, Condition, ConditionGuard};
pub use queue::{Queue, QueueBuilder, DEFAULT_CAPACITY as QUEUE_DEFAULT_CAPACITY};
pub use semaphore::{BoundedSemaphore, Event, Semaphore, SemaphoreGuard};
pub use shared::{Array, ArrayGuard, SharedData, SharedMemory, Value, ValueGuard};
pub use sync::{Lock, LockError, LockGuard, LockResult, RLock, RLockGuard};
