//! Parsing one control-connection line into a [`Command`], and the
//! command table ([`TABLE`]) the session, `HELP` and `FEAT` read.
//!
//! A line is `VERB[ SP argument]` ended by CRLF or a bare LF (RFC 959 asks
//! for CRLF; RFC 1123 tells servers to be lenient). Verbs are
//! case-insensitive. The argument keeps its spaces (file names may contain
//! them) but loses the line ending.

use std::fmt;

/// Every command the server knows, parsed once from the verb text. The
/// `X...` forms of RFC 775 parse to the same verb as their RFC 959 names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verb {
    /// `ABOR`
    Abor,
    /// `ACCT`
    Acct,
    /// `APPE`
    Appe,
    /// `AUTH` (`AUTH TLS`, RFC 4217; 504 without a certificate)
    Auth,
    /// `CCC` (not offered: 502)
    Ccc,
    /// `CDUP`, `XCUP`
    Cdup,
    /// `CWD`, `XCWD`
    Cwd,
    /// `DELE`
    Dele,
    /// `EPRT`
    Eprt,
    /// `EPSV`
    Epsv,
    /// `FEAT`
    Feat,
    /// `HELP`
    Help,
    /// `LIST`
    List,
    /// `MDTM`
    Mdtm,
    /// `MFMT` (draft-somers-ftp-mfxx)
    Mfmt,
    /// `MKD`, `XMKD`
    Mkd,
    /// `MLSD`
    Mlsd,
    /// `MLST`
    Mlst,
    /// `MODE`
    Mode,
    /// `NLST`
    Nlst,
    /// `NOOP`
    Noop,
    /// `OPTS`
    Opts,
    /// `PASS`
    Pass,
    /// `PASV`
    Pasv,
    /// `PBSZ`
    Pbsz,
    /// `PORT`
    Port,
    /// `PROT`
    Prot,
    /// `PWD`, `XPWD`
    Pwd,
    /// `QUIT`
    Quit,
    /// `REST`
    Rest,
    /// `RETR`
    Retr,
    /// `RMD`, `XRMD`
    Rmd,
    /// `RNFR`
    Rnfr,
    /// `RNTO`
    Rnto,
    /// `SIZE`
    Size,
    /// `STAT`
    Stat,
    /// `STOR`
    Stor,
    /// `STRU`
    Stru,
    /// `SYST`
    Syst,
    /// `TYPE`
    Type,
    /// `USER`
    User,
    /// A well-formed verb the server does not know (`502`).
    Unknown,
}

/// One row of the command table.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// The verb as the client spells it (upper case).
    pub name: &'static str,
    /// What it parses to.
    pub verb: Verb,
    /// Whether it needs a logged-in session (`530` before login).
    pub login: bool,
    /// Its line in the `FEAT` reply, if it is an extension to announce.
    pub feat: Option<&'static str>,
    /// Announced in `FEAT` only when TLS is configured (`--tls-cert`).
    pub tls: bool,
}

const fn spec(name: &'static str, verb: Verb, login: bool, feat: Option<&'static str>) -> Spec {
    Spec {
        name,
        verb,
        login,
        feat,
        tls: false,
    }
}

/// A row for an RFC 4217 command: in `FEAT` only when TLS is configured.
const fn tls_spec(name: &'static str, verb: Verb, feat: &'static str) -> Spec {
    Spec {
        name,
        verb,
        login: false,
        feat: Some(feat),
        tls: true,
    }
}

