//! Per-process-name metrics for the configured processes (clickhouse-server, keeper, ...), plus
//! the host's pid count.
//!
//! Matching: a pid matches a configured name when its comm equals the name, or when the kernel
//! cut comm to 15 bytes and the basename of argv[0] equals the name (so "clickhouse-server",
//! whose comm is "clickhouse-serv", works). A process whose comm has nothing in common with the
//! name (renamed via prctl, `exec -a`) is not found: checking argv[0] of every pid would multiply
//! the scan's cost.
//!
//! This is the expensive collector: it visits every pid each round, and on a VM each procfs read
//! costs microseconds, which for 1000 pids would be most of the agent's CPU budget. So:
//! - with no processes configured it only lists /proc to count pids;
//! - stat, cmdline and fd are read only for pids whose comm matched;
//! - whether a pid matches is remembered. comm is re-read for a pid's first `FRESH_ROUNDS`
//!   rounds (fork-then-exec, entrypoint scripts that `exec` the server) and after that only once
//!   every `RECHECK_ROUNDS` rounds, staggered by pid. A long-lived pid that later `exec`s into a
//!   configured name can therefore go unnoticed for up to `RECHECK_ROUNDS` rounds. A matched
//!   pid's comm comes for free with its stat line every round, so leaving a name is noticed at
//!   once.

use super::{HostPaths, page_size, user_hz};
use crate::collect::host::FileBuf;
use crate::collect::{CollectError, Collector, counter, gauge};
use medic_proto::v1::Sample;
use std::collections::HashMap;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// comm holds at most TASK_COMM_LEN - 1 bytes.
const COMM_MAX: usize = 15;
/// Rounds during which a new pid's comm is re-read every round.
const FRESH_ROUNDS: u64 = 3;
/// After that, how often an unmatched pid's comm is re-read.
const RECHECK_ROUNDS: u64 = 10;

pub struct ProcessCollector {
    proc_root: PathBuf,
    /// Configured names, deduplicated, in configuration order.
    names: Vec<String>,
    /// Per-name sums for the current round, parallel to `names`.
    totals: Vec<Totals>,
    /// `proc_root/<pid>`, rebuilt per pid in place.
    pid_dir: PathBuf,
    buf: FileBuf,
    user_hz: f64,
    page_size: f64,
    /// On real procfs (Linux 6.2+) the size of /proc/pid/fd is the number of open fds, which
    /// saves listing thousands of entries for a busy ClickHouse.
    fd_dir_size_is_count: bool,
    /// What each live pid was last found to be; exited pids are dropped every round.
    known: HashMap<u32, PidState>,
    round: u64,
    /// comm files read so far, so tests can hold the cache to its promise.
    comm_reads: u64,
}

#[derive(Debug, Clone, Copy)]
struct PidState {
    first_round: u64,
    last_round: u64,
    /// Index into `names`.
    matched: Option<usize>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    count: u64,
    cpu_ticks: u64,
    rss_pages: u64,
    threads: u64,
    open_fds: u64,
    /// False once any matching pid's fds could not be counted: a partial sum would read as a
    /// drop in fds rather than as missing data.
    open_fds_known: bool,
}

#[derive(Debug, PartialEq)]
struct Usage {
    cpu_ticks: u64,
    rss_pages: u64,
    threads: u64,
}

impl ProcessCollector {
    pub fn new(paths: &HostPaths, names: &[String]) -> Self {
        let mut unique: Vec<String> = Vec::with_capacity(names.len());
        for n in names {
            if !n.is_empty() && !unique.contains(n) {
                unique.push(n.clone());
            }
        }
        Self {
            proc_root: paths.proc_root.clone(),
            totals: vec![Totals::default(); unique.len()],
            names: unique,
            pid_dir: PathBuf::new(),
            buf: FileBuf::default(),
            user_hz: user_hz(),
            page_size: page_size(),
            fd_dir_size_is_count: is_procfs(&paths.proc_root),
            known: HashMap::new(),
            round: 0,
            comm_reads: 0,
        }
    }

