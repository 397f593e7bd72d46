//! The FTP example's command-line parser (`examples/ftp/command.rs`,
//! included as it is, not copied).
//!
//! Properties, for any line:
//! - a parsed command has a verb text of 1 to 8 ASCII letters in upper
//!   case, and its typed `Verb` is the command table's row for that text
//!   (or `Unknown`);
//! - writing it back (`VERB arg\r\n`) parses to the same command, with
//!   any mix of verb case and CRLF or bare LF;
//! - the line ending is optional: a line without one (and not ending in
//!   CR) parses as the same line with `\r\n` appended;
//! - an empty line holds no letters or digits;
//! - `loggable()` never shows `PASS`'s argument, and holds no control
//!   character (the argument is escaped).
#![no_main]

#[path = "../../examples/ftp/command.rs"]
#[allow(dead_code)]
mod command;

use command::{Command, ParseError, Verb};
use libfuzzer_sys::fuzz_target;
use socketserver_fuzz::Counting;

fn write(c: &Command, lower: bool, ending: &[u8]) -> Vec<u8> {
    let mut line = if lower {
        c.name.to_ascii_lowercase().into_bytes()
    } else {
        c.name.clone().into_bytes()
    };
    if !c.arg.is_empty() {
        line.push(b' ');
        line.extend_from_slice(c.arg.as_bytes());
    }
    line.extend_from_slice(ending);
    line
}

/// Counts allocations and refuses any over 256 MiB.
#[global_allocator]
static ALLOC: Counting = Counting;

fuzz_target!(|data: &[u8]| {
    let parsed = Command::parse(data);
    if !data.ends_with(b"\n") && !data.ends_with(b"\r") {
        let mut crlf = data.to_vec();
        crlf.extend_from_slice(b"\r\n");
        assert_eq!(Command::parse(&crlf), parsed, "the line ending is optional");
    }
    match parsed {
        Ok(c) => {
            assert!((1..=8).contains(&c.name.len()), "{c:?}");
            assert!(c.name.bytes().all(|b| b.is_ascii_uppercase()), "{c:?}");
            // The typed verb is the table's row for that name, or Unknown.
            let row = Verb::lookup(&c.name).map_or(Verb::Unknown, |s| s.verb);
            assert_eq!(c.verb, row, "{c:?}");
            for (lower, ending) in [(false, &b"\r\n"[..]), (true, b"\n"), (false, b"")] {
                // An argument that itself ends in CR is only kept when a
                // line ending follows it.
                if ending.is_empty() && (c.arg.ends_with('\r') || c.arg.ends_with('\n')) {
                    continue;
                }
                if ending == b"\n" && c.arg.ends_with('\r') {
                    continue;
                }
                let line = write(&c, lower, ending);
                assert_eq!(Command::parse(&line).as_ref(), Ok(&c), "{line:?}");
            }
            let log = c.loggable();
            if c.verb == Verb::Pass {
                assert_eq!(log, "PASS ****");
            } else {
                // The argument appears escaped: no control character of
                // the peer's reaches a log line.
                let shown = command::LogSafe(&c.arg).to_string();
                assert!(log.starts_with(&c.name) && log.ends_with(&shown), "{log:?}");
                assert!(!log.chars().any(char::is_control), "{log:?}");
            }
        }
        Err(ParseError::Empty) => {
            assert!(
                !data.iter().any(u8::is_ascii_alphanumeric),
                "{data:?} is not empty"
            );
        }
        Err(_) => {}
    }
});
