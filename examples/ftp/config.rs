//! The command line and the settings every session shares.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::confine::Root;
use crate::throttle::LoginThrottle;
use crate::tls::{TlsPolicy, TlsSettings};

/// Which server strategy runs the sessions (the same handler in each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// One session at a time, on the accepting thread (others wait).
    Sync,
    /// One thread per control connection.
    Threading,
    /// One forked child process per control connection.
    Forking,
    /// A pool of pre-forked worker processes, one session each at a time.
    Prefork,
    /// The tokio runtime; each session on its blocking pool.
    #[cfg(feature = "async")]
    Async,
}

impl Mode {
    /// The name printed in the "listening on" line.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Sync => "sync",
            Mode::Threading => "threading",
            Mode::Forking => "forking",
            Mode::Prefork => "prefork",
            #[cfg(feature = "async")]
            Mode::Async => "async",
        }
    }
}

/// An FTP server on the socketserver framework.
#[derive(Debug, Parser)]
#[command(name = "ftp", version)]
#[command(group = clap::ArgGroup::new("tls").args(["tls_cert", "tls_self_signed"]))]
pub struct Args {
    /// Directory clients see as `/`; nothing outside it is reachable.
    #[arg(long)]
    pub root: PathBuf,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:2121")]
    pub listen: SocketAddr,
    /// Concurrency strategy.
    #[arg(long, value_enum, default_value_t = Mode::Threading)]
    pub mode: Mode,
    /// A login, `NAME:PASSWORD`; repeat for more users. Users may write.
    #[arg(long = "user", value_parser = parse_user)]
    pub users: Vec<(String, String)>,
    /// Allow `anonymous`/`ftp` logins (read-only unless --anonymous-write).
    #[arg(long)]
    pub anonymous: bool,
    /// Let anonymous sessions upload, rename, delete and create directories.
    #[arg(long)]
    pub anonymous_write: bool,
    /// Ports for passive data connections, `LOW-HIGH` (default: any).
    #[arg(long, value_parser = parse_range)]
    pub passive_ports: Option<(u16, u16)>,
    /// Most control connections at once (421 beyond it).
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Most control connections from one IP address (421 beyond it).
    #[arg(long)]
    pub max_per_ip: Option<usize>,
    /// Expect a PROXY protocol (v1 or v2) header on every control
    /// connection (behind HAProxy or a cloud balancer): the session, the
    /// logs and --max-per-ip see the client address it carries.
    #[arg(long)]
    pub proxy_protocol: bool,
    /// Accept the PROXY header only from these balancers
    /// (CIDR[,CIDR...]); a control connection from any other peer is
    /// closed unread. Without it anyone who can reach the port directly
    /// can claim any client address (and so get around the login limit
    /// and the PORT/EPRT address check). A passive data connection from
    /// one of them (a balancer forwarding the passive ports) must start
    /// with a PROXY header naming the session's client.
    #[arg(
        long,
        value_name = "CIDR",
        value_delimiter = ',',
        requires = "proxy_protocol"
    )]
    pub proxy_from: Vec<socketserver::server::proxy::Cidr>,
    /// IPv4 address announced in PASV replies instead of the control
    /// socket's own (behind NAT or a balancer); EPSV is unaffected.
    #[arg(long)]
    pub passive_address: Option<std::net::Ipv4Addr>,
    /// Close a control connection idle this long (`300s`, `5m`, ...).
    #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,
    /// Failed logins one client (an IPv4 address or an IPv6 /64) may make
    /// within --login-failure-window (counted across connections and
    /// processes) before it is locked out;
    /// 0 turns the limit off.
    #[arg(long, default_value_t = 5)]
    pub max_login_failures: u32,
    /// The window in which failed logins are counted.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub login_failure_window: Duration,
    /// How long a locked-out IP is refused (421) after too many failures.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub login_lockout: Duration,
    /// Every PASS (right or wrong) is answered this long after it arrived,
    /// so the reply time does not tell a right password from a wrong one.
    #[arg(long, default_value = "300ms", value_parser = humantime::parse_duration)]
    pub login_delay: Duration,
    /// PEM certificate chain: turns on explicit FTPS (`AUTH TLS`, `PBSZ`,
    /// `PROT`). Needs --tls-key.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Turns on explicit FTPS with a certificate made at start-up for
    /// `localhost` and `127.0.0.1` (clients must skip verification, e.g.
    /// `curl --ssl-reqd -k`): for trying FTPS, not for production.
    #[arg(long, conflicts_with = "tls_cert")]
    pub tls_self_signed: bool,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Refuse `USER`/`PASS` before `AUTH TLS` (530) and data transfers
    /// under `PROT C` (521), as vsftpd's `force_local_logins_ssl` and
    /// `force_local_data_ssl`.
    #[arg(long, requires = "tls")]
    pub tls_required: bool,
    /// Refuse (522) a TLS data connection that does not resume the
    /// control connection's TLS session, as vsftpd's `require_ssl_reuse`.
    /// Off by default: Python's ftplib does not resume (see docs/ftp.md).
    #[arg(long, requires = "tls")]
    pub tls_require_reuse: bool,
    /// Longest a TLS handshake (control or data) may take, start to
    /// finish; a client that stalls is dropped after it.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub tls_handshake_timeout: Duration,
}