    /// Which configured name the pid in `pid_dir` runs as, if any.
    fn match_pid(&mut self) -> Option<usize> {
        self.pid_dir.push("comm");
        self.comm_reads += 1;
        let comm = self.buf.read(&self.pid_dir);
        self.pid_dir.pop();
        let comm = comm.ok()?;
        let comm = comm.strip_suffix('\n').unwrap_or(&comm);
        if let Some(i) = self.names.iter().position(|n| n == comm) {
            return Some(i);
        }
        // Only a comm the kernel truncated can stand for a longer name; only then is argv[0]
        // worth a read.
        let truncated = comm.len() == COMM_MAX && self.names.iter().any(|n| n.len() > COMM_MAX && comm_fits(n, comm));
        if !truncated {
            return None;
        }
        self.pid_dir.push("cmdline");
        let cmdline = self.buf.read(&self.pid_dir);
        self.pid_dir.pop();
        let cmdline = cmdline.ok()?;
        let argv0 = cmdline.split('\0').next()?;
        let base = argv0.rsplit('/').next()?;
        self.names.iter().position(|n| n == base)
    }

    /// Usage of the pid in `pid_dir` if it still runs as `names[i]`. None for zombies, which
    /// hold no resources and must not count as running, and for a pid that exec'd into
    /// something else since it matched.
    fn read_stat(&mut self, i: usize) -> Option<Usage> {
        self.pid_dir.push("stat");
        let stat = self.buf.read(&self.pid_dir);
        self.pid_dir.pop();
        let stat = stat.ok()?;
        let (comm, usage) = parse_stat(&stat)?;
        comm_fits(&self.names[i], comm).then_some(usage)
    }

    fn count_fds(&mut self) -> Option<u64> {
        self.pid_dir.push("fd");
        let result = (|| {
            if self.fd_dir_size_is_count {
                let size = fs::metadata(&self.pid_dir).ok()?.len();
                // Kernels before 6.2 report 0: fall through to counting.
                if size > 0 {
                    return Some(size);
                }
            }
            Some(fs::read_dir(&self.pid_dir).ok()?.count() as u64)
        })();
        self.pid_dir.pop();
        result
    }

    /// Lists /proc once, accumulating into `totals`; returns the number of pids.
    fn scan(&mut self) -> Result<u64, CollectError> {
        let entries =
            fs::read_dir(&self.proc_root).map_err(|e| CollectError::io(self.proc_root.display().to_string(), e))?;
        self.round += 1;
        let round = self.round;
        let mut pids = 0;
        for entry in entries {
            let entry = entry.map_err(|e| CollectError::io(self.proc_root.display().to_string(), e))?;
            let name = entry.file_name();
            let Some(pid) = parse_pid(name.as_bytes()) else {
                continue;
            };
            pids += 1;
            if self.names.is_empty() {
                continue;
            }
            let state =
                self.known.entry(pid).or_insert(PidState { first_round: round, last_round: round, matched: None });
            state.last_round = round;
            let recheck = state.matched.is_none()
                && (round - state.first_round < FRESH_ROUNDS
                    || (u64::from(pid) + round).is_multiple_of(RECHECK_ROUNDS));
            let cached = state.matched;

            // Any read below can fail because the process just exited: that pid is skipped.
            self.pid_dir.clear();
            self.pid_dir.push(&self.proc_root);
            self.pid_dir.push(&name);
            let matched = if recheck { self.match_pid() } else { cached };
            let Some(i) = matched else { continue };
            let usage = self.read_stat(i);
            if let Some(state) = self.known.get_mut(&pid) {
                *state = match usage {
                    Some(_) => PidState { matched: Some(i), ..*state },
                    // It exec'd into something else (or died): identify it afresh.
                    None => PidState { first_round: round, last_round: round, matched: None },
                };
            }
            let Some(usage) = usage else { continue };
            let fds = self.count_fds();
            let t = &mut self.totals[i];
            t.count += 1;
            t.cpu_ticks += usage.cpu_ticks;
            t.rss_pages += usage.rss_pages;
            t.threads += usage.threads;
            match fds {
                Some(n) => t.open_fds += n,
                None => t.open_fds_known = false,
            }
        }
        self.known.retain(|_, s| s.last_round == round);
        Ok(pids)
    }
}

