//! Security and robustness of the FTP example: path confinement (including
//! the rename race of issue 11 and the existence oracle), bounce
//! protection, bounded command lines, atomic uploads without litter, long
//! names, login throttling per IP, connection limits, timeouts, log hygiene
//! and graceful shutdown.

mod common_support;
mod ftp_support;

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use ftp_support::{tree, wait_until, Ctrl, FtpServer};
use socket2::SockRef;

/// Every mode that serves sessions concurrently (the tests hold several
/// connections at once).
const MODES: [&str; 4] = ftp_support::CONCURRENT_MODES;

/// Builds `base/outside/secret` and links to it from inside the root.
fn plant_outside(server: &FtpServer) -> std::path::PathBuf {
    let outside = server.base.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("secret"), b"top secret").unwrap();
    symlink(&outside, server.root().join("escape_dir")).unwrap();
    symlink(outside.join("secret"), server.root().join("escape_file")).unwrap();
    // A sibling sharing the root's name as a prefix.
    let evil = server.base.path().join("root_evil");
    fs::create_dir(&evil).unwrap();
    fs::write(evil.join("secret"), b"evil").unwrap();
    symlink("../root_evil", server.root().join("evil")).unwrap();
    fs::write(server.root().join("inside.txt"), b"inside").unwrap();
    outside
}

#[test]
fn traversal_stays_inside_the_root() {
    for mode in MODES {
        let server = FtpServer::start(mode, &[]);
        let outside = plant_outside(&server);
        let mut c = Ctrl::login(server.addr);
        // `..` clamps at the root, as in a chroot: these stay at `/`.
        for cmd in ["CWD ../../..", "CWD ..", "CWD /../..", "CDUP"] {
            let (code, text) = c.cmd(cmd);
            assert!(code == 250 || code == 200, "{mode}: {cmd} -> {text}");
            assert!(c.cmd("PWD").1.contains("\"/\""), "{mode}: {cmd}");
        }
        // Links that lead outside resolve inside the root, where their
        // targets do not exist: like missing names.
        for cmd in [
            "CWD escape_dir",
            "CWD evil",
            "SIZE ../../etc/passwd",
            "SIZE /etc/passwd",
            "SIZE escape_file",
            "SIZE escape_dir/secret",
            "SIZE evil/secret",
            "MDTM escape_file",
            "MLST escape_file",
            "MKD escape_dir/newdir",
            "DELE escape_dir/secret",
            "RMD ../outside",
        ] {
            let (code, text) = c.cmd(cmd);
            assert_eq!(code, 550, "{mode}: {cmd} -> {text}");
            assert!(
                text.contains("No such file or directory"),
                "{mode}: {cmd} -> {text}"
            );
        }
        assert!(c.cmd("PWD").1.contains("\"/\""));
        for cmd in [
            "RETR ../../etc/passwd",
            "RETR /etc/passwd",
            "RETR escape_file",
            "RETR escape_dir/secret",
            "RETR evil/secret",
            "LIST escape_dir",
            "MLSD escape_dir",
            "STOR escape_dir/new",
            "STOR ../nodir/new",
        ] {
            let _data = c.pasv();
            let (code, text) = c.cmd(cmd);
            assert_eq!(code, 550, "{mode}: {cmd} -> {text}");
        }
        // `MLST ../` and `LIST ../` name the root itself.
        assert_eq!(c.cmd("MLST ../").0, 250, "{mode}");
        // `MKD ../newdir` creates /newdir inside the root.
        assert_eq!(c.cmd("MKD ../newdir").0, 257, "{mode}");
        assert!(server.root().join("newdir").is_dir());
        assert_eq!(c.cmd("RMD /../newdir").0, 250, "{mode}");
        // The listing of / hides links that lead nowhere inside the root.
        let (code, listing) = c.fetch("NLST ../");
        assert_eq!(code, 226);
        assert_eq!(String::from_utf8(listing).unwrap(), "inside.txt\r\n");
        // RNTO through an outside link: like a missing directory.
        assert_eq!(c.cmd("RNFR inside.txt").0, 350);
        assert_eq!(c.cmd("RNTO escape_dir/x").0, 550);
        assert_eq!(c.cmd("RNTO x").0, 503, "RNTO needs a fresh RNFR");
        // RNTO ../x renames to /x inside the root.
        assert_eq!(c.cmd("RNFR inside.txt").0, 350);
        assert_eq!(c.cmd("RNTO ../x").0, 250);
        assert!(server.root().join("x").exists());
        assert_eq!(c.cmd("RNFR x").0, 350);
        assert_eq!(c.cmd("RNTO inside.txt").0, 250);
        assert!(server.root().join("inside.txt").exists());
        // Nothing outside changed.
        assert_eq!(tree(&outside), ["secret"]);
        assert_eq!(fs::read(outside.join("secret")).unwrap(), b"top secret");
        let mut top: Vec<String> = fs::read_dir(server.base.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        top.sort();
        assert_eq!(top, ["outside", "root", "root_evil", "server.log"]);
        assert_eq!(tree(&server.base.path().join("root_evil")), ["secret"]);
        assert_eq!(c.cmd("QUIT").0, 221);
    }
}

#[test]
fn cdup_and_cwd_dotdot_at_the_root_stay_at_the_root() {
    for mode in MODES {
        let server = FtpServer::start(mode, &[]);
        fs::create_dir(server.root().join("sub")).unwrap();
        let mut c = Ctrl::login(server.addr);
        for cmd in ["CDUP", "XCUP", "CWD ..", "CWD /..", "CWD ../..", "XCWD .."] {
            let (code, text) = c.cmd(cmd);
            assert!(code == 250 || code == 200, "{mode}: {cmd} -> {text}");
            let (code, pwd) = c.cmd("PWD");
            assert_eq!(
                (code, pwd.trim_end()),
                (257, "257 \"/\" is the current directory")
            );
        }
        assert_eq!(c.cmd("CWD sub").0, 250);
        assert_eq!(c.cmd("CDUP").0, 250);
        assert!(c.cmd("PWD").1.contains("\"/\""));
        assert_eq!(c.cmd("CWD sub/../../../sub").0, 250);
        assert!(c.cmd("PWD").1.contains("\"/sub\""), "{mode}");
        // A listing after climbing "above" the root is the root's.
        let (code, names) = c.fetch("NLST ../../..");
        assert_eq!((code, names.as_slice()), (226, &b"sub\r\n"[..]), "{mode}");
    }
}

#[test]
fn anonymous_is_read_only_unless_allowed() {
    // No --anonymous: anonymous logins fail.
    let server = FtpServer::start("threading", &[]);
    let (mut c, _, _) = Ctrl::connect(server.addr);
    c.cmd("USER anonymous");
    assert_eq!(c.cmd("PASS guest@").0, 530);
    drop(server);

    let server = FtpServer::start("threading", &["--anonymous"]);
    fs::write(server.root().join("f.txt"), b"keep").unwrap();
    fs::create_dir(server.root().join("d")).unwrap();
    let (mut c, _, _) = Ctrl::connect(server.addr);
    assert_eq!(c.cmd("USER anonymous").0, 331);
    assert_eq!(c.cmd("PASS guest@").0, 230);
    let (code, data) = c.fetch("RETR f.txt");
    assert_eq!((code, data.as_slice()), (226, &b"keep"[..]));
    for cmd in ["MKD new", "RMD d", "DELE f.txt", "RNFR f.txt"] {
        assert_eq!(c.cmd(cmd).0, 550, "{cmd}");
    }
    for cmd in ["STOR f.txt", "STOR new.txt", "APPE f.txt"] {
        let _data = c.pasv();
        assert_eq!(c.cmd(cmd).0, 550, "{cmd}");
    }
    assert_eq!(tree(&server.root()), ["d/", "f.txt"]);
    assert_eq!(fs::read(server.root().join("f.txt")).unwrap(), b"keep");
    drop(server);

    let server = FtpServer::start("threading", &["--anonymous", "--anonymous-write"]);
    let (mut c, _, _) = Ctrl::connect(server.addr);
    c.cmd("USER ftp");
    assert_eq!(c.cmd("PASS x").0, 230);
    assert_eq!(c.cmd("MKD new").0, 257);
    let mut data = c.pasv();
    assert_eq!(c.cmd("STOR new/up.txt").0, 150);
    data.write_all(b"uploaded").unwrap();
    drop(data);
    assert_eq!(c.read_reply().0, 226);
    assert_eq!(
        fs::read(server.root().join("new/up.txt")).unwrap(),
        b"uploaded"
    );
}

#[test]
fn port_to_another_address_is_refused_without_connecting() {
    for mode in MODES {
        let server = FtpServer::start(mode, &[]);
        // 127.0.0.2 is another address on this machine: the "victim".
        let victim = TcpListener::bind("127.0.0.2:0").unwrap();
        victim.set_nonblocking(true).unwrap();
        let vport = victim.local_addr().unwrap().port();
        let mut c = Ctrl::login(server.addr);
        let port_arg = format!("PORT 127,0,0,2,{},{}", vport >> 8, vport & 0xff);
        assert_eq!(c.cmd(&port_arg).0, 500);
        assert_eq!(c.cmd("LIST").0, 425, "no data connection was set up");
        assert_eq!(c.cmd(&format!("EPRT |1|127.0.0.2|{vport}|")).0, 500);
        assert_eq!(c.cmd("RETR x").0, 550);
        assert_eq!(c.cmd("NLST").0, 425);
        // Own address but a privileged port.
        assert_eq!(c.cmd("PORT 127,0,0,1,0,21").0, 500);
        assert_eq!(c.cmd("EPRT |1|127.0.0.1|80|").0, 500);
        // Bad syntax and unknown family.
        assert_eq!(c.cmd("PORT 1,2,3").0, 501);
        assert_eq!(c.cmd("EPRT |9|x|5000|").0, 522);
        std::thread::sleep(Duration::from_millis(300));
        match victim.accept() {
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            other => panic!("{mode}: the victim saw a connection: {other:?}"),
        }
        // The session still works with a legitimate active address.
        let me = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = me.local_addr().unwrap().port();
        assert_eq!(c.cmd(&format!("EPRT |1|127.0.0.1|{p}|")).0, 200);
        assert_eq!(c.cmd("NLST").0, 150);
        let (mut d, _) = me.accept().unwrap();
        let mut buf = Vec::new();
        d.read_to_end(&mut buf).unwrap();
        assert_eq!(c.read_reply().0, 226);
    }
}

#[test]
fn passive_accepts_only_the_control_peer() {
    for mode in MODES {
        let server = FtpServer::start(mode, &[]);
        fs::write(server.root().join("f"), b"data").unwrap();
        let mut c = Ctrl::login(server.addr);
        let (code, text) = c.cmd("EPSV");
        assert_eq!(code, 229, "{text}");
        let port: u16 = text.split('|').nth(3).unwrap().parse().unwrap();
        let data_addr: SocketAddr = ([127, 0, 0, 1], port).into();
        // A foreign address connects first.
        let mut thief = tcp_from(data_addr, [127, 0, 0, 2]);
        c.send_raw(b"RETR f\r\n");
        std::thread::sleep(Duration::from_millis(200));
        let mut mine = TcpStream::connect(data_addr).unwrap();
        assert_eq!(c.read_reply().0, 150);
        let mut got = Vec::new();
        mine.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"data");
        assert_eq!(c.read_reply().0, 226);
        thief
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut stolen = Vec::new();
        let _ = thief.read_to_end(&mut stolen);
        assert!(stolen.is_empty(), "{mode}: the thief got data");
    }
}

