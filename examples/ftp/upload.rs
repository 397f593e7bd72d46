//! Where uploaded bytes go: the new file (an anonymous `O_TMPFILE` in the
//! target's directory, linked into place when the transfer completed), or
//! the resumed / appended target itself; the splice path from socket to
//! file; ASCII line-ending conversion.
//!
//! A replacing `STOR` (and an `APPE` to a name that does not exist yet)
//! writes to an *unnamed* file created with `O_TMPFILE` in the target's
//! directory, opened beneath the root (see `confine.rs`). Only when the
//! transfer completed is it given a name: `linkat` straight to the target
//! name when that is free, otherwise `linkat` to a short fixed-length
//! temporary name and `renameat` over the target (atomic: readers see the
//! old file or the new one). However a transfer ends before that (reset,
//! timeout, `ABOR`, the session's process killed), the unnamed file simply
//! disappears with its descriptor: nothing is left behind and no empty file
//! is created. No temporary name is derived from the client's name, so
//! every name the file system accepts (up to `NAME_MAX`, 255 bytes) can be
//! uploaded.
//!
//! File systems without `O_TMPFILE` get a short named temporary file
//! (`.ftp-upload-<16 hex digits>`) instead, removed by [`Upload`]'s `Drop`
//! whenever the upload is not committed (only a `SIGKILL` of the session
//! process can leave one behind there).

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;

use rustix::fs::{AtFlags, Mode, OFlags};

use crate::confine::{Denied, Parent, Root};

/// A file being uploaded: a new file to link into place, or the target
/// itself when resuming or appending. Dropping an upload that was not
/// committed undoes it.
#[derive(Debug)]
pub(crate) struct Upload {
    pub(crate) file: File,
    /// For a new file: where it goes at commit.
    publish: Option<Publish>,
    /// Length to cut back to if an append fails.
    pub(crate) rollback_len: Option<u64>,
    /// Bytes this upload wrote through [`Upload::write_all`] (for an
    /// append: the cut-back happens only while the file is exactly its old
    /// length plus these).
    appended: u64,
    /// `commit` succeeded: nothing to undo.
    committed: bool,
}

/// Where a new file is linked at commit.
#[derive(Debug)]
struct Publish {
    parent: Parent,
    /// A named temporary file in `parent` (the fallback without
    /// `O_TMPFILE`, or during the link-then-rename of a commit); removed on
    /// drop.
    temp: Option<String>,
}