/// The command table: the parser, the login check, `HELP` and `FEAT` all
/// read it, so a command is added in one place.
pub const TABLE: &[Spec] = &[
    spec("ABOR", Verb::Abor, true, None),
    spec("ACCT", Verb::Acct, false, None),
    spec("APPE", Verb::Appe, true, None),
    tls_spec("AUTH", Verb::Auth, "AUTH TLS"),
    spec("CCC", Verb::Ccc, false, None),
    spec("CDUP", Verb::Cdup, true, None),
    spec("CWD", Verb::Cwd, true, None),
    spec("DELE", Verb::Dele, true, None),
    spec("EPRT", Verb::Eprt, true, Some("EPRT")),
    spec("EPSV", Verb::Epsv, true, Some("EPSV")),
    spec("FEAT", Verb::Feat, false, None),
    spec("HELP", Verb::Help, false, None),
    spec("LIST", Verb::List, true, None),
    spec("MDTM", Verb::Mdtm, true, Some("MDTM")),
    spec("MFMT", Verb::Mfmt, true, Some("MFMT")),
    spec("MKD", Verb::Mkd, true, None),
    spec("MLSD", Verb::Mlsd, true, None),
    spec(
        "MLST",
        Verb::Mlst,
        true,
        Some("MLST type*;size*;modify*;perm*;unix.mode*;"),
    ),
    spec("MODE", Verb::Mode, true, None),
    spec("NLST", Verb::Nlst, true, None),
    spec("NOOP", Verb::Noop, false, None),
    spec("OPTS", Verb::Opts, false, None),
    spec("PASS", Verb::Pass, false, None),
    spec("PASV", Verb::Pasv, true, Some("PASV")),
    tls_spec("PBSZ", Verb::Pbsz, "PBSZ"),
    spec("PORT", Verb::Port, true, None),
    tls_spec("PROT", Verb::Prot, "PROT"),
    spec("PWD", Verb::Pwd, true, None),
    spec("QUIT", Verb::Quit, false, None),
    spec("REST", Verb::Rest, true, Some("REST STREAM")),
    spec("RETR", Verb::Retr, true, None),
    spec("RMD", Verb::Rmd, true, None),
    spec("RNFR", Verb::Rnfr, true, None),
    spec("RNTO", Verb::Rnto, true, None),
    spec("SIZE", Verb::Size, true, Some("SIZE")),
    spec("STAT", Verb::Stat, true, None),
    spec("STOR", Verb::Stor, true, None),
    spec("STRU", Verb::Stru, true, None),
    spec("SYST", Verb::Syst, false, None),
    spec("TYPE", Verb::Type, true, None),
    spec("USER", Verb::User, false, None),
    spec("XCUP", Verb::Cdup, true, None),
    spec("XCWD", Verb::Cwd, true, None),
    spec("XMKD", Verb::Mkd, true, None),
    spec("XPWD", Verb::Pwd, true, None),
    spec("XRMD", Verb::Rmd, true, None),
];

/// `FEAT` lines that are properties of the server rather than commands.
const PROPERTIES: &[&str] = &["TVFS", "UTF8"];

impl Verb {
    /// The table row for an upper-case verb text, if known.
    pub fn lookup(name: &str) -> Option<&'static Spec> {
        TABLE.iter().find(|s| s.name == name)
    }

    /// Whether this verb needs a logged-in session. Unknown verbs do too
    /// (a client that has not logged in learns nothing from a `502`).
    pub fn needs_login(self) -> bool {
        TABLE
            .iter()
            .find(|s| s.verb == self)
            .is_none_or(|s| s.login)
    }
}

/// The text of the `211` reply to `FEAT`, from the table; the RFC 4217
/// lines only when `tls` (a certificate is configured).
pub fn feat_text(tls: bool) -> String {
    let mut lines: Vec<&str> = TABLE
        .iter()
        .filter(|s| tls || !s.tls)
        .filter_map(|s| s.feat)
        .collect();
    lines.extend_from_slice(PROPERTIES);
    lines.sort_unstable();
    lines.dedup();
    format!("Features:\n{}\nEnd", lines.join("\n"))
}

/// The text of the `214` reply to `HELP`, from the table (16 verbs a line).
pub fn help_text() -> String {
    let mut names: Vec<&str> = TABLE.iter().map(|s| s.name).collect();
    names.sort_unstable();
    let rows: Vec<String> = names.chunks(16).map(|c| c.join(" ")).collect();
    format!(
        "The following commands are recognized:\n{}\nHelp OK.",
        rows.join("\n")
    )
}

/// One parsed command: its verb, the verb text as sent (upper-cased) and
/// the raw argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// What the verb text parsed to ([`Verb::Unknown`] if not in the table).
    pub verb: Verb,
    /// The verb text in upper case, for example `RETR` or `XPWD`.
    pub name: String,
    /// Everything after the first space, without the line ending; empty
    /// when there is no argument.
    pub arg: String,
}