/// Connections to a passive port from foreign addresses are refused one
/// by one, and logged at `debug` each with one `warn` counting them:
/// whoever reaches the port could otherwise write a `warn` line per
/// connection (before: 20 connections, 20 lines).
#[test]
fn refused_passive_connections_do_not_flood_the_log() {
    for mode in ["threading", "forking"] {
        let server = FtpServer::start(mode, &[]);
        fs::write(server.root().join("f"), b"data").unwrap();
        let mut c = Ctrl::login(server.addr);
        let (code, text) = c.cmd("EPSV");
        assert_eq!(code, 229, "{text}");
        let port: u16 = text.split('|').nth(3).unwrap().parse().unwrap();
        let data_addr: SocketAddr = ([127, 0, 0, 1], port).into();
        c.send_raw(b"RETR f\r\n");
        for _ in 0..20 {
            let mut thief = tcp_from(data_addr, [127, 0, 0, 2]);
            // Refused: closed without a byte.
            let mut stolen = Vec::new();
            let _ = thief.read_to_end(&mut stolen);
            assert!(stolen.is_empty(), "{mode}: the thief got data");
        }
        let mut mine = TcpStream::connect(data_addr).unwrap();
        assert_eq!(c.read_reply().0, 150);
        let mut got = Vec::new();
        mine.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"data");
        assert_eq!(c.read_reply().0, 226);
        let log = server.log();
        let warns = log
            .lines()
            .filter(|l| l.contains("WARN") && l.contains("refused passive data connection"))
            .count();
        assert_eq!(warns, 1, "{mode}: {log}");
    }
}

#[test]
fn long_command_line_gets_500_and_session_continues() {
    for mode in MODES {
        let server = FtpServer::start(mode, &[]);
        let mut c = Ctrl::login(server.addr);
        let long = format!("NOOP {}\r\n", "x".repeat(10 * 1024));
        c.send_raw(long.as_bytes());
        assert_eq!(c.read_reply().0, 500);
        assert_eq!(c.cmd("NOOP").0, 200);
        assert!(c.cmd("PWD").1.starts_with("257 \"/\""));
        // Before login too, and with a bare LF.
        let (mut c2, _, _) = Ctrl::connect(server.addr);
        c2.send_raw(format!("USER {}\n", "y".repeat(8192)).as_bytes());
        assert_eq!(c2.read_reply().0, 500);
        assert_eq!(c2.cmd("user bob").0, 331);
        assert_eq!(c2.cmd("pass secret").0, 230);
    }
}

/// Starts a STOR over `existing` and sends part of a replacement.
fn start_upload(c: &mut Ctrl) -> TcpStream {
    assert_eq!(c.cmd("TYPE I").0, 200);
    let mut data = c.pasv();
    assert_eq!(c.cmd("STOR existing.bin").0, 150);
    data.write_all(&vec![b'N'; 256 * 1024]).unwrap();
    data
}

#[test]
fn aborted_upload_leaves_old_file_intact() {
    for mode in MODES {
        let server = FtpServer::start(mode, &[]);
        let old = ftp_support::pattern(100_000, 5);
        let target = server.root().join("existing.bin");
        fs::write(&target, &old).unwrap();
        let only_old = || tree(&server.root()) == ["existing.bin"];

        // 1. ABOR on the control connection.
        let mut c = Ctrl::login(server.addr);
        let data = start_upload(&mut c);
        std::thread::sleep(Duration::from_millis(100));
        c.send_raw(b"ABOR\r\n");
        assert_eq!(c.read_reply().0, 426);
        assert_eq!(c.read_reply().0, 226);
        drop(data);
        assert_eq!(fs::read(&target).unwrap(), old, "{mode}: ABOR");
        assert!(only_old(), "{mode}: {:?}", tree(&server.root()));

        // 2. The data connection is reset mid-transfer.
        let data = start_upload(&mut c);
        socket2::SockRef::from(&data)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(data);
        let (code, _) = c.read_reply();
        assert_eq!(code, 426, "{mode}: reset");
        assert_eq!(fs::read(&target).unwrap(), old, "{mode}: reset");
        assert!(only_old(), "{mode}: {:?}", tree(&server.root()));

        // 3. The client vanishes (control and data) mid-transfer.
        let data = start_upload(&mut c);
        drop(c);
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            wait_until(Duration::from_secs(10), only_old),
            "{mode}: temp file left: {:?}",
            tree(&server.root())
        );
        drop(data);
        assert_eq!(fs::read(&target).unwrap(), old, "{mode}: vanished");

        // A completed upload does replace it.
        let mut c = Ctrl::login(server.addr);
        let mut data = c.pasv();
        assert_eq!(c.cmd("STOR existing.bin").0, 150);
        data.write_all(b"new").unwrap();
        drop(data);
        assert_eq!(c.read_reply().0, 226);
        assert_eq!(fs::read(&target).unwrap(), b"new");
        assert!(only_old());
    }
}

