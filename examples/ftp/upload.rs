//! Where uploaded bytes go: the atomic temporary file (or the resumed /
//! appended target), the splice path from socket to file, and ASCII
//! line-ending conversion.
//!
//! A replacing STOR writes to `.<name>.upload-<pid>-<n>` in the target's
//! directory (same file system, so the final `rename` is atomic) and renames
//! it over the target only after the transfer completed; anything else
//! removes the temporary file and leaves the old file as it was.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A unique suffix for temporary upload files within this process.
static UPLOAD_SEQ: AtomicU64 = AtomicU64::new(0);

/// A file being uploaded: a temporary file to rename into place, or the
/// target itself when resuming or appending.
#[derive(Debug)]
pub(crate) struct Upload {
    pub(crate) file: File,
    target: PathBuf,
    /// The temporary file, for a replacing upload.
    temp: Option<PathBuf>,
    /// Length to cut back to if an append fails.
    pub(crate) rollback_len: Option<u64>,
    /// The append created the target: a failed append removes it again.
    created: bool,
}

impl Upload {
    pub(crate) fn open(target: &Path, append: bool, offset: u64) -> io::Result<Upload> {
        if append {
            let (file, created) = match OpenOptions::new()
                .append(true)
                .create_new(true)
                .open(target)
            {
                Ok(file) => (file, true),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    (OpenOptions::new().append(true).open(target)?, false)
                }
                Err(e) => return Err(e),
            };
            let rollback_len = Some(file.metadata()?.len());
            return Ok(Upload {
                file,
                target: target.to_path_buf(),
                temp: None,
                rollback_len,
                created,
            });
        }
        if offset > 0 {
            let mut file = OpenOptions::new().write(true).open(target)?;
            if offset > file.metadata()?.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "restart offset beyond end of file",
                ));
            }
            file.seek(SeekFrom::Start(offset))?;
            return Ok(Upload {
                file,
                target: target.to_path_buf(),
                temp: None,
                rollback_len: None,
                created: false,
            });
        }
        let dir = target
            .parent()
            .ok_or_else(|| io::Error::other("no parent directory"))?;
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        loop {
            let seq = UPLOAD_SEQ.fetch_add(1, Ordering::Relaxed);
            let temp = dir.join(format!(".{name}.upload-{}-{seq}", std::process::id()));
            match OpenOptions::new().write(true).create_new(true).open(&temp) {
                Ok(file) => {
                    return Ok(Upload {
                        file,
                        target: target.to_path_buf(),
                        temp: Some(temp),
                        rollback_len: None,
                        created: false,
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Makes a completed upload visible.
    pub(crate) fn commit(&mut self) -> io::Result<()> {
        if let Some(temp) = self.temp.take() {
            if let Err(e) = fs::rename(&temp, &self.target) {
                let _ = fs::remove_file(&temp);
                return Err(e);
            }
        } else if self.rollback_len.is_none() {
            // Resumed upload: drop any stale tail past what was written.
            let end = self.file.stream_position()?;
            self.file.set_len(end)?;
        }
        Ok(())
    }

    /// Undoes an upload that did not complete: the old file stays as it was.
    pub(crate) fn discard(&mut self) {
        if let Some(temp) = self.temp.take() {
            let _ = fs::remove_file(temp);
        }
        if let Some(len) = self.rollback_len.take() {
            if self.created {
                // The append created it: the target did not exist before.
                let _ = fs::remove_file(&self.target);
            } else {
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

    #[test]
    fn aborted_replacing_upload_keeps_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("f");
        fs::write(&target, b"old").unwrap();
        let mut up = Upload::open(&target, false, 0).unwrap();
        up.file.write_all(b"new partial").unwrap();
        up.discard();
        assert_eq!(fs::read(&target).unwrap(), b"old");
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "temp file removed"
        );
        let mut up = Upload::open(&target, false, 0).unwrap();
        up.file.write_all(b"new").unwrap();
        up.commit().unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"new");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn failed_append_is_cut_back_and_resume_truncates_tail() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("f");
        fs::write(&target, b"0123456789").unwrap();
        let mut up = Upload::open(&target, true, 0).unwrap();
        up.file.write_all(b"junk").unwrap();
        up.discard();
        assert_eq!(fs::read(&target).unwrap(), b"0123456789");
        let mut up = Upload::open(&target, false, 4).unwrap();
        up.file.write_all(b"ab").unwrap();
        up.commit().unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"0123ab");
        assert!(Upload::open(&target, false, 100).is_err());
        // A failed append that created its target removes it again.
        let fresh = dir.path().join("fresh");
        let mut up = Upload::open(&fresh, true, 0).unwrap();
        up.file.write_all(b"junk").unwrap();
        up.discard();
        assert!(!fresh.exists());
    }
}
