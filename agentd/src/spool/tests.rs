use super::*;
use rand::{Rng, SeedableRng};
use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

fn opts(segment_bytes: u64, max_bytes: u64) -> SpoolOptions {
    SpoolOptions { max_bytes, segment_bytes, fsync: false }
}

/// Deterministic payload so readers can verify content from the seq alone.
fn payload(seq: u64, len: usize) -> Vec<u8> {
    let mut v = seq.to_le_bytes().to_vec();
    v.extend((0..len.saturating_sub(8)).map(|i| (seq as usize * 31 + i * 7) as u8));
    v.truncate(len.max(8));
    v
}

fn all(sp: &Spool) -> Vec<(u64, Vec<u8>)> {
    sp.read_after(0, usize::MAX, usize::MAX).unwrap()
}

fn seqs(recs: &[(u64, Vec<u8>)]) -> Vec<u64> {
    recs.iter().map(|r| r.0).collect()
}

fn seg_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

fn append_n(sp: &mut Spool, n: u64, len: usize) -> Vec<u64> {
    (0..n)
        .map(|_| {
            let seq = sp.stats().next_seq;
            let got = sp.append(&payload(seq, len)).unwrap();
            assert_eq!(got, seq);
            got
        })
        .collect()
}

fn check_payloads(recs: &[(u64, Vec<u8>)], len: usize) {
    for (seq, p) in recs {
        assert_eq!(p, &payload(*seq, len), "payload of seq {seq}");
    }
}

#[test]
fn spool_seqs_start_at_one_and_continue_across_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("nested/spool");
    let id;
    {
        let mut sp = Spool::open(&dir, SpoolOptions::default()).unwrap();
        id = sp.id().to_string();
        assert!(uuid::Uuid::parse_str(&id).is_ok());
        assert_eq!(sp.stats().next_seq, 1);
        assert_eq!(append_n(&mut sp, 3, 10), vec![1, 2, 3]);
    }
    let mut sp = Spool::open(&dir, SpoolOptions::default()).unwrap();
    assert_eq!(sp.id(), id);
    assert_eq!(sp.append(b"x").unwrap(), 4);
    assert_eq!(seqs(&all(&sp)), vec![1, 2, 3, 4]);
    let st = sp.stats();
    assert_eq!((st.batches, st.acked_seq, st.next_seq, st.corrupt_records_total), (4, 0, 5, 0));
}

#[test]
fn spool_seqs_continue_after_everything_acked_and_deleted() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    {
        let mut sp = Spool::open(dir, opts(200, 1 << 20)).unwrap();
        append_n(&mut sp, 20, 60);
        assert!(seg_files(dir).len() > 3);
        sp.ack(20).unwrap();
        assert_eq!(seg_files(dir).len(), 1, "only the active segment survives");
        assert_eq!(sp.stats().batches, 0);
        assert!(all(&sp).is_empty());
    }
    {
        let mut sp = Spool::open(dir, opts(200, 1 << 20)).unwrap();
        assert_eq!(sp.stats().acked_seq, 20);
        assert!(all(&sp).is_empty());
        assert_eq!(sp.append(b"a").unwrap(), 21);
        sp.ack(21).unwrap();
        // Fill and rotate so the segment holding 21 gets deleted as well.
        append_n(&mut sp, 10, 60);
        sp.ack(31).unwrap();
    }
    // Without the state file the segment names alone must keep seqs monotonic.
    fs::remove_file(dir.join(state::STATE_FILE)).unwrap();
    {
        let mut sp = Spool::open(dir, opts(200, 1 << 20)).unwrap();
        assert_eq!(sp.append(b"b").unwrap(), 32);
        sp.ack(32).unwrap();
    }
    // Without any segment file the state file must.
    for f in seg_files(dir) {
        fs::remove_file(f).unwrap();
    }
    let mut sp = Spool::open(dir, opts(200, 1 << 20)).unwrap();
    assert_eq!(sp.append(b"c").unwrap(), 33);
}

