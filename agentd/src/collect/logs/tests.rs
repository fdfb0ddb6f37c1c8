//! Tailer behaviour against real files in a temp dir, with the real notify watcher.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use medic_proto::v1::{LogLevel, LogRecord};

use super::*;

fn tuning() -> TailerTuning {
    TailerTuning {
        fallback_poll: Duration::from_millis(50),
        rescan_interval: Duration::from_millis(20),
        partial_flush_after: Duration::from_secs(60),
        rotate_wait: Duration::from_secs(60),
    }
}

fn opts(glob: &Path, read_from: ReadFrom) -> TailerOptions {
    TailerOptions { globs: vec![glob.to_string_lossy().into_owned()], max_line_bytes: 1024, read_from }
}

fn append(path: &Path, data: impl AsRef<[u8]>) {
    let mut f = OpenOptions::new().create(true).append(true).open(path).expect("open for append");
    f.write_all(data.as_ref()).expect("append");
}

fn msgs(recs: &[LogRecord]) -> Vec<String> {
    recs.iter().map(|r| r.message.clone()).collect()
}

fn field<'a>(r: &'a LogRecord, name: &str) -> Option<&'a str> {
    r.fields.iter().find(|f| f.name == name).map(|f| f.value.as_str())
}

/// Everything currently readable, after giving the periodic rescan a chance to run.
fn drain(t: &mut Tailer) -> Vec<LogRecord> {
    std::thread::sleep(Duration::from_millis(30));
    let mut out = Vec::new();
    loop {
        let recs = t.poll(10_000);
        if recs.is_empty() {
            return out;
        }
        out.extend(recs);
    }
}

/// Drives the tailer the way the agent does until `done` holds.
async fn read_until(t: &mut Tailer, limit: Duration, done: impl Fn(&[LogRecord]) -> bool) -> Vec<LogRecord> {
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    while !done(&out) {
        if Instant::now() >= deadline {
            let got = msgs(&out);
            let shown = &got[got.len().saturating_sub(20)..];
            panic!("timed out after {} records; last ones: {shown:?}", got.len());
        }
        t.changed().await;
        out.extend(t.poll(1000));
    }
    out
}

fn lines(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}{i}")).collect()
}

fn text(lines: &[String]) -> String {
    lines.iter().map(|l| format!("{l}\n")).collect()
}

#[test]
fn appended_lines_are_returned_once_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("a.log");
    append(&path, "one\ntwo\n");
    let mut t = Tailer::with_tuning(opts(&path, ReadFrom::Beginning), None, tuning()).expect("tailer");
    assert_eq!(msgs(&drain(&mut t)), ["one", "two"]);
    assert!(drain(&mut t).is_empty());
    append(&path, "three\nfour\n");
    let recs = drain(&mut t);
    assert_eq!(msgs(&recs), ["three", "four"]);
    assert!(recs.iter().all(|r| r.source == path.to_string_lossy()));
    assert_eq!(t.cursor().files[0].offset, 19);
}

#[test]
fn partial_line_is_held_until_completed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("a.log");
    append(&path, "abc");
    let mut t = Tailer::with_tuning(opts(&path, ReadFrom::Beginning), None, tuning()).expect("tailer");
    assert!(drain(&mut t).is_empty());
    assert_eq!(t.cursor().files[0].offset, 0);
    append(&path, "def\nxy");
    assert_eq!(msgs(&drain(&mut t)), ["abcdef"]);
    assert_eq!(t.cursor().files[0].offset, 7, "the cursor stays before the unfinished line");
    append(&path, "z\r\n");
    assert_eq!(msgs(&drain(&mut t)), ["xyz"]);
}

#[test]
fn idle_partial_line_is_flushed_as_is() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("a.log");
    let tuning = TailerTuning { partial_flush_after: Duration::from_millis(150), ..tuning() };
    let mut t = Tailer::with_tuning(opts(&path, ReadFrom::Beginning), None, tuning).expect("tailer");
    append(&path, "no newline yet");
    assert!(drain(&mut t).is_empty());
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(msgs(&drain(&mut t)), ["no newline yet"]);
    assert_eq!(t.cursor().files[0].offset, 14);
    append(&path, "next\n");
    assert_eq!(msgs(&drain(&mut t)), ["next"]);
}