#[test]
fn three_failed_logins_disconnect() {
    for mode in MODES {
        let server = FtpServer::start(mode, &[]);
        let (mut c, _, _) = Ctrl::connect(server.addr);
        let start = std::time::Instant::now();
        for attempt in 1..=3 {
            assert_eq!(c.cmd("USER bob").0, 331);
            let (code, text) = c.cmd("PASS wrong");
            let want = if attempt < 3 { 530 } else { 421 };
            assert_eq!(code, want, "{mode} attempt {attempt}: {text}");
        }
        assert!(
            start.elapsed() >= Duration::from_millis(850),
            "every PASS is answered after --login-delay (300 ms)"
        );
        assert!(c.at_eof(), "{mode}: connection closed after 3 failures");
        // Unknown users fail the same way and need login for commands.
        let (mut c, _, _) = Ctrl::connect(server.addr);
        assert_eq!(c.cmd("PWD").0, 530);
        c.cmd("USER mallory");
        assert_eq!(c.cmd("PASS secret").0, 530);
        assert_eq!(c.cmd("PASS secret").0, 503, "PASS needs USER first");
    }
}

#[test]
fn passwords_never_reach_the_log() {
    for mode in MODES {
        let server = FtpServer::start_env(mode, &[], &[("RUST_LOG", "trace")]);
        let (mut c, _, _) = Ctrl::connect(server.addr);
        c.cmd("USER bob");
        assert_eq!(c.cmd("PASS WrongPassw0rd").0, 530);
        c.cmd("USER bob");
        assert_eq!(c.cmd("PASS secret").0, 230);
        assert_eq!(c.cmd("QUIT").0, 221);
        drop(c);
        assert!(wait_until(Duration::from_secs(5), || server
            .log()
            .contains("session end")));
        let log = server.log();
        assert!(
            log.contains("PASS ****"),
            "commands are logged at debug: {log}"
        );
        assert!(!log.contains("WrongPassw0rd"), "{log}");
        assert!(!log.contains("secret"), "{log}");
    }
}

/// Opens a connection and returns the first reply code.
fn greet(addr: SocketAddr) -> (Ctrl, u16) {
    let (c, code, _) = Ctrl::connect(addr);
    (c, code)
}

#[test]
fn per_ip_and_total_limits_reply_421() {
    for mode in MODES {
        let server = FtpServer::start(mode, &["--max-per-ip", "2"]);
        let (a, ca) = greet(server.addr);
        let (_b, cb) = greet(server.addr);
        let (mut c, cc) = greet(server.addr);
        assert_eq!((ca, cb, cc), (220, 220, 421), "{mode}");
        assert!(c.at_eof());
        drop(a);
        assert!(
            wait_until(Duration::from_secs(10), || greet(server.addr).1 == 220),
            "{mode}: slot freed after a session ends"
        );
        drop(server);

        let server = FtpServer::start(mode, &["--max-connections", "1"]);
        let (a, ca) = greet(server.addr);
        let (mut b, cb) = greet(server.addr);
        assert_eq!((ca, cb), (220, 421), "{mode}");
        assert!(b.at_eof());
        drop(a);
        assert!(wait_until(Duration::from_secs(10), || greet(server.addr).1 == 220));
    }
}

#[test]
fn idle_control_connection_times_out() {
    for mode in MODES {
        let server = FtpServer::start(mode, &["--idle-timeout", "1s"]);
        let (mut c, code, _) = Ctrl::connect(server.addr);
        assert_eq!(code, 220);
        let start = std::time::Instant::now();
        assert_eq!(c.read_reply().0, 421, "{mode}");
        assert!(start.elapsed() >= Duration::from_millis(800));
        assert!(c.at_eof());
        // A passive listener nobody connects to times out too.
        let mut c = Ctrl::login(server.addr);
        let (code, _) = c.cmd("PASV");
        assert_eq!(code, 227);
        assert_eq!(c.cmd("NLST").0, 425, "{mode}: passive accept timed out");
    }
}

#[test]
fn sigterm_shuts_down_with_status_0() {
    for mode in MODES {
        let mut server = FtpServer::start(mode, &[]);
        let mut c = Ctrl::login(server.addr);
        assert_eq!(c.cmd("QUIT").0, 221);
        let status = server.terminate();
        assert_eq!(status.code(), Some(0), "{mode}: {status:?}");
        assert!(TcpStream::connect(server.addr).is_err(), "listener closed");
        // A client that stays connected delays shutdown by at most the
        // grace period (5 s), not the idle timeout.
        let mut server = FtpServer::start(mode, &[]);
        let _idle = Ctrl::login(server.addr);
        let start = std::time::Instant::now();
        let status = server.terminate();
        assert_eq!(status.code(), Some(0), "{mode}: {status:?}");
        assert!(start.elapsed() < Duration::from_secs(12), "{mode}");
    }
}

/// Pids whose parent is `pid`.
fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split(' ').nth(1))
            .and_then(|x| x.parse::<i32>().ok());
        if ppid == Some(pid) {
            out.push(p);
        }
    }
    out
}

#[test]
fn forking_mode_serves_each_session_in_its_own_child() {
    let server = FtpServer::start("forking", &[]);
    let mut a = Ctrl::login(server.addr);
    let mut b = Ctrl::login(server.addr);
    assert_eq!(children_of(server.pid()).len(), 2, "one child per session");
    assert_eq!(a.cmd("QUIT").0, 221);
    assert_eq!(b.cmd("QUIT").0, 221);
    assert!(
        wait_until(Duration::from_secs(10), || children_of(server.pid())
            .is_empty()),
        "children exit and are reaped after QUIT"
    );
    // More sessions than Python's default max_children (40) are served.
    // Logged in from 10 threads at once (every PASS takes --login-delay).
    let addr = server.addr;
    let many: Vec<Ctrl> = (0..10)
        .map(|_| std::thread::spawn(move || (0..5).map(|_| Ctrl::login(addr)).collect::<Vec<_>>()))
        .collect::<Vec<_>>()
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert_eq!(children_of(server.pid()).len(), 50);
    drop(many);
    let threads = FtpServer::start("threading", &[]);
    let _c = Ctrl::login(threads.addr);
    assert!(
        children_of(threads.pid()).is_empty(),
        "threading mode does not fork"
    );
}

#[test]
fn abor_stops_a_download_and_the_session_goes_on() {
    for mode in MODES {
        let server = FtpServer::start(mode, &[]);
        fs::write(server.root().join("big"), vec![7u8; 32 << 20]).unwrap();
        let mut c = Ctrl::login(server.addr);
        // TYPE I is sent with sendfile, TYPE A through a buffer: both
        // must see ABOR while the data socket is full.
        for ty in ["A", "I"] {
            assert_eq!(c.cmd(&format!("TYPE {ty}")).0, 200);
            let data = c.pasv();
            assert_eq!(c.cmd("RETR big").0, 150);
            // The client reads nothing, so the server stalls on a full
            // socket until ABOR arrives.
            std::thread::sleep(Duration::from_millis(200));
            let sent = std::time::Instant::now();
            c.send_raw(b"ABOR\r\n");
            let (code, text) = c.read_reply();
            // Seen at once, not after a write timed out (60 s here).
            let waited = sent.elapsed();
            assert_eq!(code, 426, "{mode} TYPE {ty}: {text}");
            assert!(
                waited < Duration::from_secs(5) && !text.contains("timed out"),
                "{mode} TYPE {ty}: ABOR answered after {waited:?}: {text}"
            );
            assert_eq!(c.read_reply().0, 226, "{mode} TYPE {ty}");
            drop(data);
            assert_eq!(c.cmd("NOOP").0, 200);
        }
        let (code, got) = c.fetch("RETR big");
        assert_eq!((code, got.len()), (226, 32 << 20), "{mode}");
    }
}

#[test]
fn passive_ports_come_from_the_configured_range() {
    let server = FtpServer::start("threading", &["--passive-ports", "47100-47119"]);
    let mut c = Ctrl::login(server.addr);
    for _ in 0..5 {
        let (code, text) = c.cmd("EPSV");
        assert_eq!(code, 229, "{text}");
        let port: u16 = text.split('|').nth(3).unwrap().parse().unwrap();
        assert!((47100..=47119).contains(&port), "{port}");
    }
    // EPSV ALL forbids PORT and PASV afterwards.
    assert_eq!(c.cmd("EPSV ALL").0, 200);
    assert_eq!(c.cmd("PASV").0, 503);
    assert_eq!(c.cmd("PORT 127,0,0,1,200,0").0, 503);
}

// ---------------------------------------------------------------------
// Issue 11: the root jail against a racing client, the existence oracle,
// brute force, litter, long names.
// ---------------------------------------------------------------------