fn parse_user(s: &str) -> Result<(String, String), String> {
    match s.split_once(':') {
        Some((name, pass)) if !name.is_empty() && !pass.is_empty() => {
            Ok((name.to_string(), pass.to_string()))
        }
        _ => Err("expected NAME:PASSWORD with both parts non-empty".to_string()),
    }
}

fn parse_range(s: &str) -> Result<(u16, u16), String> {
    let err = || format!("expected LOW-HIGH with 1024 <= LOW <= HIGH <= 65535, got {s:?}");
    let (lo, hi) = s.split_once('-').ok_or_else(err)?;
    let lo: u16 = lo.trim().parse().map_err(|_| err())?;
    let hi: u16 = hi.trim().parse().map_err(|_| err())?;
    if lo < 1024 || lo > hi {
        return Err(err());
    }
    Ok((lo, hi))
}

/// Settings shared (read-only) by every session.
#[derive(Debug)]
pub struct Config {
    /// The confined root.
    pub root: Root,
    /// Named users and their passwords.
    pub users: HashMap<String, String>,
    /// `--anonymous`.
    pub anonymous: bool,
    /// `--anonymous-write`.
    pub anonymous_write: bool,
    /// `--passive-ports`.
    pub passive_ports: Option<(u16, u16)>,
    /// `--passive-address`.
    pub passive_address: Option<std::net::Ipv4Addr>,
    /// The `--proxy-from` balancers (with `--proxy-protocol`): a passive
    /// data connection from one of them carries a PROXY header naming the
    /// client.
    pub data_balancers: Vec<socketserver::server::proxy::Cidr>,
    /// Refused passive data connections: `debug` each, one `warn` a minute
    /// across every process (anyone who reaches a passive port can cause
    /// them at will).
    pub data_refusals: socketserver::server::SharedWarning,
    /// Connections and logins refused while their address is locked
    /// out: `debug` each, one `warn` a minute across every process (the
    /// lockout itself is one `warn` when it starts).
    pub lockout_refusals: socketserver::server::SharedWarning,
    /// Control connection idle timeout.
    pub idle_timeout: Duration,
    /// Longest wait for a client to connect to a passive port.
    pub passive_timeout: Duration,
    /// Longest stall of a data connection (no byte moved).
    pub data_timeout: Duration,
    /// Time from a PASS to its reply, right or wrong (`--login-delay`).
    pub login_delay: Duration,
    /// Wrong passwords on one connection before it is closed.
    pub max_login_failures: u32,
    /// Failed logins per IPv4 address or IPv6 /64, shared across
    /// connections and processes.
    pub throttle: LoginThrottle,
    /// FTPS settings, when --tls-cert and --tls-key were given.
    pub tls: Option<TlsSettings>,
}

