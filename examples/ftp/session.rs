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

use crate::command::Command;
use crate::config::Config;
use crate::confine::{Denied, Root};
use crate::data::{self, ActiveError, DataSetup};
use crate::limits::{Admission, Gate};
use crate::reply::{self, quote_path};
use crate::throttle::Failure;

/// Longest command line accepted; longer lines get `500` and are dropped.
pub const MAX_LINE: usize = 4096;

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
    pub(crate) cfg: Arc<Config>,
    gate: Arc<Gate>,
    /// The connection-limit verdict, taken first thing in `setup` so an
    /// admitted slot is never left behind in the hand-off map.
    admission: Option<Admission>,
    pub(crate) peer: SocketAddr,
    pub(crate) local: SocketAddr,
    pending_user: Option<String>,
    pub(crate) account: Option<Account>,
    failures: u32,
    pub(crate) cwd: String,
    pub(crate) data: DataSetup,
    pub(crate) rest: u64,
    pub(crate) rename_from: Option<String>,
    pub(crate) binary: bool,
    epsv_all: bool,
    /// Command lines that arrived during a transfer, run after it.
    pub(crate) queued: VecDeque<Vec<u8>>,
    /// When the passive listener in `data` (if any) stops waiting for a
    /// connection, even if no transfer command ever comes.
    passive_deadline: Option<Instant>,
}

