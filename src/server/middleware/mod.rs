//! Connection middleware: the PROXY protocol header, per-client-IP
//! connection limits, and the handler layers that apply them to any
//! [`RequestHandler`](crate::RequestHandler).

pub mod layers;
pub(crate) mod per_ip;
pub mod proxy;