/// Every entry under `dir` (not following links) with its content: file
/// bytes, a link's target, or nothing for a directory.
fn snapshot(dir: &Path) -> Vec<(String, String, Vec<u8>)> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, String, Vec<u8>)>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
            let m = fs::symlink_metadata(&p).unwrap();
            if m.file_type().is_symlink() {
                let to = fs::read_link(&p).unwrap();
                out.push((
                    rel,
                    "link".into(),
                    to.as_os_str().as_encoded_bytes().to_vec(),
                ));
            } else if m.is_dir() {
                out.push((rel, format!("dir {:o}", m.permissions().mode()), Vec::new()));
                walk(base, &p, out);
            } else {
                let mode = format!("file {:o}", m.permissions().mode());
                out.push((rel, mode, fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Names directly in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Bytes in the canary's probe: nothing a client gets may contain them.
const CANARY_MARK: &[u8] = b"CANARY-7f3a9c-OUTSIDE-THE-ROOT";
/// A name only the canary directory holds: no listing may show it.
const CANARY_NAME: &str = "canary_only_name_q8z";
/// The canary probe's size, distinct from anything inside the root.
const CANARY_SIZE: usize = 4243;

/// `base/canary/` next to the root, full of things a jail escape would
/// create, change, delete or read.
fn plant_canary(base: &Path) -> PathBuf {
    let canary = base.join("canary");
    fs::create_dir(&canary).unwrap();
    let mut probe = CANARY_MARK.to_vec();
    probe.resize(CANARY_SIZE, b'#');
    fs::write(canary.join("probe"), &probe).unwrap();
    fs::write(canary.join(CANARY_NAME), CANARY_MARK).unwrap();
    fs::create_dir(canary.join("sub_c")).unwrap();
    fs::create_dir(canary.join("full")).unwrap();
    fs::write(canary.join("full/deep"), CANARY_MARK).unwrap();
    canary
}

/// The rename race of issue 11: session A swaps a real directory `d` with
/// a symlink (`sub/up -> ..`, whose meaning changes when it is moved to
/// `/d`; `mirror`, an absolute link to the root's parent; and two links
/// pointing outside, which are hidden and cannot be moved) using
/// pipelined RNFR/RNTO; session B works through `d` with MKD, STOR, RETR,
/// SIZE, MDTM, MLST, STAT, LIST, DELE, RMD, RNFR/RNTO. The canary next to
/// the root must be byte-for-byte unchanged and nothing of it may reach B.
fn rename_race(mode: &str, run_for: Duration) {
    let server = FtpServer::start(mode, &[]);
    let base = server.base.path().to_path_buf();
    let canary = plant_canary(&base);
    let root = server.root();
    fs::create_dir(root.join("d")).unwrap();
    fs::write(root.join("d/probe"), b"inside probe").unwrap();
    fs::create_dir(root.join("sub")).unwrap();
    symlink("..", root.join("sub/up")).unwrap();
    symlink("../canary", root.join("out_rel")).unwrap();
    symlink(&canary, root.join("out_abs")).unwrap();
    // `mirror -> <base>` (absolute) names the canary's parent on the host,
    // but beneath the root it means `<root>/<base>`, where a decoy waits:
    // a visible link whose two readings differ, so session A can move it.
    let decoy = root.join(base.strip_prefix("/").unwrap()).join("canary");
    fs::create_dir_all(&decoy).unwrap();
    fs::write(decoy.join("probe"), b"decoy inside the root").unwrap();
    symlink(&base, root.join("mirror")).unwrap();
    let canary_before = snapshot(&canary);
    let base_before = names(&base);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let deadline = std::time::Instant::now() + run_for;
    let addr = server.addr;

    // Session A: swap `d` between the real directory and each link.
    let a_stop = stop.clone();
    let swapper = std::thread::spawn(move || {
        let mut a = Ctrl::login(addr);
        let mut swaps = 0u64;
        let mut ok = 0u64;
        // The outside-pointing links are hidden: RNFR answers 550 for
        // them, and the swap goes on with the next link.
        let links = ["sub/up", "out_rel", "mirror", "out_abs"];
        while std::time::Instant::now() < deadline && !a_stop.load(Ordering::Relaxed) {
            // Four swap cycles per write, one for each link, so `d` flips
            // without waiting for replies in between.
            let batch: String = links
                .iter()
                .map(|link| {
                    format!(
                        "RNFR d\r\nRNTO real\r\nRNFR {link}\r\nRNTO d\r\nRNFR d\r\nRNTO {link}\r\nRNFR real\r\nRNTO d\r\n"
                    )
                })
                .collect();
            a.send_raw(batch.as_bytes());
            for _ in 0..32 {
                let (code, _) = a.read_reply();
                assert_ne!(code, 0, "session A lost its connection");
                if code == 250 {
                    ok += 1;
                }
            }
            swaps += 4;
        }
        a.cmd("QUIT");
        (swaps, ok)
    });

    // Sessions B (two of them): work through `d`.
    let worker = |w: u64| {
        let b_stop = stop.clone();
        std::thread::spawn(move || {
            let mut b = Ctrl::login(addr);
            assert_eq!(b.cmd("TYPE I").0, 200);
            let mut rounds = 0u64;
            let mut created = 0u64;
            let mut decoys = 0u64;
            let size_leak = format!("213 {CANARY_SIZE}");
            // Everything of the canary that reached B (checked after the run).
            let mut leaks: Vec<String> = Vec::new();
            let mut leaked = |what: &str, bytes: &[u8]| {
                let text = String::from_utf8_lossy(bytes);
                if contains(bytes, CANARY_MARK) || text.contains(CANARY_NAME) {
                    leaks.push(format!(
                        "{what}: {}",
                        text.chars().take(200).collect::<String>()
                    ));
                }
            };
            while std::time::Instant::now() < deadline && !b_stop.load(Ordering::Relaxed) {
                let k = rounds;
                // Many MKDs per round: the cheapest probe of the race.
                let mut batch: String =
                    (0..20).map(|i| format!("MKD d/N{w}_{k}_{i}\r\n")).collect();
                batch.push_str(&format!(
                    "MKD d/canary/N{w}_{k}\r\nSIZE d/probe\r\nSIZE d/canary/probe\r\n\
                 MDTM d/canary/probe\r\nMLST d/probe\r\nMLST d/canary/{CANARY_NAME}\r\n\
                 STAT d\r\nSTAT d/canary\r\nDELE d/canary/probe\r\nDELE d/{CANARY_NAME}\r\n\
                 RMD d/sub_c\r\nRMD d/canary/sub_c\r\nRNFR d/probe\r\nRNTO d/moved\r\n\
                 RNFR d/moved\r\nRNTO d/probe\r\nRNFR d/canary/probe\r\nRNTO d/canary/moved\r\n\
                 RNFR d/full\r\nRNTO moved_full\r\n"
                ));
                b.send_raw(batch.as_bytes());
                for _ in 0..batch.matches("\r\n").count() {
                    let (code, text) = b.read_reply();
                    assert_ne!(code, 0, "session B lost its connection");
                    if text.starts_with(&size_leak) {
                        leaked("SIZE of the canary", CANARY_MARK);
                    }
                    leaked("a reply", text.as_bytes());
                    if code == 257 {
                        created += 1;
                    }
                }
                rounds += 1;
                if k % 4 != 0 {
                    continue;
                }
                // Data commands through `d`, one at a time, every 4th round.
                for cmd in [
                    "RETR d/probe".to_string(),
                    "RETR d/canary/probe".to_string(),
                    format!("RETR d/{CANARY_NAME}"),
                    "LIST d".to_string(),
                    "NLST d/canary".to_string(),
                    "MLSD d".to_string(),
                ] {
                    // Codes vary with the race; what matters is what came back.
                    let (_, got) = b.fetch(&cmd);
                    leaked(&cmd, &got);
                    if got == b"decoy inside the root" {
                        decoys += 1;
                    }
                }
                for cmd in [
                    format!("STOR d/s{w}_{k}"),
                    format!("STOR d/canary/s{w}_{k}"),
                    "APPE d/canary/probe".to_string(),
                ] {
                    let mut data = b.pasv();
                    let (code, _) = b.cmd(&cmd);
                    if code == 150 {
                        let _ = data.write_all(b"written by B");
                        drop(data);
                        assert_ne!(b.read_reply().0, 0, "session B lost its connection");
                    }
                }
            }
            b.cmd("QUIT");
            (rounds, created, decoys, leaks)
        })
    };
    let workers = [worker(0), worker(1)];
    let (swaps, swapped_ok) = swapper.join().unwrap();
    let (mut rounds, mut created, mut decoys, mut leaks) = (0, 0, 0, Vec::new());
    for w in workers {
        let (r, c, d, l) = w.join().unwrap();
        rounds += r;
        created += c;
        decoys += d;
        leaks.extend(l);
    }
    stop.store(true, Ordering::Relaxed);
    eprintln!(
        "{mode}: A ran {swaps} swap cycles ({swapped_ok} renames succeeded), \
         B ran {rounds} rounds ({created} directories created inside the root, \
         {decoys} reads of the decoy through `mirror`)"
    );
    let after = snapshot(&canary);
    let changed: Vec<_> = after
        .iter()
        .filter(|e| !canary_before.contains(e))
        .chain(canary_before.iter().filter(|e| !after.contains(e)))
        .map(|(name, kind, _)| format!("{name} ({kind})"))
        .collect();
    assert!(
        changed.is_empty(),
        "{mode}: the canary changed: {changed:?}"
    );
    assert_eq!(
        names(&base),
        base_before,
        "{mode}: something appeared next to the root"
    );
    assert!(
        leaks.is_empty(),
        "{mode}: {} replies or transfers read the canary, first: {:?}",
        leaks.len(),
        leaks.first()
    );
    assert!(swaps >= 10 && rounds >= 5, "{mode}: the race barely ran");
    assert!(swapped_ok > 0 && created > 0, "{mode}: nothing happened");
    assert!(!server.log().contains("panicked"), "{mode}");
}

#[test]
fn rename_race_cannot_leave_the_root_threading() {
    rename_race("threading", Duration::from_secs(6));
}

#[test]
fn rename_race_cannot_leave_the_root_forking() {
    rename_race("forking", Duration::from_secs(6));
}

/// The reply to `verb path`, with the path itself replaced by `<P>`. Data
/// commands get a passive connection first (and complete, empty, if they
/// start); RNTO gets an RNFR of a real file first.
fn answer(c: &mut Ctrl, verb: &str, path: &str) -> String {
    let text = match verb {
        "RETR" | "LIST" | "NLST" | "MLSD" | "STOR" | "APPE" => {
            let mut data = c.pasv();
            let (code, mut text) = c.cmd(&format!("{verb} {path}"));
            if code == 150 {
                if verb == "STOR" || verb == "APPE" {
                    drop(data);
                } else {
                    let mut sink = Vec::new();
                    data.read_to_end(&mut sink).unwrap();
                }
                text.push_str(&c.read_reply().1);
            }
            text
        }
        "RNTO" => {
            assert_eq!(c.cmd("RNFR real.txt").0, 350);
            c.cmd(&format!("RNTO {path}")).1
        }
        _ => c.cmd(&format!("{verb} {path}")).1,
    };
    text.replace(path, "<P>")
}

/// Lays out the oracle test's root anew: a real file and links that lead
/// outside, to an outside file that exists and to one that does not.
fn oracle_root(server: &FtpServer) {
    let root = server.root();
    for name in names(&root) {
        let p = root.join(&name);
        if fs::symlink_metadata(&p).unwrap().is_dir() {
            fs::remove_dir_all(&p).unwrap();
        } else {
            fs::remove_file(&p).unwrap();
        }
    }
    let outside = server.base.path().join("outside");
    fs::write(root.join("real.txt"), b"real").unwrap();
    symlink(&outside, root.join("escape_dir")).unwrap();
    symlink(outside.join("secret"), root.join("escape_file")).unwrap();
    symlink("../outside", root.join("rel_escape")).unwrap();
    // The oracle proper: an existing and a missing outside target.
    symlink(outside.join("secret"), root.join("probe_yes")).unwrap();
    symlink(outside.join("no_such_file"), root.join("probe_no")).unwrap();
}

#[test]
fn outside_links_answer_exactly_like_missing_names() {
    let verbs = [
        "CWD", "SIZE", "MDTM", "MLST", "STAT", "RETR", "LIST", "NLST", "MLSD", "DELE", "RMD",
        "RNFR", "MKD", "STOR", "APPE", "RNTO",
    ];
    let pairs = [
        ("escape_file", "nofile"),
        ("escape_dir", "nodir"),
        ("escape_dir/secret", "nodir/secret"),
        ("rel_escape/secret", "nodir/secret"),
        ("escape_dir/new", "nodir/new"),
        ("probe_yes", "probe_no"),
        ("probe_yes", "nofile"),
    ];
    for mode in MODES {
        let server = FtpServer::start(mode, &[]);
        let outside = server.base.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("secret"), b"top secret").unwrap();
        let before = snapshot(&outside);
        let mut c = Ctrl::login(server.addr);
        for verb in verbs {
            for (hidden, missing) in pairs {
                oracle_root(&server);
                let got_hidden = answer(&mut c, verb, hidden);
                oracle_root(&server);
                let got_missing = answer(&mut c, verb, missing);
                assert_eq!(
                    got_hidden, got_missing,
                    "{mode}: {verb} {hidden} vs {verb} {missing}"
                );
            }
        }
        // The listing does not show the hidden links either.
        oracle_root(&server);
        let (code, list) = c.fetch("NLST");
        assert_eq!(
            (code, list.as_slice()),
            (226, &b"real.txt\r\n"[..]),
            "{mode}"
        );
        assert_eq!(snapshot(&outside), before, "{mode}: outside changed");
    }
}

/// Connects from `source` (another loopback address) instead of 127.0.0.1.
fn connect_from(addr: SocketAddr, source: [u8; 4]) -> (Ctrl, u16) {
    let stream = tcp_from(addr, source);
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let reader = std::io::BufReader::new(stream.try_clone().unwrap());
    let mut c = Ctrl { reader, stream };
    let code = c.read_reply().0;
    (c, code)
}

/// A TCP connection to `addr` from the loopback address `source`, with a
/// 20 s read timeout.
fn tcp_from(addr: SocketAddr, source: [u8; 4]) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::from((source, 0)).into()).unwrap();
    sock.connect(&addr.into()).unwrap();
    let stream: TcpStream = sock.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
}

