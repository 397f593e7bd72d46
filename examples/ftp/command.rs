//! Parsing one control-connection line into a [`Command`].
//!
//! A line is `VERB[ SP argument]` ended by CRLF or a bare LF (RFC 959 asks
//! for CRLF; RFC 1123 tells servers to be lenient). Verbs are
//! case-insensitive. The argument keeps its spaces (file names may contain
//! them) but loses the line ending.

use std::fmt;

/// One parsed command: an upper-cased verb and its raw argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The verb in upper case, for example `RETR`.
    pub verb: String,
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
        Ok(Command {
            verb: verb.to_ascii_uppercase(),
            arg: arg.to_string(),
        })
    }

    /// The command as it may appear in a log: the argument of `PASS` is
    /// never shown.
    pub fn loggable(&self) -> String {
        if self.verb == "PASS" {
            "PASS ****".to_string()
        } else if self.arg.is_empty() {
            self.verb.clone()
        } else {
            format!("{} {}", self.verb, self.arg)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_are_case_insensitive_and_crlf_or_lf_accepted() {
        let c = Command::parse(b"retr some file.txt\r\n").unwrap();
        assert_eq!(c.verb, "RETR");
        assert_eq!(c.arg, "some file.txt");
        let c = Command::parse(b"NoOp\n").unwrap();
        assert_eq!(c.verb, "NOOP");
        assert_eq!(c.arg, "");
        let c = Command::parse(b"PWD").unwrap();
        assert_eq!(c.verb, "PWD");
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
            "ABOR"
        );
    }

    #[test]
    fn password_is_masked_in_logs() {
        let c = Command::parse(b"pass hunter2\r\n").unwrap();
        assert_eq!(c.loggable(), "PASS ****");
        assert!(!c.loggable().contains("hunter2"));
        let c = Command::parse(b"USER bob\r\n").unwrap();
        assert_eq!(c.loggable(), "USER bob");
    }
}
