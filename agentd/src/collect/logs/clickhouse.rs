//! Parsing of ClickHouse server log lines (`clickhouse-server.log`, `clickhouse-server.err.log`):
//!
//! ```text
//! 2024.01.15 10:23:45.123456 [ 12345 ] {8f3c9a1e-...} <Error> executeQuery: Code: 252. DB::Exception: ...
//! ```
//!
//! Everything here works on untrusted bytes from disk, so it never indexes blindly and never
//! panics; a line that does not fit the format is simply not parsed (`None`).

use chrono::NaiveDate;
use medic_proto::v1::LogLevel;

/// The parts of one ClickHouse log line, borrowed from the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChLine<'a> {
    pub timestamp_ms: i64,
    pub thread: &'a str,
    /// Empty when the line carries `{}` or no braces at all (older server versions).
    pub query_id: &'a str,
    pub level: LogLevel,
    /// Empty when there is no `logger: ` prefix before the message.
    pub logger: &'a str,
    pub message: &'a str,
}

/// Loggers are short identifiers like `executeQuery` or `default.t (ReplicatedMergeTreeQueue)`;
/// a longer "logger" is more likely a colon inside a logger-less message, so we don't split there.
const MAX_LOGGER_LEN: usize = 160;

pub fn parse(line: &str) -> Option<ChLine<'_>> {
    let mut c = Cursor { s: line, pos: 0 };
    let ts = c.timestamp()?;
    // The server writes local wall-clock time without an offset. We cannot know the server's zone
    // here, so a bare timestamp is taken as UTC (deployments are expected to run ClickHouse in UTC);
    // if a line does carry an offset (`Z`, `+03:00`, `+0300`) it is honoured.
    let offset_secs = c.offset().unwrap_or(0);
    c.spaces();
    c.eat("[")?;
    c.spaces();
    let thread = c.take_while(|b| b.is_ascii_digit());
    if thread.is_empty() {
        return None;
    }
    c.spaces();
    c.eat("]")?;
    c.spaces();
    let mut query_id = "";
    if c.eat("{").is_some() {
        query_id = c.take_while(|b| b != b'}');
        c.eat("}")?;
        c.spaces();
    }
    c.eat("<")?;
    let level = level_from_name(c.take_while(|b| b != b'>'))?;
    c.eat(">")?;
    c.spaces();
    let rest = c.rest();
    let (logger, message) = match rest.find(": ") {
        Some(i) if i > 0 && i <= MAX_LOGGER_LEN => (&rest[..i], &rest[i + 2..]),
        _ => ("", rest),
    };
    Some(ChLine {
        timestamp_ms: ts.saturating_sub(offset_secs.saturating_mul(1000)),
        thread,
        query_id,
        level,
        logger,
        message,
    })
}

/// Whether `line` begins a new log entry rather than continuing the previous one (a stack trace,
/// a multi-line query). Recognises the ClickHouse format and the common ISO-8601 shapes
/// (`2024-01-15 10:23:45`, `2024-01-15T10:23:45`, optionally inside `[`).
pub fn starts_with_timestamp(line: &str) -> bool {
    let b = line.as_bytes();
    let b = b.strip_prefix(b"[").unwrap_or(b);
    if b.len() < 19 {
        return false;
    }
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    let date_ok = digits(0..4)
        && digits(5..7)
        && digits(8..10)
        && ((b[4] == b'.' && b[7] == b'.') || (b[4] == b'-' && b[7] == b'-'));
    date_ok
        && (b[10] == b' ' || b[10] == b'T')
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
}

pub fn level_from_name(name: &str) -> Option<LogLevel> {
    Some(match name {
        // `Test` is ClickHouse's most verbose priority, below Trace; the wire has nothing lower.
        "Trace" | "Test" => LogLevel::Trace,
        "Debug" => LogLevel::Debug,
        "Information" => LogLevel::Info,
        "Notice" => LogLevel::Notice,
        "Warning" => LogLevel::Warning,
        "Error" => LogLevel::Error,
        "Critical" => LogLevel::Critical,
        "Fatal" => LogLevel::Fatal,
        _ => return None,
    })
}

