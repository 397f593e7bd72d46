//! Inter-process communication: [`Connection`] frames over a pipe or a
//! socketpair ([`pipe`]), and the authenticated [`Listener`]/[`Client`].

pub(crate) mod connection;
pub(crate) mod listener;

pub use connection::{pipe, Connection, DEFAULT_MAX_MESSAGE_SIZE};
pub use listener::{Address, Client, Listener, DEFAULT_HANDSHAKE_TIMEOUT};
