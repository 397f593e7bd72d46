//! Operating helpers: what a deployed server needs around its loop —
//! socket activation, re-exec on SIGHUP, a locked pid file, privilege
//! drop, and the accept-error policy with its backoff.

pub mod activation;
pub(crate) mod backoff;
pub(crate) mod pidfile;
pub(crate) mod privileges;
pub(crate) mod reexec;