impl Session {
    /// A session sharing `cfg`; `gate` supplies the connection-limit
    /// verdict in `setup`.
    pub fn new(cfg: Arc<Config>, gate: Arc<Gate>) -> Session {
        let unspecified: SocketAddr = ([0, 0, 0, 0], 0).into();
        Session {
            cfg,
            gate,
            admission: None,
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
        }
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
    fn next_line(&mut self, req: &mut Request, line: &mut Vec<u8>) -> io::Result<Line> {
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
                return req.rfile().read_line_bounded(line, MAX_LINE);
            };
            if Instant::now() >= deadline {
                self.expire_passive();
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            req.set_timeout(Some(left.max(Duration::from_millis(1))))?;
            let got = req.rfile().read_line_bounded(line, MAX_LINE);
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
    pub fn dispatch(&mut self, req: &mut Request, cmd: &Command) -> io::Result<Flow> {
        tracing::debug!(peer = %self.peer, command = %cmd.loggable(), "command");
        let arg = cmd.arg.as_str();
        let w = &mut req.wfile();
        // Commands allowed before login.
        match cmd.verb.as_str() {
            "USER" => return self.user(req, arg),
            "PASS" => return self.pass(req, arg),
            "QUIT" => {
                reply::send(w, 221, "Goodbye.")?;
                return Ok(Flow::Close);
            }
            "NOOP" => return ok(w, 200, "NOOP ok."),
            "SYST" => return ok(w, 215, "UNIX Type: L8"),
            "FEAT" => return ok(w, 211, FEATURES),
            "HELP" => return ok(w, 214, HELP),
            "OPTS" => return self.opts(req, arg),
            "AUTH" | "PBSZ" | "PROT" | "CCC" => {
                return ok(w, 504, "TLS is not supported; use plain FTP.");
            }
            "ACCT" => return ok(w, 202, "ACCT not needed."),
            _ => {}
        }
        if self.account.is_none() {
            return ok(w, 530, "Please login with USER and PASS.");
        }
        // RNTO must directly follow RNFR.
        let rename_from = self.rename_from.take();
        match cmd.verb.as_str() {
            "PWD" | "XPWD" => ok(
                w,
                257,
                &format!("{} is the current directory", quote_path(&self.cwd)),
            ),
            "CWD" | "XCWD" => self.cwd(req, arg),
            "CDUP" | "XCUP" => self.cwd(req, ".."),
            "TYPE" => self.type_(req, arg),
            "MODE" => match arg.to_ascii_uppercase().as_str() {
                "S" => ok(w, 200, "Mode set to S."),
                _ => ok(w, 504, "Only stream mode (S) is supported."),
            },
            "STRU" => match arg.to_ascii_uppercase().as_str() {
                "F" => ok(w, 200, "Structure set to F."),
                _ => ok(w, 504, "Only file structure (F) is supported."),
            },
            "PASV" => self.pasv(req, false, arg),
            "EPSV" => self.pasv(req, true, arg),
            "PORT" => self.port(req, data::parse_port(arg)),
            "EPRT" => self.port(req, data::parse_eprt(arg)),
            "REST" => match arg.trim().parse::<u64>() {
                Ok(n) => {
                    self.rest = n;
                    ok(
                        w,
                        350,
                        &format!("Restarting at {n}. Send STORE or RETRIEVE to initiate transfer."),
                    )
                }
                Err(_) => ok(w, 501, "REST needs a byte offset."),
            },
            "ABOR" => {
                self.data = DataSetup::None;
                ok(w, 225, "No transfer to abort.")
            }
            "RETR" => self.retr(req, arg),
            "STOR" => self.stor(req, arg, false),
            "APPE" => self.stor(req, arg, true),
            "LIST" => self.list(req, arg, ListKind::Long),
            "NLST" => self.list(req, arg, ListKind::Names),
            "MLSD" => self.list(req, arg, ListKind::Machine),
            "MLST" => self.mlst(req, arg),
            "SIZE" => self.size(req, arg),
            "MDTM" => self.mdtm(req, arg),
            "STAT" => self.stat(req, arg),
            "MKD" | "XMKD" => self.mkd(req, arg),
            "RMD" | "XRMD" => self.rmd(req, arg),
            "DELE" => self.dele(req, arg),
            "RNFR" => self.rnfr(req, arg),
            "RNTO" => self.rnto(req, arg, rename_from),
            _ => ok(w, 502, "Command not implemented."),
        }
    }

    fn user(&mut self, req: &mut Request, arg: &str) -> io::Result<Flow> {
        if self.account.is_some() {
            return ok(&mut req.wfile(), 530, "Already logged in.");
        }
        self.pending_user = Some(arg.to_string());
        ok(&mut req.wfile(), 331, "Please specify the password.")
    }

    fn pass(&mut self, req: &mut Request, arg: &str) -> io::Result<Flow> {
        if self.account.is_some() {
            return ok(&mut req.wfile(), 230, "Already logged in.");
        }
        let Some(user) = self.pending_user.take() else {
            return ok(&mut req.wfile(), 503, "Login with USER first.");
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
            tracing::info!(peer = %self.peer, %user, left_secs = left.as_secs(), "login refused: address locked out");
            wait();
            reply::send(&mut req.wfile(), 421, LOCKED_OUT)?;
            return Ok(Flow::Close);
        }
        match self.cfg.check_login(&user, arg) {
            Some(writable) => {
                self.cfg.throttle.end(ip, true);
                wait();
                tracing::info!(peer = %self.peer, %user, writable, "login");
                self.account = Some(Account {
                    name: user,
                    writable,
                });
                ok(&mut req.wfile(), 230, "Login successful.")
            }
            None => {
                self.failures += 1;
                let verdict = self.cfg.throttle.end(ip, false);
                tracing::warn!(peer = %self.peer, %user, failures = self.failures, "failed login");
                if verdict == Failure::LockedOut {
                    tracing::warn!(
                        ip = %ip,
                        lockout_secs = self.cfg.throttle.lockout().as_secs_f64(),
                        "too many failed logins: address locked out"
                    );
                }
                wait();
                if verdict == Failure::LockedOut {
                    reply::send(&mut req.wfile(), 421, LOCKED_OUT)?;
                    return Ok(Flow::Close);
                }
                if self.failures >= self.cfg.max_login_failures {
                    reply::send(
                        &mut req.wfile(),
                        421,
                        "Too many failed logins, closing control connection.",
                    )?;
                    return Ok(Flow::Close);
                }
                ok(&mut req.wfile(), 530, "Login incorrect.")
            }
        }
    }

    fn opts(&mut self, req: &mut Request, arg: &str) -> io::Result<Flow> {
        let upper = arg.to_ascii_uppercase();
        let w = &mut req.wfile();
        if upper == "UTF8 ON" || upper == "UTF8" {
            ok(w, 200, "Always in UTF8 mode.")
        } else if upper.starts_with("MLST") {
            ok(w, 200, "MLST OPTS type;size;modify;perm;unix.mode;")
        } else {
            ok(w, 501, "Option not understood.")
        }
    }

    fn cwd(&mut self, req: &mut Request, arg: &str) -> io::Result<Flow> {
        let w = &mut req.wfile();
        let vpath = self.vpath(arg);
        match self.root().metadata(&vpath) {
            Ok(m) if m.is_dir() => {
                self.cwd = vpath;
                ok(w, 250, "Directory successfully changed.")
            }
            Ok(_) => denied(w, &Denied::NotADirectory),
            Err(e) => denied(w, &e),
        }
    }

    fn type_(&mut self, req: &mut Request, arg: &str) -> io::Result<Flow> {
        let upper = arg.trim().to_ascii_uppercase();
        let w = &mut req.wfile();
        match upper.as_str() {
            "I" | "L 8" => {
                self.binary = true;
                ok(w, 200, "Switching to Binary mode.")
            }
            "A" | "A N" => {
                self.binary = false;
                ok(w, 200, "Switching to ASCII mode.")
            }
            _ => ok(w, 504, "Only TYPE A and I are supported."),
        }
    }

    fn pasv(&mut self, req: &mut Request, extended: bool, arg: &str) -> io::Result<Flow> {
        let w = &mut req.wfile();
        if extended && arg.eq_ignore_ascii_case("ALL") {
            self.epsv_all = true;
            return ok(w, 200, "EPSV ALL ok.");
        }
        if !extended && self.epsv_all {
            return ok(w, 503, "PASV not allowed after EPSV ALL.");
        }
        if extended && !arg.is_empty() {
            let family = if self.local.is_ipv4() { "1" } else { "2" };
            if arg != family {
                return ok(
                    w,
                    522,
                    &format!("Network protocol not supported, use ({family})."),
                );
            }
        }
        self.data = DataSetup::None;
        let listener = match data::open_passive(self.local.ip(), self.cfg.passive_ports) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "passive listener failed");
                return ok(w, 425, "Cannot open passive connection.");
            }
        };
        let addr = listener.local_addr()?;
        let text = if extended {
            data::epsv_text(addr.port())
        } else {
            match data::pasv_text(addr) {
                Some(t) => t,
                None => return ok(w, 522, "PASV needs IPv4; use EPSV."),
            }
        };
        self.data = DataSetup::Passive(listener);
        self.passive_deadline = Some(Instant::now() + self.cfg.passive_timeout);
        ok(w, if extended { 229 } else { 227 }, &text)
    }

    fn port(
        &mut self,
        req: &mut Request,
        parsed: Result<SocketAddr, ActiveError>,
    ) -> io::Result<Flow> {
        let w = &mut req.wfile();
        if self.epsv_all {
            return ok(w, 503, "PORT not allowed after EPSV ALL.");
        }
        self.data = DataSetup::None;
        let addr = match parsed {
            Ok(a) => a,
            Err(ActiveError::Family) => {
                return ok(w, 522, "Network protocol not supported, use (1,2).")
            }
            Err(_) => return ok(w, 501, "Syntax error in PORT/EPRT argument."),
        };
        if data::check_active(addr, self.peer.ip()).is_err() {
            tracing::warn!(peer = %self.peer, target = %addr, "refused PORT/EPRT to a foreign address or privileged port");
            return ok(
                w,
                500,
                "Illegal PORT command: only your own address, port >= 1024.",
            );
        }
        self.data = DataSetup::Active(addr);
        ok(w, 200, "PORT command successful.")
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
pub(crate) fn ok(w: &mut impl io::Write, code: u16, text: &str) -> io::Result<Flow> {
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

const FEATURES: &str = "Features:\nEPRT\nEPSV\nMDTM\nMLST type*;size*;modify*;perm*;unix.mode*;\nPASV\nREST STREAM\nSIZE\nTVFS\nUTF8\nEnd";

const HELP: &str = "The following commands are recognized:\nABOR ACCT APPE CDUP CWD DELE EPRT EPSV FEAT HELP LIST MDTM MKD MLSD MLST MODE\nNLST NOOP OPTS PASS PASV PORT PWD QUIT REST RETR RMD RNFR RNTO SIZE STAT STOR\nSTRU SYST TYPE USER XCUP XCWD XMKD XPWD XRMD\nHelp OK.";

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
        self.admission = Some(self.gate.take(peer));
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
        // The token (if admitted) stays in `self.admission` for the whole
        // session; dropping the session frees the slot.
        if let Some(Admission::Refused(why)) = &self.admission {
            tracing::info!(peer = %self.peer, why, "connection refused by limits");
            return reply::send(&mut req.wfile(), 421, why);
        }
        if let Some(left) = self.cfg.throttle.locked(self.peer.ip()) {
            tracing::info!(peer = %self.peer, left_secs = left.as_secs(), "connection refused: address locked out");
            return reply::send(&mut req.wfile(), 421, LOCKED_OUT);
        }
        tracing::info!(peer = %self.peer, "session start");
        reply::send(&mut req.wfile(), 220, "socketserver FTP ready.")?;
        let mut line = Vec::with_capacity(256);
        loop {
            line.clear();
            let got = match self.next_line(req, &mut line) {
                Ok(l) => l,
                Err(e) if is_timeout(&e) => {
                    tracing::info!(peer = %self.peer, "idle timeout");
                    let _ = reply::send(
                        &mut req.wfile(),
                        421,
                        "Idle timeout, closing control connection.",
                    );
                    break;
                }
                Err(e) => return Err(e),
            };
            let last = match got {
                Line::Eof => break,
                Line::TooLong => {
                    reply::send(&mut req.wfile(), 500, "Command line too long.")?;
                    continue;
                }
                Line::Partial(_) => true,
                Line::Complete(_) => false,
            };
            let flow = match Command::parse(&line) {
                Ok(cmd) => self.dispatch(req, &cmd)?,
                Err(crate::command::ParseError::Empty) => Flow::Continue,
                Err(e) => ok(&mut req.wfile(), 500, &e.to_string())?,
            };
            if flow == Flow::Close || last {
                break;
            }
        }
        tracing::info!(peer = %self.peer, "session end");
        Ok(())
    }
}

impl Session {
    /// The control connection's peer IP (data connections must match it).
    pub(crate) fn peer_ip(&self) -> IpAddr {
        self.peer.ip()
    }
}
