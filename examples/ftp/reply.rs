//! Formatting FTP replies (RFC 959 section 4.2).
//!
//! A reply is a three-digit code and text. Text with several lines becomes a
//! multi-line reply: `CODE-first`, the middle lines indented by one space (so
//! none can be mistaken for the last line), and `CODE last`.

use std::io::{self, Write};

/// Formats a reply, single- or multi-line, ending in CRLF.
pub fn format(code: u16, text: &str) -> String {
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
pub fn send(w: &mut impl Write, code: u16, text: &str) -> io::Result<()> {
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
        assert_eq!(format(200, "OK"), "200 OK\r\n");
    }

    #[test]
    fn multi_line_indents_middle_lines() {
        let s = format(211, "Features:\nMDTM\nSIZE\nEnd");
        assert_eq!(s, "211-Features:\r\n MDTM\r\n SIZE\r\n211 End\r\n");
    }

    #[test]
    fn carriage_returns_cannot_inject_replies() {
        let s = format(550, "x\r200 fake");
        assert_eq!(s, "550 x200 fake\r\n");
    }

    #[test]
    fn quoted_path_doubles_quotes() {
        assert_eq!(quote_path("/a\"b"), "\"/a\"\"b\"");
    }
}
