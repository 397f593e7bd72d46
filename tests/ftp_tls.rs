//! Explicit FTPS (RFC 4217) in the FTP example, with real clients: curl
//! (`--ssl-reqd`), lftp (`ftp:ssl-force`, `ftp:ssl-protect-data`) and
//! Python's `ftplib.FTP_TLS` (`prot_p`), against a certificate made here
//! with rcgen. Transfers are byte-exact (3 MiB of random bytes), the reply
//! codes of AUTH/PBSZ/PROT and `--tls-required` are checked, and a
//! stalled or garbage handshake costs only its own session.
//!
//! curl and ftplib run in every mode (`per_mode!`). Tests that need curl
//! or lftp print `skipped: curl not installed` (or lftp) and pass when the
//! program is missing; the ftplib tests always run.

mod common_support;
mod ftp_support;

use std::fs;
use std::io::Read;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use ftp_support::{python, require_client, run_checked, Ctrl, FtpServer};

/// A self-signed certificate for `localhost` and 127.0.0.1, written as PEM
/// into a temporary directory that lives as long as the value.
struct TestCert {
    dir: tempfile::TempDir,
}

impl TestCert {
    fn new() -> TestCert {
        let dir = tempfile::tempdir().unwrap();
        let ck = rcgen::generate_simple_self_signed(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
        ])
        .unwrap();
        fs::write(dir.path().join("cert.pem"), ck.cert.pem()).unwrap();
        fs::write(dir.path().join("key.pem"), ck.key_pair.serialize_pem()).unwrap();
        TestCert { dir }
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join("key.pem")
    }
}

/// Starts the server in `mode` with TLS configured plus `extra` flags.
fn start_tls(mode: &str, cert: &TestCert, extra: &[&str]) -> FtpServer {
    let cert_path = cert.cert();
    let key_path = cert.key();
    let mut args = vec![
        "--tls-cert",
        cert_path.to_str().unwrap(),
        "--tls-key",
        key_path.to_str().unwrap(),
        "--login-delay",
        "0s",
    ];
    args.extend_from_slice(extra);
    FtpServer::start(mode, &args)
}

/// 3 MiB and a bit of random bytes (so nothing compresses or lines up).
fn random_bytes() -> Vec<u8> {
    let mut v = vec![0u8; 3 * 1024 * 1024 + 4099];
    getrandom::fill(&mut v).unwrap();
    v
}

/// curl: upload, download and list over TLS control and TLS data, with
/// `--tls-require-reuse` (curl resumes the control session on data
/// connections), byte-exact.
fn curl_upload_download_list(mode: &str) {
    if !require_client("curl") {
        return;
    }
    let cert = TestCert::new();
    let server = start_tls(mode, &cert, &["--tls-required", "--tls-require-reuse"]);
    let scratch = tempfile::tempdir().unwrap();
    let data = random_bytes();
    let src = scratch.path().join("src.bin");
    fs::write(&src, &data).unwrap();
    let curl = |args: &[&str]| {
        let mut c = Command::new("curl");
        c.args([
            "-sS",
            "--ssl-reqd",
            "-k",
            "--max-time",
            "60",
            "-u",
            "bob:secret",
        ])
        .args(args);
        run_checked(&mut c)
    };
    let url = server.url();
    curl(&["-T", src.to_str().unwrap(), &format!("{url}/up.bin")]);
    assert_eq!(fs::read(server.root().join("up.bin")).unwrap(), data);
    let dst = scratch.path().join("dst.bin");
    curl(&["-o", dst.to_str().unwrap(), &format!("{url}/up.bin")]);
    assert_eq!(fs::read(&dst).unwrap(), data, "download differs");
    let out = curl(&[&format!("{url}/")]);
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing
            .lines()
            .any(|l| l.ends_with(" up.bin")
                && l.split_whitespace().any(|w| w == data.len().to_string())),
        "{listing}"
    );
    let out = curl(&["-l", &format!("{url}/")]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "up.bin");
    // Everything went over TLS: no refusal in the log.
    let log = server.log();
    assert!(!log.contains("did not resume"), "{log}");
}
per_mode!(curl_tls, curl_upload_download_list);