#[tokio::test]
async fn poll_stops_at_max_records_and_the_rest_follows_without_waiting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("a.log");
    let all = lines("line ", 0..25);
    append(&path, text(&all));
    let slow = TailerTuning { fallback_poll: Duration::from_secs(30), ..tuning() };
    let mut t = Tailer::with_tuning(opts(&path, ReadFrom::Beginning), None, slow).expect("tailer");
    let mut got = Vec::new();
    for (n, expected) in [10, 10, 5].into_iter().enumerate() {
        if n > 0 {
            // More was left behind, so `changed()` must not sit out the (30 s) fallback interval.
            tokio::time::timeout(Duration::from_secs(2), t.changed()).await.expect("changed() returns at once");
        }
        let recs = t.poll(10);
        assert_eq!(recs.len(), expected);
        got.extend(msgs(&recs));
        let consumed: usize = got.iter().map(|l| l.len() + 1).sum();
        assert_eq!(t.cursor().files[0].offset, consumed as u64);
    }
    assert_eq!(got, all);
}

#[tokio::test]
async fn read_from_end_skips_history_but_reads_files_created_later_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let old = dir.path().join("old.log");
    append(&old, "history\nmore history\nhalf a li");
    // Long fallback and rescan intervals: only a notify event can make this test pass in time.
    let slow =
        TailerTuning { fallback_poll: Duration::from_secs(30), rescan_interval: Duration::from_secs(30), ..tuning() };
    let mut t = Tailer::with_tuning(opts(&dir.path().join("*.log"), ReadFrom::End), None, slow).expect("tailer");
    assert!(t.poll(100).is_empty());
    append(&old, "ne\nfresh\n");
    let recs = read_until(&mut t, Duration::from_secs(5), |r| r.len() >= 2).await;
    assert_eq!(msgs(&recs), ["half a line", "fresh"], "a line in progress at start is read whole");

    let new = dir.path().join("new.log");
    append(&new, "first\nsecond\n");
    let recs = read_until(&mut t, Duration::from_secs(5), |r| r.len() >= 2).await;
    assert_eq!(msgs(&recs), ["first", "second"]);
    assert_eq!(recs[0].source, new.to_string_lossy());
    append(&dir.path().join("other.txt"), "not matched\n");
    assert!(drain(&mut t).is_empty());
}

#[tokio::test]
async fn changed_wakes_within_the_fallback_interval_without_events() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t0 = TailerTuning { fallback_poll: Duration::from_millis(200), ..tuning() };
    let mut t = Tailer::with_tuning(opts(&dir.path().join("*.log"), ReadFrom::End), None, t0).expect("tailer");
    for _ in 0..3 {
        let start = Instant::now();
        tokio::time::timeout(Duration::from_secs(2), t.changed()).await.expect("fallback wake-up");
        assert!(start.elapsed() >= Duration::from_millis(150), "{:?}", start.elapsed());
        assert!(t.poll(10).is_empty());
    }
}

#[tokio::test]
async fn changed_wakes_on_a_write_well_before_the_fallback() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("a.log");
    append(&path, "x\n");
    let slow = TailerTuning { fallback_poll: Duration::from_secs(30), ..tuning() };
    let mut t = Tailer::with_tuning(opts(&path, ReadFrom::End), None, slow).expect("tailer");
    assert!(t.poll(10).is_empty());
    let writer = std::thread::spawn({
        let path = path.clone();
        move || {
            std::thread::sleep(Duration::from_millis(100));
            append(&path, "woke\n");
        }
    });
    let recs = read_until(&mut t, Duration::from_secs(5), |r| !r.is_empty()).await;
    assert_eq!(msgs(&recs), ["woke"]);
    writer.join().expect("writer");
}

