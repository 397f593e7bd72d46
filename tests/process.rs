//! Fork-heavy tests of `Process` and the fork primitive.
//!
//! `harness = false`: the tests run one after another on the main thread, so
//! every fork happens in a single-threaded process, as the fork-safety rules
//! recommend. Run with `cargo test --test process [FILTER]`.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use socketserver::process::{
    self, current_process, fork_child, ForkOptions, Process, ProcessState,
};
use socketserver::Error;

mod forktest;
use forktest::{children, count_links, e, fd_link, fd_links, run, stat, Test, TestResult};

/// Whether `pid` is gone (or a zombie nobody of ours will reap) within `limit`.
fn gone_within(pid: i32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        let me = std::process::id() as i32;
        match stat(pid) {
            None => return true,
            // Killed and waiting for its new parent (not us) to reap it.
            Some(('Z', ppid)) if ppid != me => return true,
            _ => {}
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn sleeper() -> Process {
    Process::new(|| std::thread::sleep(Duration::from_secs(30)))
}

fn exit_codes() -> TestResult {
    let mut normal = Process::new(|| {});
    let mut explicit = Process::new(|| process::exit(7));
    let mut panicking = Process::new(|| {
        // Keep the expected panic out of the test log.
        std::panic::set_hook(Box::new(|_| {}));
        panic!("expected panic in child")
    });
    let mut terminated = sleeper();
    let mut killed = sleeper();
    for p in [
        &mut normal,
        &mut explicit,
        &mut panicking,
        &mut terminated,
        &mut killed,
    ] {
        check!(p.exitcode().is_none());
        p.start().map_err(e)?;
    }
    check!(
        terminated.exitcode().is_none(),
        "running child has an exit code"
    );
    terminated.terminate().map_err(e)?;
    killed.kill().map_err(e)?;
    check!(normal.join().map_err(e)? == 0);
    check!(explicit.join().map_err(e)? == 7);
    check!(panicking.join().map_err(e)? == 1);
    check!(terminated.join().map_err(e)? == -15);
    check!(killed.join().map_err(e)? == -9);
    check!(killed.exitcode() == Some(-9));
    // Signalling a reaped child is a no-op, never a recycled pid.
    killed.kill().map_err(e)?;
    Ok(())
}

fn exit_runs_destructors_of_target() -> TestResult {
    // exit() unwinds the target, so its locals' destructors run.
    let (r, w) = nix::unistd::pipe().map_err(e)?;
    struct Guard(std::os::fd::OwnedFd);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = nix::unistd::write(&self.0, b"dropped");
        }
    }
    let mut p = Process::new(move || {
        let _g = Guard(w);
        process::exit(3);
    });
    p.start().map_err(e)?;
    check!(p.join().map_err(e)? == 3);
    let mut buf = [0u8; 16];
    let n = nix::unistd::read(r.as_fd(), &mut buf).map_err(e)?;
    check!(&buf[..n] == b"dropped", "got {:?}", &buf[..n]);
    Ok(())
}

fn join_timeout_returns_while_child_runs() -> TestResult {
    let mut p = sleeper();
    p.start().map_err(e)?;
    let t = Instant::now();
    check!(p
        .join_timeout(Duration::from_millis(200))
        .map_err(e)?
        .is_none());
    let waited = t.elapsed();
    check!(
        waited >= Duration::from_millis(190) && waited < Duration::from_secs(5),
        "waited {waited:?}"
    );
    check!(p.is_alive());
    p.kill().map_err(e)?;
    check!(p.join().map_err(e)? == -9);
    check!(!p.is_alive());
    Ok(())
}

fn join_timeout_returns_promptly_on_exit() -> TestResult {
    let mut p = Process::new(|| std::thread::sleep(Duration::from_millis(100)));
    p.start().map_err(e)?;
    let t = Instant::now();
    check!(p.join_timeout(Duration::from_secs(20)).map_err(e)? == Some(0));
    check!(
        t.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t.elapsed()
    );
    Ok(())
}

fn no_zombies_after_200_cycles() -> TestResult {
    for i in 0..200 {
        let mut p = Process::new(move || {
            if i % 2 == 0 {
                process::exit(0)
            }
        });
        p.start().map_err(e)?;
        check!(p.join().map_err(e)? == 0);
    }
    let left = children();
    check!(left.is_empty(), "children left: {left:?}");
    Ok(())
}