#[test]
fn spool_ack_deletes_acked_segments_and_survives_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    {
        let mut sp = Spool::open(dir, opts(300, 1 << 20)).unwrap();
        append_n(&mut sp, 30, 80); // 100 B records: 3 per segment
        let before = seg_files(dir).len();
        assert_eq!(before, 10);
        sp.ack(7).unwrap(); // segments [1-3], [4-6] go; [7-9] keeps 8, 9
        assert_eq!(seg_files(dir).len(), before - 2);
        assert_eq!(sp.stats().acked_seq, 7);
        assert_eq!(sp.stats().batches, 23);
        sp.ack(5).unwrap(); // below the watermark: no-op
        assert_eq!(sp.stats().acked_seq, 7);
        assert_eq!(seqs(&all(&sp)), (8..=30).collect::<Vec<_>>());
        assert_eq!(sp.stats().bytes, (seg_files(dir).iter().map(|p| fs::metadata(p).unwrap().len())).sum::<u64>());
    }
    let mut sp = Spool::open(dir, opts(300, 1 << 20)).unwrap();
    assert_eq!(sp.stats().acked_seq, 7);
    let recs = all(&sp);
    assert_eq!(seqs(&recs), (8..=30).collect::<Vec<_>>());
    check_payloads(&recs, 80);
    sp.ack(1_000).unwrap(); // clamped to the last assigned seq
    assert_eq!(sp.stats().acked_seq, 30);
    assert_eq!(sp.stats().batches, 0);
    assert_eq!(seg_files(dir).len(), 1);
    assert_eq!(sp.append(b"z").unwrap(), 31);
}

#[test]
fn spool_read_after_respects_limits_across_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let mut sp = Spool::open(tmp.path(), opts(500, 1 << 20)).unwrap();
    let mut sizes = vec![0usize];
    for seq in 1..=60u64 {
        let len = 8 + (seq as usize * 13) % 90;
        sizes.push(len);
        assert_eq!(sp.append(&payload(seq, len)).unwrap(), seq);
    }
    assert!(seg_files(tmp.path()).len() > 5);
    let check = |recs: &[(u64, Vec<u8>)]| {
        for (seq, p) in recs {
            assert_eq!(p, &payload(*seq, sizes[*seq as usize]));
        }
    };

    let r = sp.read_after(0, 7, usize::MAX).unwrap();
    assert_eq!(seqs(&r), (1..=7).collect::<Vec<_>>());
    check(&r);

    // Byte budget: stops before exceeding it, but never returns nothing.
    let r = sp.read_after(10, usize::MAX, 200).unwrap();
    let total: usize = r.iter().map(|x| x.1.len()).sum();
    assert!(!r.is_empty() && total <= 200, "{total}");
    assert_eq!(r[0].0, 11);
    assert!(total + sizes[r.last().unwrap().0 as usize + 1] > 200);
    assert_eq!(seqs(&sp.read_after(10, 5, 0).unwrap()), vec![11]);
    assert!(sp.read_after(10, 0, 1000).unwrap().is_empty());

    // Streaming in small batches yields everything exactly once, in order.
    let mut got = Vec::new();
    let mut after = 0;
    loop {
        let batch = sp.read_after(after, 4, 150).unwrap();
        let Some(last) = batch.last() else { break };
        after = last.0;
        got.extend(batch);
    }
    assert_eq!(seqs(&got), (1..=60).collect::<Vec<_>>());
    check(&got);

    sp.ack(20).unwrap();
    assert_eq!(sp.read_after(5, 1, usize::MAX).unwrap()[0].0, 21);
    assert_eq!(sp.read_after(59, 10, usize::MAX).unwrap().len(), 1);
    assert!(sp.read_after(60, 10, usize::MAX).unwrap().is_empty());
    assert!(sp.read_after(u64::MAX, 10, usize::MAX).unwrap().is_empty());
}

#[test]
fn spool_last_record() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    {
        let mut sp = Spool::open(dir, opts(200, 1 << 20)).unwrap();
        assert_eq!(sp.last_record().unwrap(), None);
        append_n(&mut sp, 9, 50);
        assert_eq!(sp.last_record().unwrap(), Some((9, payload(9, 50))));
        sp.ack(9).unwrap();
        // Still in the (active) segment, and that is what startup needs for the cursor.
        assert_eq!(sp.last_record().unwrap(), Some((9, payload(9, 50))));
    }
    let sp = Spool::open(dir, opts(200, 1 << 20)).unwrap();
    assert_eq!(sp.last_record().unwrap(), Some((9, payload(9, 50))));
}