/// Whether `comm` is what a process started as `name` shows: the name itself, or its first 15
/// bytes when the name is longer.
fn comm_fits(name: &str, comm: &str) -> bool {
    let name = name.as_bytes();
    comm.as_bytes() == &name[..name.len().min(COMM_MAX)]
}

/// Splits a /proc/pid/stat line into comm and usage. comm may itself contain spaces and ')', so
/// it runs from the first '(' to the last ')'. Indexes are proc(5) field numbers minus 3 (state
/// is field 3).
fn parse_stat(stat: &str) -> Option<(&str, Usage)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?;
    let mut f = stat[close + 1..].split_ascii_whitespace();
    let state = f.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    let utime: u64 = f.nth(10)?.parse().ok()?; // field 14
    let stime: u64 = f.next()?.parse().ok()?; // field 15
    let threads: u64 = f.nth(4)?.parse().ok()?; // field 20
    let rss: i64 = f.nth(3)?.parse().ok()?; // field 24, signed in the kernel
    let usage = Usage { cpu_ticks: utime + stime, rss_pages: rss.max(0) as u64, threads };
    Some((comm, usage))
}

fn parse_pid(name: &[u8]) -> Option<u32> {
    if name.is_empty() || !name.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(name).ok()?.parse().ok()
}

fn is_procfs(path: &std::path::Path) -> bool {
    let Ok(cpath) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs is plain old data; all-zero is a valid value that the call overwrites.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `cpath` is NUL-terminated and `st` is a valid out pointer for the call's duration.
    let ok = unsafe { libc::statfs(cpath.as_ptr(), &mut st) } == 0;
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between architectures
    let is_proc = st.f_type as i64 == libc::PROC_SUPER_MAGIC as i64;
    ok && is_proc
}

