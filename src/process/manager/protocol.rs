//! The manager's wire protocol: one JSON request, one JSON response, each
//! in one [`Connection`](crate::process::Connection) frame.
//!
//! JSON rather than postcard because shared values are stored as
//! `serde_json::Value` (postcard cannot decode self-describing values), so
//! the server never needs the clients' Rust types.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Error;

pub(crate) use crate::process::spin::{
    MANAGER_CLIENT_SPIN as CLIENT_SPIN, MANAGER_SERVER_SPIN as SERVER_SPIN,
};

/// The kinds of shared object a manager holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Kind {
    Dict,
    List,
    Value,
    Namespace,
    Lock,
    Queue,
}

/// A request from a proxy.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Request {
    /// Creates an object, or with a `name` returns the existing object of
    /// that name (creating it the first time).
    Create {
        kind: Kind,
        name: Option<String>,
        init: Value,
    },
    /// An operation on object `id`.
    Call { id: u64, op: Op },
    /// Stops the manager process.
    Shutdown,
}

/// Operations; each is valid for some kinds only.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Op {
    // Dict and Namespace.
    Set {
        key: String,
        value: Value,
    },
    Get {
        key: String,
    },
    Remove {
        key: String,
    },
    Contains {
        key: String,
    },
    Keys,
    Update {
        entries: Vec<(String, Value)>,
    },
    // List.
    Append {
        value: Value,
    },
    Extend {
        values: Vec<Value>,
    },
    Index {
        index: i64,
    },
    SetIndex {
        index: i64,
        value: Value,
    },
    Pop {
        index: Option<i64>,
    },
    // Dict, List, Namespace, Queue.
    Len,
    Items,
    Clear,
    // Value.
    Load,
    Store {
        value: Value,
    },
    // Lock.
    Acquire {
        timeout_ms: Option<u64>,
    },
    Release,
    // Queue.
    Put {
        value: Value,
        timeout_ms: Option<u64>,
    },
    Take {
        timeout_ms: Option<u64>,
    },
}

/// Why a request failed; mapped back onto [`Error`] by the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Failure {
    Invalid,
    NoSuchObject,
    WrongKind,
    Empty,
    Full,
    Timeout,
}

/// A response.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Response {
    Ok(Value),
    Created(u64),
    Err(Failure, String),
}

impl Response {
    pub(crate) fn err(failure: Failure, msg: impl Into<String>) -> Response {
        Response::Err(failure, msg.into())
    }
}

/// The client-side error for a failed response.
pub(crate) fn failure_to_error(failure: Failure, msg: String) -> Error {
    match failure {
        Failure::Empty => Error::Empty,
        Failure::Full => Error::Full,
        Failure::Timeout => Error::Timeout(std::time::Duration::ZERO),
        Failure::Invalid | Failure::NoSuchObject | Failure::WrongKind => {
            Error::InvalidArgument(format!("manager: {msg}"))
        }
    }
}
