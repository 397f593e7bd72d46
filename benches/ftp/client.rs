//! A minimal FTP client for measuring, and the server processes it talks to.
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Child;
use std::time::{Duration, Instant};

use crate::{Result, FILE_SIZE, TIMEOUT};

/// A server process, killed and reaped on drop.
pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) addr: SocketAddr,
    pub(crate) user: (&'static str, &'static str),
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal FTP client for measuring.
pub(crate) struct Client {
    pub(crate) r: BufReader<TcpStream>,
    pub(crate) w: TcpStream,
}

impl Client {
    pub(crate) fn connect(addr: SocketAddr, limit: Duration) -> Result<Client> {
        let s = TcpStream::connect_timeout(&addr, limit).map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(limit))?;
        s.set_nodelay(true)?;
        let mut c = Client {
            r: BufReader::new(s.try_clone()?),
            w: s,
        };
        c.expect(220)?;
        Ok(c)
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
        self.w.write_all(format!("{line}\r\n").as_bytes())?;
        let (code, text) = self.reply()?;
        if !(100..200).contains(&code) {
            return Err(format!("{line}: {}", text.trim_end()).into());
        }
        Ok(())
    }

    pub(crate) fn cmd(&mut self, line: &str, want: u16) -> Result<String> {
        self.w.write_all(format!("{line}\r\n").as_bytes())?;
        self.expect(want)
    }

    pub(crate) fn login(addr: SocketAddr, user: (&str, &str)) -> Result<Client> {
        Self::login_within(addr, user, TIMEOUT)
    }

    pub(crate) fn login_within(
        addr: SocketAddr,
        user: (&str, &str),
        limit: Duration,
    ) -> Result<Client> {
        let mut c = Client::connect(addr, limit)?;
        c.w.write_all(format!("USER {}\r\n", user.0).as_bytes())?;
        // vsftpd logs anonymous users in at USER (no_anon_password).
        if c.reply()?.0 != 230 {
            c.cmd(&format!("PASS {}", user.1), 230)?;
        }
        Ok(c)
    }

    pub(crate) fn pasv(&mut self) -> Result<TcpStream> {
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
        let mut data = self.pasv()?;
        let start = Instant::now();
        self.start(&format!("RETR {name}"))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0usize;
        loop {
            let n = data.read(&mut buf)?;
            if n == 0 {
                break;
            }
            total += n;
        }
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
        let mut data = self.pasv()?;
        let start = Instant::now();
        self.start(&format!("STOR {name}"))?;
        let mut sent = 0;
        while sent < FILE_SIZE {
            let n = chunk.len().min(FILE_SIZE - sent);
            data.write_all(&chunk[..n])?;
            sent += n;
        }
        drop(data);
        self.expect(226)?;
        Ok(sent as f64 / (1 << 20) as f64 / start.elapsed().as_secs_f64())
    }
}