/// Why a line is not a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// The line was empty (only a line ending).
    Empty,
    /// The verb held something other than ASCII letters, or was too long.
    BadVerb,
    /// The line was not valid UTF-8.
    NotUtf8,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ParseError::Empty => "empty command line",
            ParseError::BadVerb => "syntax error, command unrecognized",
            ParseError::NotUtf8 => "command line is not valid UTF-8",
        })
    }
}

/// Longest verb we accept; real ones have 3 or 4 letters.
const MAX_VERB: usize = 8;

impl Command {
    /// Parses one line (with or without its line ending).
    ///
    /// # Errors
    /// [`ParseError`] for an empty line, a verb that is not letters, or
    /// bytes that are not UTF-8.
    pub fn parse(line: &[u8]) -> Result<Command, ParseError> {
        // Telnet "interrupt process" / "data mark" (IAC IP IAC DM) that
        // clients send in front of ABOR are skipped.
        let start = line
            .iter()
            .position(|b| !matches!(b, 0xff | 0xf4 | 0xf2))
            .unwrap_or(line.len());
        let line = std::str::from_utf8(&line[start..]).map_err(|_| ParseError::NotUtf8)?;
        let line = line.strip_suffix('\n').unwrap_or(line);
        let line = line.strip_suffix('\r').unwrap_or(line);
        let (verb, arg) = match line.find(' ') {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => (line, ""),
        };
        if verb.is_empty() {
            return Err(if line.trim().is_empty() {
                ParseError::Empty
            } else {
                ParseError::BadVerb
            });
        }
        if verb.len() > MAX_VERB || !verb.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(ParseError::BadVerb);
        }
        let name = verb.to_ascii_uppercase();
        Ok(Command {
            verb: Verb::lookup(&name).map_or(Verb::Unknown, |s| s.verb),
            name,
            arg: arg.to_string(),
        })
    }

    /// The command as it may appear in a log: the argument of `PASS` is
    /// never shown, and control characters in the argument are escaped
    /// ([`LogSafe`]).
    pub fn loggable(&self) -> String {
        if self.verb == Verb::Pass {
            "PASS ****".to_string()
        } else if self.arg.is_empty() {
            self.name.clone()
        } else {
            format!("{} {}", self.name, LogSafe(&self.arg))
        }
    }
}

/// A peer-supplied string (user name, path, command argument) as it may
/// appear in a log line: control characters (CR, LF, ESC, ...), other
/// invisible characters (bidi overrides, line separators) and `\` are
/// written as Rust escapes (`\r`, `\u{1b}`, `\\`), so a client cannot
/// forge log lines or send terminal escape sequences to whoever reads the
/// log. Printable text, quotes included, is written as it is.
#[derive(Debug, Clone, Copy)]
pub struct LogSafe<'a>(pub &'a str);