/// Appends 1..=n (payload len 40) in one segment, closes, and returns the segment path.
fn spool_with(dir: &Path, n: u64) -> PathBuf {
    let mut sp = Spool::open(dir, SpoolOptions { fsync: true, ..SpoolOptions::default() }).unwrap();
    append_n(&mut sp, n, 40);
    let files = seg_files(dir);
    assert_eq!(files.len(), 1);
    files[0].clone()
}

const REC: u64 = HEADER_LEN as u64 + 40;

fn reopen_expect(dir: &Path, expect: &[u64], corrupt: u64) -> Spool {
    let sp = Spool::open(dir, SpoolOptions::default()).unwrap();
    let recs = all(&sp);
    assert_eq!(seqs(&recs), expect);
    check_payloads(&recs, 40);
    assert_eq!(sp.stats().corrupt_records_total, corrupt, "{:?}", sp.stats());
    sp
}

#[test]
fn spool_torn_tail_mid_record_is_truncated() {
    let tmp = tempfile::tempdir().unwrap();
    let seg = spool_with(tmp.path(), 5);
    let f = OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(5 * REC - 7).unwrap();
    drop(f);
    {
        let mut sp = reopen_expect(tmp.path(), &[1, 2, 3, 4], 1);
        assert_eq!(fs::metadata(&seg).unwrap().len(), 4 * REC);
        // Seq 5 never made it to disk, so it was never returned with fsync on: reuse is fine.
        assert_eq!(sp.append(&payload(5, 40)).unwrap(), 5);
        assert_eq!(sp.append(&payload(6, 40)).unwrap(), 6);
    }
    // Repaired for good: the count is persisted, not recounted.
    reopen_expect(tmp.path(), &[1, 2, 3, 4, 5, 6], 1);

    // A tail shorter than a header.
    let f = OpenOptions::new().append(true).open(&seg).unwrap();
    (&f).write_all(&[0xC7, 0x5E]).unwrap();
    drop(f);
    reopen_expect(tmp.path(), &[1, 2, 3, 4, 5, 6], 2);
}

#[test]
fn spool_torn_tail_of_zeros_or_garbage_is_truncated() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut partial = Vec::new();
    segment::encode(&mut partial, 4, &[1; 100]);
    let mut bad_crc = partial.clone();
    bad_crc[50] ^= 1;
    // A plausible header claiming more bytes than the file has.
    partial.truncate(60);
    let tails: Vec<Vec<u8>> = vec![vec![0; 4096], (0..3000).map(|_| rng.random()).collect(), partial, bad_crc];
    for tail in &tails {
        let tmp = tempfile::tempdir().unwrap();
        let seg = spool_with(tmp.path(), 3);
        let f = OpenOptions::new().append(true).open(&seg).unwrap();
        (&f).write_all(tail).unwrap();
        drop(f);
        {
            let mut sp = reopen_expect(tmp.path(), &[1, 2, 3], 1);
            assert_eq!(fs::metadata(&seg).unwrap().len(), 3 * REC);
            assert_eq!(sp.append(&payload(4, 40)).unwrap(), 4);
        }
        reopen_expect(tmp.path(), &[1, 2, 3, 4], 1);
    }
}

#[test]
fn spool_corrupt_record_in_the_middle_is_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let seg = spool_with(tmp.path(), 10);
    let mut bytes = fs::read(&seg).unwrap();
    bytes[(3 * REC + 30) as usize] ^= 0x40; // payload of seq 4
    bytes[(6 * REC) as usize] = 0; // magic of seq 7
    fs::write(&seg, &bytes).unwrap();
    {
        let mut sp = reopen_expect(tmp.path(), &[1, 2, 3, 5, 6, 8, 9, 10], 2);
        assert_eq!(sp.stats().batches, 8);
        assert_eq!(sp.append(&payload(11, 40)).unwrap(), 11);
        assert_eq!(seqs(&sp.read_after(3, 2, usize::MAX).unwrap()), vec![5, 6]);
        assert_eq!(seqs(&sp.read_after(5, 2, usize::MAX).unwrap()), vec![6, 8]);
    }
    // The damage was padded over: skipped again but not counted again.
    reopen_expect(tmp.path(), &[1, 2, 3, 5, 6, 8, 9, 10, 11], 2);
}

