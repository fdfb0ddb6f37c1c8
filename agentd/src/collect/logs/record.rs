//! Turning complete lines into `LogRecord`s, including folding continuation lines (stack traces,
//! multi-line queries) into the record they belong to.

use medic_proto::v1::{Label, LogRecord};

use super::{clickhouse, signatures};

/// How many `max_line_bytes` one record may grow to by absorbing continuation lines. A ClickHouse
/// exception with its stack trace is typically 40-80 lines; beyond the bound the overflow goes to
/// a follow-up record rather than being dropped or growing without limit.
pub(crate) const CONTINUATION_FACTOR: usize = 16;

pub(crate) struct Limits {
    pub max_records: usize,
    pub max_line_bytes: usize,
    pub max_message_bytes: usize,
}

/// The record still open for continuation lines. It is only ever open within one `poll` of one
/// file: the caller moves it to the output when the file's turn ends.
pub(crate) struct Pending {
    rec: LogRecord,
    /// Only records that started with a timestamp take continuation lines: in a file without
    /// timestamps every line is its own record, otherwise a whole raw file would become one record.
    absorbs: bool,
}

impl Pending {
    pub fn into_record(self) -> LogRecord {
        self.rec
    }

    /// What continuation lines arriving in a later poll should be attributed to: this entry's
    /// metadata without its text. None for a record that takes no continuation lines.
    pub fn carry(&self) -> Option<LogRecord> {
        self.absorbs.then(|| follow_up(&self.rec, String::new(), false))
    }
}

/// Adds one complete line (without its '\n') to `out`/`pending`. Returns false, changing
/// nothing, when the line would start a record beyond `limits.max_records`; the caller then leaves
/// the line unread for the next poll.
///
/// `carry` is the entry the previous poll of this file ended with: continuation lines that
/// arrive a poll later than their entry become a follow-up record of it instead of anonymous raw
/// lines.
#[allow(clippy::too_many_arguments)]
pub(crate) fn accept_line(
    out: &mut Vec<LogRecord>,
    pending: &mut Option<Pending>,
    carry: Option<&LogRecord>,
    limits: &Limits,
    source: &str,
    line: &[u8],
    truncated: bool,
    now_ms: i64,
) -> bool {
    let text = to_message(line, limits.max_line_bytes);
    let entry_start = clickhouse::starts_with_timestamp(&text);
    let open_records = out.len() + usize::from(pending.is_some());
    if !entry_start {
        match pending.as_mut() {
            Some(p) if p.absorbs => {
                if p.rec.message.len() + 1 + text.len() <= limits.max_message_bytes {
                    p.rec.message.push('\n');
                    p.rec.message.push_str(&text);
                    if truncated {
                        mark_truncated(&mut p.rec);
                    }
                    return true;
                }
                // Too long to append: continue the entry in a follow-up record that repeats its
                // metadata, so nothing is lost and the follow-up is still attributable.
                if open_records >= limits.max_records {
                    return false;
                }
                let next = follow_up(&p.rec, text, truncated);
                out.push(std::mem::replace(&mut p.rec, next));
                return true;
            }
            None => {
                if let Some(entry) = carry {
                    if open_records >= limits.max_records {
                        return false;
                    }
                    *pending = Some(Pending { rec: follow_up(entry, text, truncated), absorbs: true });
                    return true;
                }
            }
            Some(_) => {}
        }
    }
    if open_records >= limits.max_records {
        return false;
    }
    let mut rec = to_record(source, text, now_ms);
    if truncated {
        mark_truncated(&mut rec);
    }
    if let Some(prev) = pending.take() {
        out.push(prev.rec);
    }
    *pending = Some(Pending { rec, absorbs: entry_start });
    true
}

/// A record continuing `entry`: same time, level and fields, marked `continued=true`. The
/// signature stays with the entry alone, so rules counting signatures count each failure once.
fn follow_up(entry: &LogRecord, text: String, truncated: bool) -> LogRecord {
    let mut rec = LogRecord {
        timestamp_ms: entry.timestamp_ms,
        source: entry.source.clone(),
        level: entry.level,
        message: text,
        fields: entry.fields.iter().filter(|f| f.name != "truncated" && f.name != "signature").cloned().collect(),
    };
    if !rec.fields.iter().any(|f| f.name == "continued") {
        rec.fields.push(Label::new("continued", "true"));
    }
    if truncated {
        mark_truncated(&mut rec);
    }
    rec
}

fn to_record(source: &str, text: String, now_ms: i64) -> LogRecord {
    if let Some(p) = clickhouse::parse(&text) {
        let mut fields = vec![Label::new("thread", p.thread)];
        if !p.query_id.is_empty() {
            fields.push(Label::new("query_id", p.query_id));
        }
        if !p.logger.is_empty() {
            fields.push(Label::new("logger", p.logger));
        }
        let code = clickhouse::error_code(p.message);
        if let Some(code) = code {
            fields.push(Label::new("code", code));
        }
        if let Some(sig) = signatures::classify(p.level, code.and_then(|c| c.parse().ok()), p.logger, p.message) {
            fields.push(Label::new("signature", sig));
        }
        return LogRecord {
            timestamp_ms: p.timestamp_ms,
            source: source.to_string(),
            level: p.level as i32,
            message: p.message.to_string(),
            fields,
        };
    }
    let level = clickhouse::guess_level(&text);
    let fields = match signatures::classify(level, None, "", &text) {
        Some(sig) => vec![Label::new("signature", sig)],
        None => Vec::new(),
    };
    LogRecord { timestamp_ms: now_ms, source: source.to_string(), level: level as i32, message: text, fields }
}