impl std::fmt::Display for LogSafe<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write;
        for c in self.0.chars() {
            match c {
                '"' | '\'' => f.write_char(c)?,
                _ => write!(f, "{}", c.escape_debug())?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_are_case_insensitive_and_crlf_or_lf_accepted() {
        let c = Command::parse(b"retr some file.txt\r\n").unwrap();
        assert_eq!(c.verb, Verb::Retr);
        assert_eq!(c.name, "RETR");
        assert_eq!(c.arg, "some file.txt");
        let c = Command::parse(b"NoOp\n").unwrap();
        assert_eq!(c.verb, Verb::Noop);
        assert_eq!(c.arg, "");
        let c = Command::parse(b"PWD").unwrap();
        assert_eq!(c.verb, Verb::Pwd);
        let c = Command::parse(b"xpwd").unwrap();
        assert_eq!((c.verb, c.name.as_str()), (Verb::Pwd, "XPWD"));
        let c = Command::parse(b"SITE CHMOD 777 x").unwrap();
        assert_eq!((c.verb, c.name.as_str()), (Verb::Unknown, "SITE"));
        assert!(c.verb.needs_login());
    }

    #[test]
    fn argument_keeps_inner_and_trailing_spaces() {
        let c = Command::parse(b"STOR  two  spaces \r\n").unwrap();
        assert_eq!(c.arg, " two  spaces ");
    }

    #[test]
    fn bad_lines_are_errors() {
        assert_eq!(Command::parse(b"\r\n"), Err(ParseError::Empty));
        assert_eq!(Command::parse(b" RETR x\r\n"), Err(ParseError::BadVerb));
        assert_eq!(Command::parse(b"RE1R x\r\n"), Err(ParseError::BadVerb));
        assert_eq!(Command::parse(b"ABCDEFGHIJ\r\n"), Err(ParseError::BadVerb));
        assert_eq!(Command::parse(b"RETR \xff\r\n"), Err(ParseError::NotUtf8));
        assert_eq!(
            Command::parse(b"\xff\xf4\xff\xf2ABOR\r\n").unwrap().verb,
            Verb::Abor
        );
    }

    #[test]
    fn table_drives_login_help_and_feat() {
        // Every verb except Unknown has a row, and names are unique.
        let mut names: Vec<&str> = TABLE.iter().map(|s| s.name).collect();
        names.sort_unstable();
        let n = names.len();
        names.dedup();
        assert_eq!(names.len(), n, "duplicate names in TABLE");
        for s in TABLE {
            assert_eq!(Verb::lookup(s.name).unwrap().verb, s.verb);
            assert!(help_text().contains(s.name));
        }
        assert!(!Verb::User.needs_login() && !Verb::Quit.needs_login());
        assert!(Verb::Retr.needs_login() && Verb::Mfmt.needs_login());
        let feat = feat_text(false);
        assert!(feat.starts_with("Features:\n") && feat.ends_with("\nEnd"));
        for f in [
            "MFMT",
            "MDTM",
            "SIZE",
            "REST STREAM",
            "UTF8",
            "TVFS",
            "EPSV",
        ] {
            assert!(feat.lines().any(|l| l == f), "{f} missing from FEAT");
        }
        // No TLS configured: not announced.
        assert!(!feat.contains("AUTH") && !feat.contains("PROT") && !feat.contains("PBSZ"));
        let feat = feat_text(true);
        for f in ["AUTH TLS", "PBSZ", "PROT", "MFMT", "UTF8"] {
            assert!(
                feat.lines().any(|l| l == f),
                "{f} missing from FEAT with TLS"
            );
        }
        assert!(
            !Verb::Auth.needs_login() && !Verb::Pbsz.needs_login() && !Verb::Prot.needs_login()
        );
    }

    #[test]
    fn tls_commands_parse_through_the_same_path() {
        let c = Command::parse(b"auth tls\r\n").unwrap();
        assert_eq!((c.verb, c.arg.as_str()), (Verb::Auth, "tls"));
        let c = Command::parse(b"PBSZ 0\r\n").unwrap();
        assert_eq!((c.verb, c.arg.as_str()), (Verb::Pbsz, "0"));
        let c = Command::parse(b"PROT P\n").unwrap();
        assert_eq!((c.verb, c.arg.as_str()), (Verb::Prot, "P"));
    }

    #[test]
    fn password_is_masked_in_logs() {
        let c = Command::parse(b"pass hunter2\r\n").unwrap();
        assert_eq!(c.loggable(), "PASS ****");
        assert!(!c.loggable().contains("hunter2"));
        let c = Command::parse(b"USER bob\r\n").unwrap();
        assert_eq!(c.loggable(), "USER bob");
        let c = Command::parse(b"RETR a\rb\x1b[2J\x07\r\n").unwrap();
        assert_eq!(c.loggable(), "RETR a\\rb\\u{1b}[2J\\u{7}");
    }

    #[test]
    fn log_safe_escapes_what_could_forge_or_color_a_line() {
        let shown = |s: &str| LogSafe(s).to_string();
        assert_eq!(shown("plain name.txt"), "plain name.txt");
        assert_eq!(shown("caf\u{e9} \"q\" 'x'"), "caf\u{e9} \"q\" 'x'");
        assert_eq!(shown("a\rb\nc\td"), "a\\rb\\nc\\td");
        assert_eq!(shown("\x1b[31mred\x7f"), "\\u{1b}[31mred\\u{7f}");
        // A backslash is escaped, so `\r` in a log always means a CR.
        assert_eq!(shown("a\\rb"), "a\\\\rb");
        // Invisible reordering and line-breaking characters.
        assert_eq!(shown("x\u{202e}y\u{2028}z"), "x\\u{202e}y\\u{2028}z");
        assert!(shown("\u{0}\u{1f}\u{85}").chars().all(|c| !c.is_control()));
    }
}
