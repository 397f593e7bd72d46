//! One FTP session: the control-connection command loop and its state.
//!
//! The session is a [`RequestHandler`]: the server (threading or forking)
//! creates one per control connection. The data-transfer commands live in
//! `transfer.rs`; this file holds login, navigation, file management and
//! the informational commands.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use socketserver::handler::Line;
use socketserver::{Request, RequestHandler};

use crate::command::{self, Command, LogSafe, Verb};
use crate::config::Config;
use crate::confine::{Denied, Root};
use crate::data::{self, ActiveError, DataSetup};
use crate::reply::{self, quote_path, Code};
use crate::throttle::Failure;
use crate::tls::Control;

/// Longest command line accepted; longer lines get `500` and are dropped.
pub const MAX_LINE: usize = 4096;

/// Most command lines kept while a transfer runs, to be run after it
/// (`ABOR` and `STAT` are answered at once and never kept). A client
/// pipelines one or two; one line more than this ends the transfer and
/// the session with `421`. With [`MAX_LINE`] this bounds the queue at
/// 64 KiB.
pub const MAX_QUEUED: usize = 16;

/// What the command loop does after a command.
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    /// Read the next command.
    Continue,
    /// Close the control connection.
    Close,
}

/// A logged-in account.
#[derive(Debug)]
pub struct Account {
    /// The login name (for logs).
    pub name: String,
    /// Whether uploads, deletes and renames are allowed.
    pub writable: bool,
}

/// The state of one control connection.
#[derive(Debug)]
pub struct Session {
    cfg: Arc<Config>,
    peer: SocketAddr,
    local: SocketAddr,
    pending_user: Option<String>,
    account: Option<Account>,
    failures: u32,
    cwd: String,
    data: DataSetup,
    rest: u64,
    rename_from: Option<String>,
    binary: bool,
    epsv_all: bool,
    /// Command lines that arrived during a transfer, run after it.
    queued: VecDeque<Vec<u8>>,
    /// When the passive listener in `data` (if any) stops waiting for a
    /// connection, even if no transfer command ever comes.
    passive_deadline: Option<Instant>,
    /// `PBSZ` was sent after `AUTH TLS` (RFC 4217 wants it before `PROT`).
    pbsz: bool,
    /// `PROT P`: data connections are TLS.
    prot_private: bool,
}

impl Session {
    /// A session sharing `cfg`. Connection limits are the framework's
    /// (checked before the session starts).
    pub fn new(cfg: Arc<Config>) -> Session {
        let unspecified: SocketAddr = ([0, 0, 0, 0], 0).into();
        Session {
            cfg,
            peer: unspecified,
            local: unspecified,
            pending_user: None,
            account: None,
            failures: 0,
            cwd: "/".to_string(),
            data: DataSetup::None,
            rest: 0,
            rename_from: None,
            binary: false,
            epsv_all: false,
            queued: VecDeque::new(),
            passive_deadline: None,
            pbsz: false,
            prot_private: false,
        }
    }

    /// The shared settings.
    pub(crate) fn cfg(&self) -> &Config {
        &self.cfg
    }

    /// The control connection's client (the PROXY header's, behind one).
    pub(crate) fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The logged-in account, if any.
    pub(crate) fn account(&self) -> Option<&Account> {
        self.account.as_ref()
    }

    /// Whether `TYPE I` (binary) is in effect.
    pub(crate) fn binary(&self) -> bool {
        self.binary
    }

    /// The data connection set up by PASV/EPSV/PORT/EPRT, used up by the
    /// transfer command that takes it.
    pub(crate) fn take_data(&mut self) -> DataSetup {
        self.passive_deadline = None;
        std::mem::take(&mut self.data)
    }

    /// Whether data connections are to be TLS (`PROT P`).
    pub(crate) fn prot_private(&self) -> bool {
        self.prot_private
    }