/// A short temporary name, unrelated to the client's name.
fn temp_name() -> String {
    let mut bytes = [0u8; 8];
    // A failure leaves zeros; `O_EXCL`/`EEXIST` loops pick another name.
    let _ = getrandom::fill(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(".ftp-upload-{hex}")
}

/// Opens a regular file beneath the root for writing in place.
fn open_existing(root: &Root, vpath: &str, flags: OFlags) -> Result<File, Denied> {
    // O_NONBLOCK: opening a FIFO must not hang the session (it is refused
    // below); regular files ignore the flag.
    let fd = root.open_at(vpath, flags | OFlags::WRONLY | OFlags::NONBLOCK)?;
    let file = File::from(fd);
    if !file.metadata()?.is_file() {
        return Err(Denied::NotAFile);
    }
    Ok(file)
}

/// Gives the unnamed `O_TMPFILE` file `file` the name `name` in `dir`.
fn link_tmpfile(file: &File, dir: &Parent, name: &str) -> rustix::io::Result<()> {
    match rustix::fs::linkat(file, "", &dir.dir, name, AtFlags::EMPTY_PATH) {
        // AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH; without it the kernel
        // says ENOENT. The /proc link of our own descriptor works for all.
        Err(rustix::io::Errno::NOENT) | Err(rustix::io::Errno::PERM) => rustix::fs::linkat(
            rustix::fs::CWD,
            format!("/proc/self/fd/{}", file.as_raw_fd()).as_str(),
            &dir.dir,
            name,
            AtFlags::SYMLINK_FOLLOW,
        ),
        other => other,
    }
}

impl Upload {
    /// Opens the upload for the virtual path `vpath` beneath `root`:
    /// `append` for APPE, `offset > 0` for a resumed STOR (REST).
    ///
    /// # Errors
    /// [`Denied`] for a missing parent, a directory or other non-file at
    /// `vpath`, a resume offset beyond the end, or a creation failure.
    pub(crate) fn open(
        root: &Root,
        vpath: &str,
        append: bool,
        offset: u64,
    ) -> Result<Upload, Denied> {
        if append {
            match open_existing(root, vpath, OFlags::APPEND) {
                Ok(file) => {
                    let rollback_len = Some(file.metadata()?.len());
                    return Ok(Upload {
                        file,
                        publish: None,
                        rollback_len,
                        appended: 0,
                        committed: false,
                    });
                }
                // A new name: created only when the upload completes.
                Err(Denied::NotFound) => {}
                Err(e) => return Err(e),
            }
        } else if offset > 0 {
            let mut file = open_existing(root, vpath, OFlags::empty())?;
            if offset > file.metadata()?.len() {
                return Err(Denied::Other(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "restart offset beyond end of file",
                )));
            }
            file.seek(io::SeekFrom::Start(offset))?;
            return Ok(Upload {
                file,
                publish: None,
                rollback_len: None,
                appended: 0,
                committed: false,
            });
        }
        if root.metadata(vpath).is_ok_and(|m| m.is_dir()) {
            return Err(Denied::IsADirectory);
        }
        let parent = root.parent(vpath)?;
        // A name the file system cannot hold is refused now, not after the
        // transfer (only the lookup's ENAMETOOLONG matters here).
        if let Err(rustix::io::Errno::NAMETOOLONG) =
            rustix::fs::statat(&parent.dir, parent.name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
        {
            return Err(Denied::BadName);
        }
        Upload::new_file(parent, true)
    }

    /// A new, not yet visible file in `parent`: unnamed (`O_TMPFILE`) when
    /// `tmpfile` is set and the file system supports it, else a short
    /// named temporary file.
    fn new_file(parent: Parent, tmpfile: bool) -> Result<Upload, Denied> {
        let mode = Mode::from_raw_mode(0o666);
        if tmpfile {
            match rustix::fs::openat(
                &parent.dir,
                ".",
                OFlags::WRONLY | OFlags::TMPFILE | OFlags::CLOEXEC,
                mode,
            ) {
                Ok(fd) => {
                    return Ok(Upload {
                        file: File::from(fd),
                        publish: Some(Publish { parent, temp: None }),
                        rollback_len: None,
                        appended: 0,
                        committed: false,
                    })
                }
                Err(e)
                    if e == rustix::io::Errno::OPNOTSUPP
                        || e == rustix::io::Errno::ISDIR
                        || e == rustix::io::Errno::INVAL => {}
                Err(e) => return Err(e.into()),
            }
        }
        // No O_TMPFILE here: a short named temporary file, removed on drop.
        loop {
            let temp = temp_name();
            match rustix::fs::openat(
                &parent.dir,
                temp.as_str(),
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                mode,
            ) {
                Ok(fd) => {
                    return Ok(Upload {
                        file: File::from(fd),
                        publish: Some(Publish {
                            parent,
                            temp: Some(temp),
                        }),
                        rollback_len: None,
                        appended: 0,
                        committed: false,
                    })
                }
                Err(rustix::io::Errno::EXIST) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Makes a completed upload visible. On failure the upload is undone
    /// when it is dropped.
    pub(crate) fn commit(&mut self) -> io::Result<()> {
        if let Some(p) = &mut self.publish {
            if p.temp.is_none() {
                // The unnamed file: straight to the target name if free.
                match link_tmpfile(&self.file, &p.parent, &p.parent.name) {
                    Ok(()) => {
                        self.committed = true;
                        return Ok(());
                    }
                    Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => return Err(e.into()),
                }
                loop {
                    let temp = temp_name();
                    match link_tmpfile(&self.file, &p.parent, &temp) {
                        Ok(()) => {
                            p.temp = Some(temp);
                            break;
                        }
                        Err(rustix::io::Errno::EXIST) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            if let Some(temp) = &p.temp {
                // Replaces whatever holds the name (a directory is refused
                // by rename(2) and the temporary name removed on drop).
                rustix::fs::renameat(
                    &p.parent.dir,
                    temp.as_str(),
                    &p.parent.dir,
                    p.parent.name.as_str(),
                )?;
                p.temp = None;
            }
        } else if self.rollback_len.is_none() {
            // Resumed upload: drop any stale tail past what was written.
            let end = self.file.stream_position()?;
            self.file.set_len(end)?;
        }
        self.committed = true;
        Ok(())
    }
}

impl Upload {
    /// Writes all of `buf` to the file, counting the bytes written (also
    /// those of a write that then fails part-way). An append writes under a
    /// shared `flock`, so another session's cut-back (exclusive, see
    /// `Drop`) never runs between its length check and a write. (When
    /// the lock is not granted within a few milliseconds — only a program
    /// other than this server holds it that long — the write goes ahead
    /// unlocked.)
    ///
    /// # Errors
    /// The write failed (the bytes written before it are counted).
    pub(crate) fn write_all(&mut self, mut buf: &[u8]) -> io::Result<()> {
        let mut file = &self.file;
        let _lock = self
            .rollback_len
            .is_some()
            .then(|| FileLock::new(file, rustix::fs::FlockOperation::NonBlockingLockShared));
        while !buf.is_empty() {
            match file.write(buf) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.appended += n as u64;
                    buf = &buf[n..];
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// An `flock` on an upload's file, released on drop. Sessions take it
/// only for one write (shared) or one cut-back (exclusive), and never
/// wait for it long: a few non-blocking tries a millisecond apart, so a
/// lock held by some other program on the machine cannot hang a session.
struct FileLock<'a>(Option<&'a File>);

/// Non-blocking tries before going on without the lock.
const LOCK_TRIES: u32 = 10;

impl<'a> FileLock<'a> {
    /// `op` is a non-blocking `flock` operation; the guard holds nothing
    /// when it was not granted within [`LOCK_TRIES`] tries (or the file
    /// system has no `flock`).
    fn new(file: &'a File, op: rustix::fs::FlockOperation) -> FileLock<'a> {
        for i in 0..LOCK_TRIES {
            match rustix::fs::flock(file, op) {
                Ok(()) => return FileLock(Some(file)),
                Err(rustix::io::Errno::WOULDBLOCK) if i + 1 < LOCK_TRIES => {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(_) => break,
            }
        }
        FileLock(None)
    }

    fn held(&self) -> bool {
        self.0.is_some()
    }
}

impl Drop for FileLock<'_> {
    fn drop(&mut self) {
        if let Some(file) = self.0 {
            let _ = rustix::fs::flock(file, rustix::fs::FlockOperation::Unlock);
        }
    }
}

impl Drop for Upload {
    /// Undoes an upload that was not committed: a named temporary file is
    /// removed (an unnamed one vanishes with its descriptor), an append is
    /// cut back to the old length — but only when the file is still
    /// exactly the old length plus what this upload wrote. Another
    /// session's `APPE` (or `REST` + `STOR`) that wrote to the file
    /// meanwhile, and was told `226`, would otherwise lose its bytes; then
    /// this upload's own partial bytes stay instead.
    fn drop(&mut self) {
        if let Some(p) = &self.publish {
            if let Some(temp) = &p.temp {
                let _ = rustix::fs::unlinkat(&p.parent.dir, temp.as_str(), AtFlags::empty());
            }
        }
        if self.committed {
            return;
        }
        if let Some(len) = self.rollback_len {
            // Not granted: another append is writing right now, so the
            // file is not ours alone; nothing is cut.
            let lock = FileLock::new(
                &self.file,
                rustix::fs::FlockOperation::NonBlockingLockExclusive,
            );
            let untouched = lock.held()
                && self
                    .file
                    .metadata()
                    .is_ok_and(|m| Some(m.len()) == len.checked_add(self.appended));
            if untouched {
                let _ = self.file.set_len(len);
            }
        }
    }
}

/// A pipe used as the in-kernel buffer between a socket and a file.
#[derive(Debug)]
pub(crate) struct SplicePipe {
    r: std::os::fd::OwnedFd,
    w: std::os::fd::OwnedFd,
}

/// Bytes asked of one socket-to-pipe splice (and the pipe's capacity).
const PIPE_SIZE: usize = 1 << 20;

impl SplicePipe {
    pub(crate) fn new() -> io::Result<SplicePipe> {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        // A larger pipe means fewer splices; the default 64 KiB still works.
        let _ = nix::fcntl::fcntl(&w, nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_SIZE as i32));
        Ok(SplicePipe { r, w })
    }
}

/// Moves what the socket has (it polled readable) into the file.
/// Returns `None` at end of file.
pub(crate) fn splice_chunk(
    conn: &TcpStream,
    pipe: &SplicePipe,
    file: &File,
) -> io::Result<Option<usize>> {
    use nix::fcntl::{splice, SpliceFFlags};
    let n = loop {
        match splice(
            conn,
            None,
            &pipe.w,
            None,
            PIPE_SIZE,
            SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK,
        ) {
            Ok(n) => break n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::EAGAIN) => return Ok(Some(0)),
            Err(e) => return Err(e.into()),
        }
    };
    if n == 0 {
        return Ok(None);
    }
    let mut moved = 0;
    while moved < n {
        match splice(
            &pipe.r,
            None,
            file,
            None,
            n - moved,
            SpliceFFlags::SPLICE_F_MOVE,
        ) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "splice into file wrote nothing",
                ))
            }
            Ok(m) => moved += m,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::EINVAL) => {
                // The file cannot be spliced into: copy what the pipe holds,
                // then report EINVAL so the caller stops splicing.
                let mut rest = vec![0u8; n - moved];
                std::fs::File::from(pipe.r.try_clone()?).read_exact(&mut rest)?;
                { file }.write_all(&rest)?;
                return Err(io::Error::from_raw_os_error(libc::EINVAL));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Some(n))
}

/// Converts CRLF to LF for ASCII uploads; a CR at the end of a chunk is
/// held back until the next chunk shows what follows it.
pub(crate) fn crlf_to_lf(chunk: &[u8], held_cr: &mut bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(chunk.len() + 1);
    for &b in chunk {
        if *held_cr {
            *held_cr = false;
            if b != b'\n' {
                out.push(b'\r');
            }
        }
        if b == b'\r' {
            *held_cr = true;
        } else {
            out.push(b);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crlf_conversion_across_chunks() {
        let mut held = false;
        let mut out = crlf_to_lf(b"a\r\nb\r", &mut held);
        assert!(held);
        out.extend(crlf_to_lf(b"\nc\rd", &mut held));
        assert_eq!(out, b"a\nb\nc\rd");
        assert!(!held);
    }

    /// A root with `f` (holding `old`) and the names in the directory.
    fn names(dir: &std::path::Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn aborted_replacing_upload_keeps_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(dir.path()).unwrap();
        let target = dir.path().join("f");
        std::fs::write(&target, b"old").unwrap();
        let mut up = Upload::open(&root, "/f", false, 0).unwrap();
        up.file.write_all(b"new partial").unwrap();
        drop(up);
        assert_eq!(std::fs::read(&target).unwrap(), b"old");
        assert_eq!(names(dir.path()), ["f"], "no temporary file");
        let mut up = Upload::open(&root, "/f", false, 0).unwrap();
        up.file.write_all(b"new").unwrap();
        up.commit().unwrap();
        drop(up);
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        assert_eq!(names(dir.path()), ["f"]);
        // A new name appears only at commit; 255-byte names work.
        let long = "L".repeat(255);
        let mut up = Upload::open(&root, &format!("/{long}"), false, 0).unwrap();
        up.file.write_all(b"long").unwrap();
        assert_eq!(names(dir.path()), ["f"], "nothing visible before commit");
        up.commit().unwrap();
        drop(up);
        assert_eq!(std::fs::read(dir.path().join(&long)).unwrap(), b"long");
        // A directory is not replaced.
        std::fs::create_dir(dir.path().join("d")).unwrap();
        assert!(matches!(
            Upload::open(&root, "/d", false, 0),
            Err(Denied::IsADirectory)
        ));
        assert!(matches!(
            Upload::open(&root, "/missing/x", false, 0),
            Err(Denied::NotFound)
        ));
        let too_long = format!("/{}", "L".repeat(256));
        assert!(matches!(
            Upload::open(&root, &too_long, false, 0),
            Err(Denied::BadName)
        ));
    }

    #[test]
    fn without_o_tmpfile_a_named_temporary_file_is_removed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(dir.path()).unwrap();
        std::fs::write(dir.path().join("f"), b"old").unwrap();
        // Not committed: the temporary name goes away with the upload.
        let mut up = Upload::new_file(root.parent("/new").unwrap(), false).unwrap();
        up.file.write_all(b"partial").unwrap();
        let during = names(dir.path());
        assert_eq!(during.len(), 2, "{during:?}");
        let temp = during.iter().find(|n| *n != "f").unwrap();
        assert!(
            temp.starts_with(".ftp-upload-") && temp.len() == 28,
            "{temp}"
        );
        drop(up);
        assert_eq!(names(dir.path()), ["f"]);
        // Committed over an existing file: renamed into place.
        let mut up = Upload::new_file(root.parent("/f").unwrap(), false).unwrap();
        up.file.write_all(b"new").unwrap();
        up.commit().unwrap();
        drop(up);
        assert_eq!(names(dir.path()), ["f"]);
        assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), b"new");
        // A commit that fails (a directory holds the name) leaves nothing.
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::fs::write(dir.path().join("d/x"), b"").unwrap();
        let mut up = Upload::new_file(root.parent("/d").unwrap(), false).unwrap();
        assert!(up.commit().is_err());
        drop(up);
        assert_eq!(names(dir.path()), ["d", "f"]);
        // The same with O_TMPFILE: the link-then-rename name is removed.
        let mut up = Upload::new_file(root.parent("/d").unwrap(), true).unwrap();
        assert!(up.commit().is_err());
        drop(up);
        assert_eq!(names(dir.path()), ["d", "f"]);
    }

    #[test]
    fn failed_append_is_cut_back_and_resume_truncates_tail() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(dir.path()).unwrap();
        let target = dir.path().join("f");
        std::fs::write(&target, b"0123456789").unwrap();
        let mut up = Upload::open(&root, "/f", true, 0).unwrap();
        up.write_all(b"junk").unwrap();
        drop(up);
        assert_eq!(std::fs::read(&target).unwrap(), b"0123456789");
        // Someone else appended meanwhile: nothing is cut (their bytes
        // would go too); this upload's own partial bytes stay.
        let mut up = Upload::open(&root, "/f", true, 0).unwrap();
        up.write_all(b"junk").unwrap();
        let mut other = Upload::open(&root, "/f", true, 0).unwrap();
        other.write_all(b"more").unwrap();
        other.commit().unwrap();
        drop(other);
        drop(up);
        assert_eq!(std::fs::read(&target).unwrap(), b"0123456789junkmore");
        std::fs::write(&target, b"0123456789").unwrap();
        let mut up = Upload::open(&root, "/f", false, 4).unwrap();
        up.file.write_all(b"ab").unwrap();
        up.commit().unwrap();
        drop(up);
        assert_eq!(std::fs::read(&target).unwrap(), b"0123ab");
        assert!(Upload::open(&root, "/f", false, 100).is_err());
        // An append to a new name creates nothing unless it completes.
        let mut up = Upload::open(&root, "/fresh", true, 0).unwrap();
        up.write_all(b"junk").unwrap();
        drop(up);
        assert_eq!(names(dir.path()), ["f"]);
        let mut up = Upload::open(&root, "/fresh", true, 0).unwrap();
        up.file.write_all(b"done").unwrap();
        up.commit().unwrap();
        drop(up);
        assert_eq!(std::fs::read(dir.path().join("fresh")).unwrap(), b"done");
    }
}
