//! File-management and information commands: SIZE, MDTM, MLST, STAT,
//! MKD, RMD, DELE, RNFR, RNTO. Every path is resolved beneath the root
//! descriptor by `confine.rs` (nothing is checked and then reopened by
//! name); every change needs a writable session.

use std::io;

use socketserver::Request;

use crate::confine::Denied;
use crate::listing;
use crate::reply::{self, quote_path};
use crate::session::{denied, ok, Flow, ListKind, Session};

impl Session {
    /// The metadata of a regular file the client names.
    fn regular_file(&self, arg: &str) -> Result<std::fs::Metadata, Denied> {
        let m = self.root().metadata(&self.vpath(arg))?;
        if m.is_file() {
            Ok(m)
        } else {
            Err(Denied::NotAFile)
        }
    }

    pub(crate) fn size(&mut self, req: &mut Request, arg: &str) -> io::Result<Flow> {
        let w = &mut req.wfile();
        match self.regular_file(arg) {
            Ok(m) => ok(w, 213, &m.len().to_string()),
            Err(e) => denied(w, &e),
        }
    }

    pub(crate) fn mdtm(&mut self, req: &mut Request, arg: &str) -> io::Result<Flow> {
        let w = &mut req.wfile();
        match self.regular_file(arg) {
            Ok(m) => ok(
                w,
                213,
                &listing::Utc::from_unix(listing::mtime(&m)).timeval(),
            ),
            Err(e) => denied(w, &e),
        }
    }

    pub(crate) fn mlst(&mut self, req: &mut Request, arg: &str) -> io::Result<Flow> {
        let writable = self.writable();
        let w = &mut req.wfile();
        let vpath = self.vpath(arg);
        match self.root().metadata(&vpath) {
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
        let vpath = self.vpath(arg);
        let w = &mut req.wfile();
        match self.root().mkdir(&vpath) {
            Ok(()) => ok(w, 257, &format!("{} created", quote_path(&vpath))),
            Err(e) => denied(w, &e),
        }
    }

    pub(crate) fn rmd(&mut self, req: &mut Request, arg: &str) -> io::Result<Flow> {
        if !self.require_write(req)? {
            return Ok(Flow::Continue);
        }
        let vpath = self.vpath(arg);
        let w = &mut req.wfile();
        match self.root().remove_dir(&vpath) {
            Ok(()) => ok(w, 250, "Directory removed."),
            Err(e) => denied(w, &e),
        }
    }

    pub(crate) fn dele(&mut self, req: &mut Request, arg: &str) -> io::Result<Flow> {
        if !self.require_write(req)? {
            return Ok(Flow::Continue);
        }
        let vpath = self.vpath(arg);
        let w = &mut req.wfile();
        match self.root().remove_file(&vpath) {
            Ok(()) => ok(w, 250, "File deleted."),
            Err(e) => denied(w, &e),
        }
    }

    pub(crate) fn rnfr(&mut self, req: &mut Request, arg: &str) -> io::Result<Flow> {
        if !self.require_write(req)? {
            return Ok(Flow::Continue);
        }
        // Only the virtual path is kept: RNTO resolves both ends again,
        // beneath the root, at the moment of the rename.
        let vpath = self.vpath(arg);
        let w = &mut req.wfile();
        match self.root().entry_exists(&vpath) {
            Ok(()) => {
                self.rename_from = Some(vpath);
                ok(w, 350, "Ready for RNTO.")
            }
            Err(e) => denied(w, &e),
        }
    }

    pub(crate) fn rnto(
        &mut self,
        req: &mut Request,
        arg: &str,
        from: Option<String>,
    ) -> io::Result<Flow> {
        if !self.require_write(req)? {
            return Ok(Flow::Continue);
        }
        let w = &mut req.wfile();
        let Some(from) = from else {
            return ok(w, 503, "RNFR required first.");
        };
        let to = self.vpath(arg);
        match self.root().rename(&from, &to) {
            Ok(()) => ok(w, 250, "Rename successful."),
            Err(e) => denied(w, &e),
        }
    }
}
