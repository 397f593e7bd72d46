//! Unix-domain stream and datagram transports.
//!
//! A path that starts with a NUL byte (`"\0name"`) binds a Linux abstract
//! name: no file is made or removed, and it is displayed as `@name`.
//!
//! Unlike Python, the server removes the socket file it created when it
//! is closed (that file only: one that another server bound after
//! removing this one's is left alone), and a socket file left behind by a
//! server that never closed (killed by SIGKILL, or by a signal it did not
//! handle) does not stop the next one from starting: when binding fails
//! with `EADDRINUSE` and the path is a socket that refuses a connection
//! (nothing is bound to it any more), the file is removed and the bind
//! retried. A path that a
//! live server holds, or that is not a socket at all, is left alone and
//! the bind fails with `AddrInUse`, saying which. (Two servers started on
//! the same stale path in the same instant can still race: one may
//! remove the other's file between its `bind` and `listen`.)

use std::fmt;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use socket2::{Domain, SockAddr, Socket, Type};

use super::{check_adopted, BindAddress, ServerSocket, SocketKind, Transport};

/// Unix stream sockets: Python's `UnixStreamServer` socket.
#[derive(Debug, Clone, Copy, Default)]
pub struct UnixStreamTransport;

/// Unix datagram sockets: Python's `UnixDatagramServer` socket.
#[derive(Debug, Clone, Copy, Default)]
pub struct UnixDatagramTransport;

/// A Unix socket path, displayed as `PATH`. A path that starts with a NUL
/// byte is a Linux abstract name (no file), displayed as `@NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixPath(pub PathBuf);

impl UnixPath {
    /// The filesystem path.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The name after the leading NUL byte, for an abstract socket.
    fn abstract_name(&self) -> Option<&[u8]> {
        use std::os::unix::ffi::OsStrExt;
        self.0.as_os_str().as_bytes().strip_prefix(b"\0")
    }
}

impl AsRef<Path> for UnixPath {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl fmt::Display for UnixPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.abstract_name() {
            Some(name) => write!(f, "@{}", String::from_utf8_lossy(name)),
            None => write!(f, "{}", self.0.display()),
        }
    }
}

fn open(ty: Type, kind: SocketKind) -> io::Result<ServerSocket> {
    let socket = Socket::new(Domain::UNIX, ty, None)?;
    socket.set_nonblocking(true)?;
    Ok(ServerSocket::from_socket2(socket, kind))
}

fn adopted_path(socket: &ServerSocket) -> io::Result<UnixPath> {
    use std::os::unix::ffi::OsStrExt;
    let addr = socket.sock_ref().local_addr()?;
    let abstract_name = || {
        let name = addr.as_abstract_namespace()?;
        let path = [b"\0", name].concat();
        Some(UnixPath(PathBuf::from(std::ffi::OsStr::from_bytes(&path))))
    };
    addr.as_pathname()
        .map(|p| UnixPath(p.to_path_buf()))
        .or_else(abstract_name)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "inherited Unix socket has no path",
            )
        })
}

/// [`Transport::clear_stale`] for a Unix socket of type `ty`: removes the
/// file at `address` if it is a socket nothing is bound to.
fn clear_stale(address: &UnixPath, ty: Type) -> io::Result<bool> {
    use std::os::unix::fs::FileTypeExt;
    let meta = match std::fs::symlink_metadata(&address.0) {
        Ok(m) => m,
        // Gone meanwhile: binding again may succeed.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
        Err(_) => return Ok(false),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "the path exists and is not a socket; not removing it",
        ));
    }
    // Non-blocking: a live stream server whose backlog is full answers
    // EAGAIN instead of making this wait.
    let probe = Socket::new(Domain::UNIX, ty, None)?;
    probe.set_nonblocking(true)?;
    match probe.connect(&SockAddr::unix(&address.0)?) {
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
            std::fs::remove_file(&address.0)?;
            tracing::info!(
                path = %address,
                "removed a stale socket file left by a server that did not close"
            );
            Ok(true)
        }
        // Connected (or EAGAIN, EPROTOTYPE: a live server of either
        // type): it is in use.
        _ => Ok(false),
    }
}

/// The socket files this process bound, by path: `(device, inode)` as
/// found right after `bind`, so closing removes the file only if it is
/// still the one the server made.
static BOUND_FILES: Mutex<Vec<(PathBuf, u64, u64)>> = Mutex::new(Vec::new());