/// Python's FTP_TLS with prot_p: upload, download, LIST, NLST, MLSD,
/// byte-exact; the reply codes of the RFC 4217 commands on the way.
/// Arguments: port, file to upload. Prints "OK".
const FTPLIB_TLS: &str = r#"
import ftplib, io, ssl, sys
port, path = int(sys.argv[1]), sys.argv[2]
data = open(path, "rb").read()
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ftp = ftplib.FTP_TLS(context=ctx, timeout=20)
ftp.connect("127.0.0.1", port)
feat = ftp.sendcmd("FEAT")
for f in ("AUTH TLS", "PBSZ", "PROT"):
    assert f in feat, feat
# RFC 4217 order: PBSZ and PROT need AUTH first.
for cmd in ("PBSZ 0", "PROT P"):
    try:
        ftp.sendcmd(cmd)
        raise SystemExit(cmd + " accepted before AUTH")
    except ftplib.error_perm as e:
        assert str(e).startswith("503"), e
ftp.auth()
try:
    ftp.sendcmd("PROT P")
    raise SystemExit("PROT before PBSZ accepted")
except ftplib.error_perm as e:
    assert str(e).startswith("503"), e
try:
    ftp.sendcmd("AUTH TLS")
    raise SystemExit("second AUTH accepted")
except ftplib.error_perm as e:
    assert str(e).startswith("503"), e
ftp.login("bob", "secret")
assert ftp.sendcmd("PBSZ 0").startswith("200")
for level, code in (("S", "536"), ("E", "536"), ("X", "504")):
    try:
        ftp.sendcmd("PROT " + level)
        raise SystemExit("PROT " + level + " accepted")
    except ftplib.error_perm as e:
        assert str(e).startswith(code), e
ftp.prot_p()
ftp.storbinary("STOR up.bin", io.BytesIO(data))
got = io.BytesIO()
ftp.retrbinary("RETR up.bin", got.write)
assert got.getvalue() == data, "download differs"
got = io.BytesIO()
ftp.retrbinary("RETR up.bin", got.write, rest=len(data) - 5)
assert got.getvalue() == data[-5:]
ftp.storbinary("APPE up.bin", io.BytesIO(b"tail"))
assert ftp.size("up.bin") == len(data) + 4
ftp.storlines("STOR text.txt", io.BytesIO(b"one\ntwo\n"))
lines = []
ftp.retrlines("RETR text.txt", lines.append)
assert lines == ["one", "two"], lines
lines = []
ftp.retrlines("LIST", lines.append)
assert any(l.endswith(" up.bin") and str(len(data) + 4) in l.split() for l in lines), lines
assert sorted(ftp.nlst()) == ["text.txt", "up.bin"], ftp.nlst()
facts = dict(ftp.mlsd())
assert int(facts["up.bin"]["size"]) == len(data) + 4, facts
# PROT C goes back to clear data connections (allowed without --tls-required).
ftp.prot_c()
assert sorted(ftp.nlst()) == ["text.txt", "up.bin"]
ftp.quit()
print("OK")
"#;