    /// The `REST` offset, reset to 0 by the transfer that uses it.
    pub(crate) fn take_rest(&mut self) -> u64 {
        std::mem::take(&mut self.rest)
    }

    /// Remembers the `RNFR` source for the `RNTO` that must follow.
    pub(crate) fn set_rename_from(&mut self, vpath: String) {
        self.rename_from = Some(vpath);
    }

    /// Keeps a command line that arrived during a transfer, to run after
    /// it; `false` (and the line dropped) when [`MAX_QUEUED`] lines wait
    /// already.
    pub(crate) fn queue_command(&mut self, line: Vec<u8>) -> bool {
        if self.queued.len() >= MAX_QUEUED {
            return false;
        }
        self.queued.push_back(line);
        true
    }

    pub(crate) fn root(&self) -> &Root {
        &self.cfg.root
    }

    pub(crate) fn writable(&self) -> bool {
        self.account.as_ref().is_some_and(|a| a.writable)
    }

    /// Resolves a client path to a normalized virtual path (lexically;
    /// `..` clamps at `/`).
    pub(crate) fn vpath(&self, arg: &str) -> String {
        Root::virtual_path(&self.cwd, arg)
    }

    /// Reads the next command line: a queued one first, then the socket.
    fn next_line(&mut self, req: &mut Control<'_>, line: &mut Vec<u8>) -> io::Result<Line> {
        if let Some(q) = self.queued.pop_front() {
            *line = q;
            return Ok(Line::Complete(line.len()));
        }
        let idle_deadline = Instant::now() + self.cfg.idle_timeout;
        loop {
            // A passive listener nobody connected to is closed after the
            // passive timeout even while the client sends no data command:
            // wait for the next line no longer than until then.
            let passive = match (&self.data, self.passive_deadline) {
                (DataSetup::Passive(_), Some(d)) if d < idle_deadline => Some(d),
                _ => None,
            };
            let Some(deadline) = passive else {
                return req.read_line_bounded(line, MAX_LINE);
            };
            if Instant::now() >= deadline {
                self.expire_passive();
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            req.set_timeout(Some(left.max(Duration::from_millis(1))))?;
            let got = req.read_line_bounded(line, MAX_LINE);
            req.set_timeout(Some(
                idle_deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1)),
            ))?;
            match got {
                // Bytes of a partial line stay in `line`; the next read
                // appends the rest of it.
                Err(e) if is_timeout(&e) && Instant::now() >= deadline => self.expire_passive(),
                other => {
                    req.set_timeout(Some(self.cfg.idle_timeout))?;
                    return other;
                }
            }
        }
    }

    /// Closes a passive listener nobody connected to in time.
    fn expire_passive(&mut self) {
        tracing::info!(peer = %self.peer, "passive connection timed out");
        self.data = DataSetup::None;
        self.passive_deadline = None;
    }

    /// Runs one command.
    ///
    /// # Errors
    /// Only control-connection I/O errors; command failures are replies.
    pub fn dispatch(&mut self, req: &mut Control<'_>, cmd: &Command) -> io::Result<Flow> {
        tracing::debug!(peer = %self.peer, command = %cmd.loggable(), "command");
        let arg = cmd.arg.as_str();
        // --tls-required (vsftpd's force_local_logins_ssl): no password
        // crosses the network in clear.
        let tls_required = self.cfg.tls.as_ref().is_some_and(|t| t.required);
        if tls_required && !req.is_tls() && matches!(cmd.verb, Verb::User | Verb::Pass) {
            return ok(
                &mut req.wfile(),
                Code::NotLoggedIn,
                "This server requires TLS: use AUTH TLS before USER.",
            );
        }
        let w = &mut req.wfile();
        if cmd.verb.needs_login() && self.account.is_none() {
            return ok(w, Code::NotLoggedIn, "Please login with USER and PASS.");
        }

        // RNTO must directly follow RNFR.
        let rename_from = self.rename_from.take();
        match cmd.verb {
            Verb::User => self.user(req, arg),
            Verb::Pass => self.pass(req, arg),
            Verb::Quit => {
                reply::send(w, Code::Closing, "Goodbye.")?;
                Ok(Flow::Close)
            }
            Verb::Noop => ok(w, Code::Ok, "NOOP ok."),
            Verb::Syst => ok(w, Code::SystemType, "UNIX Type: L8"),
            Verb::Feat => ok(
                w,
                Code::SystemStatus,
                &command::feat_text(self.cfg.tls.is_some()),
            ),
            Verb::Help => ok(w, Code::Help, &command::help_text()),
            Verb::Opts => self.opts(req, arg),
            Verb::Auth => self.auth(req, arg),
            Verb::Pbsz => self.pbsz(req, arg),
            Verb::Prot => self.prot(req, arg),
            Verb::Ccc => ok(w, Code::NotImplemented, "CCC is not offered."),
            Verb::Acct => ok(w, Code::Superfluous, "ACCT not needed."),
            Verb::Pwd => ok(
                w,
                Code::PathCreated,
                &format!("{} is the current directory", quote_path(&self.cwd)),
            ),
            Verb::Cwd => self.cwd(req, arg),
            Verb::Cdup => self.cwd(req, ".."),
            Verb::Type => self.type_(req, arg),
            Verb::Mode => match arg.to_ascii_uppercase().as_str() {
                "S" => ok(w, Code::Ok, "Mode set to S."),
                _ => ok(w, Code::BadParameter, "Only stream mode (S) is supported."),
            },
            Verb::Stru => match arg.to_ascii_uppercase().as_str() {
                "F" => ok(w, Code::Ok, "Structure set to F."),
                _ => ok(
                    w,
                    Code::BadParameter,
                    "Only file structure (F) is supported.",
                ),
            },
            Verb::Pasv => self.pasv(req, false, arg),
            Verb::Epsv => self.pasv(req, true, arg),
            Verb::Port => self.port(req, data::parse_port(arg)),
            Verb::Eprt => self.port(req, data::parse_eprt(arg)),
            Verb::Rest => match arg.trim().parse::<u64>() {
                Ok(n) => {
                    self.rest = n;
                    ok(
                        w,
                        Code::PendingFurtherInfo,
                        &format!("Restarting at {n}. Send STORE or RETRIEVE to initiate transfer."),
                    )
                }
                Err(_) => ok(w, Code::BadArguments, "REST needs a byte offset."),
            },
            Verb::Abor => {
                self.data = DataSetup::None;
                ok(w, Code::DataOpenNoTransfer, "No transfer to abort.")
            }
            Verb::Retr => self.retr(req, arg),
            Verb::Stor => self.stor(req, arg, false),
            Verb::Appe => self.stor(req, arg, true),
            Verb::List => self.list(req, arg, ListKind::Long),
            Verb::Nlst => self.list(req, arg, ListKind::Names),
            Verb::Mlsd => self.list(req, arg, ListKind::Machine),
            Verb::Mlst => self.mlst(req, arg),
            Verb::Size => self.size(req, arg),
            Verb::Mdtm => self.mdtm(req, arg),
            Verb::Mfmt => self.mfmt(req, arg),
            Verb::Stat => self.stat(req, arg),
            Verb::Mkd => self.mkd(req, arg),
            Verb::Rmd => self.rmd(req, arg),
            Verb::Dele => self.dele(req, arg),
            Verb::Rnfr => self.rnfr(req, arg),
            Verb::Rnto => self.rnto(req, arg, rename_from),
            Verb::Unknown => ok(w, Code::NotImplemented, "Command not implemented."),
        }
    }

    fn user(&mut self, req: &mut Control<'_>, arg: &str) -> io::Result<Flow> {
        if self.account.is_some() {
            return ok(&mut req.wfile(), Code::NotLoggedIn, "Already logged in.");
        }
        self.pending_user = Some(arg.to_string());
        ok(
            &mut req.wfile(),
            Code::NeedPassword,
            "Please specify the password.",
        )
    }

    fn pass(&mut self, req: &mut Control<'_>, arg: &str) -> io::Result<Flow> {
        if self.account.is_some() {
            return ok(&mut req.wfile(), Code::LoggedIn, "Already logged in.");
        }
        let Some(user) = self.pending_user.take() else {
            return ok(
                &mut req.wfile(),
                Code::BadSequence,
                "Login with USER first.",
            );
        };
        // Every answer to PASS leaves at the same time after it arrived,
        // right or wrong, so the reply time tells nothing.
        let answer_at = Instant::now() + self.cfg.login_delay;
        let wait = || thread::sleep(answer_at.saturating_duration_since(Instant::now()));
        let ip = self.peer.ip();
        // Counted as a failure before the password is even checked (and
        // taken back on success): a guess abandoned before its answer
        // still counts, and parallel guesses cannot pass the limit.
        if let Err(left) = self.cfg.throttle.begin(ip) {
            tracing::debug!(peer = %self.peer, user = %LogSafe(&user), left_secs = left.as_secs(), "login refused: address locked out");
            self.locked_out_refusal(left);
            wait();
            reply::send(&mut req.wfile(), Code::ServiceUnavailable, LOCKED_OUT)?;
            return Ok(Flow::Close);
        }
        match self.cfg.check_login(&user, arg) {
            Some(writable) => {
                self.cfg.throttle.end(ip, true);
                wait();
                tracing::info!(peer = %self.peer, user = %LogSafe(&user), writable, "login");
                self.account = Some(Account {
                    name: user,
                    writable,
                });
                ok(&mut req.wfile(), Code::LoggedIn, "Login successful.")
            }
            None => {
                self.failures += 1;
                let verdict = self.cfg.throttle.end(ip, false);
                tracing::warn!(peer = %self.peer, user = %LogSafe(&user), failures = self.failures, "failed login");
                if verdict == Failure::LockedOut {
                    tracing::warn!(
                        ip = %ip,
                        lockout_secs = self.cfg.throttle.lockout().as_secs_f64(),
                        "too many failed logins: address locked out"
                    );
                }
                wait();
                if verdict == Failure::LockedOut {
                    reply::send(&mut req.wfile(), Code::ServiceUnavailable, LOCKED_OUT)?;
                    return Ok(Flow::Close);
                }
                if self.failures >= self.cfg.max_login_failures {
                    reply::send(
                        &mut req.wfile(),
                        Code::ServiceUnavailable,
                        "Too many failed logins, closing control connection.",
                    )?;
                    return Ok(Flow::Close);
                }
                ok(&mut req.wfile(), Code::NotLoggedIn, "Login incorrect.")
            }
        }
    }

    /// `AUTH TLS` (RFC 4217 section 4): `234`, then the handshake on the
    /// control connection. `AUTH SSL` and `AUTH TLS-C` are synonyms.
    fn auth(&mut self, req: &mut Control<'_>, arg: &str) -> io::Result<Flow> {
        let cfg = self.cfg.clone();
        let Some(tls) = cfg.tls.as_ref() else {
            return ok(
                &mut req.wfile(),
                Code::BadParameter,
                "TLS is not configured; use plain FTP.",
            );
        };
        if req.is_tls() {
            return ok(&mut req.wfile(), Code::BadSequence, "Already using TLS.");
        }
        let w = &mut req.wfile();
        let mech = arg.trim().to_ascii_uppercase();
        if !matches!(mech.as_str(), "TLS" | "TLS-C" | "SSL") {
            return ok(w, Code::BadParameter, "Only AUTH TLS is supported.");
        }
        reply::send(w, Code::AuthOk, "AUTH TLS successful.")?;
        // Lines pipelined in clear before the handshake are dropped, not
        // run as if protected.
        self.queued.clear();
        self.pending_user = None;
        if let Err(e) = req.start_tls(tls, self.cfg.idle_timeout) {
            tracing::info!(peer = %self.peer, error = %e, "control TLS handshake failed");
            return Ok(Flow::Close);
        }
        tracing::info!(peer = %self.peer, "control connection is TLS");
        Ok(Flow::Continue)
    }

    /// `PBSZ`: only 0 makes sense for TLS; any number is answered `PBSZ=0`.
    fn pbsz(&mut self, req: &mut Control<'_>, arg: &str) -> io::Result<Flow> {
        if self.cfg.tls.is_none() {
            return ok(
                &mut req.wfile(),
                Code::BadParameter,
                "TLS is not configured; use plain FTP.",
            );
        }
        if !req.is_tls() {
            return ok(
                &mut req.wfile(),
                Code::BadSequence,
                "PBSZ needs AUTH TLS first.",
            );
        }
        if arg.trim().parse::<u32>().is_err() {
            return ok(&mut req.wfile(), Code::BadArguments, "PBSZ needs a number.");
        }
        self.pbsz = true;
        ok(&mut req.wfile(), Code::Ok, "PBSZ=0")
    }

    /// `PROT C` (clear) or `PROT P` (private: TLS data connections).
    fn prot(&mut self, req: &mut Control<'_>, arg: &str) -> io::Result<Flow> {
        if self.cfg.tls.is_none() {
            return ok(
                &mut req.wfile(),
                Code::BadParameter,
                "TLS is not configured; use plain FTP.",
            );
        }
        if !req.is_tls() || !self.pbsz {
            return ok(
                &mut req.wfile(),
                Code::BadSequence,
                "PROT needs AUTH TLS and PBSZ first.",
            );
        }
        let w = &mut req.wfile();
        match arg.trim().to_ascii_uppercase().as_str() {
            "P" => {
                self.prot_private = true;
                ok(w, Code::Ok, "PROT now Private.")
            }
            "C" => {
                self.prot_private = false;
                ok(w, Code::Ok, "PROT now Clear.")
            }
            "S" | "E" => ok(
                w,
                Code::ProtUnsupported,
                "PROT S and E are not supported; use P or C.",
            ),
            _ => ok(w, Code::BadParameter, "PROT must be C or P."),
        }
    }

    fn opts(&mut self, req: &mut Control<'_>, arg: &str) -> io::Result<Flow> {
        let upper = arg.to_ascii_uppercase();
        let w = &mut req.wfile();
        if upper == "UTF8 ON" || upper == "UTF8" {
            ok(w, Code::Ok, "Always in UTF8 mode.")
        } else if upper.starts_with("MLST") {
            ok(w, Code::Ok, "MLST OPTS type;size;modify;perm;unix.mode;")
        } else {
            ok(w, Code::BadArguments, "Option not understood.")
        }
    }

    fn cwd(&mut self, req: &mut Control<'_>, arg: &str) -> io::Result<Flow> {
        let w = &mut req.wfile();
        let vpath = self.vpath(arg);
        match self.root().metadata(&vpath) {
            Ok(m) if m.is_dir() => {
                self.cwd = vpath;
                ok(w, Code::FileActionOk, "Directory successfully changed.")
            }
            Ok(_) => denied(w, &Denied::NotADirectory),
            Err(e) => denied(w, &e),
        }
    }

    fn type_(&mut self, req: &mut Control<'_>, arg: &str) -> io::Result<Flow> {
        let upper = arg.trim().to_ascii_uppercase();
        let w = &mut req.wfile();
        match upper.as_str() {
            "I" | "L 8" => {
                self.binary = true;
                ok(w, Code::Ok, "Switching to Binary mode.")
            }
            "A" | "A N" => {
                self.binary = false;
                ok(w, Code::Ok, "Switching to ASCII mode.")
            }
            _ => ok(w, Code::BadParameter, "Only TYPE A and I are supported."),
        }
    }

    fn pasv(&mut self, req: &mut Control<'_>, extended: bool, arg: &str) -> io::Result<Flow> {
        let w = &mut req.wfile();
        if extended && arg.eq_ignore_ascii_case("ALL") {
            self.epsv_all = true;
            return ok(w, Code::Ok, "EPSV ALL ok.");
        }
        if !extended && self.epsv_all {
            return ok(w, Code::BadSequence, "PASV not allowed after EPSV ALL.");
        }
        if extended && !arg.is_empty() {
            let family = if self.local.is_ipv4() { "1" } else { "2" };
            if arg != family {
                return ok(
                    w,
                    Code::BadProtocol,
                    &format!("Network protocol not supported, use ({family})."),
                );
            }
        }
        self.data = DataSetup::None;
        let listener = match data::open_passive(self.local.ip(), self.cfg.passive_ports) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "passive listener failed");
                return ok(w, Code::CantOpenData, "Cannot open passive connection.");
            }
        };
        let addr = listener.local_addr()?;
        let text = if extended {
            data::epsv_text(addr.port())
        } else {
            // Behind NAT or a balancer, announce --passive-address.
            let announced = match self.cfg.passive_address {
                Some(ip) => SocketAddr::from((ip, addr.port())),
                None => addr,
            };
            match data::pasv_text(announced) {
                Some(t) => t,
                None => return ok(w, Code::BadProtocol, "PASV needs IPv4; use EPSV."),
            }
        };
        self.data = DataSetup::Passive(listener);
        self.passive_deadline = Some(Instant::now() + self.cfg.passive_timeout);
        let code = if extended {
            Code::ExtendedPassive
        } else {
            Code::Passive
        };
        ok(w, code, &text)
    }

    fn port(
        &mut self,
        req: &mut Control<'_>,
        parsed: Result<SocketAddr, ActiveError>,
    ) -> io::Result<Flow> {
        let w = &mut req.wfile();
        if self.epsv_all {
            return ok(w, Code::BadSequence, "PORT not allowed after EPSV ALL.");
        }
        self.data = DataSetup::None;
        let addr = match parsed {
            Ok(a) => a,
            Err(ActiveError::Family) => {
                return ok(
                    w,
                    Code::BadProtocol,
                    "Network protocol not supported, use (1,2).",
                )
            }
            Err(_) => return ok(w, Code::BadArguments, "Syntax error in PORT/EPRT argument."),
        };
        if data::check_active(addr, self.peer.ip()).is_err() {
            tracing::warn!(peer = %self.peer, target = %addr, "refused PORT/EPRT to a foreign address or privileged port");
            return ok(
                w,
                Code::SyntaxError,
                "Illegal PORT command: only your own address, port >= 1024.",
            );
        }
        self.data = DataSetup::Active(addr);
        ok(w, Code::Ok, "PORT command successful.")
    }
}

