//! Operating helpers: what a deployed server needs around its loop —
//! socket activation, re-exec on SIGHUP, a locked pid file, privilege
//! drop, the accept-error policy with its backoff, the agent-check health
//! port and systemd notifications.

pub mod activation;
pub(crate) mod backoff;
pub mod health;
pub mod notify;
pub(crate) mod pidfile;
pub(crate) mod privileges;
pub(crate) mod reexec;
