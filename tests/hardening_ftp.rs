//! Adversarial black-box tests of the FTP example in both modes: garbage
//! and non-UTF-8 command lines, a 64 KiB line, commands before login,
//! passive ports nobody connects to, uploads killed by a reset, path
//! tricks and symlink loops, bursts of short sessions — while a second
//! client keeps being served — and a clean SIGTERM exit afterwards.

mod common_support;
mod ftp_support;
mod hardening_support;

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::symlink;
use std::time::{Duration, Instant};

use ftp_support::{tree, Ctrl, FtpServer};
use hardening_support::{
    children_of, connect_and_reset, fd_count, fd_list, garbage, not_listening, wait_until,
    zombies_of,
};
use socket2::SockRef;

const MODES: [&str; 2] = ["threading", "forking"];
const SECRET: &[u8] = b"TOP-SECRET-OUTSIDE-CONTENT";
const KEEP: &[u8] = b"keep me exactly as I am\n";
const SETTLE: Duration = Duration::from_secs(5);

/// `base/outside/` with a secret, links to it from inside the root, a
/// symlink loop and a self-loop, and one ordinary file.
fn plant(server: &FtpServer) {
    let outside = server.base.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("secret"), SECRET).unwrap();
    let root = server.root();
    symlink(&outside, root.join("escape_dir")).unwrap();
    symlink("loop2", root.join("loop1")).unwrap();
    symlink("loop1", root.join("loop2")).unwrap();
    symlink("self", root.join("self")).unwrap();
    fs::create_dir(root.join("sub")).unwrap();
    fs::write(root.join("keep.txt"), KEEP).unwrap();
}

/// Puts back whatever the previous trick legitimately removed or replaced
/// inside the root (`STOR escape_dir/.` replaces the hidden link with a
/// file, `STOR keep.txt/.` writes keep.txt), so every trick meets the same
/// tree.
fn replant(server: &FtpServer) {
    let root = server.root();
    // A hidden link's name counts as free: STOR, APPE or MKD may have put
    // a file or directory in its place.
    let missing = |name: &str| {
        let p = root.join(name);
        match fs::symlink_metadata(&p) {
            Err(_) => true,
            Ok(m) if m.file_type().is_symlink() => false,
            Ok(m) if m.is_dir() => {
                fs::remove_dir_all(&p).unwrap();
                true
            }
            Ok(_) => {
                fs::remove_file(&p).unwrap();
                true
            }
        }
    };
    if missing("escape_dir") {
        symlink(server.base.path().join("outside"), root.join("escape_dir")).unwrap();
    }
    for (name, to) in [("loop1", "loop2"), ("loop2", "loop1"), ("self", "self")] {
        if missing(name) {
            symlink(to, root.join(name)).unwrap();
        }
    }
    if missing("sub") {
        fs::create_dir(root.join("sub")).unwrap();
    }
    fs::write(root.join("keep.txt"), KEEP).unwrap();
}

/// Some line of a listing or reply names the outside file `secret` itself
/// (files created inside the root may legitimately end in "secret").
fn names_secret(text: &[u8]) -> bool {
    String::from_utf8_lossy(text).lines().any(|l| {
        l.trim_end()
            .rsplit([' ', '/', ';', '\t'])
            .next()
            .is_some_and(|name| name == "secret")
    })
}

fn outside_tree(server: &FtpServer) -> Vec<String> {
    tree(&server.base.path().join("outside"))
}

/// The witness session still answers.
fn alive(w: &mut Ctrl, what: &str) {
    let (code, text) = w.cmd("NOOP");
    assert_eq!(code, 200, "witness after {what}: {text}");
    let (code, text) = w.cmd("PWD");
    assert_eq!(code, 257, "witness after {what}: {text}");
}

fn is_refusal(code: u16) -> bool {
    (500..=553).contains(&code)
}

