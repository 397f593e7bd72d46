//! The pool's wire format, in one place: the frames the pool and its
//! workers exchange over their private socketpair, and the chunk format of
//! `map`-style jobs. Frames go through [`Connection::send_bytes`] /
//! `recv_bytes_into`, so framing, truncation and size limits are the
//! connection's; values inside are encoded by the crate's codec
//! (`codec/`).
//!
//! - Parent → worker: `[op: u8][id: u64 LE][trampoline: u64 LE][payload]`
//!   with `op` = [`OP_JOB`] or [`OP_STOP`] (a stop frame has no other
//!   fields). The trampoline is an address (see `task.rs`).
//! - Worker → parent: `[status: u8][id: u64 LE][body]` where `status` is
//!   [`ST_OK`] (body = encoded result), [`ST_PANIC`] (body = the panic
//!   message) or [`ST_ERROR`] (body = a codec error message); or, once,
//!   before any job, [`ST_INIT_FAILED`] (id unused, body = the
//!   initializer's panic message), after which the worker exits.
//! - A chunk (the payload of a chunk job, and the body of its result): an
//!   item count (`u64` LE) followed by each item's encoding.
//!
//! [`Connection::send_bytes`]: crate::process::Connection::send_bytes

use serde::Serialize;

use crate::process::codec::{Encoder, WireError};
use crate::{Error, Result};

pub(crate) const OP_JOB: u8 = 1;
pub(crate) const OP_STOP: u8 = 2;
pub(crate) const ST_OK: u8 = 0;
pub(crate) const ST_PANIC: u8 = 1;
pub(crate) const ST_ERROR: u8 = 2;
/// The worker's initializer panicked: the pool is broken (every worker
/// runs the same initializer, so a replacement would fail the same way).
pub(crate) const ST_INIT_FAILED: u8 = 3;
/// Bytes in front of a job's payload in its frame.
pub(crate) const JOB_HEADER: usize = 1 + 8 + 8;
pub(crate) const RESULT_HEADER: usize = 1 + 8;

/// Largest frame on a pool connection: big `map` chunks are legitimate.
pub(crate) const MAX_FRAME: usize = 1 << 30;

/// A job frame under construction in `buf` (a recycled buffer or a new
/// one): room for the header, to which the caller appends the payload.
/// The header is filled in by [`fill_job_header`] when the dispatcher
/// sends the frame, so a large payload (a `map` chunk) is never copied
/// into a second buffer.
pub(crate) fn job_frame(mut buf: Vec<u8>, capacity: usize) -> Vec<u8> {
    buf.clear();
    buf.reserve(JOB_HEADER + capacity);
    buf.resize(JOB_HEADER, 0);
    buf
}

/// Writes the header of a frame made by [`job_frame`]; returns `false`
/// (and writes nothing) if `frame` is shorter than a header.
pub(crate) fn fill_job_header(frame: &mut [u8], id: u64, trampoline: usize) -> bool {
    let Some(header) = frame.get_mut(..JOB_HEADER) else {
        return false;
    };
    header[0] = OP_JOB;
    header[1..9].copy_from_slice(&id.to_le_bytes());
    header[9..].copy_from_slice(&(trampoline as u64).to_le_bytes());
    true
}

/// A task's encoded result: a worker's reply frame, read past its header
/// (kept whole so the buffer can be recycled, and never shifted).
#[derive(Debug)]
pub(crate) struct Body {
    frame: Vec<u8>,
}

impl Body {
    /// The encoded result.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.frame[RESULT_HEADER..]
    }

    /// The whole buffer, for reuse.
    pub(crate) fn into_buffer(self) -> Vec<u8> {
        self.frame
    }
}

/// A decoded result frame.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) id: u64,
    pub(crate) outcome: Result<Body>,
    /// An [`ST_INIT_FAILED`] frame: `outcome` is the [`Error::BrokenPool`]
    /// every pending task should get; `id` means nothing.
    pub(crate) init_failed: bool,
}