fn dropped_running_process_is_reaped() -> TestResult {
    let pid = {
        let mut p = Process::new(|| std::thread::sleep(Duration::from_millis(300)));
        p.start().map_err(e)?;
        p.pid().ok_or("no pid")?
    };
    // Still running right after the drop: a non-daemon is not killed.
    check!(
        matches!(stat(pid), Some((s, _)) if s != 'Z'),
        "non-daemon child was killed"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while stat(pid).is_some() {
        check!(
            Instant::now() < deadline,
            "pid {pid} still present: {:?}",
            stat(pid)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn dropped_daemon_is_terminated_and_reaped() -> TestResult {
    let pid = {
        let mut p = Process::builder()
            .daemon(true)
            .target(|| std::thread::sleep(Duration::from_secs(30)));
        p.start().map_err(e)?;
        p.pid().ok_or("no pid")?
    };
    check!(
        stat(pid).is_none(),
        "daemon {pid} survived its drop: {:?}",
        stat(pid)
    );
    Ok(())
}

fn start_twice_errors() -> TestResult {
    let mut p = Process::new(|| {});
    p.start().map_err(e)?;
    check!(matches!(p.start(), Err(Error::AlreadyStarted)));
    check!(p.join().map_err(e)? == 0);
    check!(matches!(p.start(), Err(Error::AlreadyStarted)));
    let mut q = Process::new(|| {});
    check!(matches!(q.join(), Err(Error::NotStarted)));
    check!(matches!(q.terminate(), Err(Error::NotStarted)));
    Ok(())
}

fn daemon_cannot_start_children() -> TestResult {
    let mut d = Process::builder().daemon(true).target(|| {
        let mut inner = Process::new(|| {});
        let code = match inner.start() {
            Err(Error::DaemonicChildren) => 42,
            Err(_) => 2,
            Ok(()) => 3,
        };
        process::exit(code)
    });
    d.start().map_err(e)?;
    check!(d.join().map_err(e)? == 42);
    Ok(())
}

fn current_process_in_child() -> TestResult {
    check!(current_process().name == "MainProcess");
    let parent = std::process::id() as i32;
    let mut p = Process::builder().name("worker").target(move || {
        let me = current_process();
        let ok = me.name == "worker"
            && !me.daemon
            && me.pid == std::process::id() as i32
            && me.ppid == parent
            && process::parent_pid() == parent;
        process::exit(if ok { 10 } else { 11 })
    });
    check!(p.name() == "worker");
    p.start().map_err(e)?;
    check!(p.join().map_err(e)? == 10);
    let mut d = Process::builder()
        .daemon(true)
        .target(|| process::exit(if current_process().daemon { 12 } else { 13 }));
    d.start().map_err(e)?;
    check!(d.join().map_err(e)? == 12);
    check!(Process::new(|| {}).name().starts_with("Process-"));
    // Nested default names, as in Python: the first child of Process-K is
    // Process-K:1.
    let mut nested = Process::new(|| {
        let inner = Process::new(|| {});
        let me = current_process().name;
        process::exit(if inner.name() == format!("{me}:1") {
            20
        } else {
            21
        })
    });
    nested.start().map_err(e)?;
    check!(nested.join().map_err(e)? == 20);
    check!(process::cpu_count() >= 1);
    Ok(())
}

/// Reads a native-endian i32 from a raw pipe.
fn read_pid(fd: std::os::fd::BorrowedFd<'_>) -> Result<i32, String> {
    let mut buf = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = nix::unistd::read(fd, &mut buf[got..]).map_err(e)?;
        check!(n > 0, "pipe closed early");
        got += n;
    }
    Ok(i32::from_ne_bytes(buf))
}

fn daemon_dies_when_parent_is_sigkilled() -> TestResult {
    let (r, w) = nix::unistd::pipe().map_err(e)?;
    let mut middle = Process::new(move || {
        let mut d = Process::builder()
            .daemon(true)
            .target(|| std::thread::sleep(Duration::from_secs(60)));
        if d.start().is_err() {
            process::exit(2);
        }
        let pid = d.pid().unwrap_or(0);
        let _ = nix::unistd::write(&w, &pid.to_ne_bytes());
        std::thread::sleep(Duration::from_secs(60));
    });
    middle.start().map_err(e)?;
    let daemon = read_pid(r.as_fd())?;
    check!(daemon > 0);
    check!(
        stat(daemon).is_some_and(|(s, _)| s != 'Z'),
        "daemon not running"
    );
    middle.kill().map_err(e)?;
    check!(middle.join().map_err(e)? == -9);
    check!(
        gone_within(daemon, Duration::from_secs(5)),
        "daemon {daemon} survived: {:?}",
        stat(daemon)
    );
    Ok(())
}

/// A daemon belongs to the process, not to the thread that started it: it
/// outlives a helper thread that ended (with `PR_SET_PDEATHSIG` it died
/// with the thread), and still dies when the process is SIGKILLed.
fn daemon_from_ended_thread_lives_until_process_dies() -> TestResult {
    let (r, w) = nix::unistd::pipe().map_err(e)?;
    let mut middle = Process::new(move || {
        let helper = std::thread::spawn(|| {
            let mut d = Process::builder()
                .daemon(true)
                .target(|| std::thread::sleep(Duration::from_secs(60)));
            d.start().map(|()| d)
        });
        let Ok(Ok(d)) = helper.join() else {
            process::exit(2);
        };
        // The helper thread is gone now; the daemon must not be.
        let pid = d.pid().unwrap_or(0);
        let _ = nix::unistd::write(&w, &pid.to_ne_bytes());
        std::thread::sleep(Duration::from_secs(60));
        drop(d);
    });
    middle.start().map_err(e)?;
    let daemon = read_pid(r.as_fd())?;
    check!(daemon > 0);
    std::thread::sleep(Duration::from_millis(300));
    check!(
        stat(daemon).is_some_and(|(s, _)| s != 'Z'),
        "daemon {daemon} died with the thread that started it: {:?}",
        stat(daemon)
    );
    middle.kill().map_err(e)?;
    check!(middle.join().map_err(e)? == -9);
    check!(
        gone_within(daemon, Duration::from_secs(5)),
        "daemon {daemon} survived its parent: {:?}",
        stat(daemon)
    );
    Ok(())
}

/// Pool workers and the Manager server are daemons too: created on a
/// helper thread that then ends, they keep running, and they die with
/// their process when it is SIGKILLed.
fn pool_and_manager_from_ended_thread_live_until_process_dies() -> TestResult {
    let (r, w) = nix::unistd::pipe().map_err(e)?;
    let mut middle = Process::new(move || {
        let helper = std::thread::spawn(|| {
            let pool = process::Pool::new(2)?;
            let manager = process::Manager::new()?;
            Ok::<_, Error>((pool, manager))
        });
        let Ok(Ok((pool, manager))) = helper.join() else {
            process::exit(2);
        };
        let mut pids = pool.pids();
        pids.extend(manager.server_pid());
        let _ = nix::unistd::write(&w, &(pids.len() as i32).to_ne_bytes());
        for pid in pids {
            let _ = nix::unistd::write(&w, &pid.to_ne_bytes());
        }
        std::thread::sleep(Duration::from_secs(60));
        drop((pool, manager));
    });
    middle.start().map_err(e)?;
    let n = read_pid(r.as_fd())?;
    check!(n == 3, "{n} pids");
    let mut pids = Vec::new();
    for _ in 0..n {
        pids.push(read_pid(r.as_fd())?);
    }
    std::thread::sleep(Duration::from_millis(300));
    for &pid in &pids {
        check!(
            stat(pid).is_some_and(|(s, _)| s != 'Z'),
            "{pid} died with the thread that started it: {:?}",
            stat(pid)
        );
    }
    middle.kill().map_err(e)?;
    check!(middle.join().map_err(e)? == -9);
    for &pid in &pids {
        check!(
            gone_within(pid, Duration::from_secs(5)),
            "{pid} survived its parent: {:?}",
            stat(pid)
        );
    }
    Ok(())
}

/// The window the issue saw: the starting thread ends at once and the
/// parent is killed right after; every daemon must still die.
fn daemons_die_with_parent_killed_right_after_start() -> TestResult {
    for round in 0..20 {
        let (r, w) = nix::unistd::pipe().map_err(e)?;
        let mut middle = Process::new(move || {
            let helper = std::thread::spawn(move || {
                let mut d = Process::builder()
                    .daemon(true)
                    .target(|| std::thread::sleep(Duration::from_secs(60)));
                if d.start().is_ok() {
                    let _ = nix::unistd::write(&w, &d.pid().unwrap_or(0).to_ne_bytes());
                    std::mem::forget(d);
                }
            });
            let _ = helper.join();
            std::thread::sleep(Duration::from_secs(60));
        });
        middle.start().map_err(e)?;
        let daemon = read_pid(r.as_fd())?;
        middle.kill().map_err(e)?;
        check!(middle.join().map_err(e)? == -9);
        check!(
            gone_within(daemon, Duration::from_secs(5)),
            "round {round}: daemon {daemon} survived its parent: {:?}",
            stat(daemon)
        );
    }
    Ok(())
}

fn leaked_daemon_terminated_when_child_exits() -> TestResult {
    // The middle process forgets its daemon's Process (no drop runs): the
    // exit-time registry must still terminate it.
    let (r, w) = nix::unistd::pipe().map_err(e)?;
    let mut middle = Process::new(move || {
        let mut d = Process::builder()
            .daemon(true)
            .target(|| std::thread::sleep(Duration::from_secs(60)));
        if d.start().is_err() {
            process::exit(2);
        }
        let pid = d.pid().unwrap_or(0);
        let _ = nix::unistd::write(&w, &pid.to_ne_bytes());
        std::mem::forget(d);
    });
    middle.start().map_err(e)?;
    let daemon = read_pid(r.as_fd())?;
    check!(middle.join().map_err(e)? == 0);
    // The middle reaped it before exiting, so it is gone, not a zombie.
    check!(
        stat(daemon).is_none(),
        "daemon {daemon} survived: {:?}",
        stat(daemon)
    );
    Ok(())
}

fn fork_child_primitive() -> TestResult {
    let mut kids = Vec::new();
    for code in [0, 5, 9] {
        kids.push(fork_child(ForkOptions::new().name("raw"), move || code).map_err(e)?);
    }
    for (kid, code) in kids.iter_mut().zip([0, 5, 9]) {
        check!(
            nix::poll::poll(
                &mut [nix::poll::PollFd::new(
                    kid.sentinel(),
                    nix::poll::PollFlags::POLLIN
                )],
                nix::poll::PollTimeout::from(5000u16)
            )
            .map_err(e)?
                == 1
        );
        check!(kid.try_wait().map_err(e)? == Some(code));
    }
    let mut long = fork_child(&ForkOptions::new(), || {
        std::thread::sleep(Duration::from_secs(30));
        0
    })
    .map_err(e)?;
    check!(long.try_wait().map_err(e)?.is_none());
    long.signal(nix::sys::signal::Signal::SIGKILL).map_err(e)?;
    check!(long.wait().map_err(e)? == -9);
    Ok(())
}

fn warns_when_forking_with_threads() -> TestResult {
    use std::sync::{Arc, Mutex};
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::Error::other("poisoned"))?
                .extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let log = |b: &Buf| {
        String::from_utf8_lossy(&b.0.lock().map(|v| v.clone()).unwrap_or_default()).into_owned()
    };
    tracing::subscriber::with_default(subscriber, || -> TestResult {
        let mut p = Process::new(|| {});
        p.start().map_err(e)?;
        p.join().map_err(e)?;
        check!(
            !log(&buf).contains("multi-threaded"),
            "warned while single-threaded"
        );
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            let _ = rx.recv();
        });
        let mut p = Process::new(|| {});
        p.start().map_err(e)?;
        p.join().map_err(e)?;
        let _ = tx.send(());
        let _ = t.join();
        let text = log(&buf);
        check!(
            text.contains(&format!(
                "process {} is multi-threaded, fork() may deadlock the child",
                std::process::id()
            )),
            "log: {text}"
        );
        Ok(())
    })
}

