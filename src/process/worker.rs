//! The pool worker: the loop a forked worker runs, and the frames it
//! exchanges with the pool over its private socketpair.
//!
//! Parent → worker frame: `[op: u8][id: u64 LE][trampoline: u64 LE][payload]`
//! with `op` = [`OP_JOB`] or [`OP_STOP`] (a stop frame has no other fields).
//!
//! Worker → parent frame: `[status: u8][id: u64 LE][body]` where `status`
//! is [`ST_OK`] (body = encoded result), [`ST_PANIC`] (body = the panic
//! message) or [`ST_ERROR`] (body = a codec error message).
//!
//! Frames go through [`Connection::send_bytes`] / `recv_bytes_into`, so framing,
//! truncation and size limits are the connection's.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use super::task;
use super::Connection;
use crate::{Error, Result};

pub(crate) const OP_JOB: u8 = 1;
pub(crate) const OP_STOP: u8 = 2;
pub(crate) const ST_OK: u8 = 0;
pub(crate) const ST_PANIC: u8 = 1;
pub(crate) const ST_ERROR: u8 = 2;
/// Bytes in front of a job's payload in its frame.
pub(crate) const JOB_HEADER: usize = 1 + 8 + 8;
pub(crate) const RESULT_HEADER: usize = 1 + 8;

/// Largest frame on a pool connection: big `map` chunks are legitimate.
pub(crate) const MAX_FRAME: usize = 1 << 30;

use super::spin::WORKER_SPIN;

/// Largest buffer a worker keeps between jobs.
const KEEP_BUFFER: usize = 16 << 20;

/// Runs once in each worker right after it starts (Python's `initializer`).
pub(crate) type Initializer = Arc<dyn Fn() + Send + Sync + 'static>;

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
        other => {
            return Err(Error::Codec(format!(
                "pool worker sent unknown status {other}"
            )))
        }
    };
    Ok(Reply { id, outcome })
}

pub(crate) use super::sys::panic_message;

/// The worker's main loop; returns the exit code.
///
/// Exits with 0 on a stop frame, when the parent closes its end, or after
/// `max_tasks` tasks; with 1 if the initializer panics (the parent then
/// starts a replacement) or on a malformed frame (which only a bug on our
/// side could produce).
pub(crate) fn worker_main(
    mut conn: Connection,
    initializer: Option<Initializer>,
    max_tasks: Option<usize>,
) -> i32 {
    if let Some(init) = initializer {
        if catch_unwind(AssertUnwindSafe(|| init())).is_err() {
            return 1;
        }
    }
    let mut out = Vec::with_capacity(256);
    let mut frame = Vec::new();
    let mut done = 0usize;
    loop {
        // The next job usually follows a reply within microseconds (a
        // caller in an `apply` loop, the next `map` chunk): wait for it
        // actively before sleeping.
        if conn.poll_spin(WORKER_SPIN).is_err() {
            return 0;
        }
        // One buffer for every job: a large chunk's pages are faulted in
        // once, not once per chunk.
        if conn.recv_bytes_into(&mut frame).is_err() {
            // The pool is gone or closed our end: nothing more to do.
            return 0;
        }
        match frame.first() {
            Some(&OP_STOP) => return 0,
            Some(&OP_JOB) if frame.len() >= JOB_HEADER => {}
            _ => return 1,
        }
        let mut word = [0u8; 8];
        word.copy_from_slice(&frame[1..9]);
        let id = u64::from_le_bytes(word);
        word.copy_from_slice(&frame[9..17]);
        let addr = u64::from_le_bytes(word) as usize;
        let payload = &frame[JOB_HEADER..];
        // SAFETY: the frame comes from the pool in our parent, over a
        // socketpair only it and we hold; it encoded the address with
        // `task::one_address`/`chunk_address` in the image we are a fork of.
        let trampoline = unsafe { task::trampoline_at(addr) };

        out.clear();
        out.push(ST_OK);
        out.extend_from_slice(&id.to_le_bytes());
        let mut body = std::mem::take(&mut out);
        let result = catch_unwind(AssertUnwindSafe(|| trampoline(payload, &mut body)));
        out = body;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(msg)) => set_failure(&mut out, ST_ERROR, &msg),
            Err(payload) => {
                let msg = panic_message(payload.as_ref());
                // Dropping a payload may itself panic; the worker lives on.
                std::mem::forget(payload);
                set_failure(&mut out, ST_PANIC, &msg);
            }
        }
        if conn.send_bytes(&out).is_err() {
            // Too large, or the pool is gone. Report the first if we can.
            set_failure(
                &mut out,
                ST_ERROR,
                "the task's result is larger than a pool frame allows",
            );
            if conn.send_bytes(&out).is_err() {
                return 0;
            }
        }
        done += 1;
        if max_tasks.is_some_and(|m| done >= m) {
            return 0;
        }
        // Keep the buffers for the next job unless one was huge.
        if out.capacity() > KEEP_BUFFER {
            out = Vec::with_capacity(256);
        }
        if frame.capacity() > KEEP_BUFFER {
            frame = Vec::new();
        }
    }
}

fn set_failure(out: &mut Vec<u8>, status: u8, msg: &str) {
    out.truncate(RESULT_HEADER);
    out[0] = status;
    out.extend_from_slice(msg.as_bytes());
}