fn garbage_lines(server: &FtpServer, w: &mut Ctrl) {
    // Before and after login: every garbage line gets a 5xx reply and the
    // session goes on.
    for logged_in in [false, true] {
        let mut c = if logged_in {
            Ctrl::login(server.addr)
        } else {
            let (c, code, _) = Ctrl::connect(server.addr);
            assert_eq!(code, 220);
            c
        };
        for i in 0..30u64 {
            let mut line: Vec<u8> = garbage(1 + (i as usize * 37) % 300, 50 + i)
                .into_iter()
                .filter(|&b| b != b'\n' && b != b'\r' && b != 0xff)
                .collect();
            if line.first() == Some(&b' ') || line.is_empty() {
                line.insert(0, 0x01);
            }
            line.extend_from_slice(b"\r\n");
            c.send_raw(&line);
            let (code, text) = c.read_reply();
            assert!(is_refusal(code), "garbage {i} -> {code} {text}");
        }
        for raw in [
            &b"\xc3\x28\xa0\xa1\r\n"[..],
            b"RETR \xff\xfe\xfd\r\n",
            b"USER \x80bob\r\n",
            b"\x00\x00\x00\r\n",
            b"NOOP\x00junk\r\n",
            b"CWD \xed\xa0\x80\r\n",
        ] {
            c.send_raw(raw);
            let (code, text) = c.read_reply();
            assert!(is_refusal(code), "{raw:?} -> {code} {text}");
        }
        // 64 KiB command lines: one plausible, one binary.
        let mut long = b"RETR ".to_vec();
        long.extend(std::iter::repeat_n(b'a', 64 * 1024));
        long.extend_from_slice(b"\r\n");
        c.send_raw(&long);
        assert_eq!(c.read_reply().0, 500, "64 KiB line");
        let mut long: Vec<u8> = garbage(64 * 1024, 9)
            .into_iter()
            .map(|b| if b == b'\n' { 0 } else { b })
            .collect();
        long.push(b'\n');
        c.send_raw(&long);
        assert_eq!(c.read_reply().0, 500, "64 KiB binary line");
        assert_eq!(c.cmd("NOOP").0, 200, "session continues after garbage");
        alive(w, "garbage");
    }
}

fn before_login(server: &FtpServer) {
    let (mut c, code, _) = Ctrl::connect(server.addr);
    assert_eq!(code, 220);
    for cmd in [
        "PWD",
        "CWD /",
        "LIST",
        "NLST",
        "RETR keep.txt",
        "STOR new.txt",
        "APPE keep.txt",
        "DELE keep.txt",
        "MKD newdir",
        "RMD sub",
        "RNFR keep.txt",
        "SIZE keep.txt",
        "PASV",
        "EPSV",
        "PORT 127,0,0,1,200,1",
        "TYPE I",
        "STAT /",
        "MLSD",
    ] {
        let (code, text) = c.cmd(cmd);
        assert_eq!(code, 530, "{cmd} before login -> {text}");
    }
    // A password without USER does not log in either.
    assert_eq!(c.cmd("PASS secret").0, 503);
    assert_eq!(c.cmd("PWD").0, 530);
}

/// Runs a data command over PASV; returns (first code, data, final code).
fn data_cmd(c: &mut Ctrl, line: &str) -> (u16, Vec<u8>, u16) {
    let mut data = c.pasv();
    let (code, _) = c.cmd(line);
    if code != 150 && code != 125 {
        return (code, Vec::new(), code);
    }
    let mut buf = Vec::new();
    let _ = data.read_to_end(&mut buf);
    (code, buf, c.read_reply().0)
}

/// Uploads `body` to `path` over PASV; returns the final code.
fn upload(c: &mut Ctrl, path: &str, body: &[u8]) -> u16 {
    let mut data = c.pasv();
    let (code, _) = c.cmd(&format!("STOR {path}"));
    if code != 150 && code != 125 {
        return code;
    }
    let _ = data.write_all(body);
    drop(data);
    c.read_reply().0
}