#[test]
fn spool_corruption_after_open_is_skipped_on_read() {
    let tmp = tempfile::tempdir().unwrap();
    let seg = spool_with(tmp.path(), 5);
    let sp = Spool::open(tmp.path(), SpoolOptions::default()).unwrap();
    let f = OpenOptions::new().write(true).open(&seg).unwrap();
    f.write_all_at(&[0xFF], 4 * REC + 25).unwrap(); // seq 5, the last record
    drop(f);
    assert_eq!(seqs(&all(&sp)), vec![1, 2, 3, 4]);
    assert_eq!(seqs(&all(&sp)), vec![1, 2, 3, 4]);
    assert_eq!(sp.stats().corrupt_records_total, 1, "counted once");
    assert_eq!(sp.last_record().unwrap().map(|r| r.0), Some(4));
}

#[test]
fn spool_first_records_of_segment_corrupt() {
    let tmp = tempfile::tempdir().unwrap();
    let seg = spool_with(tmp.path(), 4);
    let mut bytes = fs::read(&seg).unwrap();
    bytes[10] ^= 1;
    bytes[(REC + 10) as usize] ^= 1;
    fs::write(&seg, &bytes).unwrap();
    reopen_expect(tmp.path(), &[3, 4], 2);
}

#[test]
fn spool_size_cap_drops_oldest_and_counts_unacked() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // 100 B records, 3 per segment, at most 10 records on disk.
    let mut sp = Spool::open(dir, opts(300, 1000)).unwrap();
    append_n(&mut sp, 10, 80);
    assert_eq!(sp.stats().dropped_batches_total, 0);
    sp.ack(2).unwrap();
    append_n(&mut sp, 1, 80); // drops [1-3]: only 3 was unacked
    assert_eq!(sp.stats().dropped_batches_total, 1);
    append_n(&mut sp, 20, 80);
    let st = sp.stats();
    assert!(st.bytes <= 1000, "{st:?}");
    let recs = all(&sp);
    let kept = seqs(&recs);
    assert_eq!(*kept.last().unwrap(), 31);
    let first = kept[0];
    assert_eq!(kept, (first..=31).collect::<Vec<_>>());
    // Every unacked record is either still there or counted as dropped.
    assert_eq!(st.dropped_batches_total, first - 1 - 2);
    assert_eq!(st.batches, kept.len() as u64);
    check_payloads(&recs, 80);
    drop(sp);
    let sp = Spool::open(dir, opts(300, 1000)).unwrap();
    assert_eq!(sp.stats().dropped_batches_total, first - 3);
    assert_eq!(seqs(&all(&sp)), kept);

    // A single active segment bigger than the cap (no rotation) is dropped too.
    let tmp = tempfile::tempdir().unwrap();
    let mut sp = Spool::open(tmp.path(), opts(1 << 20, 1000)).unwrap();
    append_n(&mut sp, 12, 80);
    let kept = seqs(&all(&sp));
    assert_eq!(kept, vec![11, 12]);
    assert_eq!(sp.stats().dropped_batches_total, 10);
}

#[test]
fn spool_rejects_too_large_payload() {
    let tmp = tempfile::tempdir().unwrap();
    let mut sp = Spool::open(tmp.path(), opts(1000, 1000)).unwrap();
    let err = sp.append(&[0; 1000]).unwrap_err();
    assert!(matches!(err, SpoolError::TooLarge { len: 1000, max: 1000 }), "{err}");
    assert!(err.to_string().contains("too large"));
    assert_eq!(sp.append(&[0; 1000 - HEADER_LEN]).unwrap(), 1);
    assert_eq!(sp.append(b"ok").unwrap(), 2);
    assert_eq!(seqs(&all(&sp)), vec![2]);
}

