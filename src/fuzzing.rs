//! Entry points for the `cargo fuzz` targets in `fuzz/` (feature
//! `fuzzing`; not part of the public API).
//!
//! Each function is a thin wrapper that calls the crate's real,
//! crate-private parser, so the fuzz targets exercise exactly the code a
//! peer's bytes reach. Parsers that are public already (the PROXY header
//! in [`crate::server::proxy`], [`Connection`] frames) are fuzzed through
//! their public API and need nothing here. See `docs/fuzzing.md`.

use std::time::Duration;

use serde::de::{Deserialize, DeserializeOwned};
use serde::Serialize;

use crate::process::listener;
use crate::process::manager_protocol::{Op, Request, Response};
use crate::process::manager_server::Store;
use crate::process::Connection;
use crate::{Error, Result};

/// The largest handshake message the `Listener`/`Client` handshake reads.
pub const HANDSHAKE_MAX: usize = listener::HANDSHAKE_MAX;

/// Which side of the authkey handshake runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// `Listener::accept`: challenge the peer first, then answer its
    /// challenge.
    Listener,
    /// `Client::connect`: answer the peer's challenge first, then challenge
    /// it.
    Client,
}

/// Runs one side of the authkey handshake over `conn` exactly as
/// `Listener::accept` / `Client::connect` do (same timeout handling, same
/// message limit, same error mapping).
///
/// # Errors
/// As `Listener::accept`: [`Error::AuthenticationFailed`] for a wrong key
/// or a peer that does not speak the handshake, [`Error::Timeout`], or
/// [`Error::Io`].
pub fn handshake(conn: &mut Connection, key: &[u8], side: Side, timeout: Duration) -> Result<()> {
    listener::with_timeout(conn, timeout, |c| match side {
        Side::Listener => {
            listener::deliver_challenge(c, key)?;
            listener::answer_challenge(c, key)
        }
        Side::Client => {
            listener::answer_challenge(c, key)?;
            listener::deliver_challenge(c, key)
        }
    })
}

/// A manager's object store, served to connections as the manager process
/// serves them.
#[derive(Default)]
pub struct ManagerStore(Store);

impl std::fmt::Debug for ManagerStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ManagerStore")
    }
}

impl ManagerStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves `conn` until it closes or fails (the manager's per-client
    /// loop); `true` if it asked the manager to shut down.
    pub fn serve(&self, conn: Connection) -> bool {
        self.0.serve(conn)
    }
}

/// What the manager server does with one request frame, as far as a fuzz
/// harness must know in advance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// Not a request (the server answers with an error).
    Invalid,
    /// `Shutdown`: the server answers and stops serving.
    Shutdown,
    /// A request that may wait for another client (acquiring a held lock,
    /// taking from an empty queue, putting into a full one) for longer than
    /// `waits_ms` — forever when `None`. A single-client harness must not
    /// send these with a long wait: nobody else would ever wake it.
    MayWait {
        /// The request's own timeout.
        waits_ms: Option<u64>,
    },
    /// Any other request: answered at once.
    Immediate,
}

/// Classifies a manager request frame by decoding it as the server does.
pub fn manager_request_kind(frame: &[u8]) -> RequestKind {
    match serde_json::from_slice::<Request>(frame) {
        Err(_) => RequestKind::Invalid,
        Ok(Request::Shutdown) => RequestKind::Shutdown,
        Ok(Request::Call { op, .. }) => match op {
            Op::Acquire { timeout_ms } | Op::Take { timeout_ms } | Op::Put { timeout_ms, .. } => {
                RequestKind::MayWait {
                    waits_ms: timeout_ms,
                }
            }
            _ => RequestKind::Immediate,
        },
        Ok(Request::Create { .. }) => RequestKind::Immediate,
    }
}

/// Decodes a manager response frame as a manager proxy does.
///
/// # Errors
/// [`Error::Codec`] when the bytes are not a response.
pub fn manager_decode_response(frame: &[u8]) -> Result<()> {
    serde_json::from_slice::<Response>(frame)
        .map(drop)
        .map_err(|e| Error::Codec(e.to_string()))
}

/// Decodes one `T` that fills `bytes` exactly with the pool's task codec.
///
/// # Errors
/// [`Error::Codec`] for truncated or malformed input or bytes left over.
pub fn codec_from_bytes<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> Result<T> {
    Ok(crate::process::codec::from_bytes(bytes)?)
}

/// Encodes `value` with the pool's task codec.
///
/// # Errors
/// [`Error::Codec`] when `value` cannot be encoded.
pub fn codec_to_bytes<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    crate::process::codec::append(value, &mut out)?;
    Ok(out)
}

/// Decodes a pool worker's reply to a chunk of `expected` tasks, as the
/// pool's parent does.
///
/// # Errors
/// [`Error::Codec`] when the reply is not exactly `expected` results.
pub fn pool_decode_chunk<R: DeserializeOwned>(bytes: &[u8], expected: usize) -> Result<Vec<R>> {
    let mut out = Vec::new();
    crate::process::pool::pool::decode_chunk_into(bytes, expected, &mut out)?;
    Ok(out)
}