fn mark_truncated(rec: &mut LogRecord) {
    if !rec.fields.iter().any(|f| f.name == "truncated") {
        rec.fields.push(Label::new("truncated", "true"));
    }
}

/// Lossy UTF-8 text of at most `max` bytes, cut on a char boundary. The cut is applied after
/// the lossy conversion because replacement chars are wider than the bytes they replace, and a
/// line truncated mid-char ends in an incomplete sequence that must not survive as garbage.
pub(crate) fn to_message(line: &[u8], max: usize) -> String {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let line = match std::str::from_utf8(line) {
        Err(e) if e.error_len().is_none() && line.len() >= max => &line[..e.valid_up_to()],
        _ => line,
    };
    let mut s = String::from_utf8_lossy(line).into_owned();
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use medic_proto::v1::LogLevel;

    fn level_of(rec: &LogRecord) -> LogLevel {
        LogLevel::try_from(rec.level).unwrap_or(LogLevel::Unspecified)
    }

    fn field<'a>(r: &'a LogRecord, name: &str) -> Option<&'a str> {
        r.fields.iter().find(|f| f.name == name).map(|f| f.value.as_str())
    }

    #[test]
    fn messages_are_cut_on_char_boundaries() {
        assert_eq!(to_message("héllo".as_bytes(), 2), "h");
        assert_eq!(to_message("héllo".as_bytes(), 3), "hé");
        assert_eq!(to_message(b"ab\r", 10), "ab");
        assert_eq!(to_message(b"a\xffb", 10), "a\u{fffd}b");
        // A replacement char is 3 bytes: still within the bound after conversion.
        assert!(to_message(b"\xff\xff\xff\xff", 4).len() <= 4);
        // A line already cut mid-char by the reader loses the dangling lead byte.
        assert_eq!(to_message(&"aé".as_bytes()[..2], 2), "a");
        assert_eq!(to_message(b"", 0), "");
    }

    #[test]
    fn continuation_lines_join_the_previous_entry_and_overflow_to_a_follow_up() {
        let limits = Limits { max_records: 10, max_line_bytes: 100, max_message_bytes: 70 };
        let mut out = Vec::new();
        let mut pending = None;
        let lines: [&[u8]; 6] = [
            b"2024.01.15 10:23:45.123456 [ 1 ] {q} <Error> executeQuery: Code: 252. boom",
            b"0. DB::Exception::Exception() @ 0x1",
            b"1. DB::f() @ 0x2",
            b"2. DB::g() @ 0x3 ........................................",
            b"2024.01.15 10:23:46.000000 [ 1 ] {} <Information> Application: ok",
            b"",
        ];
        for l in lines {
            assert!(accept_line(&mut out, &mut pending, None, &limits, "f", l, false, 5));
        }
        out.extend(pending.take().map(Pending::into_record));
        assert_eq!(out.len(), 3, "{out:#?}");
        assert_eq!(out[0].message, "Code: 252. boom\n0. DB::Exception::Exception() @ 0x1\n1. DB::f() @ 0x2");
        assert_eq!(field(&out[0], "code"), Some("252"));
        assert_eq!(field(&out[0], "signature"), Some("too_many_parts"));
        assert_eq!(field(&out[1], "signature"), None, "counted once, on the entry");
        assert_eq!(field(&out[1], "continued"), Some("true"));
        assert_eq!(field(&out[1], "query_id"), Some("q"));
        assert_eq!(level_of(&out[1]), LogLevel::Error);
        assert_eq!(out[2].message, "ok\n", "a blank line continues the entry");
    }

    #[test]
    fn raw_lines_stay_separate_and_respect_the_record_limit() {
        let limits = Limits { max_records: 2, max_line_bytes: 100, max_message_bytes: 1600 };
        let mut out = Vec::new();
        let mut pending = None;
        assert!(accept_line(&mut out, &mut pending, None, &limits, "f", b"plain one", false, 5));
        assert!(accept_line(&mut out, &mut pending, None, &limits, "f", b"ERROR two", true, 5));
        assert!(!accept_line(&mut out, &mut pending, None, &limits, "f", b"three", false, 5));
        out.extend(pending.take().map(Pending::into_record));
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].timestamp_ms, 5);
        assert_eq!(level_of(&out[0]), LogLevel::Unspecified);
        assert_eq!(level_of(&out[1]), LogLevel::Error);
        assert_eq!(field(&out[1], "truncated"), Some("true"));
    }
}
