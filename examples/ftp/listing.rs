//! Directory listing formats: `LIST` (the `ls -l` form every client
//! parses), `MLSD`/`MLST` facts (RFC 3659) and `MDTM` timestamps.
//!
//! Times are UTC. Owner and group are shown as `ftp ftp`: clients ignore
//! them and local account names are nobody's business.

use std::fs::Metadata;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{SystemTime, UNIX_EPOCH};

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// A broken-down UTC time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Utc {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
}

impl Utc {
    /// Converts seconds since the Unix epoch (Howard Hinnant's
    /// `civil_from_days`).
    pub fn from_unix(secs: i64) -> Utc {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        Utc {
            year,
            month,
            day,
            hour: (rem / 3600) as u32,
            minute: (rem % 3600 / 60) as u32,
            second: (rem % 60) as u32,
        }
    }

    /// Parses `YYYYMMDDHHMMSS` (an optional `.sss` fraction is ignored),
    /// the time argument of `MFMT`; `None` for anything else or an
    /// impossible date.
    pub fn parse_timeval(s: &str) -> Option<Utc> {
        let whole = s.split_once('.').map_or(s, |(w, frac)| {
            if frac.bytes().all(|b| b.is_ascii_digit()) {
                w
            } else {
                ""
            }
        });
        if whole.len() != 14 || !whole.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let n = |r: std::ops::Range<usize>| whole[r].parse::<u32>().ok();
        let t = Utc {
            year: i64::from(n(0..4)?),
            month: n(4..6)?,
            day: n(6..8)?,
            hour: n(8..10)?,
            minute: n(10..12)?,
            second: n(12..14)?,
        };
        let valid = (1..=12).contains(&t.month)
            && t.day >= 1
            && t.hour < 24
            && t.minute < 60
            && t.second < 60
            && Utc::from_unix(t.to_unix()) == t;
        valid.then_some(t)
    }

    /// Seconds since the Unix epoch (Howard Hinnant's `days_from_civil`).
    pub fn to_unix(self) -> i64 {
        let y = self.year - i64::from(self.month <= 2);
        let era = y.div_euclid(400);
        let yoe = y.rem_euclid(400);
        let m = i64::from(self.month);
        let mp = if m > 2 { m - 3 } else { m + 9 };
        let doy = (153 * mp + 2) / 5 + i64::from(self.day) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        days * 86_400
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second)
    }

    /// `YYYYMMDDHHMMSS`, the form of `MDTM` and the MLSx `modify` fact.
    pub fn timeval(&self) -> String {
        format!(
            "{:04}{:02}{:02}{:02}{:02}{:02}",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

/// Seconds since the epoch of a file's modification time.
pub fn mtime(meta: &Metadata) -> i64 {
    meta.mtime()
}

/// Seconds since the epoch now.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The `rwxr-xr-x` permission string with its type letter.
fn mode_string(meta: &Metadata) -> String {
    let mode = meta.permissions().mode();
    let kind = if meta.is_dir() { 'd' } else { '-' };
    let mut s = String::with_capacity(10);
    s.push(kind);
    for shift in [6u32, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

/// One `LIST` line in `ls -l` form, without the line ending. Files older
/// than six months (or in the future) show the year instead of the time,
/// as `ls` does.
pub fn ls_line(name: &str, meta: &Metadata, now: i64) -> String {
    let t = mtime(meta);
    let u = Utc::from_unix(t);
    let month = MONTHS[(u.month - 1) as usize];
    let half_year = 182 * 86_400;
    let when = if t > now + 3600 || now - t > half_year {
        format!("{month} {:2}  {}", u.day, u.year)
    } else {
        format!("{month} {:2} {:02}:{:02}", u.day, u.hour, u.minute)
    };
    format!(
        "{} {:>3} ftp      ftp      {:>12} {} {}",
        mode_string(meta),
        meta.nlink(),
        meta.len(),
        when,
        name
    )
}

/// The RFC 3659 facts of one entry followed by a space and the name, as
/// `MLSD` lines and the `MLST` reply carry them. `kind` overrides the type
/// fact (`cdir`/`pdir` for `.`/`..`); `writable` decides the `perm` fact.
pub fn mlsx_line(name: &str, meta: &Metadata, kind: Option<&str>, writable: bool) -> String {
    let is_dir = meta.is_dir();
    let kind = kind.unwrap_or(if is_dir { "dir" } else { "file" });
    let perm = match (is_dir, writable) {
        (true, true) => "elcmpdf",
        (true, false) => "el",
        (false, true) => "rwadf",
        (false, false) => "r",
    };
    let mut s = format!("type={kind};");
    if !is_dir {
        s.push_str(&format!("size={};", meta.len()));
    }
    s.push_str(&format!(
        "modify={};perm={perm};unix.mode=0{:o}; {name}",
        Utc::from_unix(mtime(meta)).timeval(),
        meta.permissions().mode() & 0o7777
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn mfmt_times_parse_and_round_trip() {
        for secs in [0i64, 951_782_400, 1_700_000_000, 4_102_444_799] {
            let t = Utc::from_unix(secs);
            assert_eq!(t.to_unix(), secs);
            assert_eq!(Utc::parse_timeval(&t.timeval()), Some(t));
        }
        assert_eq!(
            Utc::parse_timeval("20240229123456.789").map(|t| t.to_unix()),
            Some(1_709_210_096)
        );
        for bad in [
            "",
            "2024",
            "20240230000000",
            "20241301000000",
            "20240101250000",
            "2024010100000x",
            "20240101000000.x",
        ] {
            assert_eq!(Utc::parse_timeval(bad), None, "{bad}");
        }
    }

    #[test]
    fn utc_conversion() {
        let u = Utc::from_unix(0);
        assert_eq!(u.timeval(), "19700101000000");
        // 2024-02-29 12:34:56 UTC (a leap day).
        let u = Utc::from_unix(1_709_210_096);
        assert_eq!(u.timeval(), "20240229123456");
        let u = Utc::from_unix(-1);
        assert_eq!(u.timeval(), "19691231235959");
    }

    #[test]
    fn ls_line_has_the_shape_clients_parse() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a file.txt");
        fs::write(&f, b"hello").unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
        let meta = fs::metadata(&f).unwrap();
        let line = ls_line("a file.txt", &meta, now());
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields[0], "-rw-r--r--");
        assert_eq!(fields[4], "5");
        assert!(MONTHS.contains(&fields[5]));
        assert!(fields[7].contains(':'), "recent file shows a time: {line}");
        assert!(line.ends_with(" a file.txt"));
        // An old file shows the year.
        let old = ls_line("x", &meta, now() + 400 * 86_400);
        let year = Utc::from_unix(mtime(&meta)).year.to_string();
        assert!(
            old.split_whitespace().nth(7) == Some(year.as_str()),
            "{old}"
        );
        let d = ls_line("d", &fs::metadata(dir.path()).unwrap(), now());
        assert!(d.starts_with('d'));
    }

    #[test]
    fn mlsx_facts() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        fs::write(&f, b"abc").unwrap();
        let line = mlsx_line("f", &fs::metadata(&f).unwrap(), None, false);
        assert!(line.starts_with("type=file;size=3;modify="), "{line}");
        assert!(line.contains(";perm=r;"));
        assert!(line.ends_with("; f"));
        let line = mlsx_line(".", &fs::metadata(dir.path()).unwrap(), Some("cdir"), true);
        assert!(line.starts_with("type=cdir;modify="), "{line}");
        assert!(line.contains("perm=elcmpdf"));
    }
}
