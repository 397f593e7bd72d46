//! The process layer: Python's `multiprocessing`, Rust-shaped.
//!
//! Every child is started with `fork()`, runs its closure under
//! `catch_unwind` and leaves with `_exit`, so it never unwinds into the
//! parent's code. See the crate README for the fork-safety rules.
#![allow(unsafe_code)]

mod closefork;
mod connection;
mod current;
mod fork;
pub(crate) mod listener;
#[allow(clippy::module_inception)]
mod process;
mod registry;
mod sys;

pub use connection::{pipe, Connection, DEFAULT_MAX_MESSAGE_SIZE};
pub use current::{cpu_count, current_process, exit, parent_pid, ProcessInfo};
pub use fork::{fork_child, ForkOptions, ForkedChild};
pub use listener::{Address, Client, Listener, DEFAULT_HANDSHAKE_TIMEOUT};
pub use process::{Process, ProcessBuilder};

// Shared memory and synchronisation (slice `sync`).
mod condition;
mod queue;
mod raw;
mod semaphore;
mod shared;
mod sync;
pub use condition::{Barrier, Condition, ConditionGuard};
pub use queue::{Queue, QueueBuilder, DEFAULT_CAPACITY as QUEUE_DEFAULT_CAPACITY};
pub use semaphore::{BoundedSemaphore, Event, Semaphore, SemaphoreGuard};
pub use shared::{Array, ArrayGuard, SharedData, SharedMemory, Value, ValueGuard};
pub use sync::{Lock, LockError, LockGuard, LockResult, RLock, RLockGuard};

// Descriptors inherited across exec (socket activation, re-exec): the
// unsafe `from_raw_fd` lives here.
pub(crate) mod inherited;

// Lock-free counters in shared memory (the prefork scoreboard).
mod atomics;
pub use atomics::SharedAtomics;

// Pool, ProcessPoolExecutor and Manager (slice `pool`).
mod async_result;
pub(crate) mod codec;
mod dispatch;
mod executor;
mod manager;
pub(crate) mod manager_protocol;
mod manager_proxy;
pub(crate) mod manager_server;
pub(crate) mod pool;
mod task;
mod worker;
pub use async_result::AsyncResult;
pub use executor::{Future, ProcessPoolExecutor};
pub use manager::{Manager, ManagerBuilder};
pub use manager_proxy::{
    DictProxy, ListProxy, LockProxy, LockProxyGuard, NamespaceProxy, QueueProxy, ValueProxy,
};
pub use pool::{IMap, Pool, PoolBuilder};
pub use task::StarFn;

// Bare fork/_exit/waitpid for the benchmarks (keeps their unsafe here).
#[doc(hidden)]
pub mod baseline;
