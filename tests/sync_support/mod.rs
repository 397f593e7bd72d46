//! Test support for the fork-heavy `ipc_*` binaries: fork a child that
//! runs a small body and `_exit`s (through `process::fork_child`), reap it
//! by pid, and a tiny runner for `harness = false` binaries (each test
//! isolated under `catch_unwind`).
#![allow(dead_code)]

use std::panic::catch_unwind;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use socketserver::process::{fork_child, ForkOptions, ForkedChild};

/// A child's pid, as returned by [`Kids::spawn`].
pub type Pid = i32;

/// Children of the current test; any still running when it is dropped
/// (for example because an assertion failed) are SIGKILLed and reaped.
#[derive(Debug, Default)]
pub struct Kids {
    kids: Vec<ForkedChild>,
}

impl Kids {
    pub fn new() -> Self {
        Kids::default()
    }

    /// Forks a child (the crate's `fork_child`) that runs `body` and
    /// `_exit`s with its return value; a panic exits with 1.
    pub fn spawn(&mut self, body: impl FnOnce() -> i32) -> Pid {
        let child = fork_child(&ForkOptions::new(), body).expect("fork");
        let pid = child.pid();
        self.kids.push(child);
        pid
    }

    fn take(&mut self, pid: Pid) -> ForkedChild {
        let i = self
            .kids
            .iter()
            .position(|c| c.pid() == pid)
            .expect("not our child");
        self.kids.swap_remove(i)
    }

    /// Waits for `pid`: its exit code, or `-signal` if killed.
    pub fn join(&mut self, pid: Pid) -> i32 {
        self.take(pid).wait().expect("waitpid")
    }

    /// Waits for `pid` at most `timeout`; `None` if it is still running.
    pub fn join_timeout(&mut self, pid: Pid, timeout: Duration) -> Option<i32> {
        let mut child = self.take(pid);
        let r = child.wait_timeout(timeout).expect("waitpid");
        if r.is_none() {
            self.kids.push(child);
        }
        r
    }

    /// SIGKILLs `pid` and reaps it.
    pub fn kill(&mut self, pid: Pid) -> i32 {
        let mut child = self.take(pid);
        child.signal(Signal::SIGKILL).expect("kill");
        child.wait().expect("waitpid")
    }

    /// Joins every remaining child, asserting each exited with 0.
    pub fn join_all_ok(&mut self) {
        for mut child in std::mem::take(&mut self.kids) {
            let code = child.wait().expect("waitpid");
            assert_eq!(code, 0, "child {} exited with {code}", child.pid());
        }
    }
}

impl Drop for Kids {
    fn drop(&mut self) {
        for mut child in std::mem::take(&mut self.kids) {
            let _ = child.signal(Signal::SIGKILL);
            let _ = child.wait();
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
