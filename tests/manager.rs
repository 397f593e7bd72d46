//! Fork-heavy tests of `Manager` and its proxies.
//!
//! `harness = false`: tests run one after another on the main thread.
//! Run with `cargo test --test manager [FILTER]`.

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use socketserver::process::{Address, LockProxy, Manager, Process};
use socketserver::Error;

mod forktest;
use forktest::{e, fd_link, fd_links, run, Test, TestResult};

/// Whether `pid` is alive (a zombie counts as gone).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(text) => text
            .rfind(')')
            .and_then(|i| text[i + 2..].chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

fn wait_gone(pid: i32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if !alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    !alive(pid)
}

fn dict_and_list_updated_from_five_processes() -> TestResult {
    let manager = Manager::new().map_err(e)?;
    let d = manager.dict::<i64>().map_err(e)?;
    let l = manager.list::<String>().map_err(e)?;
    let mut procs = Vec::new();
    for i in 0..5i64 {
        let (d, l) = (d.clone(), l.clone());
        let mut p = Process::new(move || {
            let ok = d.set(format!("p{i}"), &(i * i)).is_ok()
                && l.append(&format!("hello from {i}")).is_ok();
            if !ok {
                socketserver::process::exit(3);
            }
        });
        p.start().map_err(e)?;
        procs.push(p);
    }
    for mut p in procs {
        check!(
            p.join().map_err(e)? == 0,
            "a child failed to update the manager"
        );
    }
    let map = d.to_map().map_err(e)?;
    check!(map.len() == 5, "{map:?}");
    for i in 0..5i64 {
        check!(map.get(&format!("p{i}")) == Some(&(i * i)), "{map:?}");
    }
    let mut items = l.to_vec().map_err(e)?;
    items.sort();
    check!(
        items
            == (0..5)
                .map(|i| format!("hello from {i}"))
                .collect::<Vec<_>>(),
        "{items:?}"
    );
    check!(d.get("missing").map_err(e)?.is_none());
    check!(d.remove("p0").map_err(e)? == Some(0));
    check!(!d.contains_key("p0").map_err(e)?);
    check!(l.get(-1).map_err(e)?.is_some() && l.get(99).map_err(e)?.is_none());
    check!(matches!(
        l.set(99, &"x".to_string()),
        Err(Error::InvalidArgument(_))
    ));
    Ok(())
}

fn lock_value_and_queue_across_processes() -> TestResult {
    let manager = Manager::new().map_err(e)?;
    let counter = manager.value(&0i64).map_err(e)?;
    let lock = manager.lock().map_err(e)?;
    let mut procs = Vec::new();
    for _ in 0..4 {
        let (counter, lock) = (counter.clone(), lock.clone());
        let mut p = Process::new(move || {
            for _ in 0..25 {
                let Ok(_guard) = lock.lock() else {
                    socketserver::process::exit(3)
                };
                let Ok(v) = counter.get() else {
                    socketserver::process::exit(4)
                };
                if counter.set(&(v + 1)).is_err() {
                    socketserver::process::exit(5);
                }
            }
        });
        p.start().map_err(e)?;
        procs.push(p);
    }
    for mut p in procs {
        check!(p.join().map_err(e)? == 0);
    }
    check!(
        counter.get().map_err(e)? == 100,
        "counter is {}",
        counter.get().map_err(e)?
    );

    let q = manager.queue::<u32>(0).map_err(e)?;
    let producer_q = q.clone();
    let mut producer = Process::new(move || {
        for i in 0..50 {
            if producer_q.put(&i).is_err() {
                socketserver::process::exit(3);
            }
        }
    });
    producer.start().map_err(e)?;
    for i in 0..50 {
        check!(q.get_timeout(Duration::from_secs(5)).map_err(e)? == i);
    }
    check!(producer.join().map_err(e)? == 0);
    let started = Instant::now();
    check!(matches!(
        q.get_timeout(Duration::from_millis(50)),
        Err(Error::Empty)
    ));
    check!(started.elapsed() < Duration::from_secs(2));
    check!(matches!(q.get_nowait(), Err(Error::Empty)));
    let bounded = manager.queue::<u32>(1).map_err(e)?;
    bounded.put(&1).map_err(e)?;
    check!(matches!(
        bounded.put_timeout(&2, Duration::from_millis(20)),
        Err(Error::Full)
    ));

    let ns = manager.namespace().map_err(e)?;
    ns.set("x", &7).map_err(e)?;
    ns.set("name", &"pool").map_err(e)?;
    check!(ns.get::<i32>("x").map_err(e)? == Some(7));
    check!(ns.get::<String>("name").map_err(e)?.as_deref() == Some("pool"));
    check!(ns.to_map().map_err(e)?.len() == 2);
    Ok(())
}

fn lock_released_when_holder_dies() -> TestResult {
    let manager = Manager::new().map_err(e)?;
    let lock = manager.lock().map_err(e)?;
    let held = lock.clone();
    let mut p = Process::new(move || {
        if held.acquire().is_err() {
            socketserver::process::exit(3);
        }
        // Exit without releasing: the connection closes with the process.
    });
    p.start().map_err(e)?;
    check!(p.join().map_err(e)? == 0);
    check!(
        lock.acquire_timeout(Duration::from_secs(5)).map_err(e)?,
        "lock never released"
    );
    lock.release().map_err(e)?;
    check!(matches!(lock.release(), Err(Error::InvalidArgument(_))));
    Ok(())
}

fn remote_manager_wrong_authkey_refused() -> TestResult {
    let manager = Manager::builder()
        .address("127.0.0.1:0".parse::<std::net::SocketAddr>().map_err(e)?)
        .authkey(b"right key".to_vec())
        .start()
        .map_err(e)?;
    let addr = manager.address().clone();
    check!(matches!(&addr, Address::Tcp(a) if a.port() != 0 && a.ip().is_loopback()));
    let shared = manager.dict_named::<String>("shared").map_err(e)?;
    shared.set("greeting", &"hello".to_string()).map_err(e)?;
    match Manager::connect(addr.clone(), b"wrong key") {
        Err(Error::AuthenticationFailed(_)) => {}
        other => return Err(format!("expected AuthenticationFailed, got {other:?}")),
    }
    check!(manager.authkey() == b"right key");
    let client = Manager::connect(addr, manager.authkey()).map_err(e)?;
    let same = client.dict_named::<String>("shared").map_err(e)?;
    check!(same.get("greeting").map_err(e)?.as_deref() == Some("hello"));
    check!(matches!(
        client.list_named::<i32>("shared"),
        Err(Error::InvalidArgument(_))
    ));
    // The server still serves the owner after refusing a client.
    check!(shared.len().map_err(e)? == 1);
    Ok(())
}

fn manager_stops_when_dropped_or_owner_dies() -> TestResult {
    let manager = Manager::new().map_err(e)?;
    // The random default authkey is readable, so another program can be
    // told how to connect; it is not empty and it really opens the server.
    check!(manager.authkey().len() >= 16);
    let other = Manager::connect(manager.address().clone(), manager.authkey()).map_err(e)?;
    check!(other.dict::<i32>().map_err(e)?.len().map_err(e)? == 0);
    drop(other);
    let pid = manager.server_pid().ok_or("no server pid")?;
    let Address::Unix(path) = manager.address().clone() else {
        return Err("default manager should use a Unix socket".into());
    };
    check!(alive(pid));
    drop(manager);
    check!(
        !alive(pid) && kill(Pid::from_raw(pid), None).is_err(),
        "server {pid} left behind"
    );
    check!(!path.exists(), "socket {} left behind", path.display());

    // An owner killed by SIGKILL takes its manager with it.
    let report = std::env::temp_dir().join(format!("manager-test-{}", std::process::id()));
    let _ = std::fs::remove_file(&report);
    let file = report.clone();
    let mut owner = Process::new(move || {
        if let Ok(m) = Manager::new() {
            if let Some(pid) = m.server_pid() {
                let _ = std::fs::write(&file, pid.to_string());
            }
            std::thread::sleep(Duration::from_secs(60));
        }
    });
    owner.start().map_err(e)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let server = loop {
        if let Some(pid) = std::fs::read_to_string(&report)
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
        {
            break pid;
        }
        check!(
            Instant::now() < deadline,
            "owner never reported its manager"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = std::fs::remove_file(&report);
    owner.kill().map_err(e)?;
    check!(owner.join().map_err(e)? == -(Signal::SIGKILL as i32));
    check!(
        wait_gone(server, Duration::from_secs(5)),
        "manager {server} outlived its owner"
    );
    Ok(())
}

/// The manager process holds only what it needs: a listener and a pipe
/// the program opened before `Manager::new` are not in it, so dropping
/// them right after really closes them (the port refuses, the reader sees
/// end-of-file).
fn manager_holds_no_caller_descriptors() -> TestResult {
    use std::os::fd::{AsFd, AsRawFd};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(e)?;
    let addr = listener.local_addr().map_err(e)?;
    let (r, w) = nix::unistd::pipe().map_err(e)?;
    let (sock, pipe) = (fd_link(listener.as_raw_fd()), fd_link(r.as_raw_fd()));
    let manager = Manager::new().map_err(e)?;
    let server = manager.server_pid().ok_or("no server pid")?;
    let links = fd_links(server);
    check!(!links.is_empty(), "cannot read /proc/{server}/fd");
    check!(
        !links.contains(&sock) && !links.contains(&pipe),
        "the manager holds the caller's descriptors: {links:?}"
    );
    drop(listener);
    drop(w);
    check!(
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err(),
        "the dropped listener still accepts connections"
    );
    let mut fds = [nix::poll::PollFd::new(
        r.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    let five = nix::poll::PollTimeout::try_from(5000).map_err(e)?;
    check!(
        matches!(nix::poll::poll(&mut fds, five), Ok(n) if n > 0),
        "the pipe's reader saw no end-of-file"
    );
    // The manager still works.
    let d = manager.dict::<u32>().map_err(e)?;
    d.set("k", &7).map_err(e)?;
    check!(d.get("k").map_err(e)? == Some(7));
    Ok(())
}

/// Clients that connect and say nothing do not hold up others: the
/// authkey handshake runs on each connection's own thread, not on the
/// accept loop (where each silent peer cost everyone 5 s).
fn silent_peers_do_not_block_other_clients() -> TestResult {
    a_client_behind_silent_peers(3, Duration::ZERO)
}

/// A peer that fills every handshake slot with silent connections (and
/// keeps them open) does not lock out a client that knows the key: the
/// oldest handshake makes room for the newest instead of the accept loop
/// waiting for a slot (where 64 silent connections, reopened as they
/// timed out, refused everyone).
fn handshake_slots_full_of_silent_peers_do_not_lock_clients_out() -> TestResult {
    // 300 ms: let the server accept them all and start their handshakes.
    a_client_behind_silent_peers(80, Duration::from_millis(300))
}

/// Opens `silent` connections that say nothing, waits `settle`, then
/// checks that a client with the key connects and is served well within
/// the 5 s handshake timeout.
fn a_client_behind_silent_peers(silent: usize, settle: Duration) -> TestResult {
    let manager = Manager::new().map_err(e)?;
    let Address::Unix(path) = manager.address().clone() else {
        return Err("expected a Unix socket".into());
    };
    let peers: Vec<std::os::unix::net::UnixStream> = (0..silent)
        .map(|_| std::os::unix::net::UnixStream::connect(&path))
        .collect::<Result<_, _>>()
        .map_err(e)?;
    std::thread::sleep(settle);
    let started = Instant::now();
    let other = Manager::connect(manager.address().clone(), manager.authkey());
    let took = started.elapsed();
    drop(peers);
    let other = other.map_err(e)?;
    let d = other.dict_named::<u32>("shared").map_err(e)?;
    d.set("x", &1).map_err(e)?;
    check!(
        took < Duration::from_secs(2),
        "a client behind {silent} silent ones took {took:?}"
    );
    Ok(())
}

/// A manager on a Unix socket path the program chose leaves no socket
/// file behind, whether its owner stops it (drop, `shutdown`) or a
/// client asks it to shut down: a stale file makes the next manager on
/// that path fail with "address in use".
fn manager_on_a_chosen_unix_path_removes_it() -> TestResult {
    let dir = tempfile::tempdir().map_err(e)?;
    let path = dir.path().join("chosen.sock");
    // Stopped by its owner.
    let manager = Manager::builder()
        .address(path.clone())
        .start()
        .map_err(e)?;
    check!(path.exists());
    manager.dict::<u32>().map_err(e)?.set("a", &1).map_err(e)?;
    drop(manager);
    check!(!path.exists(), "drop left {} behind", path.display());
    // Stopped by a client: the owner finds it gone.
    let mut manager = Manager::builder()
        .address(path.clone())
        .start()
        .map_err(e)?;
    let pid = manager.server_pid().ok_or("no server pid")?;
    let mut client = Manager::connect(path.clone(), manager.authkey()).map_err(e)?;
    client.shutdown().map_err(e)?;
    check!(
        wait_gone(pid, Duration::from_secs(5)),
        "server {pid} still runs"
    );
    check!(
        !path.exists(),
        "a client's shutdown left {} behind",
        path.display()
    );
    manager.shutdown().map_err(e)?;
    // The path is free again.
    let again = Manager::builder()
        .address(path.clone())
        .start()
        .map_err(e)?;
    drop(again);
    check!(!path.exists());
    Ok(())
}

/// The lock is still held through our connection: another process cannot
/// take it within 100 ms. Then releases it.
fn still_ours(lock: &LockProxy) -> TestResult {
    let mut p = Process::new({
        let lock = lock.clone();
        move || {
            if lock
                .acquire_timeout(Duration::from_millis(100))
                .unwrap_or(true)
            {
                socketserver::process::exit(1);
            }
        }
    });
    p.start().map_err(e)?;
    check!(
        p.join().map_err(e)? == 0,
        "another process took the lock we hold"
    );
    lock.release().map_err(e)?;
    Ok(())
}

/// A reply that would exceed the frame limit (32 MiB) is a clear error
/// for the call that asked for it, not a closed connection: the client
/// used to see `Eof`, and the server released every lock that
/// connection held, behind its holder's back.
fn reply_over_the_frame_limit_is_an_error_not_a_lost_connection() -> TestResult {
    let manager = Manager::new().map_err(e)?;
    let lock = manager.lock().map_err(e)?;
    let list = manager.list::<String>().map_err(e)?;
    let big = "x".repeat(12 << 20);
    for _ in 0..3 {
        list.append(&big).map_err(e)?;
    }
    // One connection only (a single thread reuses its idle one): it
    // holds the lock while asking for the 36 MiB reply.
    check!(lock.acquire_timeout(Duration::ZERO).map_err(e)?);
    match list.to_vec() {
        Err(Error::InvalidArgument(msg)) => check!(msg.contains("limit"), "{msg}"),
        other => {
            return Err(format!(
                "expected InvalidArgument, got {:?}",
                other.map(|v| v.len())
            ))
        }
    }
    // Still connected, and still holding the lock.
    check!(list.len().map_err(e)? == 3);
    still_ours(&lock)
}

/// A call whose request is over the frame limit fails with
/// `MessageTooLarge` before anything is sent, and the connection stays:
/// dropping it made the server release the locks held through it.
fn request_over_the_frame_limit_keeps_the_connection_and_its_locks() -> TestResult {
    let manager = Manager::new().map_err(e)?;
    let lock = manager.lock().map_err(e)?;
    let list = manager.list::<String>().map_err(e)?;
    check!(lock.acquire_timeout(Duration::ZERO).map_err(e)?);
    match list.append(&"x".repeat(33 << 20)) {
        Err(Error::MessageTooLarge { .. }) => {}
        other => return Err(format!("expected MessageTooLarge, got {other:?}")),
    }
    check!(list.len().map_err(e)? == 0);
    still_ours(&lock)
}

/// A consumer that dies while blocked in `QueueProxy::get` does not take
/// the next item with it: its server thread used to wake for that item,
/// take it from the queue and fail to send it to nobody.
fn a_dead_waiter_takes_no_item() -> TestResult {
    let manager = Manager::new().map_err(e)?;
    let q = manager.queue::<u32>(0).map_err(e)?;
    let mut consumers = Vec::new();
    for _ in 0..2 {
        let q = q.clone();
        let mut p = Process::new(move || {
            let _ = q.get();
            socketserver::process::exit(3);
        });
        p.start().map_err(e)?;
        consumers.push(p);
    }
    // Both are blocked in `get` on the server by now.
    std::thread::sleep(Duration::from_millis(300));
    for p in &mut consumers {
        p.kill().map_err(e)?;
    }
    for mut p in consumers {
        check!(p.join().map_err(e)? == -(Signal::SIGKILL as i32));
    }
    for i in 0..2 {
        q.put(&i).map_err(e)?;
    }
    for i in 0..2 {
        match q.get_timeout(Duration::from_secs(2)) {
            Ok(v) => check!(v == i, "got {v}, expected {i}"),
            Err(err) => return Err(format!("item {i} lost to a dead consumer: {err:?}")),
        }
    }
    Ok(())
}

/// Peers that misbehave in every way the handshake allows (silent,
/// evicted past the 64 slots, wrong key, garbage, closing half-way)
/// leave the manager holding no more descriptors or threads than
/// before, and it serves the next client.
fn misbehaving_peers_leak_no_descriptors_or_threads() -> TestResult {
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    let manager = Manager::new().map_err(e)?;
    let server = manager.server_pid().ok_or("no server pid")?;
    let Address::Unix(path) = manager.address().clone() else {
        return Err("expected a Unix socket".into());
    };
    let d = manager.dict::<u32>().map_err(e)?;
    d.set("k", &1).map_err(e)?;
    let threads =
        |pid: i32| std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count());
    let (fds_before, threads_before) = (forktest::fd_count(server), threads(server));
    // 100 silent ones (the first 36 are ended to make room), then closed.
    let silent: Vec<UnixStream> = (0..100)
        .map(|_| UnixStream::connect(&path))
        .collect::<Result<_, _>>()
        .map_err(e)?;
    std::thread::sleep(Duration::from_millis(300));
    drop(silent);
    for i in 0..20u32 {
        match i % 3 {
            0 => check!(matches!(
                Manager::connect(path.clone(), b"wrong key"),
                Err(Error::AuthenticationFailed(_))
            )),
            1 => {
                let mut s = UnixStream::connect(&path).map_err(e)?;
                let _ = s.write_all(&[0, 0, 1, 0, 1, 2, 3]);
            }
            _ => {
                let mut s = UnixStream::connect(&path).map_err(e)?;
                let _ = s.write_all(&(u32::MAX).to_be_bytes());
            }
        }
    }
    // Every handshake thread notices its peer is gone well within 2 s.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (fds, threads_now) = (forktest::fd_count(server), threads(server));
        if fds <= fds_before && threads_now <= threads_before {
            break;
        }
        check!(
            Instant::now() < deadline,
            "after the peers left: {fds} descriptors (before {fds_before}), {threads_now} threads (before {threads_before})"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    check!(d.get("k").map_err(e)? == Some(1));
    // A timeout of u64::MAX milliseconds is just "for ever".
    let q = manager.queue::<u32>(0).map_err(e)?;
    q.put(&5).map_err(e)?;
    check!(q.get_timeout(Duration::MAX).map_err(e)? == 5);
    Ok(())
}

/// An owner killed by SIGKILL cannot remove its manager's socket
/// directory; the next `Manager::new` (of any program of the same user)
/// removes it, and leaves the directory of a live manager alone.
fn socket_dir_of_a_killed_owner_is_removed_by_the_next_manager() -> TestResult {
    let live = Manager::new().map_err(e)?;
    let Address::Unix(live_path) = live.address().clone() else {
        return Err("expected a Unix socket".into());
    };
    let report = std::env::temp_dir().join(format!("manager-dir-test-{}", std::process::id()));
    let _ = std::fs::remove_file(&report);
    let file = report.clone();
    let mut owner = Process::new(move || {
        if let Ok(m) = Manager::new() {
            if let (Some(pid), Address::Unix(path)) = (m.server_pid(), m.address()) {
                let _ = std::fs::write(&file, format!("{pid} {}", path.display()));
            }
            std::thread::sleep(Duration::from_secs(60));
        }
    });
    owner.start().map_err(e)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let (server, path) = loop {
        if let Some((pid, path)) = std::fs::read_to_string(&report).ok().and_then(|t| {
            let (pid, path) = t.split_once(' ')?;
            Some((pid.parse::<i32>().ok()?, std::path::PathBuf::from(path)))
        }) {
            break (pid, path);
        }
        check!(
            Instant::now() < deadline,
            "owner never reported its manager"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = std::fs::remove_file(&report);
    owner.kill().map_err(e)?;
    owner.join().map_err(e)?;
    check!(
        wait_gone(server, Duration::from_secs(5)),
        "manager outlived its owner"
    );
    let dir = path.parent().ok_or("no parent")?.to_owned();
    check!(
        dir.exists(),
        "expected the killed owner's {} to be left",
        dir.display()
    );
    let next = Manager::new().map_err(e)?;
    check!(
        !dir.exists(),
        "{} still there after the next Manager::new",
        dir.display()
    );
    check!(live_path.exists(), "a live manager's socket was removed");
    check!(live.dict::<u32>().map_err(e)?.len().map_err(e)? == 0);
    drop(next);
    Ok(())
}

/// Reads one length-prefixed frame from a raw stream.
fn read_frame(s: &mut std::os::unix::net::UnixStream) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let mut frame = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut frame)?;
    Ok(frame)
}

fn write_frame(s: &mut std::os::unix::net::UnixStream, frame: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    s.write_all(&(frame.len() as u32).to_be_bytes())?;
    s.write_all(frame)
}

/// A client that has answered the challenge correctly is not ended to
/// make room, even when it is the oldest handshake: only strangers are.
/// (It is slow here on purpose, between its two halves of the handshake.)
fn a_client_that_proved_the_key_is_not_ended_for_room() -> TestResult {
    use hmac::{Hmac, Mac};
    use std::os::unix::net::UnixStream;
    let manager = Manager::builder()
        .authkey(b"the key".to_vec())
        .start()
        .map_err(e)?;
    let Address::Unix(path) = manager.address().clone() else {
        return Err("expected a Unix socket".into());
    };
    let mut slow = UnixStream::connect(&path).map_err(e)?;
    slow.set_read_timeout(Some(Duration::from_secs(4)))
        .map_err(e)?;
    let challenge = read_frame(&mut slow).map_err(e)?;
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"the key").map_err(e)?;
    mac.update(&challenge);
    write_frame(&mut slow, &mac.finalize().into_bytes()).map_err(e)?;
    check!(read_frame(&mut slow).map_err(e)? == b"#WELCOME#");
    // Now 70 strangers fill the table while it is the oldest.
    let silent: Vec<UnixStream> = (0..70)
        .map(|_| UnixStream::connect(&path))
        .collect::<Result<_, _>>()
        .map_err(e)?;
    std::thread::sleep(Duration::from_millis(300));
    let mut ours = b"#CHALLENGE#".to_vec();
    ours.extend_from_slice(&[7u8; 32]);
    write_frame(&mut slow, &ours).map_err(e)?;
    let answer = read_frame(&mut slow);
    drop(silent);
    let answer = answer.map_err(|err| format!("the verified client was ended: {err}"))?;
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"the key").map_err(e)?;
    mac.update(&ours);
    check!(
        mac.verify_slice(&answer).is_ok(),
        "the server's answer is wrong"
    );
    write_frame(&mut slow, b"#WELCOME#").map_err(e)?;
    // Served like any client.
    write_frame(
        &mut slow,
        br#"{"Create":{"kind":"Dict","name":"x","init":null}}"#,
    )
    .map_err(e)?;
    let reply = read_frame(&mut slow).map_err(e)?;
    check!(
        reply.starts_with(b"{\"Created\""),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    Ok(())
}

/// Making room ends one handshake per new connection, the oldest, not
/// the whole table: a client that connected last, and has not answered
/// yet, still gets its turn.
fn making_room_ends_only_the_oldest_handshake() -> TestResult {
    use hmac::{Hmac, Mac};
    use std::os::unix::net::UnixStream;
    let manager = Manager::builder()
        .authkey(b"the key".to_vec())
        .start()
        .map_err(e)?;
    let Address::Unix(path) = manager.address().clone() else {
        return Err("expected a Unix socket".into());
    };
    let mut silent: Vec<UnixStream> = (0..63)
        .map(|_| UnixStream::connect(&path))
        .collect::<Result<_, _>>()
        .map_err(e)?;
    std::thread::sleep(Duration::from_millis(200));
    // The 64th: reads its challenge, answers only later.
    let mut late = UnixStream::connect(&path).map_err(e)?;
    late.set_read_timeout(Some(Duration::from_secs(4)))
        .map_err(e)?;
    let challenge = read_frame(&mut late).map_err(e)?;
    // The 65th and 66th make room twice.
    for _ in 0..2 {
        silent.push(UnixStream::connect(&path).map_err(e)?);
    }
    std::thread::sleep(Duration::from_millis(300));
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"the key").map_err(e)?;
    mac.update(&challenge);
    let answered =
        write_frame(&mut late, &mac.finalize().into_bytes()).and_then(|()| read_frame(&mut late));
    drop(silent);
    match answered {
        Ok(verdict) => check!(verdict == b"#WELCOME#"),
        Err(err) => return Err(format!("the newest handshake was ended: {err}")),
    }
    Ok(())
}

fn main() {
    let tests: &[Test] = &[
        (
            "dict_and_list_updated_from_five_processes",
            dict_and_list_updated_from_five_processes,
        ),
        (
            "lock_value_and_queue_across_processes",
            lock_value_and_queue_across_processes,
        ),
        (
            "lock_released_when_holder_dies",
            lock_released_when_holder_dies,
        ),
        (
            "remote_manager_wrong_authkey_refused",
            remote_manager_wrong_authkey_refused,
        ),
        (
            "manager_stops_when_dropped_or_owner_dies",
            manager_stops_when_dropped_or_owner_dies,
        ),
        (
            "manager_holds_no_caller_descriptors",
            manager_holds_no_caller_descriptors,
        ),
        (
            "silent_peers_do_not_block_other_clients",
            silent_peers_do_not_block_other_clients,
        ),
        (
            "handshake_slots_full_of_silent_peers_do_not_lock_clients_out",
            handshake_slots_full_of_silent_peers_do_not_lock_clients_out,
        ),
        (
            "manager_on_a_chosen_unix_path_removes_it",
            manager_on_a_chosen_unix_path_removes_it,
        ),
        (
            "reply_over_the_frame_limit_is_an_error_not_a_lost_connection",
            reply_over_the_frame_limit_is_an_error_not_a_lost_connection,
        ),
        (
            "request_over_the_frame_limit_keeps_the_connection_and_its_locks",
            request_over_the_frame_limit_keeps_the_connection_and_its_locks,
        ),
        ("a_dead_waiter_takes_no_item", a_dead_waiter_takes_no_item),
        (
            "misbehaving_peers_leak_no_descriptors_or_threads",
            misbehaving_peers_leak_no_descriptors_or_threads,
        ),
        (
            "socket_dir_of_a_killed_owner_is_removed_by_the_next_manager",
            socket_dir_of_a_killed_owner_is_removed_by_the_next_manager,
        ),
        (
            "a_client_that_proved_the_key_is_not_ended_for_room",
            a_client_that_proved_the_key_is_not_ended_for_room,
        ),
        (
            "making_room_ends_only_the_oldest_handshake",
            making_room_ends_only_the_oldest_handshake,
        ),
    ];
    run(tests);
}