#[test]
fn rename_and_create_rotation_loses_nothing_in_any_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("x.log");
    let mut old_fd = OpenOptions::new().create(true).append(true).open(&path).expect("open");
    let mut t = Tailer::with_tuning(opts(&path, ReadFrom::Beginning), None, tuning()).expect("tailer");
    let mut got = Vec::new();

    old_fd.write_all(text(&lines("old ", 0..5)).as_bytes()).expect("write");
    got.extend(msgs(&drain(&mut t)));
    old_fd.write_all(text(&lines("old ", 5..10)).as_bytes()).expect("write");
    fs::rename(&path, dir.path().join("x.log.1")).expect("rename");
    // The writer has not reopened yet: these land in the renamed file.
    old_fd.write_all(text(&lines("old ", 10..15)).as_bytes()).expect("write");
    got.extend(msgs(&drain(&mut t)));
    assert_eq!(got, lines("old ", 0..15), "the renamed file is still followed by its fd");

    old_fd.write_all(b"old 15\n").expect("write");
    append(&path, text(&lines("new ", 0..5)));
    let recs = drain(&mut t);
    assert_eq!(msgs(&recs), [lines("old ", 15..16), lines("new ", 0..5)].concat(), "old file first");
    assert_eq!(recs[0].source, recs[1].source, "records keep the logical path");

    // A straggler written to the old fd after the new file took over still arrives once.
    old_fd.write_all(b"old 16\n").expect("write");
    append(&path, "new 5\n");
    let mut rest = msgs(&drain(&mut t));
    rest.sort();
    assert_eq!(rest, ["new 5", "old 16"]);
    assert!(drain(&mut t).is_empty());
    assert_eq!(t.open_files(), 2, "the old file stays open during rotate_wait");
}

