//! A minimal FTP client for measuring (plain or explicit FTPS with
//! rustls, resuming the control session on data connections as curl and
//! lftp do), and the server processes it talks to.
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};

use crate::{Result, FILE_SIZE, TIMEOUT};

/// A server process, killed and reaped on drop.
pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) addr: SocketAddr,
    pub(crate) user: (&'static str, &'static str),
    /// Talk FTPS (AUTH TLS, PROT P) to it with this client configuration.
    pub(crate) tls: Option<Arc<ClientConfig>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Accepts the benchmark's self-signed certificate (the bench measures
/// throughput on loopback, not trust); signatures are still checked.
#[derive(Debug)]
struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The FTPS client configuration (one per server, so its session cache
/// holds that server's sessions).
pub(crate) fn tls_client_config() -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
        .with_no_client_auth();
    Arc::new(cfg)
}

/// The control connection, plain or TLS.
enum CtlStream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
    /// Briefly, while AUTH TLS swaps one for the other.
    Switching,
}

fn switching() -> std::io::Error {
    std::io::Error::other("control connection is switching to TLS")
}

impl Read for CtlStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            CtlStream::Plain(s) => s.read(buf),
            CtlStream::Tls(s) => s.read(buf),
            CtlStream::Switching => Err(switching()),
        }
    }
}

impl Write for CtlStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            CtlStream::Switching => Err(switching()),
            CtlStream::Plain(s) => s.write(buf),
            CtlStream::Tls(s) => {
                s.write_all(buf)?;
                s.flush()?;
                Ok(buf.len())
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            CtlStream::Plain(s) => s.flush(),
            CtlStream::Tls(s) => s.flush(),
            CtlStream::Switching => Err(switching()),
        }
    }
}

/// A data connection, plain or TLS.
enum DataStream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl DataStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            DataStream::Plain(s) => s.read(buf),
            DataStream::Tls(s) => match s.read(buf) {
                // A server that closes without close_notify (vsftpd).
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(0),
                other => other,
            },
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            DataStream::Plain(s) => s.write_all(buf),
            DataStream::Tls(s) => s.write_all(buf),
        }
    }

    /// Ends a transfer from the client's side: TLS close_notify, then FIN,
    /// then waits for the server's end of the stream (vsftpd shuts TLS
    /// down in both directions and fails the transfer when the client's
    /// socket is gone before that). Errors from a server that already
    /// closed are ignored.
    fn finish(self) -> std::io::Result<()> {
        match self {
            DataStream::Plain(s) => {
                let _ = s.shutdown(Shutdown::Write);
                Ok(())
            }
            DataStream::Tls(mut s) => {
                s.conn.send_close_notify();
                let _ = s.flush();
                let _ = s.sock.shutdown(Shutdown::Write);
                let mut buf = [0u8; 4096];
                while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
                Ok(())
            }
        }
    }
}

/// A minimal FTP client for measuring.
pub(crate) struct Client {
    r: BufReader<CtlStream>,
    tls: Option<Arc<ClientConfig>>,
}

fn server_name() -> ServerName<'static> {
    ServerName::try_from("localhost").expect("valid name")
}