fn pipe_request_response_between_processes() -> TestResult {
    let (mut parent, mut child) = process::pipe(true).map_err(e)?;
    // Without this the child would hold our end open itself and never see
    // EOF (see close_on_fork_lets_child_see_eof).
    parent.close_on_fork();
    let mut p = Process::new(move || {
        while let Ok(req) = child.recv::<(u32, String)>() {
            if child
                .send(&format!("{}:{}", req.0, req.1.to_uppercase()))
                .is_err()
            {
                process::exit(3);
            }
        }
    });
    p.start().map_err(e)?;
    for i in 0..100u32 {
        parent.send(&(i, "ping".to_string())).map_err(e)?;
        let reply: String = parent.recv().map_err(e)?;
        check!(reply == format!("{i}:PING"), "reply {reply}");
    }
    // The parent's copy of `child` was dropped by start(): closing ours is
    // EOF for the child, which then returns.
    drop(parent);
    check!(p.join_timeout(Duration::from_secs(10)).map_err(e)? == Some(0));
    Ok(())
}

fn child_exit_gives_parent_eof() -> TestResult {
    let (mut r, mut w) = process::pipe(false).map_err(e)?;
    let mut p = Process::new(move || {
        let _ = w.send(&1u8);
    });
    p.start().map_err(e)?;
    check!(r.recv::<u8>().map_err(e)? == 1);
    check!(matches!(r.recv::<u8>(), Err(Error::Eof)));
    check!(p.join().map_err(e)? == 0);
    Ok(())
}