impl Collector for ProcessCollector {
    fn name(&self) -> &'static str {
        "process"
    }

    fn collect(&mut self, now_ms: i64, out: &mut Vec<Sample>) -> Result<(), CollectError> {
        for t in &mut self.totals {
            *t = Totals { open_fds_known: true, ..Totals::default() };
        }
        let pids = self.scan()?;
        out.push(gauge("node_processes_pids", &[], now_ms, pids as f64));
        for (name, t) in self.names.iter().zip(&self.totals) {
            let labels = [("process", name.as_str())];
            let cpu_seconds = t.cpu_ticks as f64 / self.user_hz;
            let rss_bytes = t.rss_pages as f64 * self.page_size;
            out.extend([
                gauge("node_process_count", &labels, now_ms, t.count as f64),
                counter("node_process_cpu_seconds_total", &labels, now_ms, cpu_seconds),
                gauge("node_process_resident_memory_bytes", &labels, now_ms, rss_bytes),
                gauge("node_process_threads", &labels, now_ms, t.threads as f64),
            ]);
            if t.open_fds_known {
                let fds = t.open_fds as f64;
                out.push(gauge("node_process_open_fds", &labels, now_ms, fds));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::host::testutil::{FakeHost, render, value};

    /// A /proc/<pid>/stat line with the given comm, state, utime, stime, threads and rss pages.
    fn stat_line(pid: u32, comm: &str, state: &str, utime: u64, stime: u64, threads: u64, rss: i64) -> String {
        format!(
            "{pid} ({comm}) {state} 1 {pid} {pid} 0 -1 4194560 1000 0 0 0 {utime} {stime} 0 0 20 0 \
             {threads} 0 12345 1073741824 {rss} 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n"
        )
    }

    fn add_process(host: &FakeHost, pid: u32, comm: &str, cmdline: &str, stat: &str, fds: usize) {
        host.proc_file(&format!("{pid}/comm"), &format!("{comm}\n"));
        host.proc_file(&format!("{pid}/cmdline"), cmdline);
        host.proc_file(&format!("{pid}/stat"), stat);
        std::fs::create_dir_all(host.paths.proc_root.join(format!("{pid}/fd"))).unwrap();
        for fd in 0..fds {
            host.proc_file(&format!("{pid}/fd/{fd}"), "");
        }
    }

    fn collector(host: &FakeHost, names: &[&str]) -> ProcessCollector {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut c = ProcessCollector::new(&host.paths, &names);
        // Fixed so expectations do not depend on the machine running the tests.
        c.user_hz = 100.0;
        c.page_size = 4096.0;
        c
    }

    fn fake_host() -> FakeHost {
        let host = FakeHost::new();
        // Two clickhouse-server processes: comm is truncated, argv[0] carries the full name.
        add_process(
            &host,
            100,
            "clickhouse-serv",
            "/usr/bin/clickhouse-server\0--config-file=/etc/clickhouse-server/config.xml\0",
            &stat_line(100, "clickhouse-serv", "S", 1500, 500, 300, 250_000),
            5,
        );
        add_process(
            &host,
            101,
            "clickhouse-serv",
            "/usr/bin/clickhouse-server\0",
            &stat_line(101, "clickhouse-serv", "R", 100, 50, 10, 1000),
            3,
        );
        // Same truncated comm, different program: must not be counted as clickhouse-server.
        add_process(
            &host,
            102,
            "clickhouse-serv",
            "/opt/clickhouse-service-probe\0",
            &stat_line(102, "clickhouse-serv", "S", 9999, 9999, 1, 1),
            1,
        );
        // comm with spaces and parentheses, which naive stat parsers split wrongly.
        add_process(&host, 200, "weird) (name", "weird\0", &stat_line(200, "weird) (name", "S", 10, 20, 2, 100), 0);
        // A zombie keeper: dead, must not count as running.
        add_process(&host, 300, "keeper", "", &stat_line(300, "keeper", "Z", 7, 7, 1, 0), 0);
        add_process(&host, 400, "bash", "-bash\0", &stat_line(400, "bash", "S", 1, 1, 1, 10), 0);
        // Not pids: ignored entirely.
        host.proc_file("self/comm", "clickhouse-serv\n");
        host.proc_file("meminfo", "MemTotal: 1 kB\n");
        host
    }

    #[test]
    fn sums_count_cpu_memory_threads_and_fds_per_configured_name() {
        let host = fake_host();
        let mut c = collector(&host, &["clickhouse-server", "weird) (name", "keeper", "absent"]);
        let mut out = Vec::new();
        c.collect(7, &mut out).unwrap();
        assert_eq!(
            render(&out),
            [
                "gauge node_processes_pids{} 6",
                r#"gauge node_process_count{process="clickhouse-server"} 2"#,
                r#"counter node_process_cpu_seconds_total{process="clickhouse-server"} 21.5"#,
                r#"gauge node_process_resident_memory_bytes{process="clickhouse-server"} 1028096000"#,
                r#"gauge node_process_threads{process="clickhouse-server"} 310"#,
                r#"gauge node_process_open_fds{process="clickhouse-server"} 8"#,
                r#"gauge node_process_count{process="weird) (name"} 1"#,
                r#"counter node_process_cpu_seconds_total{process="weird) (name"} 0.3"#,
                r#"gauge node_process_resident_memory_bytes{process="weird) (name"} 409600"#,
                r#"gauge node_process_threads{process="weird) (name"} 2"#,
                r#"gauge node_process_open_fds{process="weird) (name"} 0"#,
                r#"gauge node_process_count{process="keeper"} 0"#,
                r#"counter node_process_cpu_seconds_total{process="keeper"} 0"#,
                r#"gauge node_process_resident_memory_bytes{process="keeper"} 0"#,
                r#"gauge node_process_threads{process="keeper"} 0"#,
                r#"gauge node_process_open_fds{process="keeper"} 0"#,
                r#"gauge node_process_count{process="absent"} 0"#,
                r#"counter node_process_cpu_seconds_total{process="absent"} 0"#,
                r#"gauge node_process_resident_memory_bytes{process="absent"} 0"#,
                r#"gauge node_process_threads{process="absent"} 0"#,
                r#"gauge node_process_open_fds{process="absent"} 0"#,
            ]
        );
    }

    #[test]
    fn the_truncated_comm_itself_also_works_as_a_name() {
        let host = fake_host();
        let mut out = Vec::new();
        collector(&host, &["clickhouse-serv"]).collect(7, &mut out).unwrap();
        assert_eq!(render(&out)[1], r#"gauge node_process_count{process="clickhouse-serv"} 3"#);
    }

    #[test]
    fn sums_restart_from_zero_every_round() {
        let host = fake_host();
        let mut c = collector(&host, &["bash"]);
        for _ in 0..3 {
            let mut out = Vec::new();
            c.collect(7, &mut out).unwrap();
            assert_eq!(render(&out)[1], r#"gauge node_process_count{process="bash"} 1"#);
        }
    }

    #[test]
    fn without_configured_names_only_pids_are_counted() {
        let host = fake_host();
        let mut out = Vec::new();
        collector(&host, &[]).collect(7, &mut out).unwrap();
        assert_eq!(render(&out), ["gauge node_processes_pids{} 6"]);
    }

    #[test]
    fn open_fds_is_left_out_when_some_matching_pid_cannot_be_counted() {
        let host = fake_host();
        std::fs::remove_dir_all(host.paths.proc_root.join("101/fd")).unwrap();
        let mut out = Vec::new();
        collector(&host, &["clickhouse-server"]).collect(7, &mut out).unwrap();
        let out = render(&out);
        assert!(out.contains(&r#"gauge node_process_count{process="clickhouse-server"} 2"#.into()));
        assert!(!out.iter().any(|l| l.contains("open_fds")), "a partial sum would look like a drop");
    }

    #[test]
    fn pids_with_unreadable_or_malformed_stat_are_skipped() {
        let host = fake_host();
        host.proc_file("100/stat", "100 (clickhouse-serv S 1 2 3");
        host.proc_file("101/stat", "garbage");
        std::fs::remove_file(host.paths.proc_root.join("400/stat")).unwrap();
        let mut out = Vec::new();
        collector(&host, &["clickhouse-server", "bash"]).collect(7, &mut out).unwrap();
        let out = render(&out);
        assert!(out.contains(&r#"gauge node_process_count{process="clickhouse-server"} 0"#.into()));
        assert!(out.contains(&r#"gauge node_process_count{process="bash"} 0"#.into()));
    }

    #[test]
    fn comm_fits_the_name_or_its_kernel_truncation() {
        assert!(comm_fits("bash", "bash"));
        assert!(comm_fits("clickhouse-server", "clickhouse-serv"));
        assert!(!comm_fits("clickhouse-server", "clickhouse-ser"));
        assert!(!comm_fits("bash", "bas"));
    }

    #[test]
    fn unmatched_pids_are_not_reread_every_round() {
        let host = fake_host();
        let mut c = collector(&host, &["clickhouse-server"]);
        let round = |c: &mut ProcessCollector| {
            let before = c.comm_reads;
            c.collect(7, &mut Vec::new()).unwrap();
            c.comm_reads - before
        };
        assert_eq!(round(&mut c), 6, "every new pid is looked at");
        for _ in 1..FRESH_ROUNDS {
            assert_eq!(round(&mut c), 4, "young unmatched pids are looked at every round");
        }
        let rechecks: u64 = (0..RECHECK_ROUNDS).map(|_| round(&mut c)).sum();
        assert_eq!(rechecks, 4, "then each once per {RECHECK_ROUNDS} rounds");
    }

    #[test]
    fn a_pid_that_execs_into_a_configured_name_is_found_within_the_recheck_period() {
        let host = fake_host();
        let mut c = collector(&host, &["keeper"]);
        let count = |c: &mut ProcessCollector| {
            let mut out = Vec::new();
            c.collect(7, &mut out).unwrap();
            value(&out, "node_process_count", &[("process", "keeper")])
        };
        for _ in 0..FRESH_ROUNDS + 1 {
            assert_eq!(count(&mut c), Some(0.0));
        }
        add_process(&host, 400, "keeper", "", &stat_line(400, "keeper", "S", 7, 7, 1, 0), 0);
        let rounds_to_find = (1..=RECHECK_ROUNDS).find(|_| count(&mut c) == Some(1.0));
        assert!(rounds_to_find.is_some(), "not found within {RECHECK_ROUNDS} rounds");
    }

    #[test]
    fn a_matched_pid_that_execs_into_something_else_is_dropped_at_once() {
        let host = fake_host();
        let mut c = collector(&host, &["bash"]);
        let count = |c: &mut ProcessCollector| {
            let mut out = Vec::new();
            c.collect(7, &mut out).unwrap();
            value(&out, "node_process_count", &[("process", "bash")])
        };
        for _ in 0..FRESH_ROUNDS + 1 {
            assert_eq!(count(&mut c), Some(1.0));
        }
        add_process(&host, 400, "sleep", "sleep\0", &stat_line(400, "sleep", "S", 1, 1, 1, 10), 0);
        assert_eq!(count(&mut c), Some(0.0));
    }

    #[test]
    fn exited_pids_are_forgotten() {
        let host = fake_host();
        let mut c = collector(&host, &["bash"]);
        c.collect(7, &mut Vec::new()).unwrap();
        assert_eq!(c.known.len(), 6);
        std::fs::remove_dir_all(host.paths.proc_root.join("400")).unwrap();
        c.collect(7, &mut Vec::new()).unwrap();
        assert_eq!(c.known.len(), 5);
        assert!(!c.known.contains_key(&400));
    }

    #[test]
    fn parses_stat_with_comm_up_to_the_last_parenthesis() {
        let usage = |cpu_ticks, rss_pages, threads| Usage { cpu_ticks, rss_pages, threads };
        let line = stat_line(1, "a) b (c)", "S", 3, 4, 5, 6);
        assert_eq!(parse_stat(&line), Some(("a) b (c)", usage(7, 6, 5))));
        let line = stat_line(1, "x", "S", 3, 4, 5, -1);
        assert_eq!(parse_stat(&line), Some(("x", usage(7, 0, 5))), "negative rss is clamped");
        assert_eq!(parse_stat("1 )x( S 1 2"), None);
    }

    #[test]
    fn parses_stat_rejecting_zombies_and_garbage() {
        assert_eq!(parse_stat(&stat_line(1, "x", "Z", 3, 4, 5, 6)), None);
        assert_eq!(parse_stat("1 (x) S 1 2"), None);
        assert_eq!(parse_stat("no parenthesis"), None);
        assert_eq!(parse_stat(""), None);
    }

    #[test]
    fn a_missing_proc_root_is_an_error() {
        let host = FakeHost::new();
        std::fs::remove_dir(&host.paths.proc_root).unwrap();
        let err = collector(&host, &[]).collect(0, &mut Vec::new()).unwrap_err();
        assert!(matches!(err, CollectError::Io { .. }));
    }

    #[test]
    fn counts_fds_of_a_real_process_through_procfs() {
        let mut c = ProcessCollector::new(&HostPaths::default(), &[]);
        assert!(c.fd_dir_size_is_count, "/proc is procfs");
        c.pid_dir = PathBuf::from(format!("/proc/{}", std::process::id()));
        let fds = c.count_fds().unwrap();
        assert!(fds >= 3, "stdin, stdout, stderr at least: {fds}");
    }
}
