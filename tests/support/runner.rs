//! The one runner for the `harness = false` test binaries (the fork-heavy
//! ones), and the `/proc` helpers they share.
//!
//! libtest runs each test on its own thread, and forking from a
//! multi-threaded process is exactly what these tests must avoid (see the
//! README's "Fork safety" section). So these binaries run their tests one after another on the
//! main thread, print libtest-like lines and a closing `N tests, N failed`
//! line, and exit non-zero on any failure. After each test, any child the
//! test left behind is killed and reaped, and counted as a failure: a stray
//! child would outlive the run and hold our stdout open.
#![allow(dead_code)]

use std::time::Instant;

/// What a test returns: `Err` carries the failure message.
pub type TestResult = Result<(), String>;
/// A named test.
pub type Test = (&'static str, fn() -> TestResult);

/// Fails the test with the file, line and condition (or a message).
#[macro_export]
macro_rules! check {
    ($cond:expr) => {
        if !$cond {
            return Err(format!("{}:{}: check failed: {}", file!(), line!(), stringify!($cond)));
        }
    };
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!("{}:{}: {}", file!(), line!(), format!($($fmt)+)));
        }
    };
}

/// Formats any error for a test failure message.
pub fn e<E: std::fmt::Debug>(err: E) -> String {
    format!("{err:?}")
}

/// `(state, ppid)` from `/proc/<pid>/stat`, `None` if the process is gone.
pub fn stat(pid: i32) -> Option<(char, i32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// The `n`th descriptor number (from 1) not in use in this process, so
/// that `RLIMIT_NOFILE` set one above it leaves exactly `n` numbers free.
/// The limit caps descriptor *numbers*, not how many are open: counting
/// the open ones would miss the holes that descriptors inherited from
/// whoever runs the tests leave below it (CI's did).
pub fn lowest_free_fd(n: usize) -> u64 {
    let names: Vec<u64> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().parse().unwrap())
        .collect();
    // The listing's own descriptor is closed by now: it is free.
    let open: std::collections::HashSet<u64> = names
        .into_iter()
        .filter(|fd| std::fs::read_link(format!("/proc/self/fd/{fd}")).is_ok())
        .collect();
    (0..).filter(|fd| !open.contains(fd)).nth(n - 1).unwrap()
}

/// This process's children and their states, from `/proc`.
pub fn children() -> Vec<(i32, char)> {
    children_of(std::process::id() as i32)
}

/// The children of process `me` (any process) and their states.
pub fn children_of(me: i32) -> Vec<(i32, char)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if let Some((state, ppid)) = stat(pid) {
            if ppid == me {
                out.push((pid, state));
            }
        }
    }
    out
}

/// A named test of either kind, ready to run.
type Boxed = (&'static str, Box<dyn Fn() -> TestResult>);

/// Open descriptors of process `pid` (0 when it is gone).
pub fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Open descriptors of this process.
pub fn open_fds() -> usize {
    fd_count(std::process::id() as i32)
}

/// Runs the tests (all, or those whose name contains a command-line
/// filter) and exits with status 1 if any failed.
pub fn run(tests: &[Test]) {
    let tests: Vec<Boxed> = tests
        .iter()
        .map(|&(name, test)| (name, Box::new(test) as Box<dyn Fn() -> TestResult>))
        .collect();
    run_boxed(&tests);
}

/// [`run`] for tests that fail by panicking (`assert!`) instead of
/// returning an `Err`.
pub fn run_plain(tests: &[(&'static str, fn())]) {
    let tests: Vec<Boxed> = tests
        .iter()
        .map(|&(name, test)| {
            let run = move || -> TestResult {
                test();
                Ok(())
            };
            (name, Box::new(run) as Box<dyn Fn() -> TestResult>)
        })
        .collect();
    run_boxed(&tests);
}

fn run_boxed(tests: &[Boxed]) {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let mut failed = Vec::new();
    let mut ran = 0;
    for (name, test) in tests {
        if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        ran += 1;
        let started = Instant::now();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(test))
            .unwrap_or_else(|_| Err("panicked".into()));
        match outcome {
            Ok(()) => println!("test {name} ... ok ({:?})", started.elapsed()),
            Err(msg) => {
                println!("test {name} ... FAILED: {msg}");
                failed.push(*name);
            }
        }
        let left = children();
        if !left.is_empty() {
            println!("  stray children after {name}: {left:?}; killing them");
            for (pid, _) in left {
                let pid = nix::unistd::Pid::from_raw(pid);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                let _ = nix::sys::wait::waitpid(pid, None);
            }
            failed.push("no stray children");
        }
    }
    println!("\n{ran} tests, {} failed", failed.len());
    if !failed.is_empty() {
        std::process::exit(1);
    }
}

/// What each open descriptor of process `pid` refers to: the targets of
/// the `/proc/<pid>/fd` links (`socket:[123]`, `pipe:[456]`,
/// `anon_inode:[pidfd]`, a path), empty when the process is gone.
pub fn fd_links(pid: i32) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|p| p.to_string_lossy().into_owned())
        .collect()
}

/// What descriptor `fd` of this process refers to (see [`fd_links`]).
pub fn fd_link(fd: i32) -> String {
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// How many descriptors of process `pid` refer to `what` (a whole link
/// target such as `anon_inode:[pidfd]`).
pub fn count_links(pid: i32, what: &str) -> usize {
    fd_links(pid).iter().filter(|l| *l == what).count()
}