fn bound_files() -> std::sync::MutexGuard<'static, Vec<(PathBuf, u64, u64)>> {
    BOUND_FILES.lock().unwrap_or_else(|p| p.into_inner())
}

/// [`Transport::bound_address`] for both Unix transports: records which
/// file `bind` made.
fn record_bound(requested: &UnixPath) -> io::Result<UnixPath> {
    use std::os::unix::fs::MetadataExt;
    if requested.abstract_name().is_none() {
        if let Ok(m) = std::fs::symlink_metadata(&requested.0) {
            let mut files = bound_files();
            files.retain(|(p, _, _)| *p != requested.0);
            files.push((requested.0.clone(), m.dev(), m.ino()));
        }
    }
    Ok(requested.clone())
}

fn cleanup(address: &UnixPath) {
    use std::os::unix::fs::MetadataExt;
    // An abstract name has no file; it goes with the socket.
    if address.abstract_name().is_some() {
        return;
    }
    let made = {
        let mut files = bound_files();
        let i = files.iter().position(|(p, _, _)| *p == address.0);
        i.map(|i| files.swap_remove(i))
    };
    if let (Some((_, dev, ino)), Ok(m)) = (made, std::fs::symlink_metadata(&address.0)) {
        if (m.dev(), m.ino()) != (dev, ino) {
            // Removed and bound again by someone else (another server
            // started on the path while this one ran): theirs now.
            tracing::debug!(path = %address, "the socket file was replaced; leaving it");
            return;
        }
    }
    if let Err(e) = std::fs::remove_file(&address.0) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(path = %address, error = %e, "could not remove the socket file");
        }
    }
}

impl Transport for UnixStreamTransport {
    type Address = UnixPath;
    const SCHEME: &'static str = "unix";

    fn adopt(fd: OwnedFd) -> io::Result<(ServerSocket, UnixPath)> {
        let socket = check_adopted(fd, Type::STREAM, SocketKind::UnixStream)?;
        let path = adopted_path(&socket)?;
        Ok((socket, path))
    }

    fn socket(_: &UnixPath) -> io::Result<ServerSocket> {
        open(Type::STREAM, SocketKind::UnixStream)
    }

    fn sock_addr(address: &UnixPath) -> io::Result<SockAddr> {
        SockAddr::unix(&address.0)
    }

    fn bound_address(_: &ServerSocket, requested: &UnixPath) -> io::Result<UnixPath> {
        record_bound(requested)
    }

    fn cleanup(address: &UnixPath) {
        cleanup(address)
    }
    fn clear_stale(address: &UnixPath) -> io::Result<bool> {
        clear_stale(address, Type::STREAM)
    }
}

impl Transport for UnixDatagramTransport {
    type Address = UnixPath;
    const SCHEME: &'static str = "unixgram";

    fn adopt(fd: OwnedFd) -> io::Result<(ServerSocket, UnixPath)> {
        let socket = check_adopted(fd, Type::DGRAM, SocketKind::UnixDatagram)?;
        let path = adopted_path(&socket)?;
        Ok((socket, path))
    }

    fn socket(_: &UnixPath) -> io::Result<ServerSocket> {
        open(Type::DGRAM, SocketKind::UnixDatagram)
    }

    fn sock_addr(address: &UnixPath) -> io::Result<SockAddr> {
        SockAddr::unix(&address.0)
    }

    fn bound_address(_: &ServerSocket, requested: &UnixPath) -> io::Result<UnixPath> {
        record_bound(requested)
    }

    fn cleanup(address: &UnixPath) {
        cleanup(address)
    }
    fn clear_stale(address: &UnixPath) -> io::Result<bool> {
        clear_stale(address, Type::DGRAM)
    }
}

impl<P: AsRef<Path>> BindAddress<UnixStreamTransport> for P {
    fn into_address(self) -> io::Result<UnixPath> {
        Ok(UnixPath(self.as_ref().to_path_buf()))
    }
}

impl<P: AsRef<Path>> BindAddress<UnixDatagramTransport> for P {
    fn into_address(self) -> io::Result<UnixPath> {
        Ok(UnixPath(self.as_ref().to_path_buf()))
    }
}