#[test]
fn spool_io_failure_on_append_leaves_it_usable() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    {
        let mut sp = Spool::open(dir, SpoolOptions { segment_bytes: 1000, ..SpoolOptions::default() }).unwrap();
        append_n(&mut sp, 3, 40);

        sp.fault = Some(Fault::ShortWrite(30));
        let err = sp.append(&payload(4, 40)).unwrap_err();
        assert!(err.is_disk_full(), "{err}");
        assert!(err.to_string().contains("No space left"), "{err}");
        assert_eq!(sp.stats().next_seq, 4);
        append_n(&mut sp, 1, 40);

        sp.fault = Some(Fault::SyncFail);
        assert!(sp.append(&payload(5, 40)).is_err());
        let segs = seg_files(dir).len();
        append_n(&mut sp, 1, 40);
        assert_eq!(seg_files(dir).len(), segs + 1, "fsync failure: new file, not the suspect fd");

        sp.fault = Some(Fault::ShortWriteNoTruncate(50));
        assert!(sp.append(&payload(6, 40)).is_err());
        append_n(&mut sp, 2, 40);

        sp.fault = Some(Fault::SyncFail);
        assert!(sp.append(&payload(8, 40)).is_err());
        // And again on the very first record of the fresh segment the retry starts.
        sp.fault = Some(Fault::SyncFail);
        assert!(sp.append(&payload(8, 40)).is_err());
        append_n(&mut sp, 2, 40);
        let recs = all(&sp);
        assert_eq!(seqs(&recs), (1..=9).collect::<Vec<_>>());
        check_payloads(&recs, 40);
    }
    let mut sp = Spool::open(dir, SpoolOptions::default()).unwrap();
    let recs = all(&sp);
    assert_eq!(seqs(&recs), (1..=9).collect::<Vec<_>>());
    check_payloads(&recs, 40);
    assert_eq!(sp.append(b"x").unwrap(), 10);
}

#[test]
fn spool_stale_record_of_failed_append_is_not_resurrected() {
    // fsync failed after a complete write and truncation failed too: the record stays in the
    // old file while its seq is reassigned in the next segment. Recovery must keep the new one.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    {
        let mut sp = Spool::open(dir, SpoolOptions::default()).unwrap();
        append_n(&mut sp, 2, 40);
        sp.fault = Some(Fault::ShortWriteNoTruncate(1000)); // whole record written
        assert!(sp.append(b"stale").is_err());
        assert_eq!(sp.append(&payload(3, 40)).unwrap(), 3);
    }
    let sp = reopen_expect(dir, &[1, 2, 3], 1);
    assert_eq!(sp.last_record().unwrap(), Some((3, payload(3, 40))));
}

#[test]
fn spool_garbled_side_files_do_not_prevent_open() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    spool_with(dir, 3);
    let old_id = fs::read_to_string(dir.join(state::ID_FILE)).unwrap();
    fs::write(dir.join(state::STATE_FILE), b"\0\0garbage").unwrap();
    fs::write(dir.join(state::ID_FILE), [0xFF, 0xFE, 0]).unwrap();
    fs::write(dir.join("state.tmp"), b"leftover").unwrap();
    fs::write(dir.join("notes.txt"), b"unrelated").unwrap();
    let mut sp = Spool::open(dir, SpoolOptions::default()).unwrap();
    assert_ne!(sp.id(), old_id.trim());
    assert!(uuid::Uuid::parse_str(sp.id()).is_ok());
    assert_eq!(sp.append(b"x").unwrap(), 4);
    assert!(!dir.join("state.tmp").exists());
    drop(sp);
    fs::write(dir.join(state::STATE_FILE), b"").unwrap();
    let sp = Spool::open(dir, SpoolOptions::default()).unwrap();
    assert_eq!(sp.stats().next_seq, 5);
}

#[test]
fn spool_is_locked_against_a_second_writer() {
    let tmp = tempfile::tempdir().unwrap();
    let sp = Spool::open(tmp.path(), SpoolOptions::default()).unwrap();
    let err = Spool::open(tmp.path(), SpoolOptions::default()).unwrap_err();
    assert!(matches!(err, SpoolError::Locked { .. }), "{err}");
    drop(sp);
    Spool::open(tmp.path(), SpoolOptions::default()).unwrap();
}