/// Failed logins the server evaluated, from its log (the lock-out line
/// says "failed logins:").
fn failed_logins(server: &FtpServer) -> usize {
    server.log().matches("failed login ").count()
}

/// One IP guesses passwords for a fixed time, reconnecting after every
/// guess, abandoning every other guess before its reply; then four
/// connections at once keep guessing, the right password among the
/// guesses. The server evaluates at most `--max-login-failures` (5)
/// guesses, however the client times them, and never lets the right
/// password in once the address is locked out.
fn brute_force(mode: &str) {
    let server = FtpServer::start(mode, &[]);
    let addr = server.addr;
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let (mut sent, mut refused, mut n) = (0usize, 0usize, 0usize);
    while std::time::Instant::now() < deadline {
        n += 1;
        let (mut c, code, _) = Ctrl::connect(addr);
        if code == 421 {
            refused += 1;
            continue;
        }
        assert_eq!(code, 220);
        if c.cmd("USER bob").0 != 331 {
            continue;
        }
        c.send_raw(format!("PASS wrong{n}\r\n").as_bytes());
        sent += 1;
        if n % 2 == 0 {
            let (code, text) = c.read_reply();
            assert!(code == 530 || code == 421, "{mode}: {code} {text}");
        } else {
            // Hang up before the answer (sent after --login-delay).
            std::thread::sleep(Duration::from_millis(50));
            SockRef::from(&c.stream)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
            drop(c);
        }
    }
    // The abandoned guesses were counted too: at most 5 were evaluated,
    // and the address is locked out.
    assert!(
        wait_until(Duration::from_secs(5), || failed_logins(&server) >= 5),
        "{mode}: {} failures logged, {sent} guesses sent",
        failed_logins(&server)
    );
    assert_eq!(failed_logins(&server), 5, "{mode}: {sent} guesses sent");
    assert!(refused > 0, "{mode}: never refused ({sent} guesses)");
    eprintln!(
        "{mode}: 3 s of guessing: {sent} guesses sent, 5 evaluated, {refused} connections refused"
    );
    // Four connections at once, with the right password: all refused.
    let threads: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..5 {
                    let (mut c, code, _) = Ctrl::connect(addr);
                    if code != 220 {
                        assert_eq!(code, 421);
                        continue;
                    }
                    c.cmd("USER bob");
                    let pass = if (t + i) % 2 == 0 { "secret" } else { "wrong" };
                    let (code, text) = c.cmd(&format!("PASS {pass}"));
                    assert_ne!(code, 230, "logged in while locked out: {text}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(failed_logins(&server), 5, "{mode}");
    let log = server.log();
    assert!(
        log.contains("address locked out"),
        "{mode}: lock-out not logged: {log}"
    );
    // The refusals that followed are counted in one line, not one each
    // (a locked-out guesser reconnects as fast as it likes).
    let refusals = log
        .lines()
        .filter(|l| l.contains("refused: address locked out") || l.contains("locked-out addresses"))
        .count();
    assert_eq!(refusals, 1, "{mode}: {refused} refused connections: {log}");
    // Another address is not affected.
    let (mut c, code) = connect_from(addr, [127, 0, 0, 2]);
    assert_eq!(code, 220, "{mode}");
    c.cmd("USER bob");
    assert_eq!(c.cmd("PASS secret").0, 230, "{mode}");
}

#[test]
fn failed_logins_are_limited_per_ip_across_connections_threading() {
    brute_force("threading");
}

#[test]
fn failed_logins_are_limited_per_ip_across_processes_forking() {
    brute_force("forking");
}

#[test]
fn lockout_expires_and_right_and_wrong_passwords_take_as_long() {
    for mode in MODES {
        let server = FtpServer::start(
            mode,
            &[
                "--max-login-failures",
                "2",
                "--login-lockout",
                "1s",
                "--login-delay",
                "400ms",
            ],
        );
        // The right password is answered no sooner than a wrong one.
        let (mut c, _, _) = Ctrl::connect(server.addr);
        c.cmd("USER bob");
        let t = std::time::Instant::now();
        assert_eq!(c.cmd("PASS secret").0, 230);
        let right = t.elapsed();
        let (mut c, _, _) = Ctrl::connect(server.addr);
        c.cmd("USER bob");
        let t = std::time::Instant::now();
        assert_eq!(c.cmd("PASS wrong").0, 530);
        let wrong = t.elapsed();
        assert!(
            right >= Duration::from_millis(390) && wrong >= Duration::from_millis(390),
            "{mode}: right {right:?}, wrong {wrong:?}"
        );
        // The second failure locks the address out.
        c.cmd("USER bob");
        let (code, text) = c.cmd("PASS wrong");
        assert_eq!(code, 421, "{mode}: {text}");
        assert!(c.at_eof());
        let (_c, code, _) = Ctrl::connect(server.addr);
        assert_eq!(code, 421, "{mode}: locked out at the greeting");
        std::thread::sleep(Duration::from_millis(1200));
        let mut c = Ctrl::login(server.addr);
        assert_eq!(c.cmd("NOOP").0, 200, "{mode}: the lock-out expired");
    }
}

#[test]
fn the_limit_can_be_turned_off() {
    let server = FtpServer::start(
        "threading",
        &["--max-login-failures", "0", "--login-delay", "0s"],
    );
    for _ in 0..4 {
        let (mut c, _, _) = Ctrl::connect(server.addr);
        for _ in 0..2 {
            c.cmd("USER bob");
            assert_eq!(c.cmd("PASS wrong").0, 530);
        }
    }
    let _ = Ctrl::login(server.addr);
}

/// A STOR or APPE whose client resets the control connection while the
/// server waits for the passive data connection.
fn vanish_before_data(server: &FtpServer, verb: &str, name: &str) {
    let before = failed_data(server);
    let mut c = Ctrl::login(server.addr);
    let _ = c.cmd("PASV");
    c.send_raw(format!("{verb} {name}\r\n").as_bytes());
    std::thread::sleep(Duration::from_millis(100));
    SockRef::from(&c.stream)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(c);
    // The server gives up on the data connection after the passive
    // timeout (the 1 s idle timeout here).
    assert!(
        wait_until(Duration::from_secs(10), || failed_data(server) > before),
        "the server never gave up waiting: {}",
        server.log()
    );
}

fn failed_data(server: &FtpServer) -> usize {
    server.log().matches("data connection failed").count()
}

#[test]
fn vanishing_clients_leave_no_litter() {
    for mode in MODES {
        let server = FtpServer::start(mode, &["--idle-timeout", "1s"]);
        let old = ftp_support::pattern(50_000, 11);
        fs::write(server.root().join("existing.bin"), &old).unwrap();
        let baseline = names(&server.root());
        let clean = || names(&server.root()) == baseline;

        // Reset before the data connection: STOR new, STOR over existing,
        // APPE new.
        vanish_before_data(&server, "STOR", "new1.bin");
        vanish_before_data(&server, "STOR", "existing.bin");
        vanish_before_data(&server, "APPE", "new2.bin");
        assert!(clean(), "{mode}: {:?}", names(&server.root()));

        // ABOR and a data reset during uploads to new names.
        let mut c = Ctrl::login(server.addr);
        assert_eq!(c.cmd("TYPE I").0, 200);
        for verb in ["STOR", "APPE"] {
            let mut data = c.pasv();
            assert_eq!(c.cmd(&format!("{verb} new3.bin")).0, 150);
            data.write_all(&vec![1u8; 100_000]).unwrap();
            std::thread::sleep(Duration::from_millis(100));
            c.send_raw(b"ABOR\r\n");
            assert_eq!(c.read_reply().0, 426, "{mode} {verb}");
            assert_eq!(c.read_reply().0, 226, "{mode} {verb}");
            drop(data);
            assert!(clean(), "{mode} {verb} ABOR: {:?}", names(&server.root()));

            let mut data = c.pasv();
            assert_eq!(c.cmd(&format!("{verb} new4.bin")).0, 150);
            data.write_all(&vec![2u8; 100_000]).unwrap();
            SockRef::from(&data)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
            drop(data);
            assert_eq!(c.read_reply().0, 426, "{mode} {verb}");
            assert!(clean(), "{mode} {verb} reset: {:?}", names(&server.root()));
        }
        drop(c);
        if mode == "forking" {
            // The session's process is killed mid-upload.
            for (verb, name) in [
                ("STOR", "new5.bin"),
                ("STOR", "existing.bin"),
                ("APPE", "new6.bin"),
            ] {
                // Earlier sessions' children have exited.
                assert!(wait_until(Duration::from_secs(10), || children_of(
                    server.pid()
                )
                .is_empty()));
                let mut c = Ctrl::login(server.addr);
                assert_eq!(c.cmd("TYPE I").0, 200);
                let mut data = c.pasv();
                assert_eq!(c.cmd(&format!("{verb} {name}")).0, 150);
                data.write_all(&vec![3u8; 200_000]).unwrap();
                std::thread::sleep(Duration::from_millis(200));
                let kids = children_of(server.pid());
                assert_eq!(kids.len(), 1, "one session child");
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(kids[0]),
                    nix::sys::signal::Signal::SIGKILL,
                )
                .unwrap();
                assert!(wait_until(Duration::from_secs(10), || children_of(
                    server.pid()
                )
                .is_empty()));
                drop(data);
                assert!(
                    clean(),
                    "{mode} {verb} {name} killed: {:?}",
                    names(&server.root())
                );
            }
        }
        assert_eq!(
            fs::read(server.root().join("existing.bin")).unwrap(),
            old,
            "{mode}"
        );
        // A completed APPE to a new name creates it.
        let mut c = Ctrl::login(server.addr);
        let mut data = c.pasv();
        assert_eq!(c.cmd("APPE made.bin").0, 150);
        data.write_all(b"made").unwrap();
        drop(data);
        assert_eq!(c.read_reply().0, 226);
        assert_eq!(fs::read(server.root().join("made.bin")).unwrap(), b"made");
    }
}

#[test]
fn names_of_255_bytes_upload_download_rename_delete() {
    for mode in MODES {
        let server = FtpServer::start(mode, &[]);
        let ascii = format!("{}.bin", "n".repeat(251));
        let utf8 = format!("{}x", "é".repeat(127));
        assert_eq!((ascii.len(), utf8.len()), (255, 255));
        let mut c = Ctrl::login(server.addr);
        assert_eq!(c.cmd("TYPE I").0, 200);
        let body = ftp_support::pattern(70_000, 3);
        for name in [&ascii, &utf8] {
            let mut data = c.pasv();
            let (code, text) = c.cmd(&format!("STOR {name}"));
            assert_eq!(code, 150, "{mode}: {text}");
            data.write_all(&body).unwrap();
            drop(data);
            assert_eq!(c.read_reply().0, 226, "{mode}");
            assert_eq!(
                c.cmd(&format!("SIZE {name}")).1.trim_end(),
                format!("213 {}", body.len())
            );
            let (code, got) = c.fetch(&format!("RETR {name}"));
            assert_eq!((code, got == body), (226, true), "{mode}");
            let (_, list) = c.fetch("NLST");
            assert!(
                String::from_utf8_lossy(&list).contains(name.as_str()),
                "{mode}"
            );
        }
        assert_eq!(names(&server.root()), {
            let mut v = vec![ascii.clone(), utf8.clone()];
            v.sort();
            v
        });
        let other = format!("{}.ren", "r".repeat(251));
        assert_eq!(c.cmd(&format!("RNFR {ascii}")).0, 350);
        assert_eq!(c.cmd(&format!("RNTO {other}")).0, 250);
        assert_eq!(c.cmd(&format!("DELE {other}")).0, 250, "{mode}");
        assert_eq!(c.cmd(&format!("DELE {utf8}")).0, 250, "{mode}");
        let dir = "d".repeat(255);
        assert_eq!(c.cmd(&format!("MKD {dir}")).0, 257);
        assert_eq!(c.cmd(&format!("RMD {dir}")).0, 250);
        assert!(
            names(&server.root()).is_empty(),
            "{mode}: {:?}",
            names(&server.root())
        );
        // One byte more is more than the file system takes.
        let _data = c.pasv();
        let (code, text) = c.cmd(&format!("STOR {}", "x".repeat(256)));
        assert_eq!(code, 553, "{mode}: {text}");
        assert!(names(&server.root()).is_empty());
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn links_inside_the_root_are_followed_inside_it() {
    for mode in MODES {
        let server = FtpServer::start(mode, &[]);
        let root = server.root();
        fs::create_dir(root.join("pub")).unwrap();
        fs::write(root.join("pub/a.txt"), b"A").unwrap();
        fs::create_dir(root.join("sub")).unwrap();
        symlink("pub/a.txt", root.join("rel")).unwrap();
        symlink("/pub/a.txt", root.join("abs")).unwrap();
        symlink("/pub", root.join("dirlink")).unwrap();
        symlink("..", root.join("sub/up")).unwrap();
        let mut c = Ctrl::login(server.addr);
        for path in ["rel", "abs", "dirlink/a.txt", "sub/up/sub/up/rel"] {
            let (code, got) = c.fetch(&format!("RETR {path}"));
            assert_eq!((code, got.as_slice()), (226, &b"A"[..]), "{mode}: {path}");
            assert_eq!(c.cmd(&format!("SIZE {path}")).1.trim_end(), "213 1");
        }
        let (_, list) = c.fetch("NLST");
        assert_eq!(list, b"abs\r\ndirlink\r\npub\r\nrel\r\nsub\r\n", "{mode}");
        assert_eq!(c.cmd("CWD dirlink").0, 250);
        assert!(c.cmd("PWD").1.contains("\"/dirlink\""));
        assert_eq!(c.fetch("RETR a.txt").1, b"A");
        assert_eq!(c.cmd("CWD /sub/up/sub/up").0, 250, "{mode}");
        assert_eq!(c.cmd("CWD /").0, 250);
        // Entry commands act on the link itself.
        assert_eq!(c.cmd("DELE abs").0, 250);
        assert!(fs::symlink_metadata(root.join("abs")).is_err());
        assert!(root.join("pub/a.txt").exists());
        // Moving a relative link changes what it means: pub/rel2 ->
        // pub/a.txt is <root>/pub/pub/a.txt, which does not exist, so it
        // is hidden and answers like a missing name.
        assert_eq!(c.cmd("RNFR rel").0, 350);
        assert_eq!(c.cmd("RNTO pub/rel2").0, 250);
        assert_eq!(
            c.cmd("SIZE pub/rel2").1,
            c.cmd("SIZE pub/nothing").1,
            "{mode}"
        );
        assert_eq!(c.cmd("RNFR pub/rel2").0, 550, "{mode}: hidden from RNFR");
        let (_, list) = c.fetch("NLST pub");
        assert_eq!(list, b"a.txt\r\n", "{mode}");
    }
}

#[test]
fn parallel_guesses_cannot_pass_the_limit() {
    for mode in MODES {
        let server = FtpServer::start(mode, &[]);
        let addr = server.addr;
        // 16 connections at USER, then every PASS sent back to back.
        let mut conns: Vec<Ctrl> = (0..16)
            .map(|_| {
                let (mut c, code, _) = Ctrl::connect(addr);
                assert_eq!(code, 220);
                assert_eq!(c.cmd("USER bob").0, 331);
                c
            })
            .collect();
        for (i, c) in conns.iter_mut().enumerate() {
            c.send_raw(format!("PASS wrong{i}\r\n").as_bytes());
        }
        let codes: Vec<u16> = conns.iter_mut().map(|c| c.read_reply().0).collect();
        let evaluated = failed_logins(&server);
        assert!(
            (1..=5).contains(&evaluated),
            "{mode}: {evaluated} guesses evaluated at once ({codes:?})"
        );
        assert!(
            codes.iter().all(|&c| c == 530 || c == 421),
            "{mode}: {codes:?}"
        );
        // The address is locked out now, right password or not.
        let (mut c, code, _) = Ctrl::connect(addr);
        if code == 220 {
            c.cmd("USER bob");
            assert_eq!(c.cmd("PASS secret").0, 421, "{mode}");
        } else {
            assert_eq!(code, 421, "{mode}");
        }
    }
}

/// Commands sent during a transfer wait for it in a bounded queue: up to
/// 16 lines are kept (and answered after the transfer, with `ABOR` still
/// seen when the queue is full); one line more ends the transfer and the
/// session with `421`. Before the bound, a client that stalled a RETR and
/// streamed 4000-byte NOOP lines grew the server without limit.
#[test]
fn commands_queued_during_a_transfer_are_bounded() {
    for mode in MODES {
        let server = FtpServer::start(mode, &[]);
        fs::write(server.root().join("big"), vec![7u8; 32 << 20]).unwrap();
        let mut c = Ctrl::login(server.addr);
        assert_eq!(c.cmd("TYPE I").0, 200);

        // 16 lines wait; ABOR behind them is seen at once.
        let data = c.pasv();
        assert_eq!(c.cmd("RETR big").0, 150, "{mode}");
        std::thread::sleep(Duration::from_millis(200));
        for i in 0..16 {
            c.send_raw(format!("NOOP {i}\r\n").as_bytes());
        }
        c.send_raw(b"ABOR\r\n");
        assert_eq!(c.read_reply().0, 426, "{mode}");
        assert_eq!(c.read_reply().0, 226, "{mode}");
        for i in 0..16 {
            assert_eq!(c.read_reply().0, 200, "{mode}: queued NOOP {i}");
        }
        drop(data);
        assert_eq!(c.cmd("NOOP").0, 200, "{mode}");

        // The audit's client: a stalled RETR and long NOOP lines. The
        // 17th line ends the session with 421.
        let data = c.pasv();
        assert_eq!(c.cmd("RETR big").0, 150, "{mode}");
        std::thread::sleep(Duration::from_millis(200));
        c.stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let line = format!("NOOP {}\r\n", "A".repeat(4000));
        for _ in 0..17 {
            c.send_raw(line.as_bytes());
        }
        let (code, text) = c.read_reply();
        assert_eq!(code, 421, "{mode}: {text}\nlog:\n{}", server.log());
        assert!(c.at_eof(), "{mode}: the session ended");
        drop(data);
        assert!(
            server.log().contains("too many commands during a transfer"),
            "{mode}"
        );
        // Other sessions go on.
        assert_eq!(Ctrl::login(server.addr).cmd("NOOP").0, 200, "{mode}");
    }
}

/// The data timeout counts from the last byte moved: a client that stalls
/// a download and keeps sending `STAT` (answered at once, never queued)
/// does not keep the transfer alive past it.
#[test]
fn control_chatter_does_not_keep_a_stalled_download_alive() {
    for mode in MODES {
        // A 2 s idle timeout makes the data timeout 2 s.
        let server = FtpServer::start(mode, &["--idle-timeout", "2s"]);
        fs::write(server.root().join("big"), vec![7u8; 32 << 20]).unwrap();
        let mut c = Ctrl::login(server.addr);
        assert_eq!(c.cmd("TYPE I").0, 200);
        let data = c.pasv();
        assert_eq!(c.cmd("RETR big").0, 150, "{mode}");
        let started = std::time::Instant::now();
        let mut ended = None;
        // A STAT every 200 ms, for at most 20 s.
        while started.elapsed() < Duration::from_secs(20) {
            c.send_raw(b"STAT\r\n");
            let (code, text) = c.read_reply();
            if code == 426 {
                ended = Some((started.elapsed(), text));
                break;
            }
            assert_eq!(code, 213, "{mode}: {text}");
            std::thread::sleep(Duration::from_millis(200));
        }
        let Some((waited, text)) = ended else {
            panic!("{mode}: the stalled download outlived 20 s of STATs");
        };
        assert!(text.contains("timed out"), "{mode}: {text}");
        assert!(waited < Duration::from_secs(8), "{mode}: {waited:?}");
        // The STAT that met the timeout is answered as a plain STAT, and
        // the session goes on.
        let (code, text) = c.read_reply();
        assert!((200..300).contains(&code), "{mode}: {code} {text}");
        drop(data);
        assert_eq!(c.cmd("NOOP").0, 200, "{mode}");
    }
}

/// A client that hangs up (reset or close) while the server waits for its
/// passive data connection ends that wait at once, not after the 30 s
/// passive timeout: the session (thread or process) and its upload go.
#[test]
fn hanging_up_while_the_server_waits_for_the_data_connection() {
    let gone = "control connection closed while waiting";
    for mode in MODES {
        let server = FtpServer::start_env(mode, &[], &[("RUST_LOG", "debug")]);
        for (i, reset) in [true, false].into_iter().enumerate() {
            let before = server.log().matches(gone).count();
            let mut c = Ctrl::login(server.addr);
            assert_eq!(c.cmd("PASV").0, 227);
            let stor = format!("STOR new{i}.bin");
            c.send_raw(format!("{stor}\r\n").as_bytes());
            // The server took the command and waits (nobody connects).
            assert!(
                wait_until(Duration::from_secs(10), || server.log().contains(&stor)),
                "{mode}"
            );
            std::thread::sleep(Duration::from_millis(100));
            if reset {
                SockRef::from(&c.stream)
                    .set_linger(Some(Duration::ZERO))
                    .unwrap();
            }
            drop(c);
            assert!(
                wait_until(Duration::from_secs(5), || server
                    .log()
                    .matches(gone)
                    .count()
                    > before),
                "{mode} reset={reset}: still waiting\n{}",
                server.log()
            );
        }
        if mode == "forking" {
            assert!(
                wait_until(Duration::from_secs(5), || children_of(server.pid())
                    .is_empty()),
                "{mode}: session children left"
            );
        }
        assert!(names(&server.root()).is_empty(), "{mode}");
        assert_eq!(Ctrl::login(server.addr).cmd("NOOP").0, 200, "{mode}");
    }
}

/// Strings a peer chooses (user name, paths, command arguments) reach the
/// log with control characters escaped: no forged lines, no terminal
/// escape sequences.
#[test]
fn peer_strings_are_escaped_in_the_log() {
    let server = FtpServer::start_env(
        "threading",
        &["--login-delay", "0s"],
        &[("RUST_LOG", "debug")],
    );
    let (mut c, _, _) = Ctrl::connect(server.addr);
    assert_eq!(c.cmd("USER evil\rFORGED login ok\x1b[2J").0, 331);
    assert_eq!(c.cmd("PASS nope").0, 530);
    assert_eq!(c.cmd("USER bob").0, 331);
    assert_eq!(c.cmd("PASS secret").0, 230);
    let name = "up\rFORGED\x1b]0;t\x07.txt";
    let mut data = c.pasv();
    assert_eq!(c.cmd(&format!("STOR {name}")).0, 150);
    data.write_all(b"hello").unwrap();
    drop(data);
    assert_eq!(c.read_reply().0, 226);
    let (code, got) = c.fetch(&format!("RETR {name}"));
    assert_eq!((code, &got[..]), (226, &b"hello"[..]));
    assert_eq!(c.cmd("QUIT").0, 221);
    drop(c);
    assert!(wait_until(Duration::from_secs(5), || server
        .log()
        .contains("session end")));
    let log = fs::read(&server.stderr_path).unwrap();
    for bad in [b'\r', 0x1b, 0x07] {
        assert!(
            !log.contains(&bad),
            "raw byte {bad:#x} in the log:\n{}",
            String::from_utf8_lossy(&log)
        );
    }
    let log = String::from_utf8_lossy(&log);
    // The failed login (warn), the debug command line, RETR and STOR.
    assert!(
        log.contains(r"evil\rFORGED login ok\u{1b}[2J"),
        "user escaped:\n{log}"
    );
    assert!(
        log.matches(r"/up\rFORGED\u{1b}]0;t\u{7}.txt").count() >= 2,
        "paths escaped:\n{log}"
    );
    assert!(!log.lines().any(|l| l.starts_with("FORGED")), "{log}");
}

/// A failed `APPE` is cut back to the file's old length only when nothing
/// else was written to the file meanwhile. Session A's `APPE` is open
/// (`150`, A wrote nothing or a few bytes) while session B appends and is
/// told `226`; then A aborts. B's acknowledged bytes stay. Without other
/// writers, an aborted `APPE` is still cut back.
#[test]
fn an_aborted_append_keeps_another_sessions_append() {
    for mode in MODES {
        let server = FtpServer::start(mode, &[]);
        let path = server.root().join("log.txt");
        for a_writes in [&b""[..], b"AAA"] {
            fs::write(&path, b"old\n").unwrap();
            let mut a = Ctrl::login(server.addr);
            let mut a_data = a.pasv();
            assert_eq!(a.cmd("TYPE I").0, 200);
            assert_eq!(a.cmd("APPE log.txt").0, 150, "{mode}");
            a_data.write_all(a_writes).unwrap();
            let grown = 4 + a_writes.len() as u64;
            assert!(
                wait_until(Duration::from_secs(10), || fs::metadata(&path)
                    .is_ok_and(|m| m.len() == grown)),
                "{mode}: A's bytes reached the file"
            );

            let mut b = Ctrl::login(server.addr);
            assert_eq!(b.cmd("TYPE I").0, 200);
            let mut b_data = b.pasv();
            assert_eq!(b.cmd("APPE log.txt").0, 150, "{mode}");
            b_data.write_all(b"BBB\n").unwrap();
            drop(b_data);
            assert_eq!(b.read_reply().0, 226, "{mode}: B's append completed");

            // A aborts: 426 for the transfer, then 226 for the ABOR.
            a.send_raw(b"ABOR\r\n");
            assert_eq!(a.read_reply().0, 426, "{mode}");
            assert_eq!(a.read_reply().0, 226, "{mode}");
            drop(a_data);
            assert_eq!(a.cmd("NOOP").0, 200, "{mode}");
            let mut want = b"old\n".to_vec();
            want.extend_from_slice(a_writes);
            want.extend_from_slice(b"BBB\n");
            assert_eq!(
                String::from_utf8_lossy(&fs::read(&path).unwrap()),
                String::from_utf8_lossy(&want),
                "{mode}: B's acknowledged append was cut off by A's abort"
            );
        }

        // Alone, an aborted append is cut back to the old length.
        fs::write(&path, b"old\n").unwrap();
        let mut a = Ctrl::login(server.addr);
        let mut a_data = a.pasv();
        assert_eq!(a.cmd("TYPE I").0, 200);
        assert_eq!(a.cmd("APPE log.txt").0, 150, "{mode}");
        a_data.write_all(b"partial").unwrap();
        assert!(wait_until(Duration::from_secs(10), || fs::metadata(&path)
            .is_ok_and(|m| m.len() == 11)));
        a.send_raw(b"ABOR\r\n");
        assert_eq!(a.read_reply().0, 426, "{mode}");
        assert_eq!(a.read_reply().0, 226, "{mode}");
        drop(a_data);
        assert_eq!(a.cmd("NOOP").0, 200, "{mode}");
        assert_eq!(fs::read(&path).unwrap(), b"old\n", "{mode}");
    }
}