/// Decodes a worker's result frame.
///
/// # Errors
/// [`Error::Codec`] when the frame is shorter than its header or has an
/// unknown status byte.
pub(crate) fn decode_reply(frame: Vec<u8>) -> Result<Reply> {
    let Some((header, _)) = frame.split_first_chunk::<RESULT_HEADER>() else {
        return Err(Error::Codec(format!(
            "pool worker sent a {}-byte frame, shorter than a result header",
            frame.len()
        )));
    };
    let status = header[0];
    let mut id = [0u8; 8];
    id.copy_from_slice(&header[1..]);
    let id = u64::from_le_bytes(id);
    let text = |frame: &[u8]| String::from_utf8_lossy(&frame[RESULT_HEADER..]).into_owned();
    let outcome = match status {
        ST_OK => Ok(Body { frame }),
        ST_PANIC => Err(Error::Panicked(text(&frame))),
        ST_ERROR => Err(Error::Codec(text(&frame))),
        ST_INIT_FAILED => Err(Error::BrokenPool(format!(
            "the pool's initializer panicked: {}",
            text(&frame)
        ))),
        other => {
            return Err(Error::Codec(format!(
                "pool worker sent unknown status {other}"
            )))
        }
    };
    Ok(Reply {
        id,
        outcome,
        init_failed: status == ST_INIT_FAILED,
    })
}

/// Starts a reply frame for job `id` in `out` (status [`ST_OK`]); the
/// trampoline appends the encoded result.
pub(crate) fn start_reply(out: &mut Vec<u8>, id: u64) {
    out.clear();
    out.push(ST_OK);
    out.extend_from_slice(&id.to_le_bytes());
}

/// A parsed job frame: its id, trampoline address and payload.
pub(crate) type JobRef<'a> = (u64, usize, &'a [u8]);

/// Parses a job frame; `None` for a stop frame; `Err` for a malformed one.
pub(crate) fn parse_job(frame: &[u8]) -> std::result::Result<Option<JobRef<'_>>, ()> {
    match frame.first() {
        Some(&OP_STOP) => Ok(None),
        Some(&OP_JOB) if frame.len() >= JOB_HEADER => {
            let mut word = [0u8; 8];
            word.copy_from_slice(&frame[1..9]);
            let id = u64::from_le_bytes(word);
            word.copy_from_slice(&frame[9..17]);
            let addr = u64::from_le_bytes(word) as usize;
            Ok(Some((id, addr, &frame[JOB_HEADER..])))
        }
        _ => Err(()),
    }
}

/// Turns a reply frame into a failure with `status` and message `msg`.
pub(crate) fn set_failure(out: &mut Vec<u8>, status: u8, msg: &str) {
    out.truncate(RESULT_HEADER);
    out[0] = status;
    out.extend_from_slice(msg.as_bytes());
}

/// Bytes of the item count in front of a chunk (arguments or results).
const COUNT: usize = 8;

/// Appends up to `max` items from `items` to `out` as a chunk: a count
/// (`u64` little-endian, patched in at the end, since an iterator may
/// yield fewer items than it announced) followed by each item's encoding
/// in the pool codec. Returns the count. Kept out of line and small so the item's
/// `serialize` is inlined into the loop.
///
/// # Errors
/// The codec's, if an item cannot be encoded.
#[inline(never)]
pub(crate) fn encode_chunk<T: Serialize>(
    items: &mut impl Iterator<Item = T>,
    max: usize,
    out: &mut Vec<u8>,
) -> Result<usize, WireError> {
    let at = out.len();
    out.extend_from_slice(&[0; COUNT]);
    let mut count = 0usize;
    {
        // One encoder for the whole chunk: its cursor stays in registers.
        let mut encoder = Encoder::new(out);
        for item in items.take(max) {
            encoder.encode(&item)?;
            count += 1;
        }
    }
    out[at..at + COUNT].copy_from_slice(&(count as u64).to_le_bytes());
    Ok(count)
}

/// Splits a chunk into its item count and the encoded items.
///
/// # Errors
/// A message when the chunk is shorter than its count.
pub(crate) fn split_count(chunk: &[u8]) -> Result<(u64, &[u8]), String> {
    match chunk.split_first_chunk::<COUNT>() {
        Some((count, items)) => Ok((u64::from_le_bytes(*count), items)),
        None => Err(format!("a {}-byte chunk has no item count", chunk.len())),
    }
}