#[test]
fn rename_create_and_write_before_any_poll_reads_old_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("x.log");
    append(&path, "old 0\n");
    let mut old_fd = OpenOptions::new().append(true).open(&path).expect("open");
    let tuning = TailerTuning { rotate_wait: Duration::from_millis(100), ..tuning() };
    let mut t = Tailer::with_tuning(opts(&path, ReadFrom::Beginning), None, tuning).expect("tailer");
    // Everything happens between two polls: rename, new file with content, late writes to old.
    fs::rename(&path, dir.path().join("x.log.1")).expect("rename");
    append(&path, "new 0\n");
    old_fd.write_all(b"old 1\n").expect("write");
    append(&path, "new 1\n");
    assert_eq!(msgs(&drain(&mut t)), ["old 0", "old 1", "new 0", "new 1"]);
    drop(old_fd);
    std::thread::sleep(Duration::from_millis(150));
    assert!(drain(&mut t).is_empty());
    assert_eq!(t.open_files(), 1, "the rotated file is closed once idle for rotate_wait");
    assert_eq!(t.cursor().files.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_while_lines_are_being_written_loses_and_repeats_nothing() {
    const ROTATIONS: usize = 5;
    const PER_FILE: usize = 400;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("x.log");
    let tuning = TailerTuning { rotate_wait: Duration::from_secs(1), ..tuning() };
    let mut t = Tailer::with_tuning(opts(&path, ReadFrom::Beginning), None, tuning).expect("tailer");
    // How many lines the tailer has returned so far. The writer waits for the tailer to see each
    // new file before rotating it: a file renamed away before any scan saw it at its path is
    // invisible to path-based discovery (see the module docs), which is not what this tests.
    let received = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writer = std::thread::spawn({
        let path = path.clone();
        let dir = dir.path().to_path_buf();
        let received = received.clone();
        move || {
            let mut seq = 0usize;
            for generation in 0..=ROTATIONS {
                let mut fd = OpenOptions::new().create(true).append(true).open(&path).expect("open");
                let first = seq;
                for i in 0..PER_FILE {
                    // Lines split over two writes exercise partial-line handling too.
                    fd.write_all(format!("seq {seq:06} gen").as_bytes()).expect("write");
                    fd.write_all(format!(" {generation}\n").as_bytes()).expect("write");
                    seq += 1;
                    if i % 50 == 0 {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    if i == PER_FILE - 20 && generation < ROTATIONS {
                        let deadline = Instant::now() + Duration::from_secs(10);
                        while received.load(Ordering::SeqCst) <= first && Instant::now() < deadline {
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        // logrotate's rename; the writer keeps using the old fd for a moment.
                        fs::rename(&path, dir.join(format!("x.log.{generation}"))).expect("rename");
                    }
                }
            }
            seq
        }
    });
    let total = ROTATIONS * PER_FILE + PER_FILE;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut recs = Vec::new();
    while recs.len() < total {
        assert!(Instant::now() < deadline, "timed out after {} records", recs.len());
        t.changed().await;
        recs.extend(t.poll(1000));
        received.store(recs.len(), Ordering::SeqCst);
    }
    assert_eq!(writer.join().expect("writer"), total);
    let mut seqs: Vec<usize> =
        recs.iter().map(|r| r.message.get(4..10).and_then(|s| s.parse().ok()).expect("well-formed line")).collect();
    for w in seqs.windows(2) {
        assert!(w[0] < w[1], "out of order or repeated: {} then {}", w[0], w[1]);
    }
    seqs.dedup();
    assert_eq!(seqs, (0..total).collect::<Vec<_>>());
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(t.poll(100).is_empty());
    assert_eq!(t.open_files(), 1, "all rotated files are closed");
}

#[test]
fn copytruncate_loses_nothing_written_after_the_truncation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("x.log");
    let mut fd = OpenOptions::new().create(true).append(true).open(&path).expect("open");
    fd.write_all(text(&lines("before ", 0..10)).as_bytes()).expect("write");
    let mut t = Tailer::with_tuning(opts(&path, ReadFrom::Beginning), None, tuning()).expect("tailer");
    assert_eq!(drain(&mut t).len(), 10);
    fs::copy(&path, dir.path().join("x.log.1")).expect("copy");
    OpenOptions::new().write(true).open(&path).expect("open").set_len(0).expect("truncate");
    // O_APPEND writers continue at the new end, i.e. at 0.
    fd.write_all(b"after 0\nafter 1\n").expect("write");
    assert_eq!(msgs(&drain(&mut t)), ["after 0", "after 1"]);
    assert_eq!(t.cursor().files[0].offset, 16);
}

#[test]
fn truncation_overwritten_past_the_old_offset_is_still_noticed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("x.log");
    let mut fd = OpenOptions::new().create(true).append(true).open(&path).expect("open");
    fd.write_all(b"a\nb\n").expect("write");
    let mut t = Tailer::with_tuning(opts(&path, ReadFrom::Beginning), None, tuning()).expect("tailer");
    assert_eq!(drain(&mut t).len(), 2);
    fd.set_len(0).expect("truncate");
    // By the next poll the file is longer than our old offset again: size alone can't tell.
    let after = lines("after truncation ", 0..5);
    fd.write_all(text(&after).as_bytes()).expect("write");
    assert_eq!(msgs(&drain(&mut t)), after);
}

#[test]
fn restart_from_cursor_resumes_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("x.log");
    let all = lines("line ", 0..30);
    append(&path, text(&all) + "unfinished");
    let mut t = Tailer::with_tuning(opts(&path, ReadFrom::End), Some(TailCursor::default()), tuning()).expect("t");
    let mut got = msgs(&t.poll(10));
    // What the agent persists with each batch.
    let saved = serde_json::to_string(&t.cursor()).expect("serialize");
    drop(t);

    append(&path, " now\nwritten while down\n");
    let cursor: TailCursor = serde_json::from_str(&saved).expect("deserialize");
    let mut t = Tailer::with_tuning(opts(&path, ReadFrom::End), Some(cursor), tuning()).expect("t");
    got.extend(msgs(&drain(&mut t)));
    assert_eq!(got, [all, vec!["unfinished now".into(), "written while down".into()]].concat());
}

#[test]
fn restart_after_rotation_while_down_finishes_the_old_file_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("x.log");
    append(&path, text(&lines("old ", 0..5)));
    let mut t = Tailer::with_tuning(opts(&path, ReadFrom::Beginning), None, tuning()).expect("t");
    assert_eq!(msgs(&t.poll(3)), lines("old ", 0..3));
    let cursor = t.cursor();
    drop(t);

    append(&path, text(&lines("old ", 5..8)));
    fs::rename(&path, dir.path().join("x.log.1")).expect("rename");
    append(&path, text(&lines("new ", 0..4)));
    let tuning = TailerTuning { rotate_wait: Duration::from_millis(100), ..tuning() };
    let mut t = Tailer::with_tuning(opts(&path, ReadFrom::End), Some(cursor), tuning).expect("t");
    assert_eq!(msgs(&drain(&mut t)), [lines("old ", 3..8), lines("new ", 0..4)].concat());
    std::thread::sleep(Duration::from_millis(150));
    assert!(drain(&mut t).is_empty());
    let cursor = t.cursor();
    assert_eq!(cursor.files.len(), 1, "the finished old file is closed and forgotten");
    assert_eq!(cursor.files[0].offset, 24);
}