impl Client {
    pub(crate) fn connect(addr: SocketAddr, limit: Duration) -> Result<Client> {
        let s = TcpStream::connect_timeout(&addr, limit).map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(limit))?;
        s.set_write_timeout(Some(limit))?;
        s.set_nodelay(true)?;
        let mut c = Client {
            r: BufReader::new(CtlStream::Plain(s)),
            tls: None,
        };
        c.expect(220)?;
        Ok(c)
    }

    fn send(&mut self, line: &str) -> Result<()> {
        self.r
            .get_mut()
            .write_all(format!("{line}\r\n").as_bytes())?;
        Ok(())
    }

    /// `AUTH TLS` and the handshake on the control connection.
    fn start_tls(&mut self, cfg: Arc<ClientConfig>) -> Result<()> {
        self.cmd("AUTH TLS", 234)?;
        let old = std::mem::replace(&mut self.r, BufReader::new(CtlStream::Switching));
        let CtlStream::Plain(tcp) = old.into_inner() else {
            return Err("already TLS".into());
        };
        let conn = ClientConnection::new(cfg.clone(), server_name())?;
        let mut tls = StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock)?;
        }
        self.r = BufReader::new(CtlStream::Tls(Box::new(tls)));
        self.tls = Some(cfg);
        Ok(())
    }

    pub(crate) fn reply(&mut self) -> Result<(u16, String)> {
        let mut line = String::new();
        if self.r.read_line(&mut line)? == 0 {
            return Err("server closed the control connection".into());
        }
        let code: u16 = line
            .get(..3)
            .and_then(|c| c.parse().ok())
            .ok_or("bad reply")?;
        if line.as_bytes().get(3) == Some(&b'-') {
            let end = format!("{code} ");
            let mut more = String::new();
            while !more.starts_with(&end) {
                more.clear();
                if self.r.read_line(&mut more)? == 0 {
                    return Err("eof in multi-line reply".into());
                }
            }
        }
        Ok((code, line))
    }

    pub(crate) fn expect(&mut self, want: u16) -> Result<String> {
        let (code, line) = self.reply()?;
        if code != want {
            return Err(format!("expected {want}, got {}", line.trim_end()).into());
        }
        Ok(line)
    }

    /// Sends a transfer command and expects a 1xx preliminary reply.
    pub(crate) fn start(&mut self, line: &str) -> Result<()> {
        self.send(line)?;
        let (code, text) = self.reply()?;
        if !(100..200).contains(&code) {
            return Err(format!("{line}: {}", text.trim_end()).into());
        }
        Ok(())
    }

    pub(crate) fn cmd(&mut self, line: &str, want: u16) -> Result<String> {
        self.send(line)?;
        self.expect(want)
    }

    /// Logs in to `server`: over FTPS with `PBSZ 0` and `PROT P` when the
    /// server is a TLS one.
    pub(crate) fn login(server: &Server) -> Result<Client> {
        let Some(cfg) = server.tls.clone() else {
            return Self::login_within(server.addr, server.user, TIMEOUT);
        };
        let mut c = Client::connect(server.addr, TIMEOUT)?;
        c.start_tls(cfg)?;
        c.send(&format!("USER {}", server.user.0))?;
        if c.reply()?.0 != 230 {
            c.cmd(&format!("PASS {}", server.user.1), 230)?;
        }
        c.cmd("PBSZ 0", 200)?;
        c.cmd("PROT P", 200)?;
        Ok(c)
    }

    pub(crate) fn login_within(
        addr: SocketAddr,
        user: (&str, &str),
        limit: Duration,
    ) -> Result<Client> {
        let mut c = Client::connect(addr, limit)?;
        c.send(&format!("USER {}", user.0))?;
        // vsftpd logs anonymous users in at USER (no_anon_password).
        if c.reply()?.0 != 230 {
            c.cmd(&format!("PASS {}", user.1), 230)?;
        }
        Ok(c)
    }

    pub(crate) fn pasv(&mut self) -> Result<TcpStream> {
        self.pasv_tcp()
    }

    /// Wraps a data connection in TLS under `PROT P` (the handshake runs
    /// on first use, after the 150 reply, resuming the control session).
    fn data(&self, tcp: TcpStream) -> Result<DataStream> {
        Ok(match &self.tls {
            None => DataStream::Plain(tcp),
            Some(cfg) => DataStream::Tls(Box::new(StreamOwned::new(
                ClientConnection::new(cfg.clone(), server_name())?,
                tcp,
            ))),
        })
    }

    fn pasv_tcp(&mut self) -> Result<TcpStream> {
        let line = self.cmd("PASV", 227)?;
        let inner = line
            .split_once('(')
            .and_then(|(_, r)| r.split_once(')'))
            .ok_or("bad 227")?
            .0;
        let n: Vec<u16> = inner
            .split(',')
            .map(|x| x.trim().parse())
            .collect::<std::result::Result<_, _>>()?;
        if n.len() != 6 {
            return Err("bad 227".into());
        }
        let addr = SocketAddr::from((
            [n[0] as u8, n[1] as u8, n[2] as u8, n[3] as u8],
            n[4] * 256 + n[5],
        ));
        let s = TcpStream::connect_timeout(&addr, TIMEOUT)?;
        s.set_read_timeout(Some(TIMEOUT))?;
        s.set_write_timeout(Some(TIMEOUT))?;
        Ok(s)
    }

    /// Downloads `name`, discarding the bytes; returns MiB/s.
    pub(crate) fn retr(&mut self, name: &str) -> Result<f64> {
        self.cmd("TYPE I", 200)?;
        let tcp = self.pasv()?;
        let start = Instant::now();
        self.start(&format!("RETR {name}"))?;
        let mut data = self.data(tcp)?;
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0usize;
        loop {
            let n = data.read(&mut buf)?;
            if n == 0 {
                break;
            }
            total += n;
        }
        // vsftpd waits for the client's close_notify before its 226.
        data.finish()?;
        self.expect(226)?;
        let secs = start.elapsed().as_secs_f64();
        if total != FILE_SIZE {
            return Err(format!("RETR got {total} bytes").into());
        }
        Ok(total as f64 / (1 << 20) as f64 / secs)
    }

    /// Uploads FILE_SIZE bytes from memory; returns MiB/s.
    pub(crate) fn stor(&mut self, name: &str, chunk: &[u8]) -> Result<f64> {
        self.cmd("TYPE I", 200)?;
        let tcp = self.pasv()?;
        let start = Instant::now();
        self.start(&format!("STOR {name}"))?;
        let mut data = self.data(tcp)?;
        let mut sent = 0;
        while sent < FILE_SIZE {
            let n = chunk.len().min(FILE_SIZE - sent);
            data.write_all(&chunk[..n])?;
            sent += n;
        }
        data.finish()?;
        self.expect(226)?;
        Ok(sent as f64 / (1 << 20) as f64 / start.elapsed().as_secs_f64())
    }
}
