//! The FTP example driven by real clients: Python's ftplib, curl and lftp,
//! in every mode (sync, threading, forking, prefork, async: `per_mode!`
//! makes one test per strategy from one body).
//!
//! The ftplib tests always run (Python is on every machine). A test that
//! needs curl or lftp checks that it is installed first; when it is not,
//! it prints `skipped: curl not installed` (or lftp) to stderr and passes.
//! CI installs both, so there they run and can fail.

mod common_support;
mod ftp_support;

use std::fs;
use std::process::Command;

use ftp_support::{pattern, python, require_client, run_checked, tree, FtpServer};

/// Exercises every command the issue lists through ftplib. Arguments:
/// port, local scratch dir. Prints "OK" at the end.
const FTPLIB_SCRIPT: &str = r#"
import ftplib, hashlib, io, os, sys
port, scratch = int(sys.argv[1]), sys.argv[2]
data = bytes((i * 7 + 3) % 251 for i in range(3 * 1024 * 1024 + 17))
ftp = ftplib.FTP()
ftp.connect("127.0.0.1", port, timeout=20)
assert ftp.getwelcome().startswith("220")
ftp.login("bob", "secret")
assert ftp.pwd() == "/", ftp.pwd()
assert ftp.mkd("dir one") == "/dir one"
ftp.cwd("dir one")
assert ftp.pwd() == "/dir one"
# STOR and RETR with a checksum, in binary mode.
ftp.storbinary("STOR big.bin", io.BytesIO(data))
got = io.BytesIO()
ftp.retrbinary("RETR big.bin", got.write)
assert hashlib.sha256(got.getvalue()).hexdigest() == hashlib.sha256(data).hexdigest()
assert ftp.size("big.bin") == len(data)
mdtm = ftp.sendcmd("MDTM big.bin")
assert mdtm.startswith("213 ") and len(mdtm) == 18, mdtm
# LIST and MLSD.
lines = []
ftp.retrlines("LIST", lines.append)
assert len(lines) == 1 and lines[0].startswith("-rw") and lines[0].endswith(" big.bin"), lines
assert str(len(data)) in lines[0].split()
facts = dict(ftp.mlsd())
assert facts["big.bin"]["type"] == "file" and int(facts["big.bin"]["size"]) == len(data), facts
assert ftp.nlst() == ["big.bin"]
# APPE.
ftp.storbinary("APPE big.bin", io.BytesIO(b"tail"))
assert ftp.size("big.bin") == len(data) + 4
# REST resume of a download.
got = io.BytesIO()
ftp.retrbinary("RETR big.bin", got.write, rest=len(data) - 10)
assert got.getvalue() == data[-10:] + b"tail", got.getvalue()
# ASCII mode converts line endings both ways.
ftp.storlines("STOR text.txt", io.BytesIO(b"one\ntwo\n"))
lines = []
ftp.retrlines("RETR text.txt", lines.append)
assert lines == ["one", "two"], lines
# RNFR/RNTO, DELE, RMD.
ftp.rename("big.bin", "renamed.bin")
assert sorted(ftp.nlst()) == ["renamed.bin", "text.txt"]
ftp.delete("renamed.bin")
ftp.delete("text.txt")
ftp.cwd("..")
ftp.rmd("dir one")
assert ftp.nlst() == []
# MLST, FEAT, SYST, STAT, NOOP, HELP, unknown command, AUTH refused.
feat = ftp.sendcmd("FEAT")
for f in ("MLST", "SIZE", "MDTM", "EPSV", "REST STREAM", "UTF8"):
    assert f in feat, feat