/// Which listing a data command produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListKind {
    /// `LIST`: `ls -l` lines.
    Long,
    /// `NLST`: names only.
    Names,
    /// `MLSD`: RFC 3659 facts.
    Machine,
}

/// Sends a reply and continues.
pub(crate) fn ok(w: &mut impl io::Write, code: impl Into<u16>, text: &str) -> io::Result<Flow> {
    reply::send(w, code, text)?;
    Ok(Flow::Continue)
}

/// Sends the reply for a refused path and continues: every path error
/// becomes a reply here, through [`Denied::reply`].
pub(crate) fn denied(w: &mut impl io::Write, e: &Denied) -> io::Result<Flow> {
    let (code, text) = e.reply();
    ok(w, code, text)
}

/// The reply to a client whose address is locked out.
const LOCKED_OUT: &str = "Too many failed logins from your address, try again later.";

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

impl RequestHandler for Session {
    fn setup(&mut self, req: &mut Request) -> io::Result<()> {
        let peer = req
            .peer_addr()
            .as_inet()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "FTP needs a TCP peer"))?;
        self.peer = peer;
        self.local = req
            .stream()
            .and_then(|s| s.local_addr().transpose())
            .transpose()?
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "FTP needs TCP"))?;
        req.set_timeout(Some(self.cfg.idle_timeout))?;
        req.set_nodelay(true)?;
        // ABOR sent as TCP urgent data (Python's ftplib) stays in the
        // normal byte stream instead of losing its last byte.
        if let Some(tcp) = req.stream().and_then(|s| s.as_tcp()) {
            socket2::SockRef::from(tcp).set_out_of_band_inline(true)?;
        }
        Ok(())
    }

    fn handle(&mut self, req: &mut Request) -> io::Result<()> {
        let mut ctl = Control::new(req);
        self.serve(&mut ctl)
    }
}

