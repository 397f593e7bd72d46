//! Connection middleware: the PROXY protocol header and the peers trusted
//! to send it (`trust.rs`, re-exported from [`proxy`]), per-client-IP
//! connection limits (in one process, and shared across processes), the
//! handler layers that apply them to any
//! [`RequestHandler`](crate::RequestHandler), and the cross-process
//! rate-limited warning their refusals are logged with.

pub mod layers;
pub(crate) mod per_ip;
pub mod proxy;
pub mod shared_limit;
mod trust;
pub(crate) mod warning;