assert ftp.sendcmd("SYST").startswith("215 UNIX")
assert ftp.sendcmd("NOOP").startswith("200")
assert ftp.sendcmd("HELP").startswith("214")
assert ftp.sendcmd("STAT").startswith("211")
assert ftp.sendcmd("OPTS UTF8 ON").startswith("200")
assert ftp.sendcmd("TYPE I").startswith("200")
assert ftp.sendcmd("MODE S").startswith("200")
assert ftp.sendcmd("STRU F").startswith("200")
assert ftp.sendcmd("ACCT x").startswith("202")
assert ftp.sendcmd("MLST /").startswith("250-")
for bad, code in (("FOO", "502"), ("AUTH TLS", "504"), ("MODE B", "504"), ("TYPE E", "504")):
    try:
        ftp.sendcmd(bad)
        raise SystemExit(bad + " should fail")
    except ftplib.error_perm as e:
        assert str(e).startswith(code), (bad, e)
# Case-insensitive commands and EPSV.
assert ftp.sendcmd("pwd").startswith('257 "/"')
ftp.sendcmd("EPSV")
assert ftp.quit().startswith("221")
print("OK")
"#;

fn ftplib_round_trip(mode: &str) {
    let server = FtpServer::start(mode, &[]);
    let scratch = tempfile::tempdir().unwrap();
    let port = server.port().to_string();
    let out = python(FTPLIB_SCRIPT, &[&port, scratch.path().to_str().unwrap()]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK");
    assert!(
        tree(&server.root()).is_empty(),
        "{:?}",
        tree(&server.root())
    );
}

per_mode!(ftplib_every_command, ftplib_round_trip);

fn curl(args: &[&str]) -> Vec<u8> {
    let out = run_checked(
        Command::new("curl")
            .args(["-sS", "--max-time", "60", "-u", "bob:secret"])
            .args(args),
    );
    out.stdout
}

fn curl_transfers(mode: &str) {
    if !require_client("curl") {
        return;
    }
    let server = FtpServer::start(mode, &[]);
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("src.bin");
    let body = pattern(2 * 1024 * 1024 + 5, 7);
    fs::write(&src, &body).unwrap();
    let url = server.url();
    // Upload with -T (EPSV by default), then download three ways.
    curl(&["-T", src.to_str().unwrap(), &format!("{url}/up.bin")]);
    assert_eq!(fs::read(server.root().join("up.bin")).unwrap(), body);
    assert_eq!(curl(&[&format!("{url}/up.bin")]), body);
    assert_eq!(curl(&["--disable-epsv", &format!("{url}/up.bin")]), body);
    assert_eq!(curl(&["-P", "127.0.0.1", &format!("{url}/up.bin")]), body);
    // Active upload too.
    curl(&[
        "-P",
        "127.0.0.1",
        "-T",
        src.to_str().unwrap(),
        &format!("{url}/active.bin"),
    ]);
    assert_eq!(fs::read(server.root().join("active.bin")).unwrap(), body);
    // Resumed download: keep the first 1000 bytes locally.
    let part = local.path().join("part.bin");
    fs::write(&part, &body[..1000]).unwrap();
    curl(&[
        "-C",
        "-",
        "-o",
        part.to_str().unwrap(),
        &format!("{url}/up.bin"),
    ]);
    assert_eq!(fs::read(&part).unwrap(), body);
    // Resumed upload: the server holds the first 3000 bytes.
    fs::write(server.root().join("resume.bin"), &body[..3000]).unwrap();
    curl(&[
        "-C",
        "-",
        "-T",
        src.to_str().unwrap(),
        &format!("{url}/resume.bin"),
    ]);
    assert_eq!(fs::read(server.root().join("resume.bin")).unwrap(), body);
    // A directory listing.
    let listing = String::from_utf8(curl(&[&format!("{url}/")])).unwrap();
    assert!(listing.lines().any(|l| l.ends_with(" up.bin")), "{listing}");
}

per_mode!(curl_upload_download_pasv_active_resume, curl_transfers);

fn lftp_session(mode: &str) {
    if !require_client("lftp") {
        return;
    }
    let server = FtpServer::start(mode, &[]);
    let local = tempfile::tempdir().unwrap();
    let l = local.path();
    fs::create_dir_all(l.join("tree/a/b")).unwrap();
    fs::write(l.join("tree/top.txt"), b"top\n").unwrap();
    fs::write(l.join("tree/a/mid.bin"), pattern(300_000, 3)).unwrap();
    fs::write(l.join("tree/a/b/deep.txt"), b"deep\n").unwrap();
    fs::write(l.join("single.bin"), pattern(100_000, 9)).unwrap();
    let script = format!(
        "set ftp:ssl-allow no; set net:max-retries 1; set net:timeout 20; \
         set cmd:fail-exit yes; lcd {local}; \
         put single.bin; ls; get single.bin -o got.bin; \
         mirror -R tree tree; mirror tree copy; rm -r tree; rm single.bin; ls; bye",
        local = l.display()
    );
    let out =
        run_checked(Command::new("lftp").args(["-u", "bob,secret", "-e", &script, &server.url()]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(" single.bin"), "ls output: {stdout}");
    assert_eq!(fs::read(l.join("got.bin")).unwrap(), pattern(100_000, 9));
    assert_eq!(tree(&l.join("copy")), tree(&l.join("tree")));
    assert_eq!(
        fs::read(l.join("copy/a/mid.bin")).unwrap(),
        pattern(300_000, 3)
    );
    assert_eq!(fs::read(l.join("copy/a/b/deep.txt")).unwrap(), b"deep\n");
    assert!(
        tree(&server.root()).is_empty(),
        "{:?}",
        tree(&server.root())
    );
}

per_mode!(lftp_ls_put_get_mirror_rm, lftp_session);

#[test]
fn curl_over_ipv6_epsv_and_eprt() {
    if !require_client("curl") {
        return;
    }
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("skipping: no IPv6 loopback on this machine");
        return;
    }
    let server = FtpServer::start_full("threading", "[::1]:0", &[], &[]);
    assert!(server.addr.is_ipv6());
    let body = pattern(70_000, 11);
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("v6.bin");
    fs::write(&src, &body).unwrap();
    let url = server.url();
    curl(&["-T", src.to_str().unwrap(), &format!("{url}/v6.bin")]);
    assert_eq!(fs::read(server.root().join("v6.bin")).unwrap(), body);
    assert_eq!(curl(&[&format!("{url}/v6.bin")]), body);
    assert_eq!(curl(&["-P", "::1", &format!("{url}/v6.bin")]), body);
}

/// `rclone sync` to the server keeps the files' modification times (it
/// sets them with MFMT when FEAT lists it).
fn rclone_sync(mode: &str) {
    if !require_client("rclone") {
        return;
    }
    let server = FtpServer::start(mode, &[]);
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("src");
    fs::create_dir_all(src.join("sub/deeper")).unwrap();
    let files = [
        ("a.txt", 1_577_934_245u64),
        ("sub/b.bin", 1_262_304_000),
        ("sub/deeper/c.txt", 946_684_799),
    ];
    for (i, (name, mtime)) in files.iter().enumerate() {
        let path = src.join(name);
        fs::write(&path, pattern(1000 + i * 777, i as u64 + 1)).unwrap();
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(*mtime);
        fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }
    let pass = run_checked(Command::new("rclone").args(["obscure", "secret"]));
    let pass = String::from_utf8(pass.stdout).unwrap();
    let remote = format!(
        ":ftp,host=127.0.0.1,port={},user=bob,pass={}:dst",
        server.port(),
        pass.trim()
    );
    let out = run_checked(Command::new("rclone").args([
        "sync",
        src.to_str().unwrap(),
        &remote,
        "--config",
        "/dev/null",
        "--contimeout",
        "20s",
        "--timeout",
        "60s",
        "-v",
    ]));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!log.contains("not supported"), "{log}");
    for (i, (name, mtime)) in files.iter().enumerate() {
        let path = server.root().join("dst").join(name);
        assert_eq!(
            fs::read(&path).unwrap(),
            pattern(1000 + i * 777, i as u64 + 1),
            "{mode}: {name}"
        );
        let got = fs::metadata(&path)
            .unwrap()
            .modified()
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert_eq!(got, *mtime, "{mode}: {name} lost its modification time");
    }
}

per_concurrent_mode!(rclone_sync_keeps_modification_times, rclone_sync);
