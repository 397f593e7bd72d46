//! The threading strategy's handler threads are detached `pthread_create`
//! threads, counted instead of joined: many connections at once each get
//! their own named thread, a close with `block_on_close` returns only once
//! every one of them has left, and none is left behind in the process.
//!
//! One test function on purpose: it counts the process's handler threads
//! in `/proc/self/task`, which another test running beside it would skew.

mod support;

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socketserver::server::{Server, ShutdownHandle, ThreadingTcpServer};
use socketserver::{Request, RequestHandler};
use support::{serve_in_thread, TIMEOUT};

/// The kernel name of handler threads (`socketserver-handler`, cut to the
/// kernel's 15 bytes).
const HANDLER_COMM: &str = "socketserver-ha";

/// Records its thread's kernel name, says it is running, then echoes until
/// the client closes.
struct Named {
    names: Arc<Mutex<Vec<String>>>,
    running: Arc<AtomicUsize>,
}

impl RequestHandler for Named {
    fn handle(&mut self, req: &mut Request) -> io::Result<()> {
        let comm = std::fs::read_to_string("/proc/thread-self/comm")?;
        self.names.lock().unwrap().push(comm.trim_end().to_owned());
        self.running.fetch_add(1, Ordering::SeqCst);
        let mut buf = Vec::new();
        req.rfile().read_to_end(&mut buf)?;
        req.wfile().write_all(&buf)
    }
}

/// A threading server of [`Named`] handlers, serving on its own thread.
struct Served {
    names: Arc<Mutex<Vec<String>>>,
    running: Arc<AtomicUsize>,
    addr: SocketAddr,
    handle: ShutdownHandle,
    serving: JoinHandle<ThreadingTcpServer>,
}

fn serve_named(daemon_threads: bool) -> Served {
    let names = Arc::new(Mutex::new(Vec::new()));
    let running = Arc::new(AtomicUsize::new(0));
    let (n2, r2) = (names.clone(), running.clone());
    let server = ThreadingTcpServer::builder()
        .daemon_threads(daemon_threads)
        .bind("127.0.0.1:0", move || Named {
            names: n2.clone(),
            running: r2.clone(),
        })
        .unwrap();
    let addr = server.server_address();
    let (handle, serving) = serve_in_thread(server);
    Served {
        names,
        running,
        addr,
        handle,
        serving,
    }
}

/// Threads of this process whose kernel name is the handlers'.
fn handler_threads_in_proc() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            std::fs::read_to_string(e.path().join("comm"))
                .map(|c| c.trim_end() == HANDLER_COMM)
                .unwrap_or(false)
        })
        .count()
}

fn wait_for(mut cond: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + TIMEOUT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn many_connections_get_named_threads_that_all_leave_at_close() {
    const CLIENTS: usize = 200;
    let Served {
        names,
        running,
        addr,
        handle,
        serving,
    } = serve_named(false);

    // All clients connected at once: each handler holds its connection
    // until its client closes, so every one needs its own thread.
    let clients: Vec<TcpStream> = (0..CLIENTS)
        .map(|_| {
            let c = TcpStream::connect(addr).unwrap();
            c.set_read_timeout(Some(TIMEOUT)).unwrap();
            c
        })
        .collect();
    wait_for(
        || running.load(Ordering::SeqCst) == CLIENTS,
        "every connection's handler to run",
    );
    assert!(
        handler_threads_in_proc() >= CLIENTS,
        "each concurrent connection runs on its own handler thread: {} of {CLIENTS}",
        handler_threads_in_proc()
    );
    {
        let names = names.lock().unwrap();
        assert_eq!(names.len(), CLIENTS);
        assert!(
            names.iter().all(|n| n == HANDLER_COMM),
            "handler threads carry the kernel name {HANDLER_COMM:?}: {:?}",
            names.iter().find(|n| *n != HANDLER_COMM)
        );
    }

    // Every client gets its echo.
    for (i, mut c) in clients.into_iter().enumerate() {
        let msg = format!("client {i}");
        c.write_all(msg.as_bytes()).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        assert_eq!(out, msg);
    }

    // Close (block_on_close is the default): the drain returns once every
    // handler thread has run its last step, idle ones included.
    handle.shutdown();
    let mut server = serving.join().unwrap();
    server.server_close();
    assert_eq!(server.strategy().tracked_threads(), 0);
    assert_eq!(server.strategy().idle_threads(), 0);
    assert_eq!(
        server.strategy().threads(),
        0,
        "a close with block_on_close waits for every handler thread"
    );
    // What is left of a detached thread after its last step (glibc's
    // exit) takes a moment; none stays.
    wait_for(
        || handler_threads_in_proc() == 0,
        "the handler threads to leave the process",
    );

    // daemon_threads: a close does not wait for a handler still running,
    // and that thread is still counted until it ends.
    let Served {
        running,
        addr,
        handle,
        serving,
        ..
    } = serve_named(true);
    let mut stuck = TcpStream::connect(addr).unwrap();
    stuck.set_read_timeout(Some(TIMEOUT)).unwrap();
    wait_for(|| running.load(Ordering::SeqCst) == 1, "the handler to run");
    handle.shutdown();
    let mut server = serving.join().unwrap();
    let started = Instant::now();
    server.server_close();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a close does not wait for daemon threads"
    );
    assert_eq!(
        server.strategy().threads(),
        1,
        "the stuck handler still runs"
    );
    // Its client closes: the thread ends on its own.
    stuck.shutdown(Shutdown::Write).unwrap();
    let mut out = Vec::new();
    stuck.read_to_end(&mut out).unwrap();
    wait_for(
        || server.strategy().threads() == 0,
        "the daemon thread to end",
    );
    wait_for(
        || handler_threads_in_proc() == 0,
        "the daemon thread to leave the process",
    );
}