fn ftplib_tls(mode: &str) {
    let cert = TestCert::new();
    let server = start_tls(mode, &cert, &[]);
    let scratch = tempfile::tempdir().unwrap();
    let data = random_bytes();
    let src = scratch.path().join("src.bin");
    fs::write(&src, &data).unwrap();
    let out = python(
        FTPLIB_TLS,
        &[&server.port().to_string(), src.to_str().unwrap()],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK");
    let mut expected = data;
    expected.extend_from_slice(b"tail");
    assert_eq!(fs::read(server.root().join("up.bin")).unwrap(), expected);
    assert_eq!(
        fs::read(server.root().join("text.txt")).unwrap(),
        b"one\ntwo\n"
    );
}
per_mode!(ftplib_prot_p, ftplib_tls);

/// The Python prelude of the session-reuse scripts: an `FTP_TLS` whose
/// data connections resume the control connection's TLS session (what
/// curl, FileZilla and lftp do; stock ftplib does not).
const PY_REUSING: &str = r#"
import ftplib

class Reusing(ftplib.FTP_TLS):
    def ntransfercmd(self, cmd, rest=None):
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:
            conn = self.context.wrap_socket(
                conn, server_hostname=self.host, session=self.sock.session)
        return conn, size

"#;

/// `--tls-require-reuse`: stock ftplib (which does a full handshake on
/// every data connection) gets 522; the same client passing the control
/// connection's session to `wrap_socket` works. Arguments: port. Prints
/// "OK".
const FTPLIB_REUSE: &str = r#"
import ftplib, io, ssl, sys
port = int(sys.argv[1])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
stock = ftplib.FTP_TLS(context=ctx, timeout=20)
stock.connect("127.0.0.1", port)
stock.login("bob", "secret")
stock.prot_p()
try:
    stock.nlst()
    raise SystemExit("a data connection without session reuse was accepted")
except ftplib.error_perm as e:
    assert str(e).startswith("522"), e
stock.quit()

ftp = Reusing(context=ctx, timeout=20)
ftp.connect("127.0.0.1", port)
ftp.login("bob", "secret")
ftp.prot_p()
data = bytes(range(256)) * 4096
for _ in range(3):  # one session, several data connections
    ftp.storbinary("STOR r.bin", io.BytesIO(data))
    got = io.BytesIO()
    ftp.retrbinary("RETR r.bin", got.write)
    assert got.getvalue() == data
assert ftp.nlst() == ["r.bin"]
ftp.quit()
print("OK")
"#;

fn ftplib_require_reuse(mode: &str) {
    let cert = TestCert::new();
    let server = start_tls(mode, &cert, &["--tls-require-reuse"]);
    let out = python(
        &format!("{PY_REUSING}{FTPLIB_REUSE}"),
        &[&server.port().to_string()],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK");
    assert!(server.log().contains("did not resume"));
}
per_concurrent_mode!(ftplib_session_reuse, ftplib_require_reuse);

/// `--tls-require-reuse` binds a data connection to its control
/// connection's TLS session. An attacker on the victim's IP does `AUTH
/// TLS` on a control connection of its own (no login), takes that
/// session, connects first to the victim's EPSV port and resumes its own
/// session there: the server must not resume it, so the handshake is a
/// full one, refused (`522` to the victim), and the attacker gets none of
/// the file. The victim, resuming its own session, then downloads it.
/// Arguments: port, path of the file's copy. Prints "OK".
const FTPLIB_REUSE_HIJACK: &str = r#"
import ftplib, socket, ssl, sys
port, path = int(sys.argv[1]), sys.argv[2]
secret = open(path, "rb").read()

def context():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx

# The attacker: TLS on its own control connection, no login.
actx = context()
attacker = ftplib.FTP_TLS(context=actx, timeout=20)
attacker.connect("127.0.0.1", port)
attacker.auth()
attacker.voidcmd("NOOP")  # reads the session tickets
stolen_session = attacker.sock.session
assert stolen_session is not None

victim = Reusing(context=context(), timeout=20)
victim.connect("127.0.0.1", port)
victim.login("bob", "secret")
victim.prot_p()
victim.voidcmd("TYPE I")
_, data_port = ftplib.parse229(victim.sendcmd("EPSV"), victim.sock.getpeername())
# The attacker is first on the victim's data port ...
raw = socket.create_connection(("127.0.0.1", data_port), timeout=20)
# ... so the server takes its connection for the victim's RETR.
assert victim.sendcmd("RETR secret.bin").startswith("150")
stolen = b""
resumed = None
try:
    data = actx.wrap_socket(raw, server_hostname="127.0.0.1", session=stolen_session)
    resumed = data.session_reused
    while True:
        chunk = data.recv(65536)
        if not chunk:
            break
        stolen += chunk
except (ssl.SSLError, OSError):
    pass
assert stolen == b"", "the attacker received %d bytes of the victim's file" % len(stolen)
assert not resumed, "the attacker's own session was resumed on the victim's data connection"
try:
    victim.voidresp()
    raise SystemExit("the victim's transfer went to someone")
except ftplib.error_perm as e:
    assert str(e).startswith("522"), e
# The victim's own session still resumes, and the file arrives whole.
got = []
victim.retrbinary("RETR secret.bin", got.append)
assert b"".join(got) == secret
victim.quit()
attacker.quit()
print("OK")
"#;

fn require_reuse_binds_the_data_connection_to_its_session(mode: &str) {
    let cert = TestCert::new();
    let server = start_tls(mode, &cert, &["--tls-require-reuse"]);
    let secret = ftp_support::pattern(3 << 20, 21);
    fs::write(server.root().join("secret.bin"), &secret).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let copy = scratch.path().join("secret.bin");
    fs::write(&copy, &secret).unwrap();
    let out = python(
        &format!("{PY_REUSING}{FTPLIB_REUSE_HIJACK}"),
        &[&server.port().to_string(), copy.to_str().unwrap()],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK");
    assert!(server.log().contains("did not resume"), "{mode}");
    // curl, which resumes its control session, still downloads.
    if !require_client("curl") {
        return;
    }
    let dst = scratch.path().join("curl.bin");
    run_checked(Command::new("curl").args([
        "-sS",
        "--ssl-reqd",
        "-k",
        "--max-time",
        "60",
        "-u",
        "bob:secret",
        "-o",
        dst.to_str().unwrap(),
        &format!("{}/secret.bin", server.url()),
    ]));
    assert_eq!(fs::read(&dst).unwrap(), secret, "{mode}");
}
per_concurrent_mode!(
    session_reuse_is_bound_to_the_control_connection,
    require_reuse_binds_the_data_connection_to_its_session
);

/// `--tls-required`: USER and PASS in clear get 530, and after AUTH TLS a
/// transfer under PROT C gets 521 (nothing is sent in clear). Arguments:
/// port. Prints "OK".
const FTPLIB_REQUIRED: &str = r#"
import ftplib, ssl, sys
port = int(sys.argv[1])
plain = ftplib.FTP(timeout=20)
plain.connect("127.0.0.1", port)
for cmd in ("USER bob", "PASS secret"):
    try:
        plain.sendcmd(cmd)
        raise SystemExit(cmd + " accepted in clear")
    except ftplib.error_perm as e:
        assert str(e).startswith("530"), e
plain.quit()
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ftp = ftplib.FTP_TLS(context=ctx, timeout=20)
ftp.connect("127.0.0.1", port)
ftp.login("bob", "secret")  # AUTH TLS first, then USER/PASS
try:
    ftp.nlst()
    raise SystemExit("a clear data connection was accepted")
except ftplib.error_perm as e:
    assert str(e).startswith("521"), e
ftp.prot_p()
assert ftp.nlst() == []
ftp.quit()
print("OK")
"#;

#[test]
fn tls_required_refuses_clear_logins_and_clear_data() {
    let cert = TestCert::new();
    let server = start_tls("threading", &cert, &["--tls-required"]);
    let out = python(FTPLIB_REQUIRED, &[&server.port().to_string()]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK");
}

/// An ftplib script that starts logged in over TLS with `PROT P` (port in
/// `argv[1]`, certificate not checked), followed by `$body`.
macro_rules! logged_in_over_tls {
    ($body:literal) => {
        concat!(
            r#"
import ftplib, ssl, sys
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ftp = ftplib.FTP_TLS(context=ctx, timeout=5)
ftp.connect("127.0.0.1", int(sys.argv[1]))
ftp.login("bob", "secret")
ftp.prot_p()
"#,
            $body
        )
    };
}

/// `--tls-self-signed`: FTPS with no files to prepare; a client that
/// skips verification (`curl --ssl-reqd -k`, here ftplib) works at once,
/// in passive and active mode, and the certificate names localhost and
/// 127.0.0.1.
#[test]
fn self_signed_certificate_works_at_once() {
    let server = FtpServer::start(
        "threading",
        &["--tls-self-signed", "--tls-required", "--login-delay", "0s"],
    );
    let out = python(SELF_SIGNED, &[&server.port().to_string()]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK");
}

const SELF_SIGNED: &str = logged_in_over_tls!(
    r#"
ftp.storbinary("STOR f", __import__("io").BytesIO(b"x" * 100000))
got = bytearray()
ftp.retrbinary("RETR f", got.extend)
assert bytes(got) == b"x" * 100000, len(got)
# Active mode (PORT/EPRT) under PROT P: the server connects and is the
# TLS server on that data connection too.
ftp.set_pasv(False)
got = bytearray()
ftp.retrbinary("RETR f", got.extend)
assert bytes(got) == b"x" * 100000, len(got)
ftp.storbinary("STOR g", __import__("io").BytesIO(b"y" * 70000))
assert ftp.size("g") == 70000
assert sorted(ftp.nlst()) == ["f", "g"], ftp.nlst()
der = ftp.sock.getpeercert(binary_form=True)
assert b"localhost" in der and bytes([127, 0, 0, 1]) in der, der
ftp.quit()
print("OK")
"#
);

#[test]
fn without_a_certificate_nothing_changes() {
    let server = FtpServer::start("threading", &[]);
    let (mut c, code, _) = Ctrl::connect(server.addr);
    assert_eq!(code, 220);
    let (code, feat) = c.cmd("FEAT");
    assert_eq!(code, 211);
    assert!(!feat.contains("AUTH") && !feat.contains("PBSZ") && !feat.contains("PROT"));
    assert_eq!(c.cmd("AUTH TLS").0, 504);
    assert_eq!(c.cmd("PBSZ 0").0, 504);
    assert_eq!(c.cmd("PROT P").0, 504);
    assert_eq!(c.cmd("USER bob").0, 331);
    assert_eq!(c.cmd("PASS secret").0, 230);
}

#[test]
fn the_server_refuses_to_start_with_a_bad_key() {
    let cert = TestCert::new();
    // The certificate given as the key: no private key in it.
    let base = tempfile::tempdir().unwrap();
    let out = ftp_support::run_bounded(
        Command::new(ftp_support::ftp_binary())
            .arg("--root")
            .arg(base.path())
            .args(["--listen", "127.0.0.1:0", "--tls-cert"])
            .arg(cert.cert())
            .arg("--tls-key")
            .arg(cert.cert()),
        Duration::from_secs(20),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("private key"), "{err}");
}

/// Logs in over TLS with ftplib and lists: proof that the server serves
/// another session. Arguments: port. Prints "OK".
const FTPLIB_QUICK: &str = logged_in_over_tls!(
    r#"
ftp.nlst()
ftp.quit()
print("OK")
"#
);

/// A client that sends AUTH TLS and then nothing does not hold up another
/// session, and is dropped after --tls-handshake-timeout.
fn stalled_handshake(mode: &str) {
    let cert = TestCert::new();
    let server = start_tls(mode, &cert, &["--tls-handshake-timeout", "3s"]);
    let (mut stalled, code, _) = Ctrl::connect(server.addr);
    assert_eq!(code, 220);
    assert_eq!(stalled.cmd("AUTH TLS").0, 234);
    let t0 = Instant::now();
    // Another session logs in and lists while the handshake is stalled.
    let mut other = Ctrl::login(server.addr);
    let (code, _) = other.fetch("NLST");
    assert_eq!(code, 226);
    assert_eq!(other.cmd("QUIT").0, 221);
    let served_after = t0.elapsed();
    // The stalled connection is still open then (nothing to read yet)...
    stalled.stream.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 16];
    let early = stalled.stream.peek(&mut buf);
    assert!(
        served_after < Duration::from_secs(3)
            && matches!(&early, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "another session waited for the stalled handshake: served after {served_after:?}, stalled socket {early:?}"
    );
    // ...and closed after the timeout, not before.
    stalled.stream.set_nonblocking(false).unwrap();
    let n = stalled.reader.read(&mut buf);
    let waited = t0.elapsed();
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    assert!(
        waited >= Duration::from_millis(2500) && waited < Duration::from_secs(30),
        "closed after {waited:?}"
    );
}
per_concurrent_mode!(stalled_tls_handshake, stalled_handshake);

/// Garbage instead of a ClientHello closes that session only.
fn garbage_handshake(mode: &str) {
    let cert = TestCert::new();
    let server = start_tls(mode, &cert, &[]);
    let (mut bad, code, _) = Ctrl::connect(server.addr);
    assert_eq!(code, 220);
    assert_eq!(bad.cmd("AUTH TLS").0, 234);
    bad.send_raw(b"USER bob\r\nPASS secret\r\nLIST\r\n");
    // A TLS alert may come first; then end of file.
    let mut rest = Vec::new();
    let t0 = Instant::now();
    let _ = bad.reader.read_to_end(&mut rest);
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert!(
        !String::from_utf8_lossy(&rest).contains("331"),
        "plaintext after AUTH TLS was run: {rest:?}"
    );
    let out = python(FTPLIB_QUICK, &[&server.port().to_string()]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK");
    assert!(server.log().contains("control TLS handshake failed"));
}
per_concurrent_mode!(garbage_tls_handshake, garbage_handshake);

/// lftp (GnuTLS) with TLS forced on control and data, resuming the
/// session (so under --tls-require-reuse): get, put, ls, byte-exact.
fn lftp_tls(mode: &str) {
    if !require_client("lftp") {
        return;
    }
    let cert = TestCert::new();
    let server = start_tls(mode, &cert, &["--tls-required", "--tls-require-reuse"]);
    let scratch = tempfile::tempdir().unwrap();
    let data = random_bytes();
    fs::write(server.root().join("down.bin"), &data).unwrap();
    fs::write(scratch.path().join("up.bin"), &data).unwrap();
    let script = format!(
        "set ftp:ssl-force true; set ftp:ssl-protect-data true; \
         set ssl:verify-certificate no; set net:max-retries 1; set net:timeout 20; \
         open -u bob,secret {url}; lcd {dir}; get down.bin -o got.bin; put up.bin; cls -1",
        url = server.url(),
        dir = scratch.path().display()
    );
    let out = run_checked(Command::new("lftp").args(["-c", &script]));
    assert_eq!(fs::read(scratch.path().join("got.bin")).unwrap(), data);
    assert_eq!(fs::read(server.root().join("up.bin")).unwrap(), data);
    let names = String::from_utf8_lossy(&out.stdout);
    assert!(
        names.contains("down.bin") && names.contains("up.bin"),
        "{names}"
    );
}
mod lftp_prot_p {
    #[test]
    fn threading() {
        super::lftp_tls("threading");
    }
    #[test]
    fn forking() {
        super::lftp_tls("forking");
    }
    #[test]
    fn prefork() {
        super::lftp_tls("prefork");
    }
}

/// ABOR under `PROT P` (arguments: port, and the hex of what precedes
/// `ABOR` on the control line: nothing, or Telnet IAC IP IAC DM as lftp
/// sends it inside TLS): during a 32 MiB RETR the client stops reading, so
/// the server waits for room on the data socket, and during STOR to a new
/// name and over an existing file. Each gets `426` then `226`, the session
/// goes on over TLS (LIST, RETR), an aborted upload leaves nothing behind
/// and the old file untouched. At `FDS base` / `FDS after` the script
/// waits for a line on stdin while the test counts the server's
/// descriptors. Prints "OK".
const FTPLIB_TLS_ABOR: &str = logged_in_over_tls!(
    r#"
import io, time
prefix = bytes.fromhex(sys.argv[2])
small = open(sys.argv[3], "rb").read()

def checkpoint(tag):
    print("FDS " + tag, flush=True)
    assert sys.stdin.readline().strip() == "go"

def abort():
    ftp.sock.sendall(prefix + b"ABOR\r\n")
    first, second = ftp.getline(), ftp.getline()
    assert first.startswith("426"), (first, second)
    assert second.startswith("226"), (first, second)

def fetch(name):
    got = io.BytesIO()
    ftp.retrbinary("RETR " + name, got.write)
    return got.getvalue()

ftp.voidcmd("TYPE I")
checkpoint("base")
for _ in range(2):
    conn = ftp.transfercmd("RETR big.bin")
    assert conn.recv(65536)
    time.sleep(0.3)  # the server fills the socket and waits for room
    abort()
    conn.close()
    assert sorted(ftp.nlst()) == ["big.bin", "small.bin"]
    assert fetch("small.bin") == small

for name in ("new.bin", "small.bin"):
    conn = ftp.transfercmd("STOR " + name)
    conn.sendall(b"x" * (1 << 20))
    time.sleep(0.2)
    abort()
    conn.close()
    assert sorted(ftp.nlst()) == ["big.bin", "small.bin"], ftp.nlst()
    assert fetch("small.bin") == small

ftp.voidcmd("NOOP")
checkpoint("after")
ftp.quit()
print("OK")
"#
);

/// `pid` and its descendants, each with its number of open descriptors.
fn descriptors_of_tree(pid: i32) -> std::collections::BTreeMap<i32, usize> {
    let mut parent = std::collections::HashMap::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let Some(pp) = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split(' ').nth(1))
            .and_then(|v| v.parse::<i32>().ok())
        else {
            continue;
        };
        parent.insert(p, pp);
    }
    let in_tree = |mut p: i32| {
        for _ in 0..16 {
            if p == pid {
                return true;
            }
            match parent.get(&p) {
                Some(&pp) if pp > 0 => p = pp,
                _ => return false,
            }
        }
        false
    };
    parent
        .keys()
        .copied()
        .filter(|&p| in_tree(p))
        .filter_map(|p| {
            let n = fs::read_dir(format!("/proc/{p}/fd")).ok()?.count();
            Some((p, n))
        })
        .collect()
}

/// Runs [`FTPLIB_TLS_ABOR`] against a fresh server in `mode` with
/// `prefix_hex` before each ABOR, answering its checkpoints, and checks
/// the root and the server's descriptors afterwards.
fn tls_abor_session(mode: &str, prefix_hex: &str) {
    use std::io::{BufRead, BufReader, Write};
    use std::process::Stdio;
    use std::sync::mpsc;

    let cert = TestCert::new();
    let server = start_tls(mode, &cert, &[]);
    fs::write(
        server.root().join("big.bin"),
        ftp_support::pattern(32 << 20, 3),
    )
    .unwrap();
    let small = ftp_support::pattern(70_000, 4);
    fs::write(server.root().join("small.bin"), &small).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let script = scratch.path().join("client.py");
    fs::write(&script, FTPLIB_TLS_ABOR).unwrap();
    let small_copy = scratch.path().join("small.bin");
    fs::write(&small_copy, &small).unwrap();

    let mut child = Command::new("python3")
        .arg(&script)
        .args([
            &server.port().to_string(),
            prefix_hex,
            small_copy.to_str().unwrap(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut counts = Vec::new();
    let mut lines = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.starts_with("FDS ") => {
                counts.push(descriptors_of_tree(server.pid()));
                writeln!(stdin, "go").unwrap();
                stdin.flush().unwrap();
            }
            Ok(line) => lines.push(line),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{mode}: the script timed out; log:\n{}", server.log());
            }
        }
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && lines.last().map(String::as_str) == Some("OK"),
        "{mode} prefix {prefix_hex:?}: {}\nstdout: {lines:?}\nstderr:\n{}\nlog:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
    // Nothing of the aborted uploads is left, and the old file is intact.
    assert_eq!(
        ftp_support::tree(&server.root()),
        ["big.bin", "small.bin"],
        "{mode}"
    );
    assert_eq!(fs::read(server.root().join("small.bin")).unwrap(), small);
    // The same processes hold as many descriptors after the aborted
    // transfers as before them. Prefork may have grown or shrunk its pool
    // in between: then only the processes present both times are compared,
    // and not the pool's parent, which holds descriptors per worker.
    let [base, after] = &counts[..] else {
        panic!("{mode}: checkpoints {counts:?}");
    };
    let same_processes = base.keys().eq(after.keys());
    for (pid, n) in base {
        if !same_processes && *pid == server.pid() {
            continue;
        }
        if let Some(m) = after.get(pid) {
            assert_eq!(
                n, m,
                "{mode}: process {pid} descriptors {base:?} -> {after:?}"
            );
        }
    }
    assert!(
        base.keys().any(|p| after.contains_key(p)),
        "{mode}: {base:?} {after:?}"
    );
}

fn tls_abor_plain_line(mode: &str) {
    tls_abor_session(mode, "");
}
per_mode!(tls_abor, tls_abor_plain_line);

fn tls_abor_telnet_synch(mode: &str) {
    tls_abor_session(mode, "fff4fff2");
}
per_mode!(tls_abor_with_telnet_ip_synch, tls_abor_telnet_synch);
