//! The pool: [`Pool`] and [`ProcessPoolExecutor`] on one engine (the
//! dispatcher thread, `dispatch`), the worker loop (`worker`), how tasks
//! travel (`task`: trampolines), the wire codec (`codec/`) and
//! [`AsyncResult`].

pub(crate) mod async_result;
pub(crate) mod codec;
pub(crate) mod dispatch;
pub(crate) mod executor;
#[allow(clippy::module_inception)]
pub(crate) mod pool;
pub(crate) mod task;
pub(crate) mod wire;
pub(crate) mod worker;

pub use async_result::AsyncResult;
pub use executor::{Future, ProcessPoolExecutor};
pub use pool::{IMap, Pool, PoolBuilder};
pub use task::StarArgs;