/// Arbitrary bytes in segment files must never panic or produce out-of-order records.
#[test]
fn spool_survives_random_garbage_segments() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    for round in 0..200 {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let nseg = rng.random_range(1..4);
        let mut base = rng.random_range(1..50u64);
        for _ in 0..nseg {
            let mut bytes = Vec::new();
            let mut seq = base;
            for _ in 0..rng.random_range(0..20) {
                match rng.random_range(0..6) {
                    0 => bytes.extend((0..rng.random_range(0..64)).map(|_| rng.random::<u8>())),
                    1 => bytes.extend_from_slice(&segment::MAGIC),
                    2 => bytes.extend(std::iter::repeat_n(0u8, rng.random_range(1..64))),
                    _ => {
                        let mut r = Vec::new();
                        seq += rng.random_range(0..3);
                        segment::encode(&mut r, seq, &payload(seq, rng.random_range(0..50)));
                        if rng.random_bool(0.2) {
                            let i = rng.random_range(0..r.len());
                            r[i] ^= rng.random::<u8>() | 1;
                        }
                        if rng.random_bool(0.1) {
                            r.truncate(rng.random_range(0..r.len()));
                        }
                        bytes.extend(r);
                        seq += 1;
                    }
                }
            }
            fs::write(dir.join(seg_name(base)), &bytes).unwrap();
            base = seq + rng.random_range(0..3);
        }
        if rng.random_bool(0.5) {
            let junk: Vec<u8> = (0..rng.random_range(0..60)).map(|_| rng.random()).collect();
            fs::write(dir.join(state::STATE_FILE), junk).unwrap();
        }
        let check = |sp: &Spool| {
            let recs = all(sp);
            assert!(recs.windows(2).all(|w| w[0].0 < w[1].0), "round {round}");
            for (seq, p) in &recs {
                assert_eq!(p, &payload(*seq, p.len()), "round {round}");
                assert!(*seq < sp.stats().next_seq);
            }
            assert_eq!(sp.stats().batches, recs.len() as u64);
            recs
        };
        let mut sp = Spool::open(dir, opts(300, 1 << 20)).unwrap();
        let before = check(&sp);
        let next = sp.stats().next_seq;
        let seq = sp.append(&payload(next, 20)).unwrap();
        assert!(before.last().is_none_or(|l| l.0 < seq));
        drop(sp);
        let sp = Spool::open(dir, opts(300, 1 << 20)).unwrap();
        let after = check(&sp);
        assert_eq!(after.last().map(|r| r.0), Some(seq), "round {round}");
        assert_eq!(after.len(), before.len() + 1, "round {round}");
    }
}

const CRASH_ENV: &str = "MEDIC_SPOOL_CRASH_CHILD_DIR";

/// Not a test on its own: the body of the child process of `spool_survives_sigkill`.
#[test]
fn spool_crash_child() {
    let Ok(dir) = std::env::var(CRASH_ENV) else {
        return;
    };
    let fsync = std::env::var("MEDIC_SPOOL_CRASH_FSYNC").is_ok_and(|v| v == "1");
    let o = SpoolOptions { max_bytes: 64 << 20, segment_bytes: 16 << 10, fsync };
    let mut sp = Spool::open(Path::new(&dir), o).unwrap();
    let mut out = std::io::stdout().lock();
    loop {
        let seq = sp.stats().next_seq;
        let got = sp.append(&payload(seq, 50 + (seq % 300) as usize)).unwrap();
        assert_eq!(got, seq);
        writeln!(out, "SEQ {got}").unwrap();
        out.flush().unwrap();
        if got.is_multiple_of(64) {
            sp.ack(got - 32).unwrap();
            writeln!(out, "ACK {}", got - 32).unwrap();
            out.flush().unwrap();
        }
    }
}

