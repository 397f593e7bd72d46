//! The [`Manager`]: a server process holding shared objects (`server`),
//! the proxies that call it (`proxy`) and their protocol (`protocol`).

#[allow(clippy::module_inception)]
pub(crate) mod manager;
pub(crate) mod protocol;
pub(crate) mod proxy;
pub(crate) mod server;

pub use manager::{Manager, ManagerBuilder};
pub use proxy::{
    DictProxy, ListProxy, LockProxy, LockProxyGuard, NamespaceProxy, QueueProxy, ValueProxy,
};