#[test]
fn restart_after_truncation_while_down_starts_over() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("x.log");
    append(&path, text(&lines("long line number ", 0..5)));
    let mut t = Tailer::with_tuning(opts(&path, ReadFrom::Beginning), None, tuning()).expect("t");
    assert_eq!(drain(&mut t).len(), 5);
    let cursor = t.cursor();
    drop(t);
    OpenOptions::new().write(true).open(&path).expect("open").set_len(0).expect("truncate");
    append(&path, "short\n");
    let mut t = Tailer::with_tuning(opts(&path, ReadFrom::End), Some(cursor), tuning()).expect("t");
    assert_eq!(msgs(&drain(&mut t)), ["short"]);
}

#[test]
fn with_a_cursor_files_it_does_not_know_are_read_from_the_beginning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = dir.path().join("a.log");
    append(&a, "a0\n");
    let glob = dir.path().join("*.log");
    let mut t = Tailer::with_tuning(opts(&glob, ReadFrom::End), None, tuning()).expect("t");
    assert!(drain(&mut t).is_empty(), "first start without a cursor: from the end");
    append(&a, "a1\n");
    assert_eq!(msgs(&drain(&mut t)), ["a1"]);
    let cursor = t.cursor();
    drop(t);
    append(&dir.path().join("b.log"), "b0\n");
    let mut t = Tailer::with_tuning(opts(&glob, ReadFrom::End), Some(cursor), tuning()).expect("t");
    assert_eq!(msgs(&drain(&mut t)), ["b0"]);
}

#[test]
fn deleted_file_is_read_to_eof_then_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("x.log");
    let mut fd = OpenOptions::new().create(true).append(true).open(&path).expect("open");
    fd.write_all(b"a\n").expect("write");
    let tuning = TailerTuning { rotate_wait: Duration::from_millis(500), ..tuning() };
    let mut t = Tailer::with_tuning(opts(&path, ReadFrom::Beginning), None, tuning).expect("t");
    assert_eq!(msgs(&drain(&mut t)), ["a"]);
    fs::remove_file(&path).expect("remove");
    fd.write_all(b"b\nlast words").expect("write");
    assert_eq!(msgs(&drain(&mut t)), ["b"]);
    drop(fd);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(msgs(&drain(&mut t)), ["last words"], "a rotated file's unfinished line is flushed");
    assert_eq!(t.open_files(), 0);
    assert!(t.cursor().files.is_empty());
}

#[test]
fn long_lines_are_truncated_and_their_rest_skipped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("x.log");
    let o = TailerOptions { max_line_bytes: 16, ..opts(&path, ReadFrom::Beginning) };
    let mut t = Tailer::with_tuning(o, None, tuning()).expect("t");
    // 200 KiB spread over several writes and polls: more than a read chunk, never buffered whole.
    append(&path, "short\n");
    append(&path, "x".repeat(100 * 1024));
    let mut recs = drain(&mut t);
    append(&path, "y".repeat(100 * 1024));
    recs.extend(drain(&mut t));
    append(&path, "\nnext\n");
    append(&path, "é".repeat(20) + "\n");
    recs.extend(drain(&mut t));
    assert_eq!(msgs(&recs), ["short".to_string(), "x".repeat(16), "next".into(), "é".repeat(8)]);
    assert_eq!(field(&recs[1], "truncated"), Some("true"));
    assert_eq!(field(&recs[2], "truncated"), None);
    assert_eq!(field(&recs[3], "truncated"), Some("true"));
    let size = fs::metadata(&path).expect("stat").len();
    assert_eq!(t.cursor().files[0].offset, size);
}

#[test]
fn invalid_utf8_is_replaced_not_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("x.log");
    append(&path, b"ok \xff\xfe bytes\n\x00\x01\n");
    let mut t = Tailer::with_tuning(opts(&path, ReadFrom::Beginning), None, tuning()).expect("t");
    assert_eq!(msgs(&drain(&mut t)), ["ok \u{fffd}\u{fffd} bytes", "\u{0}\u{1}"]);
}

