//! /proc/stat: per-CPU time by mode plus the kernel's scheduler counters.
//!
//! Only per-CPU lines are reported, not the aggregate `cpu` line: the aggregate is their sum, and
//! keeping one source avoids dashboards double counting with `sum()`.

use super::{FileBuf, HostPaths, all_or_nothing, parse_error, user_hz};
use crate::collect::{CollectError, Collector, counter, gauge};
use medic_proto::v1::Sample;
use std::path::PathBuf;

/// Column order of the per-CPU lines. Older kernels print fewer columns (steal appeared in
/// 2.6.11); guest time is already included in user/nice, so it is not reported again.
const MODES: [&str; 8] = ["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"];

pub struct CpuCollector {
    path: PathBuf,
    buf: FileBuf,
    user_hz: f64,
}

impl CpuCollector {
    pub fn new(paths: &HostPaths) -> Self {
        Self::with_user_hz(paths, user_hz())
    }

    fn with_user_hz(paths: &HostPaths, user_hz: f64) -> Self {
        Self { path: paths.proc_root.join("stat"), buf: FileBuf::default(), user_hz }
    }
}

impl Collector for CpuCollector {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn collect(&mut self, now_ms: i64, out: &mut Vec<Sample>) -> Result<(), CollectError> {
        let text = self.buf.read_required(&self.path)?;
        all_or_nothing(out, |out| {
            let mut saw_cpu = false;
            for line in text.lines() {
                let mut fields = line.split_ascii_whitespace();
                let Some(key) = fields.next() else { continue };
                if let Some(cpu) = key.strip_prefix("cpu") {
                    if cpu.is_empty() || !cpu.bytes().all(|b| b.is_ascii_digit()) {
                        continue;
                    }
                    let mut jiffies = [0u64; MODES.len()];
                    let mut n = 0;
                    for (slot, field) in jiffies.iter_mut().zip(fields) {
                        match field.parse() {
                            Ok(v) => *slot = v,
                            Err(_) => break,
                        }
                        n += 1;
                    }
                    // Without user..idle the line is not a CPU line we understand; a CPU
                    // silently vanishing is better than made-up zeros.
                    if n < 4 {
                        continue;
                    }
                    saw_cpu = true;
                    for (mode, j) in MODES.iter().zip(&jiffies[..n]) {
                        out.push(counter(
                            "node_cpu_seconds_total",
                            &[("cpu", cpu), ("mode", mode)],
                            now_ms,
                            *j as f64 / self.user_hz,
                        ));
                    }
                    continue;
                }
                let (metric, is_counter) = match key {
                    "ctxt" => ("node_context_switches_total", true),
                    // The first number is the total; the per-IRQ columns that follow are noise.
                    "intr" => ("node_intr_total", true),
                    "processes" => ("node_forks_total", true),
                    "procs_running" => ("node_procs_running", false),
                    "procs_blocked" => ("node_procs_blocked", false),
                    "btime" => ("node_boot_time_seconds", false),
                    _ => continue,
                };
                let Some(v) = fields.next().and_then(|f| f.parse::<u64>().ok()) else {
                    continue;
                };
                let make = if is_counter { counter } else { gauge };
                out.push(make(metric, &[], now_ms, v as f64));
            }
            if saw_cpu { Ok(()) } else { Err(parse_error(&self.path, "no per-CPU lines")) }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::host::testutil::{FakeHost, render};

    const STAT: &str = "\
cpu  7111 0 2759 61544 135 0 28 7 0 0
cpu0 3328 0 1234 31189 12 0 9 1 0 0
cpu1 3783 50 1525 30355 123 2 19 6 0 0
intr 1158963 23 9 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
ctxt 2187254
btime 1718000000
processes 6878
procs_running 3
procs_blocked 1
softirq 468812 0 112019 19 8012 0 0 9 168478 0 180275
";

    fn collect(content: &str) -> Result<Vec<String>, CollectError> {
        let host = FakeHost::new();
        host.proc_file("stat", content);
        let mut c = CpuCollector::with_user_hz(&host.paths, 100.0);
        let mut out = Vec::new();
        c.collect(7, &mut out)?;
        assert!(out.iter().all(|s| s.timestamp_ms == 7));
        Ok(render(&out))
    }

    #[test]
    fn reports_per_cpu_mode_seconds_and_scheduler_counters() {
        assert_eq!(
            collect(STAT).unwrap(),
            [
                r#"counter node_cpu_seconds_total{cpu="0",mode="user"} 33.28"#,
                r#"counter node_cpu_seconds_total{cpu="0",mode="nice"} 0"#,
                r#"counter node_cpu_seconds_total{cpu="0",mode="system"} 12.34"#,
                r#"counter node_cpu_seconds_total{cpu="0",mode="idle"} 311.89"#,
                r#"counter node_cpu_seconds_total{cpu="0",mode="iowait"} 0.12"#,
                r#"counter node_cpu_seconds_total{cpu="0",mode="irq"} 0"#,
                r#"counter node_cpu_seconds_total{cpu="0",mode="softirq"} 0.09"#,
                r#"counter node_cpu_seconds_total{cpu="0",mode="steal"} 0.01"#,
                r#"counter node_cpu_seconds_total{cpu="1",mode="user"} 37.83"#,
                r#"counter node_cpu_seconds_total{cpu="1",mode="nice"} 0.5"#,
                r#"counter node_cpu_seconds_total{cpu="1",mode="system"} 15.25"#,
                r#"counter node_cpu_seconds_total{cpu="1",mode="idle"} 303.55"#,
                r#"counter node_cpu_seconds_total{cpu="1",mode="iowait"} 1.23"#,
                r#"counter node_cpu_seconds_total{cpu="1",mode="irq"} 0.02"#,
                r#"counter node_cpu_seconds_total{cpu="1",mode="softirq"} 0.19"#,
                r#"counter node_cpu_seconds_total{cpu="1",mode="steal"} 0.06"#,
                r#"counter node_intr_total{} 1158963"#,
                r#"counter node_context_switches_total{} 2187254"#,
                r#"gauge node_boot_time_seconds{} 1718000000"#,
                r#"counter node_forks_total{} 6878"#,
                r#"gauge node_procs_running{} 3"#,
                r#"gauge node_procs_blocked{} 1"#,
            ]
        );
    }

    #[test]
    fn old_kernels_without_steal_report_the_modes_they_have() {
        let out = collect("cpu0 100 0 100 100 0 0 0\n").unwrap();
        assert_eq!(out.len(), 7);
        assert!(!out.iter().any(|l| l.contains("steal")));
    }

    #[test]
    fn malformed_cpu_and_scalar_lines_are_skipped() {
        let out = collect("cpu0 100 0 100 100 0 0 0 0\ncpu1 garbage\ncpuX 1 2 3 4\nctxt notanumber\nbtime\n").unwrap();
        assert_eq!(out.len(), 8, "only cpu0's modes: {out:?}");
        assert!(out.iter().all(|l| l.contains(r#"cpu="0""#)));
    }

    #[test]
    fn a_file_without_cpu_lines_is_an_error() {
        assert!(matches!(collect("ctxt 5\n"), Err(CollectError::Parse { .. })));
        assert!(matches!(collect(""), Err(CollectError::Parse { .. })));
    }

    #[test]
    fn a_missing_file_is_an_error() {
        let host = FakeHost::new();
        let mut out = Vec::new();
        let err = CpuCollector::new(&host.paths).collect(0, &mut out).unwrap_err();
        assert!(matches!(err, CollectError::Io { .. }));
        assert!(out.is_empty());
    }
}