impl Config {
    /// Builds the shared settings from the command line. The passive and
    /// data timeouts are 30 s and 60 s, or the idle timeout if shorter.
    ///
    /// # Errors
    /// `--root` is not an existing directory, or the shared failed-login
    /// table cannot be mapped.
    pub fn from_args(args: &Args) -> std::io::Result<Config> {
        let throttle = LoginThrottle::new(
            args.max_login_failures,
            args.login_failure_window,
            args.login_lockout,
        )
        .map_err(std::io::Error::other)?;
        let idle = args.idle_timeout.max(Duration::from_millis(100));
        let policy = TlsPolicy {
            required: args.tls_required,
            require_reuse: args.tls_require_reuse,
            handshake_timeout: args.tls_handshake_timeout.max(Duration::from_millis(100)),
        };
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(TlsSettings::load(cert, key, policy)?),
            _ if args.tls_self_signed => Some(TlsSettings::self_signed(policy)?),
            _ => None,
        };
        Ok(Config {
            root: Root::open(&args.root)?,
            users: args.users.iter().cloned().collect(),
            anonymous: args.anonymous,
            anonymous_write: args.anonymous_write,
            passive_ports: args.passive_ports,
            passive_address: args.passive_address,
            data_balancers: if args.proxy_protocol {
                args.proxy_from.clone()
            } else {
                Vec::new()
            },
            data_refusals: socketserver::server::SharedWarning::new(),
            lockout_refusals: socketserver::server::SharedWarning::new(),
            idle_timeout: idle,
            passive_timeout: idle.min(Duration::from_secs(30)),
            data_timeout: idle.min(Duration::from_secs(60)),
            login_delay: args.login_delay,
            max_login_failures: 3,
            throttle,
            tls,
        })
    }

    /// Checks a login. Returns whether the session may write, or `None`
    /// for a failed login. Passwords are compared in constant time.
    pub fn check_login(&self, user: &str, pass: &str) -> Option<bool> {
        if self.anonymous && (user.eq_ignore_ascii_case("anonymous") || user == "ftp") {
            return Some(self.anonymous_write);
        }
        let expected = self.users.get(user)?;
        constant_time_eq(expected.as_bytes(), pass.as_bytes()).then_some(true)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_contract() {
        let a = Args::try_parse_from(["ftp", "--root", "/tmp"]).unwrap();
        assert_eq!(a.listen, "127.0.0.1:2121".parse().unwrap());
        assert_eq!(a.mode, Mode::Threading);
        assert!(!a.anonymous && !a.anonymous_write);
        assert_eq!(a.idle_timeout, Duration::from_secs(300));
        assert_eq!(a.max_login_failures, 5);
        assert_eq!(a.login_failure_window, Duration::from_secs(60));
        assert_eq!(a.login_lockout, Duration::from_secs(60));
        assert_eq!(a.login_delay, Duration::from_millis(300));
        let a = Args::try_parse_from([
            "ftp",
            "--root",
            "/tmp",
            "--listen",
            "127.0.0.1:0",
            "--mode",
            "forking",
            "--user",
            "a:b:c",
            "--user",
            "x:y",
            "--anonymous",
            "--anonymous-write",
            "--passive-ports",
            "40000-40010",
            "--max-connections",
            "5",
            "--max-per-ip",
            "2",
            "--idle-timeout",
            "2s",
            "--max-login-failures",
            "0",
            "--login-lockout",
            "5m",
        ])
        .unwrap();
        assert_eq!(a.mode, Mode::Forking);
        assert_eq!(
            a.users,
            [("a".into(), "b:c".into()), ("x".into(), "y".into())]
        );
        assert_eq!(a.passive_ports, Some((40000, 40010)));
        assert_eq!(a.idle_timeout, Duration::from_secs(2));
        assert_eq!(a.max_login_failures, 0);
        assert_eq!(a.login_lockout, Duration::from_secs(300));
        assert!(Args::try_parse_from(["ftp"]).is_err());
        assert!(Args::try_parse_from(["ftp", "--root", "/", "--user", "nopass"]).is_err());
        assert!(Args::try_parse_from(["ftp", "--root", "/", "--passive-ports", "9-5"]).is_err());
        let modes: &[&str] = if cfg!(feature = "async") {
            &["sync", "threading", "forking", "prefork", "async"]
        } else {
            &["sync", "threading", "forking", "prefork"]
        };
        for &mode in modes {
            let a = Args::try_parse_from(["ftp", "--root", "/", "--mode", mode]).unwrap();
            assert_eq!(a.mode.name(), mode);
        }
        assert!(Args::try_parse_from(["ftp", "--root", "/", "--mode", "fibers"]).is_err());
        let a = Args::try_parse_from([
            "ftp",
            "--root",
            "/",
            "--proxy-protocol",
            "--passive-address",
            "203.0.113.7",
        ])
        .unwrap();
        assert!(a.proxy_protocol);
        assert!(a.proxy_from.is_empty());
        assert_eq!(a.passive_address, Some([203, 0, 113, 7].into()));
        let a = Args::try_parse_from([
            "ftp",
            "--root",
            "/",
            "--proxy-protocol",
            "--proxy-from",
            "10.0.0.0/24,::1",
        ])
        .unwrap();
        assert_eq!(a.proxy_from.len(), 2);
        assert!(a.proxy_from[0].contains([10, 0, 0, 9].into()));
        assert!(!a.proxy_from[0].contains([10, 0, 1, 9].into()));
        // Only with --proxy-protocol, and only well-formed networks.
        assert!(
            Args::try_parse_from(["ftp", "--root", "/", "--proxy-from", "10.0.0.0/24"]).is_err()
        );
        assert!(Args::try_parse_from([
            "ftp",
            "--root",
            "/",
            "--proxy-protocol",
            "--proxy-from",
            "10.0.0.1/8"
        ])
        .is_err());
        assert!(
            !Args::try_parse_from(["ftp", "--root", "/"])
                .unwrap()
                .proxy_protocol
        );
    }

    #[test]
    fn logins() {
        let dir = tempfile::tempdir().unwrap();
        let args = Args::try_parse_from([
            "ftp",
            "--root",
            dir.path().to_str().unwrap(),
            "--user",
            "bob:pw",
        ])
        .unwrap();
        let mut c = Config::from_args(&args).unwrap();
        assert_eq!(c.check_login("bob", "pw"), Some(true));
        assert_eq!(c.check_login("bob", "pW"), None);
        assert_eq!(c.check_login("anonymous", "x@y"), None);
        c.anonymous = true;
        assert_eq!(c.check_login("anonymous", "x@y"), Some(false));
        c.anonymous_write = true;
        assert_eq!(c.check_login("ftp", ""), Some(true));
    }
}
