//! Starting the servers under test: ours, pyftpdlib, vsftpd.

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Result, TIMEOUT};

use crate::client::{Client, Server};

/// Reads the first stdout line of a child within `limit`.
pub(crate) fn first_line(child: &mut Child, limit: Duration) -> Result<String> {
    let out = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(out).read_line(&mut line);
        let _ = tx.send(line);
    });
    Ok(rx.recv_timeout(limit)?)
}

pub(crate) fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub(crate) fn wait_listening(addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(mut c) = Client::connect(addr, TIMEOUT) {
            let _ = c.cmd("QUIT", 221);
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("nothing listening on {addr}").into())
}

/// A certificate and key (PEM files) for the FTPS rows.
pub(crate) struct TlsFiles {
    pub(crate) cert: std::path::PathBuf,
    pub(crate) key: std::path::PathBuf,
}

impl TlsFiles {
    /// A self-signed certificate for localhost, made with rcgen.
    pub(crate) fn make(dir: &Path) -> Result<TlsFiles> {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
        let files = TlsFiles {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        };
        fs::write(&files.cert, ck.cert.pem())?;
        fs::write(&files.key, ck.key_pair.serialize_pem())?;
        Ok(files)
    }
}

pub(crate) fn start_ours(
    bin: &Path,
    root: &Path,
    mode: &str,
    tls: Option<&TlsFiles>,
) -> Result<Server> {
    let mut cmd = Command::new(bin);
    if let Some(t) = tls {
        // As vsftpd below: TLS required, data sessions must resume.
        cmd.arg("--tls-cert")
            .arg(&t.cert)
            .arg("--tls-key")
            .arg(&t.key)
            .args(["--tls-required", "--tls-require-reuse"]);
    }
    let mut child = cmd
        .arg("--root")
        .arg(root)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--mode",
            mode,
            "--user",
            "bob:secret",
            // The peers answer a right password at once; so do we here,
            // so the login column measures the servers, not our
            // anti-timing delay (on by default, see docs/ftp.md).
            "--login-delay",
            "0s",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let line = first_line(&mut child, Duration::from_secs(20))?;
    let addr = line
        .strip_prefix("listening on ftp://")
        .and_then(|r| r.split(' ').next())
        .ok_or_else(|| format!("unexpected line {line:?}"))?
        .parse()?;
    Ok(Server {
        child,
        addr,
        user: ("bob", "secret"),
        tls: tls.map(|_| crate::client::tls_client_config()),
    })
}

pub(crate) const PYFTPDLIB: &str = r#"
import logging, sys
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer
logging.basicConfig(level=logging.WARNING)
auth = DummyAuthorizer()
auth.add_user("bob", "secret", sys.argv[1], perm="elradfmwMT")
FTPHandler.authorizer = auth
server = FTPServer(("127.0.0.1", 0), FTPHandler)
print("listening on ftp://127.0.0.1:%d" % server.address[1], flush=True)
server.serve_forever()
"#;

pub(crate) fn start_pyftpdlib(root: &Path, scratch: &Path) -> Result<Server> {
    let ok = Command::new("python3")
        .args(["-c", "import pyftpdlib"])
        .stderr(Stdio::null())
        .status()?
        .success();
    if !ok {
        return Err("pyftpdlib is not installed (pip install pyftpdlib)".into());
    }
    let script = scratch.join("pyftpd.py");
    fs::write(&script, PYFTPDLIB)?;
    let mut child = Command::new("python3")
        .arg(&script)
        .arg(root)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let line = first_line(&mut child, Duration::from_secs(20));
    let addr = match line {
        Ok(l) => l.trim().trim_start_matches("listening on ftp://").parse(),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    };
    let mut server = Server {
        child,
        addr: "127.0.0.1:1".parse()?,
        user: ("bob", "secret"),
        tls: None,
    };
    server.addr = addr.map_err(|e| format!("pyftpdlib: {e}"))?;
    Ok(server)
}

/// vsftpd with a private config: anonymous sessions rooted at `root`
/// (uploads go to `root/up`, owned by the `ftp` user), 127.0.0.1 only.
/// With `tls`: `ssl_enable=YES`, TLS forced for logins and data, and
/// vsftpd's default `require_ssl_reuse=YES`.
pub(crate) fn start_vsftpd(root: &Path, scratch: &Path, tls: Option<&TlsFiles>) -> Result<Server> {
    let bin = ["/usr/sbin/vsftpd", "/usr/bin/vsftpd"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .ok_or("vsftpd is not installed (apt-get install vsftpd)")?;
    if !nix::unistd::Uid::effective().is_root() {
        return Err("vsftpd needs root to run here (it chroots and drops privileges)".into());
    }
    let ftp_user = nix::unistd::User::from_name("ftp")?.ok_or("no `ftp` system user for vsftpd")?;
    nix::unistd::chown(&root.join("up"), Some(ftp_user.uid), Some(ftp_user.gid))?;
    let empty = scratch.join("vsftpd-empty");
    fs::create_dir_all(&empty)?;
    let port = free_port()?;
    let conf = scratch.join(format!("vsftpd-{port}.conf"));
    let ssl = match tls {
        None => String::new(),
        Some(t) => format!(
            "ssl_enable=YES\nallow_anon_ssl=YES\nforce_anon_logins_ssl=YES\n\
             force_anon_data_ssl=YES\nrequire_ssl_reuse=YES\nssl_ciphers=HIGH\n\
             ssl_tlsv1=YES\nssl_sslv2=NO\nssl_sslv3=NO\n\
             rsa_cert_file={}\nrsa_private_key_file={}\n",
            t.cert.display(),
            t.key.display()
        ),
    };
    fs::write(
        &conf,
        ssl + &format!(
            "listen=YES\nlisten_ipv6=NO\nlisten_address=127.0.0.1\nlisten_port={port}\n\
             background=NO\nanonymous_enable=YES\nno_anon_password=YES\nanon_root={root}\n\
             local_enable=NO\nwrite_enable=YES\nanon_upload_enable=YES\n\
             anon_mkdir_write_enable=YES\nanon_other_write_enable=YES\n\
             anon_umask=022\nsecure_chroot_dir={empty}\nseccomp_sandbox=NO\n\
             xferlog_enable=NO\nsyslog_enable=NO\nvsftpd_log_file=/dev/null\n\
             max_clients=1000\nmax_per_ip=1000\nuse_localtime=NO\npasv_enable=YES\n\
             pasv_address=127.0.0.1\nconnect_from_port_20=NO\n",
            root = root.display(),
            empty = empty.display()
        ),
    )?;
    let child = Command::new(bin)
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let server = Server {
        child,
        addr,
        user: ("anonymous", "x@"),
        tls: tls.map(|_| crate::client::tls_client_config()),
    };
    wait_listening(addr)?;
    Ok(server)
}
