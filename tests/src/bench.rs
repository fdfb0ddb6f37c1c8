//! Helpers for the benchmark programs (`src/bin/bench_*`): process CPU and memory from /proc,
//! percentiles, and a way to stop cleanly on Ctrl-C so every child process is killed.

use anyhow::{Context, Result, bail};
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

/// Clock ticks per second of /proc/PID/stat times.
pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// User + system CPU time a process has used so far, in seconds.
pub fn cpu_seconds(pid: i32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) may contain spaces and parentheses: fields after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).with_context(|| format!("{path}: no ')' in {stat:?}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    let (Some(utime), Some(stime)) = (fields.get(11), fields.get(12)) else {
        bail!("{path}: too few fields in {stat:?}");
    };
    let ticks = utime.parse::<u64>().context("utime")? + stime.parse::<u64>().context("stime")?;
    Ok(ticks as f64 / clock_ticks())
}

/// Resident set size (VmRSS) of a process, in bytes.
pub fn rss_bytes(pid: i32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).with_context(|| format!("{path}: no VmRSS line"))?;
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .with_context(|| format!("{path}: bad VmRSS line {line:?}"))?
        .parse()
        .with_context(|| format!("{path}: bad VmRSS line {line:?}"))?;
    Ok(kb * 1024)
}

/// CPU seconds used by this process itself (the load generator).
pub fn self_cpu_seconds() -> Result<f64> {
    cpu_seconds(std::process::id() as i32)
}

/// The `p`-th percentile (0..=100) of sorted values, nearest rank; 0 for no values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Sum of every series of `name` in a parsed exposition (`name` alone or `name{...}`).
pub fn sum_metric(metrics: &HashMap<String, f64>, name: &str) -> Option<f64> {
    let mut found = None;
    for (k, v) in metrics {
        if k == name || (k.starts_with(name) && k[name.len()..].starts_with('{')) {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// Resolves on Ctrl-C or SIGTERM, so a benchmark can return an error and drop (kill) its children.
pub async fn interrupted() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}

/// Runs `fut` unless interrupted or `limit` passes first; either of those is an error.
pub async fn bounded<T>(what: &str, limit: Duration, fut: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::select! {
        r = tokio::time::timeout(limit, fut) => match r {
            Ok(r) => r,
            Err(_) => bail!("{what} did not finish within {limit:?}"),
        },
        _ = interrupted() => bail!("{what}: interrupted"),
    }
}

/// Exit status of a benchmark: errors as one readable chain of causes, without a backtrace.
pub fn report(result: Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The last `n` lines of a log file, for error messages.
pub fn tail(path: &Path, n: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(s) => {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// SIGTERM, then SIGKILL after `grace`; any exit status is fine (Go servers die of the signal).
pub fn stop(p: &mut crate::Proc, grace: Duration) {
    if let Ok(Some(_)) = p.child.try_wait() {
        return;
    }
    p.stop_signal(libc::SIGTERM);
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = p.child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    p.kill9();
}

/// The machine's load averages, printed with the figures: other work on the box skews them.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

pub fn mb(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_metric_sums() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[], 99.0), 0.0);
        let m = crate::parse_exposition("a_total{type=\"float\"} 2\na_total{type=\"histogram\"} 3\na_total_x 7\nb 1\n");
        assert_eq!(sum_metric(&m, "a_total"), Some(5.0));
        assert_eq!(sum_metric(&m, "b"), Some(1.0));
        assert_eq!(sum_metric(&m, "c"), None);
    }

    #[test]
    fn reads_own_cpu_and_rss() -> Result<()> {
        assert!(self_cpu_seconds()? >= 0.0);
        assert!(rss_bytes(std::process::id() as i32)? > 0);
        Ok(())
    }
}