fn close_on_fork_lets_child_see_eof() -> TestResult {
    for mark in [true, false] {
        let (mut parent, mut child) = process::pipe(true).map_err(e)?;
        if mark {
            parent.close_on_fork();
        }
        let mut p = Process::new(move || {
            // Wait (bounded) for EOF: only possible if this process does
            // not hold the parent's end itself.
            if !child.poll(Duration::from_secs(1)).unwrap_or(false) {
                process::exit(9);
            }
            process::exit(match child.recv::<u8>() {
                Err(Error::Eof) => 0,
                _ => 8,
            })
        });
        p.start().map_err(e)?;
        drop(parent);
        let code = p.join().map_err(e)?;
        if mark {
            check!(code == 0, "marked: child exit code {code}");
        } else {
            check!(
                code == 9,
                "unmarked: child exit code {code} (expected the EOF wait to time out)"
            );
        }
    }
    Ok(())
}

fn buffered_messages_are_not_sent_twice_after_fork() -> TestResult {
    let (mut r, mut w) = process::pipe(false).map_err(e)?;
    w.set_send_buffer(4096).map_err(e)?;
    w.send(&1u8).map_err(e)?;
    // `w` moves into the child: the parent's copy is dropped (and flushed)
    // by start(); the child's copy of the pending bytes must not go out too.
    let mut p = Process::new(move || drop(w));
    p.start().map_err(e)?;
    check!(p.join().map_err(e)? == 0);
    check!(r.recv::<u8>().map_err(e)? == 1);
    check!(
        matches!(r.recv::<u8>(), Err(Error::Eof)),
        "message duplicated"
    );
    Ok(())
}

/// Environment variable that makes this binary run one exit scenario
/// (`return` or `exit`) instead of the tests; `EXIT_SCENARIO_DIR` names
/// the directory it reports into.
const SCENARIO: &str = "SOCKETSERVER_EXIT_SCENARIO";

