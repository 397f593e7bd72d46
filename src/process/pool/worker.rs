//! The pool worker: the loop a forked worker runs. The frames it
//! exchanges with the pool are defined in `wire.rs`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use crate::process::task;
use crate::process::Connection;

pub(crate) use super::wire::{decode_reply, fill_job_header, job_frame, Body, MAX_FRAME, OP_STOP};
use super::wire::{parse_job, set_failure, start_reply, ST_ERROR, ST_INIT_FAILED, ST_PANIC};

use crate::process::spin::WORKER_SPIN;

/// Largest buffer a worker keeps between jobs.
const KEEP_BUFFER: usize = 16 << 20;

/// Runs once in each worker right after it starts (Python's `initializer`).
pub(crate) type Initializer = Arc<dyn Fn() + Send + Sync + 'static>;

use crate::process::panic_message;

/// The worker's main loop; returns the exit code.
///
/// Exits with 0 on a stop frame, when the parent closes its end, or after
/// `max_tasks` tasks; with 1 if the initializer panics (after telling the
/// parent why: it breaks the pool rather than fork replacements that
/// would fail the same way, thousands a second) or on a malformed frame
/// (which only a bug on our side could produce).
pub(crate) fn worker_main(
    mut conn: Connection,
    initializer: Option<Initializer>,
    max_tasks: Option<usize>,
) -> i32 {
    if let Some(init) = initializer {
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| init())) {
            let msg = panic_message(payload.as_ref());
            // Dropping a payload may itself panic.
            std::mem::forget(payload);
            let mut out = Vec::new();
            start_reply(&mut out, u64::MAX);
            set_failure(&mut out, ST_INIT_FAILED, &msg);
            let _ = conn.send_bytes(&out);
            return 1;
        }
    }
    // The worker waits with its own budget (`WORKER_SPIN`, below).
    conn.set_recv_spin(false);
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
        let (id, addr, payload) = match parse_job(&frame) {
            Ok(Some(job)) => job,
            Ok(None) => return 0,
            Err(()) => return 1,
        };
        // SAFETY: the frame comes from the pool in our parent, over a
        // socketpair only it and we hold; it encoded the address with
        // `task::one_fn_address`/`chunk_fn_address`/`chunk_address` in the
        // image we are a fork of.
        let trampoline = unsafe { task::trampoline_at(addr) };

        start_reply(&mut out, id);
        let mut body = std::mem::take(&mut out);
        // SAFETY: the payload was built by the pool for this trampoline
        // (with the function address in front when it takes one), in the
        // image we are a fork of: the same frame, from the same sender.
        let result = catch_unwind(AssertUnwindSafe(|| unsafe {
            trampoline(payload, &mut body)
        }));
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
