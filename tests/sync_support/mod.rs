//! Test support for the fork-heavy `ipc_*` binaries: fork a child that
//! runs a small body and `_exit`s, reap it by pid, and a tiny runner for
//! `harness = false` binaries (each test isolated under `catch_unwind`).
#![allow(dead_code)]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

/// Children of the current test; any still running when it is dropped
/// (for example because an assertion failed) are SIGKILLed and reaped.
#[derive(Debug, Default)]
pub struct Kids {
    pids: Vec<Pid>,
}

impl Kids {
    pub fn new() -> Self {
        Kids::default()
    }

    /// Forks a child that runs `body` and leaves with `_exit(code)`; a
    /// panic in the body exits with 101. The child never returns here.
    pub fn spawn(&mut self, body: impl FnOnce() -> i32) -> Pid {
        // SAFETY: the test binaries are `harness = false` and fork from
        // their only thread; the child runs `body` and `_exit`s without
        // unwinding past this point.
        match unsafe { fork() }.expect("fork") {
            ForkResult::Child => {
                let code = catch_unwind(AssertUnwindSafe(body)).unwrap_or(101);
                // SAFETY: `_exit` is async-signal-safe and ends the child.
                unsafe { nix::libc::_exit(code) }
            }
            ForkResult::Parent { child } => {
                self.pids.push(child);
                child
            }
        }
    }

    /// Waits for `pid`: its exit code, or `-signal` if killed.
    pub fn join(&mut self, pid: Pid) -> i32 {
        self.pids.retain(|p| *p != pid);
        loop {
            match waitpid(pid, None).expect("waitpid") {
                WaitStatus::Exited(_, code) => return code,
                WaitStatus::Signaled(_, sig, _) => return -(sig as i32),
                _ => continue,
            }
        }
    }

    /// Waits for `pid` at most `timeout`; `None` if it is still running.
    pub fn join_timeout(&mut self, pid: Pid, timeout: Duration) -> Option<i32> {
        let end = Instant::now() + timeout;
        loop {
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)).expect("waitpid") {
                WaitStatus::Exited(_, code) => {
                    self.pids.retain(|p| *p != pid);
                    return Some(code);
                }
                WaitStatus::Signaled(_, sig, _) => {
                    self.pids.retain(|p| *p != pid);
                    return Some(-(sig as i32));
                }
                _ if Instant::now() >= end => return None,
                _ => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }

    /// SIGKILLs `pid` and reaps it.
    pub fn kill(&mut self, pid: Pid) -> i32 {
        let _ = kill(pid, Signal::SIGKILL);
        self.join(pid)
    }

    /// Joins every remaining child, asserting each exited with 0.
    pub fn join_all_ok(&mut self) {
        for pid in std::mem::take(&mut self.pids) {
            let code = self.join(pid);
            assert_eq!(code, 0, "child {pid} exited with {code}");
        }
    }
}

impl Drop for Kids {
    fn drop(&mut self) {
        for pid in std::mem::take(&mut self.pids) {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
        }
    }
}

/// Runs the named tests (all, or those whose name contains a command-line
/// filter), prints libtest-like lines and exits non-zero on any failure.
pub fn run(tests: &[(&str, fn())]) {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let mut failed = Vec::new();
    let mut ran = 0;
    for (name, f) in tests {
        if !filters.is_empty() && !filters.iter().any(|flt| name.contains(flt.as_str())) {
            continue;
        }
        ran += 1;
        let start = Instant::now();
        let ok = catch_unwind(*f).is_ok();
        println!(
            "test {name} ... {} ({:.2?})",
            if ok { "ok" } else { "FAILED" },
            start.elapsed()
        );
        if !ok {
            failed.push(*name);
        }
    }
    println!("\n{} passed; {} failed", ran - failed.len(), failed.len());
    if !failed.is_empty() {
        println!("failures: {failed:?}");
        std::process::exit(1);
    }
}
