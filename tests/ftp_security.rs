//! Security and robustness of the FTP example: path confinement, bounce
//! protection, bounded command lines, atomic uploads, login throttling,
//! connection limits, timeouts, log hygiene and graceful shutdown.

mod common_support;
mod ftp_support;

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::symlink;
use std::time::Duration;

use ftp_support::{tree, wait_until, Ctrl, FtpServer};

const MODES: [&str; 2] = ["threading", "forking"];

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
fn traversal_attempts_are_refused() {
    for mode in MODES {
        let server = FtpServer::start(mode, &[]);
        let outside = plant_outside(&server);
        let mut c = Ctrl::login(server.addr);
        for cmd in [
            "CWD ../../..",
            "CWD ..",
            "CWD /../..",
            "CWD escape_dir",
            "CWD evil",
            "SIZE ../../etc/passwd",
            "SIZE /etc/passwd",
            "SIZE escape_file",
            "SIZE escape_dir/secret",
            "SIZE evil/secret",
            "MDTM escape_file",
            "MLST escape_file",
            "MLST ../",
            "MKD ../newdir",
            "MKD escape_dir/newdir",
            "DELE escape_dir/secret",
            "RMD ../outside",
        ] {
            let (code, text) = c.cmd(cmd);
            assert_eq!(code, 550, "{mode}: {cmd} -> {text}");
        }
        assert!(c.cmd("PWD").1.contains("\"/\""));
        for cmd in [
            "RETR ../../etc/passwd",
            "RETR /etc/passwd",
            "RETR escape_file",
            "RETR escape_dir/secret",
            "RETR evil/secret",
            "LIST escape_dir",
            "LIST ../",
            "MLSD escape_dir",
            "STOR escape_dir/new",
            "STOR ../new",
            "APPE escape_file",
        ] {
            let _data = c.pasv();
            let (code, text) = c.cmd(cmd);
            assert_eq!(code, 550, "{mode}: {cmd} -> {text}");
        }
        // The listing of / hides links that lead outside.
        let (code, listing) = c.fetch("NLST");
        assert_eq!(code, 226);
        assert_eq!(String::from_utf8(listing).unwrap(), "inside.txt\r\n");
        // RNTO outside the root.
        assert_eq!(c.cmd("RNFR inside.txt").0, 350);
        assert_eq!(c.cmd("RNTO ../x").0, 550);
        assert_eq!(c.cmd("RNFR inside.txt").0, 350);
        assert_eq!(c.cmd("RNTO escape_dir/x").0, 550);
        assert_eq!(c.cmd("RNTO x").0, 503, "RNTO needs a fresh RNFR");
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
        let thief =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        thief
            .bind(&SocketAddr::from(([127, 0, 0, 2], 0)).into())
            .unwrap();
        thief.connect(&data_addr.into()).unwrap();
        let mut thief: TcpStream = thief.into();
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
            start.elapsed() >= Duration::from_millis(1400),
            "failures are delayed"
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
    let many: Vec<Ctrl> = (0..50).map(|_| Ctrl::login(server.addr)).collect();
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
        assert_eq!(c.cmd("TYPE I").0, 200);
        let data = c.pasv();
        assert_eq!(c.cmd("RETR big").0, 150);
        // The client reads nothing, so the server stalls on a full socket
        // until ABOR arrives.
        std::thread::sleep(Duration::from_millis(200));
        c.send_raw(b"ABOR\r\n");
        assert_eq!(c.read_reply().0, 426, "{mode}");
        assert_eq!(c.read_reply().0, 226, "{mode}");
        drop(data);
        assert_eq!(c.cmd("NOOP").0, 200);
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