/// Run in a re-executed copy of this binary: start a non-daemon worker
/// that writes `done` after 400 ms and a daemon that would sleep a minute,
/// forget both handles (so no destructor helps), then leave `main` the
/// way the scenario says.
fn exit_scenario(how: &str) {
    // The exit says, at info level, which child it waits for.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::INFO)
        .init();
    let dir = std::path::PathBuf::from(std::env::var_os("EXIT_SCENARIO_DIR").unwrap_or_default());
    let done = dir.join("done");
    let mut worker = Process::new(move || {
        std::thread::sleep(Duration::from_millis(400));
        let _ = std::fs::write(&done, b"done");
    });
    let mut daemon = Process::builder()
        .daemon(true)
        .target(|| std::thread::sleep(Duration::from_secs(60)));
    if worker.start().is_err() || daemon.start().is_err() {
        std::process::exit(3);
    }
    let _ = std::fs::write(dir.join("daemon"), daemon.pid().unwrap_or(0).to_string());
    std::mem::forget(worker);
    std::mem::forget(daemon);
    if how == "exit" {
        process::exit(0);
    }
}

/// Run in a re-executed copy of this binary (stdout captured): a second
/// thread keeps writing lines to stdout while the main thread forks a
/// child that prints a partial line and returns. The fork happens with
/// stdout's lock held by the forking thread, so the child may flush it
/// at exit even though the parent has two threads.
fn stdout_scenario() {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let noisy = std::thread::spawn(move || {
        use std::io::Write;
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            let _ = writeln!(std::io::stdout(), "tick");
        }
    });
    let mut codes = Vec::new();
    for _ in 0..20 {
        let child = fork_child(&ForkOptions::new(), || {
            print!("child-partial");
            0
        });
        codes.push(child.and_then(|mut c| c.wait()));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = noisy.join();
    let ok = codes.iter().all(|c| matches!(c, Ok(0)));
    std::process::exit(if ok { 0 } else { 3 });
}

/// Children of a multi-threaded parent flush stdout when they leave
/// (a partial line is not lost), and none of them hangs on stdout's lock.
fn stdout_flushed_in_children_of_threaded_parent() -> TestResult {
    let out = std::process::Command::new(std::env::current_exe().map_err(e)?)
        .env(SCENARIO, "stdout")
        .stderr(std::process::Stdio::null())
        .output()
        .map_err(e)?;
    check!(out.status.success(), "scenario failed: {:?}", out.status);
    let text = String::from_utf8_lossy(&out.stdout);
    check!(
        text.matches("child-partial").count() == 20,
        "{} of 20 partial lines printed",
        text.matches("child-partial").count()
    );
    Ok(())
}

/// Python joins non-daemon children at normal exit and ends the daemons:
/// a program that returns from `main` (or calls `exit`) while a worker
/// runs ends only after the worker finished.
fn non_daemon_children_joined_at_exit() -> TestResult {
    for how in ["return", "exit"] {
        let dir = tempfile::tempdir().map_err(e)?;
        let started = Instant::now();
        let out = std::process::Command::new(std::env::current_exe().map_err(e)?)
            .env(SCENARIO, how)
            .env("EXIT_SCENARIO_DIR", dir.path())
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(e)?;
        let status = out.status;
        check!(status.success(), "{how}: scenario failed: {status:?}");
        let log = String::from_utf8_lossy(&out.stderr);
        check!(
            log.contains("waiting at exit for non-daemon child process"),
            "{how}: no log line says what the exit waits for: {log:?}"
        );
        check!(
            dir.path().join("done").exists(),
            "{how}: main ended after {:?}, before its non-daemon child finished",
            started.elapsed()
        );
        let daemon: i32 = std::fs::read_to_string(dir.path().join("daemon"))
            .map_err(e)?
            .parse()
            .map_err(e)?;
        check!(
            gone_within(daemon, Duration::from_secs(5)),
            "{how}: daemon {daemon} survived: {:?}",
            stat(daemon)
        );
    }
    Ok(())
}

/// The same inside a child started by us: its target returns, and it
/// waits for its own non-daemon child before it `_exit`s.
fn child_joins_its_non_daemon_children() -> TestResult {
    let dir = tempfile::tempdir().map_err(e)?;
    let done = dir.path().join("done");
    let inner_done = done.clone();
    let mut middle = Process::new(move || {
        let mut inner = Process::new(move || {
            std::thread::sleep(Duration::from_millis(300));
            let _ = std::fs::write(&inner_done, b"done");
        });
        if inner.start().is_err() {
            process::exit(3);
        }
        drop(inner);
    });
    middle.start().map_err(e)?;
    check!(middle.join().map_err(e)? == 0);
    check!(
        done.exists(),
        "the child exited before its non-daemon child finished"
    );
    Ok(())
}

/// `len` bytes of a pattern that a shifted or torn copy does not match.
fn pattern(len: usize) -> Vec<u8> {
    let mut v = (0..=250u8).collect::<Vec<u8>>().repeat(len / 251 + 1);
    v.truncate(len);
    v
}

