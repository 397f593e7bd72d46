//! The process layer: Python's `multiprocessing`, Rust-shaped.
//!
//! Every child is started with `fork()` (directly, or by the fork server:
//! see [`StartMethod`]), runs its closure under `catch_unwind` and leaves
//! with `_exit`, so it never unwinds into the parent's code. See the crate
//! README for the fork-safety rules.
//!
//! # Layout
//! - this folder: fork and the process life cycle — `fork` (the fork
//!   point, daemon lifelines), `process` ([`Process`]), `current`
//!   (who am I, `exit`), `registry` (what happens at exit), `closefork`,
//!   `forkserver` (start methods), `inherited`, `sys` and `spin` (the one
//!   spin/wait policy);
//! - `ipc/`: [`Connection`] frames and [`pipe`], [`Listener`]/[`Client`];
//! - `shm/`: robust mutex, locks, semaphore, condition, atomics, queue,
//!   `Value`/`Array`, all in shared memory;
//! - `pool/`: [`Pool`], [`ProcessPoolExecutor`], async results, the
//!   dispatcher, the worker, task trampolines, the wire codec;
//! - `manager/`: the [`Manager`] server, its proxies and protocol.
//!
//! Public paths stay flat (`process::Pool`, `process::Lock`, …).
#![allow(unsafe_code)]

mod closefork;
mod current;
mod fork;
mod forkserver;
pub(crate) mod notes;
#[allow(clippy::module_inception)]
mod process;
mod registry;
mod spin;
mod sys;
// Detached handler threads for the threading strategy.
pub(crate) mod thread;
// The one `panic_message`, also used by the server's handler life cycle.
pub(crate) use sys::{
    consolidate_heap, panic_message, point_at_dev_null, poll_timeout, wait_readable, Interruptible,
    Revocable,
};

pub(crate) mod ipc;
pub(crate) mod manager;
pub(crate) mod pool;
pub(crate) mod shm;

// Descriptors inherited across exec (socket activation, re-exec): the
// unsafe `from_raw_fd` lives here.
pub(crate) mod inherited;

// The parts' modules under their old names, for paths inside the crate.
use ipc::connection;
// `listener`, `codec`, `manager_protocol`, `manager_server` and `pool` are
// reachable from `crate::fuzzing` (feature `fuzzing`) under these names.
#[cfg(feature = "fuzzing")]
pub(crate) use ipc::listener;
use manager::proxy as manager_proxy;
pub(crate) use manager::{protocol as manager_protocol, server as manager_server};
pub(crate) use pool::codec;
use pool::{async_result, dispatch, task, worker};
use shm::{raw, shared, spill, sync};

pub(crate) use current::resume_exit_request;
pub use current::{cpu_count, current_process, parent_pid, ProcessInfo};
pub use fork::{exit, fork_child, ForkOptions, ForkedChild};
pub use forkserver::{
    get_context, get_start_method, set_start_method, start_forkserver, Context, StartMethod,
    MAX_REQUEST as FORKSERVER_MAX_REQUEST,
};
pub use process::{Process, ProcessBuilder, ProcessState};

pub use ipc::{
    pipe, Address, Client, Connection, Listener, DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_MAX_MESSAGE_SIZE,
};

pub use shm::{
    Array, ArrayGuard, Barrier, BoundedSemaphore, Condition, ConditionGuard, Event, Lock,
    LockError, LockGuard, LockResult, Queue, QueueBuilder, RLock, RLockGuard, Semaphore,
    SemaphoreGuard, SharedAtomics, SharedData, SharedMemory, Value, ValueGuard,
    QUEUE_DEFAULT_CAPACITY,
};

pub use manager::{
    DictProxy, ListProxy, LockProxy, LockProxyGuard, Manager, ManagerBuilder, NamespaceProxy,
    QueueProxy, ValueProxy,
};
pub use pool::{AsyncResult, Future, IMap, Pool, PoolBuilder, ProcessPoolExecutor, StarArgs};
