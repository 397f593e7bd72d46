//! File-management and information commands: SIZE, MDTM, MLST, STAT,
//! MKD, RMD, DELE, RNFR, RNTO. Every path is resolved beneath the root
//! descriptor by `confine.rs` (nothing is checked and then reopened by
//! name); every change needs a writable session.

use std::io;

use crate::tls::Control;

use rustix::fs::OFlags;

use crate::confine::Denied;
use crate::listing;
use crate::reply::{self, quote_path, Code};
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

    pub(crate) fn size(&mut self, req: &mut Control<'_>, arg: &str) -> io::Result<Flow> {
        let w = &mut req.wfile();
        match self.regular_file(arg) {
            Ok(m) => ok(w, Code::FileStatus, &m.len().to_string()),
            Err(e) => denied(w, &e),
        }
    }

    pub(crate) fn mdtm(&mut self, req: &mut Control<'_>, arg: &str) -> io::Result<Flow> {
        let w = &mut req.wfile();
        match self.regular_file(arg) {
            Ok(m) => ok(
                w,
                Code::FileStatus,
                &listing::Utc::from_unix(listing::mtime(&m)).timeval(),
            ),
            Err(e) => denied(w, &e),
        }
    }

    /// `MFMT YYYYMMDDHHMMSS path` (draft-somers-ftp-mfxx): sets a file's
    /// modification time. The file is opened beneath the root and the time
    /// set on that descriptor (`futimens`), never by name.
    pub(crate) fn mfmt(&mut self, req: &mut Control<'_>, arg: &str) -> io::Result<Flow> {
        let Some((time, path)) = arg.split_once(' ') else {
            return ok(
                &mut req.wfile(),
                Code::BadArguments,
                "MFMT needs a time and a path.",
            );
        };
        let Some(utc) = listing::Utc::parse_timeval(time) else {
            return ok(
                &mut req.wfile(),
                Code::BadArguments,
                "MFMT time must be YYYYMMDDHHMMSS.",
            );
        };
        if !self.require_write(req)? {
            return Ok(Flow::Continue);
        }
        let w = &mut req.wfile();
        let vpath = self.vpath(path);
        let fd = match self
            .root()
            .open_at(&vpath, OFlags::RDONLY | OFlags::NONBLOCK)
        {
            Ok(fd) => fd,
            Err(e) => return denied(w, &e),
        };
        match rustix::fs::fstat(&fd) {
            Ok(st) if rustix::fs::FileType::from_raw_mode(st.st_mode).is_file() => {}
            Ok(_) => return denied(w, &Denied::NotAFile),
            Err(e) => return denied(w, &Denied::from(e)),
        }
        let times = rustix::fs::Timestamps {
            last_access: rustix::fs::Timespec {
                tv_sec: 0,
                tv_nsec: rustix::fs::UTIME_OMIT,
            },
            last_modification: rustix::fs::Timespec {
                tv_sec: utc.to_unix(),
                tv_nsec: 0,
            },
        };
        if let Err(e) = rustix::fs::futimens(&fd, &times) {
            return denied(w, &Denied::from(e));
        }
        ok(
            w,
            Code::FileStatus,
            &format!("Modify={}; {path}", utc.timeval()),
        )
    }

    pub(crate) fn mlst(&mut self, req: &mut Control<'_>, arg: &str) -> io::Result<Flow> {
        let writable = self.writable();
        let w = &mut req.wfile();
        let vpath = self.vpath(arg);
        match self.root().metadata(&vpath) {
            Ok(m) => {
                let facts = listing::mlsx_line(&vpath, &m, None, writable);
                ok(
                    w,
                    Code::FileActionOk,
                    &format!("Listing {vpath}\n{facts}\nEnd"),
                )
            }
            Err(e) => denied(w, &e),
        }
    }

    pub(crate) fn stat(&mut self, req: &mut Control<'_>, arg: &str) -> io::Result<Flow> {
        if arg.is_empty() {
            let user = self.account().map(|a| a.name.as_str()).unwrap_or("");
            let text = format!(
                "FTP server status:\nConnected to {}\nLogged in as {user}\nTYPE: {}\nEnd of status",
                self.peer().ip(),
                if self.binary() { "BINARY" } else { "ASCII" }
            );
            return ok(&mut req.wfile(), Code::SystemStatus, &text);
        }
        match self.listing_bytes(arg, ListKind::Long) {
            Ok(bytes) => {
                let body = String::from_utf8_lossy(&bytes).replace("\r\n", "\n");
                ok(
                    &mut req.wfile(),
                    Code::FileStatus,
                    &format!("Status of {arg}:\n{body}End of status"),
                )
            }
            Err(e) => denied(&mut req.wfile(), &e),
        }
    }

    /// Checks write permission, replying `550` when it is missing.
    pub(crate) fn require_write(&self, req: &mut Control<'_>) -> io::Result<bool> {
        if self.writable() {
            return Ok(true);
        }
        reply::send(
            &mut req.wfile(),
            Code::Unavailable,
            "Permission denied: read-only session.",
        )?;
        Ok(false)
    }

    pub(crate) fn mkd(&mut self, req: &mut Control<'_>, arg: &str) -> io::Result<Flow> {
        if !self.require_write(req)? {
            return Ok(Flow::Continue);
        }
        let vpath = self.vpath(arg);
        let w = &mut req.wfile();
        match self.root().mkdir(&vpath) {
            Ok(()) => ok(
                w,
                Code::PathCreated,
                &format!("{} created", quote_path(&vpath)),
            ),
            Err(e) => denied(w, &e),
        }
    }

    pub(crate) fn rmd(&mut self, req: &mut Control<'_>, arg: &str) -> io::Result<Flow> {
        if !self.require_write(req)? {
            return Ok(Flow::Continue);
        }
        let vpath = self.vpath(arg);
        let w = &mut req.wfile();
        match self.root().remove_dir(&vpath) {
            Ok(()) => ok(w, Code::FileActionOk, "Directory removed."),
            Err(e) => denied(w, &e),
        }
    }

    pub(crate) fn dele(&mut self, req: &mut Control<'_>, arg: &str) -> io::Result<Flow> {
        if !self.require_write(req)? {
            return Ok(Flow::Continue);
        }
        let vpath = self.vpath(arg);
        let w = &mut req.wfile();
        match self.root().remove_file(&vpath) {
            Ok(()) => ok(w, Code::FileActionOk, "File deleted."),
            Err(e) => denied(w, &e),
        }
    }

    pub(crate) fn rnfr(&mut self, req: &mut Control<'_>, arg: &str) -> io::Result<Flow> {
        if !self.require_write(req)? {
            return Ok(Flow::Continue);
        }
        // Only the virtual path is kept: RNTO resolves both ends again,
        // beneath the root, at the moment of the rename.
        let vpath = self.vpath(arg);
        let w = &mut req.wfile();
        match self.root().entry_exists(&vpath) {
            Ok(()) => {
                self.set_rename_from(vpath);
                ok(w, Code::PendingFurtherInfo, "Ready for RNTO.")
            }
            Err(e) => denied(w, &e),
        }
    }

    pub(crate) fn rnto(
        &mut self,
        req: &mut Control<'_>,
        arg: &str,
        from: Option<String>,
    ) -> io::Result<Flow> {
        if !self.require_write(req)? {
            return Ok(Flow::Continue);
        }
        let w = &mut req.wfile();
        let Some(from) = from else {
            return ok(w, Code::BadSequence, "RNFR required first.");
        };
        let to = self.vpath(arg);
        match self.root().rename(&from, &to) {
            Ok(()) => ok(w, Code::FileActionOk, "Rename successful."),
            Err(e) => denied(w, &e),
        }
    }
}
