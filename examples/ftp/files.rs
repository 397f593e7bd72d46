//! File-management and information commands: SIZE, MDTM, MLST, STAT,
//! MKD, RMD, DELE, RNFR, RNTO. Every path goes through `confine.rs`; every
//! change needs a writable session.

use std::fs;
use std::io;
use std::path::PathBuf;

use socketserver::Request;

use crate::confine::Denied;
use crate::listing;
use crate::reply::{self, quote_path};
use crate::session::{denied, ok, Flow, ListKind, Session};

impl Session {
    pub(crate) fn size(&mut self, req: &mut Request, arg: &str) -> io::Result<Flow> {
        let w = &mut req.wfile();
        match self.vpath(arg).and_then(|v| self.root().existing(&v)) {
            Ok(p) => match fs::metadata(&p) {
                Ok(m) if m.is_file() => ok(w, 213, &m.len().to_string()),
                Ok(_) => ok(w, 550, "Not a regular file."),
                Err(e) => denied(w, &Denied::Io(e)),
            },
            Err(e) => denied(w, &e),
        }
    }

    pub(crate) fn mdtm(&mut self, req: &mut Request, arg: &str) -> io::Result<Flow> {
        let w = &mut req.wfile();
        match self.vpath(arg).and_then(|v| self.root().existing(&v)) {
            Ok(p) => match fs::metadata(&p) {
                Ok(m) if m.is_file() => {
                    let t = listing::Utc::from_unix(listing::mtime(&m)).timeval();
                    ok(w, 213, &t)
                }
                Ok(_) => ok(w, 550, "Not a regular file."),
                Err(e) => denied(w, &Denied::Io(e)),
            },
            Err(e) => denied(w, &e),
        }
    }

    pub(crate) fn mlst(&mut self, req: &mut Request, arg: &str) -> io::Result<Flow> {
        let writable = self.writable();
        let w = &mut req.wfile();
        let vpath = match self.vpath(arg) {
            Ok(v) => v,
            Err(e) => return denied(w, &e),
        };
        match self
            .root()
            .existing(&vpath)
            .and_then(|p| fs::metadata(p).map_err(Denied::Io))
        {
            Ok(m) => {
                let facts = listing::mlsx_line(&vpath, &m, None, writable);
                ok(w, 250, &format!("Listing {vpath}\n{facts}\nEnd"))
            }
            Err(e) => denied(w, &e),
        }
    }

    pub(crate) fn stat(&mut self, req: &mut Request, arg: &str) -> io::Result<Flow> {
        if arg.is_empty() {
            let user = self.account.as_ref().map(|a| a.name.as_str()).unwrap_or("");
            let text = format!(
                "FTP server status:\nConnected to {}\nLogged in as {user}\nTYPE: {}\nEnd of status",
                self.peer.ip(),
                if self.binary { "BINARY" } else { "ASCII" }
            );
            return ok(&mut req.wfile(), 211, &text);
        }
        match self.listing_bytes(arg, ListKind::Long) {
            Ok(bytes) => {
                let body = String::from_utf8_lossy(&bytes).replace("\r\n", "\n");
                ok(
                    &mut req.wfile(),
                    213,
                    &format!("Status of {arg}:\n{body}End of status"),
                )
            }
            Err(e) => denied(&mut req.wfile(), &e),
        }
    }

    /// Checks write permission, replying `550` when it is missing.
    pub(crate) fn require_write(&self, req: &mut Request) -> io::Result<bool> {
        if self.writable() {
            return Ok(true);
        }
        reply::send(
            &mut req.wfile(),
            550,
            "Permission denied: read-only session.",
        )?;
        Ok(false)
    }

    pub(crate) fn mkd(&mut self, req: &mut Request, arg: &str) -> io::Result<Flow> {
        if !self.require_write(req)? {
            return Ok(Flow::Continue);
        }
        let w = &mut req.wfile();
        let vpath = match self.vpath(arg) {
            Ok(v) => v,
            Err(e) => return denied(w, &e),
        };
        match self.root().target(&vpath) {
            Ok(p) => match fs::create_dir(&p) {
                Ok(()) => ok(w, 257, &format!("{} created", quote_path(&vpath))),
                Err(e) => denied(w, &Denied::Io(e)),
            },
            Err(e) => denied(w, &e),
        }
    }

    pub(crate) fn rmd(&mut self, req: &mut Request, arg: &str) -> io::Result<Flow> {
        if !self.require_write(req)? {
            return Ok(Flow::Continue);
        }
        let w = &mut req.wfile();
        match self.vpath(arg).and_then(|v| self.root().entry(&v)) {
            Ok(p) => match fs::remove_dir(&p) {
                Ok(()) => ok(w, 250, "Directory removed."),
                Err(e) => denied(w, &Denied::Io(e)),
            },
            Err(e) => denied(w, &e),
        }
    }

    pub(crate) fn dele(&mut self, req: &mut Request, arg: &str) -> io::Result<Flow> {
        if !self.require_write(req)? {
            return Ok(Flow::Continue);
        }
        let w = &mut req.wfile();
        match self.vpath(arg).and_then(|v| self.root().entry(&v)) {
            Ok(p) if p.symlink_metadata().is_ok_and(|m| m.is_dir()) => {
                ok(w, 550, "Is a directory; use RMD.")
            }
            Ok(p) => match fs::remove_file(&p) {
                Ok(()) => ok(w, 250, "File deleted."),
                Err(e) => denied(w, &Denied::Io(e)),
            },
            Err(e) => denied(w, &e),
        }
    }

    pub(crate) fn rnfr(&mut self, req: &mut Request, arg: &str) -> io::Result<Flow> {
        if !self.require_write(req)? {
            return Ok(Flow::Continue);
        }
        let w = &mut req.wfile();
        match self.vpath(arg).and_then(|v| self.root().entry(&v)) {
            Ok(p) if p.symlink_metadata().is_ok() => {
                self.rename_from = Some(p);
                ok(w, 350, "Ready for RNTO.")
            }
            Ok(_) => ok(w, 550, "No such file or directory"),
            Err(e) => denied(w, &e),
        }
    }

    pub(crate) fn rnto(
        &mut self,
        req: &mut Request,
        arg: &str,
        from: Option<PathBuf>,
    ) -> io::Result<Flow> {
        if !self.require_write(req)? {
            return Ok(Flow::Continue);
        }
        let w = &mut req.wfile();
        let Some(from) = from else {
            return ok(w, 503, "RNFR required first.");
        };
        match self.vpath(arg).and_then(|v| self.root().target(&v)) {
            Ok(to) => match fs::rename(&from, &to) {
                Ok(()) => ok(w, 250, "Rename successful."),
                Err(e) => denied(w, &Denied::Io(e)),
            },
            Err(e) => denied(w, &e),
        }
    }
}