/// The ClickHouse error code of an exception message (`Code: 252. DB::Exception: ...`), so the
/// controller can match on it without re-parsing messages.
pub fn error_code(message: &str) -> Option<&str> {
    let i = message.find("Code: ")?;
    let rest = &message[i + "Code: ".len()..];
    let end = rest.bytes().take_while(u8::is_ascii_digit).count();
    if end == 0 || end > 6 || rest.as_bytes().get(end) != Some(&b'.') {
        return None;
    }
    Some(&rest[..end])
}

/// Best-effort level of a line in some other format: an upper-case level word (`ERROR`, `[WARN]`,
/// `level=error`) near the start. Only the head is looked at, so a message that merely mentions
/// "ERROR" somewhere in its text is not misclassified as often.
pub fn guess_level(line: &str) -> LogLevel {
    const HEAD: usize = 120;
    let mut end = line.len().min(HEAD);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    let head = &line[..end];
    let lower_value = |key: &str| {
        let i = head.find(key)?;
        let v = &head[i + key.len()..];
        let v = v.trim_start_matches('"');
        let n = v.bytes().take_while(u8::is_ascii_alphabetic).count();
        Some(v[..n].to_ascii_uppercase())
    };
    if let Some(v) = lower_value("level=").and_then(|v| word_level(&v)) {
        return v;
    }
    head.split(|c: char| !c.is_ascii_alphabetic()).find_map(word_level).unwrap_or(LogLevel::Unspecified)
}

fn word_level(w: &str) -> Option<LogLevel> {
    Some(match w {
        "TRACE" => LogLevel::Trace,
        "DEBUG" => LogLevel::Debug,
        "INFO" => LogLevel::Info,
        "NOTICE" => LogLevel::Notice,
        "WARN" | "WARNING" => LogLevel::Warning,
        "ERROR" | "ERR" => LogLevel::Error,
        "CRITICAL" | "CRIT" => LogLevel::Critical,
        "FATAL" | "PANIC" => LogLevel::Fatal,
        _ => return None,
    })
}

