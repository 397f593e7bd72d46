//! Formatting FTP replies (RFC 959 section 4.2).
//!
//! A reply is a three-digit code and text. Text with several lines becomes a
//! multi-line reply: `CODE-first`, the middle lines indented by one space (so
//! none can be mistaken for the last line), and `CODE last`.

use std::io::{self, Write};

/// The reply codes this server sends (RFC 959 section 4.2.2, RFC 2428,
/// RFC 3659, RFC 4217), named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Code {
    /// `150`: File status okay; about to open data connection.
    OpeningData = 150,
    /// `200`: Command okay.
    Ok = 200,
    /// `202`: Command not implemented, superfluous at this site.
    Superfluous = 202,
    /// `211`: System status, or system help reply (FEAT).
    SystemStatus = 211,
    /// `213`: File status (SIZE, MDTM, MFMT, STAT of a file).
    FileStatus = 213,
    /// `214`: Help message.
    Help = 214,
    /// `215`: NAME system type.
    SystemType = 215,
    /// `220`: Service ready for new user.
    Ready = 220,
    /// `221`: Service closing control connection.
    Closing = 221,
    /// `225`: Data connection open; no transfer in progress.
    DataOpenNoTransfer = 225,
    /// `226`: Closing data connection; requested file action successful.
    ClosingData = 226,
    /// `227`: Entering Passive Mode.
    Passive = 227,
    /// `229`: Entering Extended Passive Mode.
    ExtendedPassive = 229,
    /// `230`: User logged in, proceed.
    LoggedIn = 230,
    /// `234`: Security data exchange complete (AUTH).
    AuthOk = 234,
    /// `250`: Requested file action okay, completed.
    FileActionOk = 250,
    /// `257`: PATHNAME created (or the current directory).
    PathCreated = 257,
    /// `331`: User name okay, need password.
    NeedPassword = 331,
    /// `350`: Requested file action pending further information.
    PendingFurtherInfo = 350,
    /// `421`: Service not available, closing control connection.
    ServiceUnavailable = 421,
    /// `425`: Can't open data connection.
    CantOpenData = 425,
    /// `426`: Connection closed; transfer aborted.
    TransferAborted = 426,
    /// `450`: Requested file action not taken (file unavailable).
    FileBusy = 450,
    /// `451`: Requested action aborted: local error in processing.
    LocalError = 451,
    /// `452`: Requested action not taken: insufficient storage space.
    NoSpace = 452,
    /// `500`: Syntax error, command unrecognized.
    SyntaxError = 500,
    /// `501`: Syntax error in parameters or arguments.
    BadArguments = 501,
    /// `502`: Command not implemented.
    NotImplemented = 502,
    /// `503`: Bad sequence of commands.
    BadSequence = 503,
    /// `504`: Command not implemented for that parameter.
    BadParameter = 504,
    /// `521`: Data connection cannot be opened with this PROT setting
    /// (RFC 4217: `PROT C` under `--tls-required`).
    ProtRefused = 521,
    /// `522`: Network protocol not supported (EPRT/EPSV); also a TLS data
    /// connection that did not resume the session under
    /// `--tls-require-reuse` (vsftpd's reply).
    BadProtocol = 522,
    /// `530`: Not logged in.
    NotLoggedIn = 530,
    /// `536`: Requested PROT level not supported by mechanism (`PROT S`/`E`).
    ProtUnsupported = 536,
    /// `550`: Requested action not taken: file unavailable.
    Unavailable = 550,
    /// `551`: Requested action aborted: page type unknown.
    PageTypeUnknown = 551,
    /// `552`: Requested file action aborted: exceeded storage allocation.
    ExceededStorage = 552,
    /// `553`: Requested action not taken: file name not allowed.
    BadFileName = 553,
    /// `554`: Transaction failed (REST offset, for example).
    TransactionFailed = 554,
}

impl From<Code> for u16 {
    fn from(c: Code) -> u16 {
        c as u16
    }
}

/// Formats a reply, single- or multi-line, ending in CRLF.
pub fn format(code: impl Into<u16>, text: &str) -> String {
    let code: u16 = code.into();
    let lines: Vec<&str> = text.lines().collect();
    match lines.as_slice() {
        [] => format!("{code} \r\n"),
        [one] => format!("{code} {}\r\n", sanitize(one)),
        [first, middle @ .., last] => {
            let mut s = format!("{code}-{}\r\n", sanitize(first));
            for line in middle {
                s.push(' ');
                s.push_str(&sanitize(line));
                s.push_str("\r\n");
            }
            s.push_str(&format!("{code} {}\r\n", sanitize(last)));
            s
        }
    }
}

/// Removes carriage returns so a file name echoed in a reply cannot end the
/// line early and inject a forged reply.
fn sanitize(line: &str) -> String {
    line.replace('\r', "")
}

/// Writes a reply to the control connection.
///
/// # Errors
/// The write failed (the client went away, or the write timed out).
pub fn send(w: &mut impl Write, code: impl Into<u16>, text: &str) -> io::Result<()> {
    w.write_all(format(code, text).as_bytes())
}

/// Quotes a path for a `257` reply: wrapped in double quotes, with embedded
/// quotes doubled (RFC 959 appendix II).
pub fn quote_path(path: &str) -> String {
    format!("\"{}\"", path.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_line() {
        assert_eq!(format(Code::Ok, "OK"), "200 OK\r\n");
    }

    #[test]
    fn multi_line_indents_middle_lines() {
        let s = format(Code::SystemStatus, "Features:\nMDTM\nSIZE\nEnd");
        assert_eq!(s, "211-Features:\r\n MDTM\r\n SIZE\r\n211 End\r\n");
    }

    #[test]
    fn carriage_returns_cannot_inject_replies() {
        let s = format(Code::Unavailable, "x\r200 fake");
        assert_eq!(s, "550 x200 fake\r\n");
    }

    #[test]
    fn quoted_path_doubles_quotes() {
        assert_eq!(quote_path("/a\"b"), "\"/a\"\"b\"");
    }
}