/// A `Connection` carries frames up to its documented maximum (32 MiB by
/// default) between processes, over a socketpair and over a one-way pipe,
/// as raw bytes and as a serde value; one byte more is refused on both
/// sides; a sender killed mid-frame gives the receiver `TruncatedFrame`,
/// never a hang.
fn connection_frames_up_to_the_maximum() -> TestResult {
    let max = process::DEFAULT_MAX_MESSAGE_SIZE;
    for duplex in [true, false] {
        let (mut rx, mut tx) = process::pipe(duplex).map_err(e)?;
        let mut p = Process::new(move || {
            let raw = pattern(max);
            let ok = tx.send_bytes(&raw).is_ok()
                // A string encodes as a varint length (4 bytes here) + bytes.
                && tx.send(&"x".repeat(max - 4)).is_ok()
                && matches!(
                    tx.send_bytes(&vec![0; max + 1]),
                    Err(Error::MessageTooLarge { .. })
                );
            if !ok {
                process::exit(2);
            }
        });
        p.start().map_err(e)?;
        let got = rx.recv_bytes().map_err(e)?;
        check!(got.len() == max, "duplex {duplex}: {} bytes", got.len());
        check!(got == pattern(max), "duplex {duplex}: bytes differ");
        let got: String = rx.recv().map_err(e)?;
        check!(got.len() == max - 4 && got.bytes().all(|b| b == b'x'));
        check!(p.join().map_err(e)? == 0, "duplex {duplex}: sender failed");
        check!(matches!(rx.recv_bytes(), Err(Error::Eof)));
    }
    // A sender killed in the middle of a frame.
    let (mut rx, mut tx) = process::pipe(true).map_err(e)?;
    let mut p = Process::new(move || {
        let _ = tx.send_bytes(&vec![7u8; 16 << 20]);
    });
    p.start().map_err(e)?;
    // Wait until the frame has started arriving, then kill the sender.
    check!(rx.poll(Duration::from_secs(10)).map_err(e)?);
    p.kill().map_err(e)?;
    check!(p.join().map_err(e)? == -9);
    match rx.recv_bytes() {
        Err(Error::TruncatedFrame { expected, got }) => {
            check!(expected == 16 << 20 && got < expected)
        }
        other => return Err(format!("expected TruncatedFrame, got {other:?}")),
    }
    Ok(())
}