#[test]
fn spool_survives_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let exe = std::env::current_exe().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let mut max_seen = 0u64;
    let mut total = 0usize;
    let mut corrupt = 0;
    for iter in 0..30 {
        let mut child = std::process::Command::new(&exe)
            .args(["spool::tests::spool_crash_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(CRASH_ENV, dir)
            .env("MEDIC_SPOOL_CRASH_FSYNC", if iter % 2 == 0 { "1" } else { "0" })
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            std::io::BufReader::new(stdout).lines().map_while(Result::ok).collect::<Vec<_>>()
        });
        std::thread::sleep(Duration::from_millis(rng.random_range(40..200)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let lines = reader.join().unwrap();
        let printed: Vec<u64> = lines.iter().filter_map(|l| l.strip_prefix("SEQ ")?.parse().ok()).collect();
        total += printed.len();

        let sp = Spool::open(dir, SpoolOptions::default()).unwrap();
        let acked = sp.stats().acked_seq;
        let recs = all(&sp);
        assert!(recs.windows(2).all(|w| w[0].0 < w[1].0));
        for (seq, p) in &recs {
            assert_eq!(p, &payload(*seq, 50 + (seq % 300) as usize), "iter {iter} seq {seq}");
        }
        let on_disk: std::collections::HashSet<u64> = recs.iter().map(|r| r.0).collect();
        for &s in &printed {
            assert!(s > max_seen, "iter {iter}: seq {s} reused (previous max {max_seen})");
            if !(s <= acked || on_disk.contains(&s)) {
                let tail: Vec<_> = lines.iter().rev().take(10).collect();
                let files: Vec<_> = fs::read_dir(dir)
                    .unwrap()
                    .map(|e| {
                        let e = e.unwrap();
                        (e.file_name(), e.metadata().unwrap().len())
                    })
                    .collect();
                panic!(
                    "iter {iter}: returned seq {s} lost (acked {acked}); recs {:?}; tail {tail:?}; files {files:?}; stats {:?}",
                    seqs(&recs),
                    sp.stats()
                );
            }
        }
        max_seen = max_seen.max(printed.last().copied().unwrap_or(0)).max(sp.stats().next_seq - 1);
        corrupt = sp.stats().corrupt_records_total;
    }
    assert!(total > 100, "child appended only {total} records");
    // A kill can split a write that crosses a page boundary, so a torn tail is possible.
    println!("crash test: {total} appends over 30 SIGKILLs, all recovered; {corrupt} torn tails");
}

/// Prints append throughput; run with `cargo test --release -p agentd spool_append_throughput -- --nocapture`.
#[test]
fn spool_append_throughput() {
    for (fsync, size, budget) in
        [(false, 1024, 20_000), (false, 64 << 10, 2_000), (true, 1024, 2_000), (true, 64 << 10, 500)]
    {
        let tmp = tempfile::tempdir().unwrap();
        let mut sp = Spool::open(tmp.path(), SpoolOptions { fsync, ..SpoolOptions::default() }).unwrap();
        let data = payload(0, size);
        let start = Instant::now();
        let mut n = 0u64;
        while n < budget && start.elapsed() < Duration::from_secs(2) {
            sp.append(&data).unwrap();
            n += 1;
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "spool append fsync={fsync:<5} payload={size:>6} B: {:>9.0} records/s {:>8.1} MB/s ({n} records)",
            n as f64 / secs,
            (n * size as u64) as f64 / secs / 1e6
        );
        let start = Instant::now();
        let mut after = 0;
        let mut read = 0;
        loop {
            let batch = sp.read_after(after, 512, 1 << 20).unwrap();
            let Some(last) = batch.last() else { break };
            after = last.0;
            read += 1;
        }
        let secs = start.elapsed().as_secs_f64();
        println!("  read_after back: {:.1} MB/s ({read} calls)", (n * size as u64) as f64 / secs / 1e6);
        drop(sp);
        let start = Instant::now();
        let sp = Spool::open(tmp.path(), SpoolOptions::default()).unwrap();
        println!(
            "  reopen (recovery scan of {:.1} MB): {:.0} ms",
            sp.stats().bytes as f64 / 1e6,
            start.elapsed().as_secs_f64() * 1e3
        );
    }
}

/// Real ENOSPC on a tiny tmpfs. Mounting needs root (CI and the dev machines are root); without
/// it the test says so and passes vacuously.
#[test]
fn spool_real_disk_full() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=512k", "tmpfs"])
        .arg(mnt)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        println!("skipping: cannot mount tmpfs");
        return;
    }
    struct Umount<'a>(&'a Path);
    impl Drop for Umount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _guard = Umount(mnt);
    let dir = mnt.join("spool");
    let mut sp = Spool::open(&dir, SpoolOptions { segment_bytes: 64 << 10, ..SpoolOptions::default() }).unwrap();
    fs::write(mnt.join("filler"), vec![1u8; 300 << 10]).unwrap();
    let mut ok_seqs = Vec::new();
    let err = loop {
        match sp.append(&payload(sp.stats().next_seq, 3000)) {
            Ok(s) => ok_seqs.push(s),
            Err(e) => break e,
        }
    };
    println!("disk full after {} appends: {err}", ok_seqs.len());
    assert!(err.is_disk_full(), "{err}");
    assert!(sp.append(&payload(sp.stats().next_seq, 3000)).is_err());
    fs::remove_file(mnt.join("filler")).unwrap();
    let s = sp.append(&payload(sp.stats().next_seq, 3000)).unwrap();
    ok_seqs.push(s);
    assert_eq!(seqs(&all(&sp)), ok_seqs);
    drop(sp);
    let sp = Spool::open(&dir, SpoolOptions::default()).unwrap();
    let recs = all(&sp);
    assert_eq!(seqs(&recs), ok_seqs);
    check_payloads(&recs, 3000);
}