/// A forward-only reader over the line; every method checks bounds and returns `None` instead of
/// panicking. Positions only ever advance over ASCII bytes, so slicing stays on char boundaries.
struct Cursor<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.pos).copied()
    }

    fn eat(&mut self, lit: &str) -> Option<()> {
        if self.s.get(self.pos..)?.starts_with(lit) {
            self.pos += lit.len();
            Some(())
        } else {
            None
        }
    }

    fn spaces(&mut self) {
        while self.peek() == Some(b' ') {
            self.pos += 1;
        }
    }

    fn take_while(&mut self, f: impl Fn(u8) -> bool) -> &'a str {
        let start = self.pos;
        // Only stop on ASCII bytes: a multi-byte char never satisfies the ASCII predicates used
        // with digits, and for the "until delimiter" predicates we must not stop mid-char.
        while let Some(b) = self.peek() {
            if !f(b) {
                break;
            }
            self.pos += 1;
        }
        while !self.s.is_char_boundary(self.pos) {
            self.pos += 1;
        }
        self.s.get(start..self.pos).unwrap_or("")
    }

    fn rest(&self) -> &'a str {
        self.s.get(self.pos..).unwrap_or("")
    }

    fn number(&mut self, len: usize) -> Option<u32> {
        let digits = self.s.get(self.pos..self.pos + len)?;
        if !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        self.pos += len;
        digits.parse().ok()
    }

    /// `YYYY.MM.DD HH:MM:SS[.fraction]` as milliseconds since the epoch, taking the wall-clock
    /// time as UTC.
    fn timestamp(&mut self) -> Option<i64> {
        let year = self.number(4)?;
        self.eat(".")?;
        let month = self.number(2)?;
        self.eat(".")?;
        let day = self.number(2)?;
        self.eat(" ")?;
        let hour = self.number(2)?;
        self.eat(":")?;
        let min = self.number(2)?;
        self.eat(":")?;
        let sec = self.number(2)?;
        let mut nanos = 0u32;
        if self.eat(".").is_some() {
            let frac = self.take_while(|b| b.is_ascii_digit());
            if frac.is_empty() || frac.len() > 9 {
                return None;
            }
            let value: u32 = frac.parse().ok()?;
            nanos = value * 10u32.pow(9 - frac.len() as u32);
        }
        let dt =
            NaiveDate::from_ymd_opt(i32::try_from(year).ok()?, month, day)?.and_hms_nano_opt(hour, min, sec, nanos)?;
        Some(dt.and_utc().timestamp_millis())
    }

    /// An optional UTC offset right after the time (`Z`, `+03:00`, `-0530`), possibly after one
    /// space, in seconds east of UTC. Leaves the cursor untouched when there is none.
    fn offset(&mut self) -> Option<i64> {
        let save = self.pos;
        if self.peek() == Some(b' ') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'Z') => {
                self.pos += 1;
                return Some(0);
            }
            Some(b'+' | b'-') => {}
            _ => {
                self.pos = save;
                return None;
            }
        }
        let sign = if self.peek() == Some(b'-') { -1 } else { 1 };
        self.pos += 1;
        let parsed = (|| {
            let h = self.number(2)?;
            let _ = self.eat(":");
            let m = self.number(2)?;
            (h < 24 && m < 60).then_some(i64::from(h * 3600 + m * 60))
        })();
        match parsed {
            Some(secs) => Some(sign * secs),
            None => {
                self.pos = save;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn ms(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32, milli: i64) -> i64 {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).single().map(|t| t.timestamp_millis()).unwrap_or(0) + milli
    }

    #[test]
    fn parses_error_line_with_query_id() {
        let line = "2024.01.15 10:23:45.123456 [ 12345 ] {8f3c9a1e-0000-4000-8000-000000000001} <Error> \
                    executeQuery: Code: 252. DB::Exception: Too many parts (300). Merges are processing \
                    significantly slower than inserts: while executing 'SinkToStorage'";
        let p = parse(line).expect("parses");
        assert_eq!(p.timestamp_ms, ms(2024, 1, 15, 10, 23, 45, 123));
        assert_eq!(p.thread, "12345");
        assert_eq!(p.query_id, "8f3c9a1e-0000-4000-8000-000000000001");
        assert_eq!(p.level, LogLevel::Error);
        assert_eq!(p.logger, "executeQuery");
        assert!(p.message.starts_with("Code: 252. DB::Exception: Too many parts (300)."));
        assert!(p.message.ends_with("'SinkToStorage'"));
        assert_eq!(error_code(p.message), Some("252"));
    }

    #[test]
    fn parses_information_line_without_query_id() {
        let p = parse("2024.01.15 10:23:45.123456 [ 12345 ] {} <Information> Application: Ready for connections.")
            .expect("parses");
        assert_eq!(p.thread, "12345");
        assert_eq!(p.query_id, "");
        assert_eq!(p.level, LogLevel::Info);
        assert_eq!(p.logger, "Application");
        assert_eq!(p.message, "Ready for connections.");
        assert_eq!(error_code(p.message), None);
    }

    #[test]
    fn parses_logger_with_spaces_and_all_levels() {
        let p = parse(
            "2024.03.01 00:00:00.000001 [ 7 ] {} <Debug> default.events (ReplicatedMergeTreeQueue): Pulling 1 entries",
        )
        .expect("parses");
        assert_eq!(p.logger, "default.events (ReplicatedMergeTreeQueue)");
        assert_eq!(p.message, "Pulling 1 entries");
        for (name, level) in [
            ("Trace", LogLevel::Trace),
            ("Debug", LogLevel::Debug),
            ("Information", LogLevel::Info),
            ("Notice", LogLevel::Notice),
            ("Warning", LogLevel::Warning),
            ("Error", LogLevel::Error),
            ("Critical", LogLevel::Critical),
            ("Fatal", LogLevel::Fatal),
            ("Test", LogLevel::Trace),
        ] {
            let line = format!("2024.01.15 10:23:45.123456 [ 1 ] {{}} <{name}> L: m");
            assert_eq!(parse(&line).map(|p| p.level), Some(level), "{name}");
        }
    }

    #[test]
    fn older_format_without_braces_or_micros() {
        let p = parse("2019.06.01 12:00:00.123 [ 42 ] <Warning> Foo: bar: baz").expect("parses");
        assert_eq!(p.timestamp_ms, ms(2019, 6, 1, 12, 0, 0, 123));
        assert_eq!(p.query_id, "");
        assert_eq!(p.logger, "Foo");
        assert_eq!(p.message, "bar: baz");
        let p = parse("2019.06.01 12:00:00 [ 42 ] <Fatal> BaseDaemon: ########").expect("parses");
        assert_eq!(p.timestamp_ms, ms(2019, 6, 1, 12, 0, 0, 0));
        let p = parse("2019.06.01 12:00:00 [ 42 ] {} <Error> no logger here").expect("parses");
        assert_eq!((p.logger, p.message), ("", "no logger here"));
    }

    #[test]
    fn honours_an_explicit_offset() {
        let base = ms(2024, 1, 15, 10, 0, 0, 0);
        let p = parse("2024.01.15 10:00:00.000000+03:00 [ 1 ] {} <Error> L: m").expect("parses");
        assert_eq!(p.timestamp_ms, base - 3 * 3_600_000);
        let p = parse("2024.01.15 10:00:00.000000 -0130 [ 1 ] {} <Error> L: m").expect("parses");
        assert_eq!(p.timestamp_ms, base + 90 * 60_000);
        let p = parse("2024.01.15 10:00:00.000000Z [ 1 ] {} <Error> L: m").expect("parses");
        assert_eq!(p.timestamp_ms, base);
    }

    #[test]
    fn rejects_lines_that_do_not_fit() {
        for line in [
            "",
            "hello world",
            "2024.01.15",
            "2024.13.15 10:23:45.123456 [ 1 ] {} <Error> L: m",
            "2024.01.15 25:23:45.123456 [ 1 ] {} <Error> L: m",
            "2024.01.15 10:23:45.123456 [ x ] {} <Error> L: m",
            "2024.01.15 10:23:45.123456 [ 1 ] {} <Loud> L: m",
            "2024.01.15 10:23:45.123456 [ 1 ] {unterminated <Error> L: m",
            "2024.01.15 10:23:45.1234567890 [ 1 ] {} <Error> L: m",
            "2024-01-15 10:23:45 ERROR something",
        ] {
            assert_eq!(parse(line), None, "{line:?}");
        }
    }

    #[test]
    fn recognises_entry_starts() {
        assert!(starts_with_timestamp("2024.01.15 10:23:45.123456 [ 1 ] {} <Error> L: m"));
        assert!(starts_with_timestamp("2024-01-15T10:23:45Z level=info msg=x"));
        assert!(starts_with_timestamp("[2024-01-15 10:23:45,123] WARN x"));
        assert!(!starts_with_timestamp("0. DB::Exception::Exception(...) @ 0x000000000c4fd2d5"));
        assert!(!starts_with_timestamp("   at java.lang.Thread.run(Thread.java:750)"));
        assert!(!starts_with_timestamp(""));
        assert!(!starts_with_timestamp("2024.01.15 10:2é"));
    }

    #[test]
    fn guesses_levels_of_foreign_formats() {
        assert_eq!(guess_level("2024-01-15 10:23:45 ERROR db down"), LogLevel::Error);
        assert_eq!(guess_level("[WARN] disk almost full"), LogLevel::Warning);
        assert_eq!(guess_level("ts=1 level=info msg=ok"), LogLevel::Info);
        assert_eq!(guess_level("ts=1 level=\"error\" msg=ok"), LogLevel::Error);
        assert_eq!(guess_level("nothing to see, no error here"), LogLevel::Unspecified);
        assert_eq!(guess_level("ééééé"), LogLevel::Unspecified);
    }

    #[test]
    fn never_panics_on_arbitrary_input() {
        use rand::{Rng, SeedableRng};
        let valid = "2024.01.15 10:23:45.123456 [ 12345 ] {8f3c-é} <Error> executeQuery: Code: 252. DB::E";
        // Every prefix of a valid line hits every early-return path of the parser.
        for end in 0..=valid.len() {
            if let Some(prefix) = valid.get(..end) {
                let _ = parse(prefix);
                let _ = starts_with_timestamp(prefix);
                let _ = guess_level(prefix);
                let _ = error_code(prefix);
            }
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let alphabet = b"0123456789.:- []{}<>ZT+Code: Error\xc3\xa9";
        for _ in 0..20_000 {
            let len = rng.random_range(0..64);
            let bytes: Vec<u8> = (0..len).map(|_| alphabet[rng.random_range(0..alphabet.len())]).collect();
            let s = String::from_utf8_lossy(&bytes);
            let _ = parse(&s);
            let _ = starts_with_timestamp(&s);
            let _ = guess_level(&s);
            let _ = error_code(&s);
        }
    }
}