fn path_tricks(server: &FtpServer, w: &mut Ctrl) {
    let mut c = Ctrl::login(server.addr);
    assert_eq!(c.cmd("TYPE I").0, 200);
    let before = outside_tree(server);
    let paths = [
        "../outside/secret",
        "/../outside/secret",
        "//../outside/secret",
        "/./../outside/secret",
        "sub/../../outside/secret",
        "sub/./../../outside/secret",
        "..//outside/secret",
        "..%2foutside%2fsecret",
        "%2e%2e/outside/secret",
        "..\\outside\\secret",
        "....//outside/secret",
        ".../outside/secret",
        "escape_dir/secret",
        "escape_dir/./secret",
        "escape_dir/.",
        "//escape_dir//secret",
        "keep.txt/.",
        "keep.txt/..",
        "keep.txt\0/../../outside/secret",
        "sub\0",
        "a\rb",
        "loop1",
        "loop1/x",
        "loop2/.",
        "self",
        "self/self/self",
    ];
    for p in paths {
        let (code, text) = c.cmd(&format!("SIZE {p}"));
        assert!(
            code == 213 || is_refusal(code),
            "SIZE {p:?} -> {code} {text}"
        );
        if code == 213 {
            assert!(
                !text.contains(&SECRET.len().to_string()),
                "SIZE {p:?} {text}"
            );
        }
        for cmd in ["RETR", "LIST", "NLST", "MLSD"] {
            let (_, got, _) = data_cmd(&mut c, &format!("{cmd} {p}"));
            assert!(
                !contains(&got, SECRET) && !names_secret(&got),
                "{cmd} {p:?} leaked: {}",
                String::from_utf8_lossy(&got)
            );
        }
        for cmd in ["MLST", "STAT", "MDTM"] {
            let (_, text) = c.cmd(&format!("{cmd} {p}"));
            assert!(!names_secret(text.as_bytes()), "{cmd} {p:?} leaked: {text}");
        }
        let (code, _) = c.cmd(&format!("CWD {p}"));
        if code == 250 {
            let (_, pwd) = c.cmd("PWD");
            let (_, listing, _) = data_cmd(&mut c, "LIST");
            assert!(
                !names_secret(&listing) && !contains(&listing, SECRET),
                "CWD {p:?} then LIST ({pwd}): {}",
                String::from_utf8_lossy(&listing)
            );
            assert_eq!(c.cmd("CWD /").0, 250);
        }
        // Writes: nothing may appear or change outside.
        upload(&mut c, &format!("{p}/pwned"), b"pwned");
        upload(&mut c, p, b"pwned");
        c.cmd(&format!("APPE {p}"));
        c.cmd(&format!("MKD {p}/newdir"));
        c.cmd(&format!("DELE {p}"));
        c.cmd(&format!("RMD {p}"));
        if c.cmd(&format!("RNFR {p}")).0 == 350 {
            c.cmd("RNTO moved_here");
            // Put an inside entry back if one was moved (harmless).
            c.cmd("RNFR moved_here");
            c.cmd(&format!("RNTO {p}"));
        }
        if c.cmd("RNFR keep.txt").0 == 350 {
            let (code, _) = c.cmd(&format!("RNTO {p}"));
            if code == 250 {
                // A rename inside the root; move it back.
                c.cmd(&format!("RNFR {p}"));
                c.cmd("RNTO keep.txt");
            }
        }
        assert_eq!(outside_tree(server), before, "after {p:?}");
        assert_eq!(
            fs::read(server.base.path().join("outside/secret")).unwrap(),
            SECRET,
            "after {p:?}"
        );
        assert_eq!(c.cmd("NOOP").0, 200, "session alive after {p:?}");
        replant(server);
    }
    // Nothing was written next to the root either.
    let mut base: Vec<String> = fs::read_dir(server.base.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    base.sort();
    assert_eq!(base, ["outside", "root", "server.log"]);
    alive(w, "path tricks");
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn aborted_uploads(server: &FtpServer, w: &mut Ctrl) {
    let mut c = Ctrl::login(server.addr);
    assert_eq!(c.cmd("TYPE I").0, 200);
    let entries = tree(&server.root());
    for target in ["keep.txt", "brand_new.bin"] {
        for (verb, bytes) in [("STOR", 0usize), ("STOR", 300_000), ("APPE", 300_000)] {
            let data = c.pasv();
            assert_eq!(c.cmd(&format!("{verb} {target}")).0, 150);
            if bytes > 0 {
                (&data).write_all(&garbage(bytes, 3)).unwrap();
            }
            SockRef::from(&data)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
            drop(data);
            let (code, text) = c.read_reply();
            assert!(
                (400..600).contains(&code),
                "{verb} {target} reset after {bytes} bytes -> {code} {text}"
            );
            assert_eq!(fs::read(server.root().join("keep.txt")).unwrap(), KEEP);
            let ok = wait_until(SETTLE, || tree(&server.root()) == entries);
            assert!(ok, "{verb} {target}: {:?}", tree(&server.root()));
            assert_eq!(c.cmd("NOOP").0, 200);
        }
    }
    alive(w, "aborted uploads");
}

/// One short session that logs in and quits, waiting for the server to
/// close it.
fn short_session(addr: SocketAddr) {
    let mut c = Ctrl::login(addr);
    assert_eq!(c.cmd("QUIT").0, 221);
    assert!(c.at_eof());
}

/// Waits (bounded) until the server holds no more descriptors than at
/// `baseline`. The connection-limit table (`limits.rs`) forgets a finished
/// session's pipe at the next admission, not when the session ends, so
/// each round first runs one short session — exactly as the baseline was
/// taken — and then counts.
fn back_to_baseline(addr: SocketAddr, pid: i32, baseline: usize) -> bool {
    let deadline = Instant::now() + SETTLE;
    loop {
        short_session(addr);
        std::thread::sleep(Duration::from_millis(100));
        if fd_count(pid) <= baseline {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
    }
}

/// The server's descriptor count once it has stopped changing.
fn settled(pid: i32) -> usize {
    let mut last = fd_count(pid);
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(100));
        let now = fd_count(pid);
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

fn burst(server: &FtpServer, w: &mut Ctrl) {
    for i in 0..200u32 {
        match i % 4 {
            0 => connect_and_reset(server.addr, b""),
            1 => connect_and_reset(server.addr, b"USER bob\r\nPASS secret\r\nLIST\r\n"),
            2 => {
                let (mut c, code, _) = Ctrl::connect(server.addr);
                assert_eq!(code, 220);
                assert_eq!(c.cmd("QUIT").0, 221);
            }
            _ if i % 8 == 3 => {
                let mut s = TcpStream::connect(server.addr).unwrap();
                let _ = s.write_all(b"USER bob\r\n");
                let _ = s.shutdown(std::net::Shutdown::Write);
            }
            _ => {
                // Half-close in the middle of a command: the partial line
                // is still answered, then the server closes.
                let mut s = TcpStream::connect(server.addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                s.write_all(b"USER b").unwrap();
                s.shutdown(std::net::Shutdown::Write).unwrap();
                let mut all = String::new();
                s.read_to_string(&mut all).unwrap();
                assert!(
                    all.starts_with("220") && all.contains("\r\n331 "),
                    "half-closed session got {all:?}"
                );
            }
        }
    }
    alive(w, "burst");
}

fn scenario(mode: &str) {
    let mut server = FtpServer::start(mode, &[]);
    plant(&server);
    let pid = server.pid();
    let mut w = Ctrl::login(server.addr);
    alive(&mut w, "login");
    // Baseline with the witness session open and one session come and gone.
    short_session(server.addr);
    let baseline = settled(pid);
    let baseline_fds = fd_list(pid);

    garbage_lines(&server, &mut w);
    before_login(&server);
    path_tricks(&server, &mut w);
    aborted_uploads(&server, &mut w);
    burst(&server, &mut w);

    // A second client is served normally after all that.
    let mut c = Ctrl::login(server.addr);
    assert_eq!(c.cmd("TYPE I").0, 200);
    let (code, got, end) = data_cmd(&mut c, "RETR keep.txt");
    assert_eq!((code, end), (150, 226));
    assert_eq!(got, KEEP);
    assert_eq!(c.cmd("QUIT").0, 221);
    drop(c);

    let ok = back_to_baseline(server.addr, pid, baseline);
    assert!(
        ok,
        "{mode}: descriptors {:?}, baseline {baseline_fds:?}",
        fd_list(pid)
    );
    let ok = wait_until(SETTLE, || zombies_of(pid).is_empty());
    assert!(ok, "{mode}: zombies {:?}", zombies_of(pid));
    if mode == "forking" {
        // Only the witness's session child is left.
        let ok = wait_until(SETTLE, || children_of(pid).len() == 1);
        assert!(ok, "{mode}: children {:?}", children_of(pid));
    }

    assert_eq!(w.cmd("QUIT").0, 221);
    drop(w);
    let log = server.log();
    assert!(!log.contains("panicked"), "{mode}: {log}");
    let addr: SocketAddr = server.addr;
    let kids: Vec<i32> = children_of(pid).into_iter().map(|(p, _)| p).collect();
    let status = server.terminate();
    assert_eq!(status.code(), Some(0), "{mode}: {status:?}");
    assert!(not_listening(addr), "{mode}: still listening after exit");
    for kid in kids {
        let gone = wait_until(SETTLE, || {
            !std::path::Path::new(&format!("/proc/{kid}")).exists()
        });
        assert!(gone, "{mode}: session child {kid} outlived the server");
    }
}

#[test]
fn threading_survives_abuse() {
    scenario(MODES[0]);
}

#[test]
fn forking_survives_abuse() {
    scenario(MODES[1]);
}

/// A passive port nobody connects to is closed after the passive timeout,
/// whether a transfer command waits on it or not.
#[test]
fn unused_passive_ports_are_closed() {
    for mode in MODES {
        let server = FtpServer::start(mode, &["--idle-timeout", "1500ms"]);
        plant(&server);
        let mut c = Ctrl::login(server.addr);

        // A transfer waits for it: 425 after the timeout, port closed.
        let port = pasv_port(&mut c);
        let started = Instant::now();
        let (code, text) = c.cmd("RETR keep.txt");
        let code = if code == 150 { c.read_reply().0 } else { code };
        assert_eq!(code, 425, "{mode}: {text}");
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(not_listening(port), "{mode}: passive port open after 425");
        assert_eq!(c.cmd("NOOP").0, 200);

        // No transfer ever comes: the port still closes in time while the
        // session stays busy with other commands.
        let port = pasv_port(&mut c);
        let deadline = Instant::now() + Duration::from_millis(2500);
        while Instant::now() < deadline {
            assert_eq!(c.cmd("NOOP").0, 200);
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(not_listening(port), "{mode}: passive port still open");
        assert_eq!(c.cmd("NOOP").0, 200);
    }
}

fn pasv_port(c: &mut Ctrl) -> SocketAddr {
    let (code, text) = c.cmd("PASV");
    assert_eq!(code, 227, "{text}");
    let inner = &text[text.find('(').unwrap() + 1..text.find(')').unwrap()];
    let n: Vec<u16> = inner
        .split(',')
        .map(|x| x.trim().parse().unwrap())
        .collect();
    SocketAddr::from((
        [n[0] as u8, n[1] as u8, n[2] as u8, n[3] as u8],
        n[4] * 256 + n[5],
    ))
}

/// Clients that stop reading — a download nobody reads, a control
/// connection flooded with commands whose replies are never read — block
/// only their own session; resetting them frees everything at once.
#[test]
fn clients_that_stop_reading_block_only_themselves() {
    for mode in MODES {
        let server = FtpServer::start(mode, &[]);
        plant(&server);
        fs::write(server.root().join("big.bin"), garbage(16 << 20, 4)).unwrap();
        let pid = server.pid();
        let mut w = Ctrl::login(server.addr);
        short_session(server.addr);
        let baseline = settled(pid);

        // 1. A download whose data connection is never read, then ABOR.
        let mut c = Ctrl::login(server.addr);
        assert_eq!(c.cmd("TYPE I").0, 200);
        let data = c.pasv();
        SockRef::from(&data).set_recv_buffer_size(4096).unwrap();
        assert_eq!(c.cmd("RETR big.bin").0, 150);
        std::thread::sleep(Duration::from_millis(300));
        alive(&mut w, "unread download");
        c.send_raw(b"ABOR\r\n");
        let (code, text) = c.read_reply();
        assert!(code == 426 || code == 226, "{mode}: ABOR -> {code} {text}");
        if code == 426 {
            assert_eq!(c.read_reply().0, 226, "{mode}: after 426");
        }
        drop(data);
        assert_eq!(c.cmd("NOOP").0, 200, "{mode}: session after ABOR");

        // 2. The same, but the client vanishes (both connections reset).
        let data = c.pasv();
        SockRef::from(&data).set_recv_buffer_size(4096).unwrap();
        assert_eq!(c.cmd("RETR big.bin").0, 150);
        std::thread::sleep(Duration::from_millis(300));
        for s in [&data, &c.stream] {
            SockRef::from(s).set_linger(Some(Duration::ZERO)).unwrap();
        }
        drop(data);
        drop(c);
        alive(&mut w, "vanished downloader");

        // 3. Commands flooded without reading a single reply.
        let mut flood = TcpStream::connect(server.addr).unwrap();
        SockRef::from(&flood).set_recv_buffer_size(4096).unwrap();
        flood
            .set_write_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let burst = b"HELP\r\n".repeat(1000);
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut sent = 0usize;
        while sent < 64 << 20 && Instant::now() < deadline {
            match flood.write(&burst) {
                Ok(n) => sent += n,
                Err(_) => break,
            }
        }
        assert!(
            sent < 64 << 20,
            "{mode}: server read 64 MiB of unanswered commands"
        );
        alive(&mut w, "command flood");
        SockRef::from(&flood)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(flood);
        alive(&mut w, "flood reset");

        let ok = back_to_baseline(server.addr, pid, baseline);
        assert!(
            ok,
            "{mode}: {} descriptors, baseline {baseline}",
            fd_count(pid)
        );
        let ok = wait_until(SETTLE, || zombies_of(pid).is_empty());
        assert!(ok, "{mode}: zombies {:?}", zombies_of(pid));
        if mode == "forking" {
            let ok = wait_until(SETTLE, || children_of(pid).len() == 1);
            assert!(ok, "{mode}: children {:?}", children_of(pid));
        }
    }
}

/// Odd and out-of-range arguments get a reply each; nothing panics (the
/// server log is checked) and the session goes on.
#[test]
fn odd_arguments_get_replies_not_panics() {
    for mode in MODES {
        let server = FtpServer::start(mode, &[]);
        plant(&server);
        let mut c = Ctrl::login(server.addr);
        for cmd in [
            "REST 18446744073709551615",
            "REST 99999999999999999999999",
            "REST -1",
            "REST",
            "TYPE",
            "TYPE X Y Z",
            "TYPE L 7",
            "MODE Z",
            "STRU R",
            "OPTS",
            "OPTS UTF8",
            "OPTS MLST nonsense;;;",
            "PORT",
            "PORT 999,999,999,999,999,999",
            "PORT 127,0,0,1,0,0",
            "PORT 1,2,3",
            "EPRT",
            "EPRT |9|x|y|",
            "EPRT |1|127.0.0.1|99999|",
            "EPRT ||||",
            "EPSV 7",
            "EPSV ALL extra",
            "SIZE",
            "MDTM",
            "CWD",
            "MKD",
            "RMD",
            "DELE",
            "RNFR",
            "RNTO nowhere",
            "MLST",
            "STAT",
            "HELP HELP HELP",
            "SITE CHMOD 777 keep.txt",
            "ABOR",
            "ALLO 99999999999999999999",
            "USER",
            "PASS",
            "XXXXXXXX",
            "XXXXXXXXX arg",
            "LIST -la",
        ] {
            let (code, text) = c.cmd(cmd);
            assert!((100..600).contains(&code), "{mode}: {cmd} -> {code} {text}");
        }
        // REST past the end, then a download: an error or nothing, never a
        // hang or a crash.
        assert_eq!(c.cmd("TYPE I").0, 200);
        assert_eq!(c.cmd("REST 1000000").0, 350);
        let (code, got, end) = data_cmd(&mut c, "RETR keep.txt");
        assert!(got.is_empty(), "{mode}: {code} {end} {got:?}");
        assert!((100..600).contains(&end), "{mode}: {code} {end}");
        assert_eq!(c.cmd("REST 3").0, 350);
        let (_, got, end) = data_cmd(&mut c, "RETR keep.txt");
        assert_eq!((end, &got[..]), (226, &KEEP[3..]), "{mode}");
        assert_eq!(c.cmd("NOOP").0, 200);
        let log = server.log();
        assert!(!log.contains("panicked"), "{mode}: {log}");
    }
}