/// Polls `p.state()` until it is `want` (at most 10 s).
fn wait_state(p: &Process, want: Option<ProcessState>) -> TestResult {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = p.state();
        if now == want {
            return Ok(());
        }
        check!(
            Instant::now() < deadline,
            "state stayed {now:?}, expected {want:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The states of the classic diagram, observed on one child: running
/// (spinning), blocked (waiting on a pipe), zombie (exited, not joined),
/// gone after `join`.
fn state_running_blocked_zombie_gone() -> TestResult {
    let (mut parent, mut child_end) = process::pipe(true).map_err(e)?;
    let mut p = Process::new(move || {
        // Spin until told to stop: running.
        let until = Instant::now() + Duration::from_secs(20);
        while Instant::now() < until && !matches!(child_end.poll(Duration::ZERO), Ok(true)) {
            std::hint::spin_loop();
        }
        let _: u8 = child_end.recv().unwrap_or(0);
        let _ = child_end.send(&1u8);
        // Blocked on the pipe until the parent speaks again.
        let _: u8 = child_end.recv().unwrap_or(0);
    });
    check!(p.state().is_none(), "state before start");
    p.start().map_err(e)?;
    wait_state(&p, Some(ProcessState::Running))?;
    parent.send(&0u8).map_err(e)?;
    check!(parent.recv::<u8>().map_err(e)? == 1);
    wait_state(&p, Some(ProcessState::Blocked))?;
    parent.send(&0u8).map_err(e)?;
    wait_state(&p, Some(ProcessState::Zombie))?;
    // state() does not reap: still a zombie.
    check!(p.state() == Some(ProcessState::Zombie));
    check!(p.join().map_err(e)? == 0);
    check!(p.state().is_none(), "state after join: {:?}", p.state());
    Ok(())
}

fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

/// A program that opened a listener and a pipe *before* the fork server
/// started (on first use, from `get_context`): neither the server nor the
/// children it forks hold them, so dropping them in the program closes
/// them for real (the reader sees end-of-file, the port refuses).
fn fork_server_started_late_holds_no_caller_descriptors() -> TestResult {
    use std::os::fd::AsRawFd;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(e)?;
    let addr = listener.local_addr().map_err(e)?;
    let (r, w) = nix::unistd::pipe().map_err(e)?;
    let (sock, pipe) = (fd_link(listener.as_raw_fd()), fd_link(r.as_raw_fd()));
    check!(sock.starts_with("socket:") && pipe.starts_with("pipe:"));
    // Started here, with the listener and the pipe open in this process.
    let ctx = process::get_context(process::StartMethod::ForkServer).map_err(e)?;
    let mut p = ctx.process(sleep_ms, 30_000);
    p.start().map_err(e)?;
    let child = p.pid().ok_or("no pid")?;
    let server = stat(child).ok_or("child gone")?.1;
    for (who, pid) in [("fork server", server), ("its child", child)] {
        let links = fd_links(pid);
        check!(!links.is_empty(), "cannot read /proc/{pid}/fd");
        check!(
            !links.contains(&sock) && !links.contains(&pipe),
            "the {who} ({pid}) holds the caller's descriptors: {links:?}"
        );
        check!(
            count_links(pid, "anon_inode:[pidfd]") == 0 || who == "fork server",
            "the {who} holds pidfds: {links:?}"
        );
        // Let go of, not closed: the numbers point at /dev/null, so a value
        // copied from this program can never write into a descriptor the
        // fork server or its child opens later under the same number.
        for fd in [listener.as_raw_fd(), r.as_raw_fd()] {
            let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
                .map(|l| l.to_string_lossy().into_owned())
                .unwrap_or_default();
            check!(link == "/dev/null", "the {who}'s descriptor {fd}: {link:?}");
        }
    }
    drop(listener);
    drop(w);
    let mut file = std::fs::File::from(r);
    let readable = {
        let mut fds = [nix::poll::PollFd::new(
            file.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let five = nix::poll::PollTimeout::try_from(5000).map_err(e)?;
        matches!(nix::poll::poll(&mut fds, five), Ok(n) if n > 0)
    };
    p.kill().map_err(e)?;
    let _ = p.join();
    check!(readable, "the pipe's reader saw no end-of-file");
    let mut buf = [0u8; 1];
    check!(std::io::Read::read(&mut file, &mut buf).map_err(e)? == 0);
    check!(
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err(),
        "the dropped listener still accepts connections"
    );
    Ok(())
}

/// Stdout's and stderr's locks are held across `fork`: a thread that
/// prints all the time never leaves either locked in a child, so children
/// that `eprintln!` never hang. Each child gets a deadline; a hung one is
/// killed, reaped and reported.
fn children_of_a_chatty_thread_never_hang_on_stderr() -> TestResult {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    // Both streams to /dev/null for the run (restored after).
    let null = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .map_err(e)?;
    let saved = [
        nix::unistd::dup(std::io::stdout().as_fd()).map_err(e)?,
        nix::unistd::dup(std::io::stderr().as_fd()).map_err(e)?,
    ];
    std::io::Write::flush(&mut std::io::stdout()).map_err(e)?;
    let redirect = |from: &std::fs::File, saved: Option<&[std::os::fd::OwnedFd; 2]>| {
        let (out, err) = match saved {
            Some([o, r]) => (o.as_fd(), r.as_fd()),
            None => (from.as_fd(), from.as_fd()),
        };
        let _ = nix::unistd::dup2_stdout(out);
        let _ = nix::unistd::dup2_stderr(err);
    };
    redirect(&null, None);
    let stop = Arc::new(AtomicBool::new(false));
    let chatty = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                println!("out {n}");
                // Holding stderr's lock most of the time, as a logger
                // writing a burst of lines does.
                let mut err = std::io::stderr().lock();
                for _ in 0..50 {
                    let _ = std::io::Write::write_all(&mut err, b"err line\n");
                }
                drop(err);
                n += 1;
            }
        })
    };
    let mut hung = Vec::new();
    let mut failed = Vec::new();
    for batch in 0..20 {
        let mut procs: Vec<Process> = (0..10)
            .map(|i| {
                Process::new(move || {
                    for k in 0..5 {
                        eprintln!("child {batch}-{i} line {k}");
                    }
                    println!("child {batch}-{i} done");
                })
            })
            .collect();
        for p in &mut procs {
            if let Err(err) = p.start() {
                failed.push(format!("start: {err:?}"));
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for p in &mut procs {
            if p.pid().is_none() {
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match p.join_timeout(left) {
                Ok(Some(0)) => {}
                Ok(Some(code)) => failed.push(format!("exit {code}")),
                Ok(None) => {
                    hung.push(p.pid());
                    let _ = p.kill();
                    let _ = p.join();
                }
                Err(err) => failed.push(format!("join: {err:?}")),
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = chatty.join();
    let _ = std::io::Write::flush(&mut std::io::stdout());
    redirect(&null, Some(&saved));
    check!(
        hung.is_empty(),
        "{} of 200 children hung: {hung:?}",
        hung.len()
    );
    check!(failed.is_empty(), "{failed:?}");
    Ok(())
}

/// No child holds a sibling's pidfd: each of five children started one
/// after another holds exactly the pidfds this process held before the
/// first started (its own children's ones are closed in it).
fn children_hold_no_sibling_pidfds() -> TestResult {
    let me = std::process::id() as i32;
    let before = count_links(me, "anon_inode:[pidfd]");
    let mut procs: Vec<Process> = (0..5).map(|_| sleeper()).collect();
    for p in &mut procs {
        p.start().map_err(e)?;
    }
    check!(count_links(me, "anon_inode:[pidfd]") >= before + 5);
    let mut held = Vec::new();
    for p in &procs {
        let pid = p.pid().ok_or("no pid")?;
        // The child may still be closing what it inherited: give it time.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut n = count_links(pid, "anon_inode:[pidfd]");
        while n > before && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            n = count_links(pid, "anon_inode:[pidfd]");
        }
        held.push(n);
    }
    for p in &mut procs {
        p.kill().map_err(e)?;
        p.join().map_err(e)?;
    }
    check!(
        held.iter().all(|&n| n <= before),
        "pidfds held by the children: {held:?} (this process had {before} before)"
    );
    Ok(())
}

fn thirty_three_mib(n: usize) -> Vec<u8> {
    vec![7u8; n]
}

/// A `from_fn` result is not capped at a `Connection`'s 32 MiB default:
/// a 33 MiB one arrives whole (it made the child exit with 1 and
/// `result()` give `None`, with no word of why).
fn from_fn_result_over_32_mib_arrives() -> TestResult {
    let mut p = Process::from_fn(thirty_three_mib, 33 << 20);
    p.start().map_err(e)?;
    check!(p.join().map_err(e)? == 0);
    let got = p.result::<Vec<u8>>().map_err(e)?;
    check!(
        got.as_ref()
            .is_some_and(|v| v.len() == 33 << 20 && v.iter().all(|&b| b == 7)),
        "result: {:?}",
        got.map(|v| v.len())
    );
    Ok(())
}

fn main() {
    if let Ok(how) = std::env::var(SCENARIO) {
        if how == "stdout" {
            stdout_scenario();
        }
        exit_scenario(&how);
        return;
    }
    let tests: &[Test] = &[
        (stringify!(exit_codes), exit_codes),
        (
            stringify!(from_fn_result_over_32_mib_arrives),
            from_fn_result_over_32_mib_arrives,
        ),
        (
            stringify!(children_hold_no_sibling_pidfds),
            children_hold_no_sibling_pidfds,
        ),
        (
            stringify!(children_of_a_chatty_thread_never_hang_on_stderr),
            children_of_a_chatty_thread_never_hang_on_stderr,
        ),
        (
            stringify!(exit_runs_destructors_of_target),
            exit_runs_destructors_of_target,
        ),
        (
            stringify!(join_timeout_returns_while_child_runs),
            join_timeout_returns_while_child_runs,
        ),
        (
            stringify!(join_timeout_returns_promptly_on_exit),
            join_timeout_returns_promptly_on_exit,
        ),
        (
            stringify!(no_zombies_after_200_cycles),
            no_zombies_after_200_cycles,
        ),
        (
            stringify!(dropped_running_process_is_reaped),
            dropped_running_process_is_reaped,
        ),
        (
            stringify!(dropped_daemon_is_terminated_and_reaped),
            dropped_daemon_is_terminated_and_reaped,
        ),
        (stringify!(start_twice_errors), start_twice_errors),
        (
            stringify!(daemon_cannot_start_children),
            daemon_cannot_start_children,
        ),
        (
            stringify!(current_process_in_child),
            current_process_in_child,
        ),
        (
            stringify!(daemon_dies_when_parent_is_sigkilled),
            daemon_dies_when_parent_is_sigkilled,
        ),
        (
            stringify!(daemon_from_ended_thread_lives_until_process_dies),
            daemon_from_ended_thread_lives_until_process_dies,
        ),
        (
            stringify!(pool_and_manager_from_ended_thread_live_until_process_dies),
            pool_and_manager_from_ended_thread_live_until_process_dies,
        ),
        (
            stringify!(daemons_die_with_parent_killed_right_after_start),
            daemons_die_with_parent_killed_right_after_start,
        ),
        (
            stringify!(leaked_daemon_terminated_when_child_exits),
            leaked_daemon_terminated_when_child_exits,
        ),
        (
            stringify!(non_daemon_children_joined_at_exit),
            non_daemon_children_joined_at_exit,
        ),
        (
            stringify!(child_joins_its_non_daemon_children),
            child_joins_its_non_daemon_children,
        ),
        (
            stringify!(state_running_blocked_zombie_gone),
            state_running_blocked_zombie_gone,
        ),
        (
            stringify!(connection_frames_up_to_the_maximum),
            connection_frames_up_to_the_maximum,
        ),
        (stringify!(fork_child_primitive), fork_child_primitive),
        (
            stringify!(stdout_flushed_in_children_of_threaded_parent),
            stdout_flushed_in_children_of_threaded_parent,
        ),
        (
            stringify!(warns_when_forking_with_threads),
            warns_when_forking_with_threads,
        ),
        (
            stringify!(pipe_request_response_between_processes),
            pipe_request_response_between_processes,
        ),
        (
            stringify!(child_exit_gives_parent_eof),
            child_exit_gives_parent_eof,
        ),
        (
            stringify!(close_on_fork_lets_child_see_eof),
            close_on_fork_lets_child_see_eof,
        ),
        (
            stringify!(buffered_messages_are_not_sent_twice_after_fork),
            buffered_messages_are_not_sent_twice_after_fork,
        ),
        // Last: the fork server it starts stays for the rest of the run.
        (
            stringify!(fork_server_started_late_holds_no_caller_descriptors),
            fork_server_started_late_holds_no_caller_descriptors,
        ),
    ];
    run(tests);
}