#[test]
fn clickhouse_lines_parse_and_stack_traces_fold_into_their_entry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("clickhouse-server.log");
    append(
        &path,
        "not a clickhouse line, WARN maybe\n\
         2024.01.15 10:23:45.123456 [ 12345 ] {8f3c9a1e-5b7d} <Error> executeQuery: Code: 252. DB::Exception: Too many parts (300). (TOO_MANY_PARTS)\n\
         Stack trace (when copying this message, always include the lines below):\n\
         \n\
         0. DB::Exception::Exception() @ 0x000000000c4fd2d5\n\
         1. DB::MergeTreeData::delayInsertOrThrowIfNeeded() @ 0x0000000011b3a0c8\n\
         2024.01.15 10:23:45.200000 [ 1 ] {} <Information> Application: Ready for connections.\n",
    );
    let mut t = Tailer::with_tuning(opts(&path, ReadFrom::Beginning), None, tuning()).expect("t");
    let recs = drain(&mut t);
    assert_eq!(recs.len(), 3, "{recs:#?}");
    let e = &recs[1];
    assert_eq!(e.timestamp_ms, 1_705_314_225_123);
    assert_eq!(e.level, LogLevel::Error as i32);
    assert_eq!(field(e, "thread"), Some("12345"));
    assert_eq!(field(e, "query_id"), Some("8f3c9a1e-5b7d"));
    assert_eq!(field(e, "logger"), Some("executeQuery"));
    assert_eq!(field(e, "code"), Some("252"));
    assert!(e.message.starts_with("Code: 252. DB::Exception: Too many parts (300). (TOO_MANY_PARTS)\nStack trace"));
    assert!(e.message.ends_with("\n\n0. DB::Exception::Exception() @ 0x000000000c4fd2d5\n1. DB::MergeTreeData::delayInsertOrThrowIfNeeded() @ 0x0000000011b3a0c8"));
    let i = &recs[2];
    assert_eq!((i.level, i.message.as_str()), (LogLevel::Info as i32, "Ready for connections."));
    assert_eq!(field(i, "query_id"), None);
    let raw = &recs[0];
    assert_eq!(raw.message, "not a clickhouse line, WARN maybe");
    assert_eq!(raw.level, LogLevel::Warning as i32);
    assert!(raw.fields.is_empty());
    assert!((raw.timestamp_ms - chrono::Utc::now().timestamp_millis()).abs() < 60_000, "read time");
}

#[test]
fn invalid_glob_is_an_error() {
    let o = TailerOptions { globs: vec!["/var/log/[".into()], max_line_bytes: 0, read_from: ReadFrom::End };
    assert!(matches!(Tailer::new(o, None), Err(TailError::Glob { .. })));
}

#[test]
fn literal_dir_is_the_prefix_before_wildcards() {
    assert_eq!(literal_dir("/var/log/clickhouse-server/*.log"), Path::new("/var/log/clickhouse-server"));
    assert_eq!(literal_dir("/var/log/*/x.log"), Path::new("/var/log"));
    assert_eq!(literal_dir("/var/log/x.log"), Path::new("/var/log"));
    assert_eq!(literal_dir("x.log"), Path::new("."));
}

#[test]
fn a_stack_trace_arriving_a_poll_late_stays_attributed_to_its_entry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("clickhouse-server.err.log");
    let mut t = Tailer::with_tuning(opts(&path, ReadFrom::Beginning), None, tuning()).expect("t");
    append(&path, "2024.01.15 10:23:45.123456 [ 7 ] {q1} <Error> executeQuery: Code: 241. boom\n");
    let first = drain(&mut t);
    append(&path, "0. DB::Exception::Exception() @ 0x1\n1. DB::f() @ 0x2\n");
    let late = drain(&mut t);
    assert_eq!(first.len(), 1);
    assert_eq!(late.len(), 1, "{late:#?}");
    assert_eq!(late[0].message, "0. DB::Exception::Exception() @ 0x1\n1. DB::f() @ 0x2");
    assert_eq!(late[0].timestamp_ms, first[0].timestamp_ms);
    assert_eq!(late[0].level, LogLevel::Error as i32);
    assert_eq!(field(&late[0], "query_id"), Some("q1"));
    assert_eq!(field(&late[0], "continued"), Some("true"));
}

#[test]
fn tailer_can_move_between_tasks() {
    fn assert_send<T: Send>() {}
    assert_send::<Tailer>();
}