impl Session {
    /// Counts a connection or login refused while this address is locked
    /// out: one `warn` a minute across every process, not one line per
    /// attempt (a locked-out guesser reconnects as fast as it likes).
    fn locked_out_refusal(&self, left: Duration) {
        if let Some(count) = self.cfg.lockout_refusals.due() {
            tracing::warn!(
                peer = %self.peer, left_secs = left.as_secs(), count,
                "refused connections or logins from locked-out addresses (the latest shown); next report in a minute at the earliest"
            );
        }
    }

    /// The command loop, on the plain or (after `AUTH TLS`) TLS control
    /// connection.
    fn serve(&mut self, req: &mut Control<'_>) -> io::Result<()> {
        if let Some(left) = self.cfg.throttle.locked(self.peer.ip()) {
            tracing::debug!(peer = %self.peer, left_secs = left.as_secs(), "connection refused: address locked out");
            self.locked_out_refusal(left);
            return reply::send(&mut req.wfile(), Code::ServiceUnavailable, LOCKED_OUT);
        }
        // A balancer's health check connects (after its PROXY header)
        // and hangs up without a command, several times a second: that
        // is a `debug` line. The `info` line waits for the first command.
        tracing::debug!(peer = %self.peer, "connected");
        reply::send(&mut req.wfile(), Code::Ready, "socketserver FTP ready.")?;
        let mut line = Vec::with_capacity(256);
        let mut started = false;
        loop {
            line.clear();
            let got = self.next_line(req, &mut line);
            if !started
                && matches!(
                    got,
                    Ok(Line::Complete(_) | Line::Partial(_) | Line::TooLong)
                )
            {
                started = true;
                tracing::info!(peer = %self.peer, "session start");
            }
            let got = match got {
                Ok(l) => l,
                Err(e) if is_timeout(&e) => {
                    tracing::info!(peer = %self.peer, "idle timeout");
                    let _ = reply::send(
                        &mut req.wfile(),
                        Code::ServiceUnavailable,
                        "Idle timeout, closing control connection.",
                    );
                    break;
                }
                Err(e) => return Err(e),
            };
            let last = match got {
                Line::Eof => break,
                Line::TooLong => {
                    reply::send(
                        &mut req.wfile(),
                        Code::SyntaxError,
                        "Command line too long.",
                    )?;
                    continue;
                }
                Line::Partial(_) => true,
                Line::Complete(_) => false,
            };
            let flow = match Command::parse(&line) {
                Ok(cmd) => self.dispatch(req, &cmd)?,
                Err(crate::command::ParseError::Empty) => Flow::Continue,
                Err(e) => ok(&mut req.wfile(), Code::SyntaxError, &e.to_string())?,
            };
            if flow == Flow::Close || last {
                break;
            }
        }
        if started {
            tracing::info!(peer = %self.peer, "session end");
        } else {
            tracing::debug!(peer = %self.peer, "closed before a command");
        }
        Ok(())
    }
}

impl Session {
    /// The control connection's peer IP (data connections must match it).
    pub(crate) fn peer_ip(&self) -> IpAddr {
        self.peer.ip()
    }
}
