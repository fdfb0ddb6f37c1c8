//! agentd's own resource use, sent like any other metric so the controller can watch its agents
//! (and so the overhead claim is visible in production, not only in a benchmark).

use super::{CollectError, Collector, counter, gauge};
use std::path::PathBuf;

pub struct SelfCollector {
    /// Log records the tailer has read: a storm of log lines shows as a jump in its rate.
    log_records: Option<prometheus_client::metrics::counter::Counter>,
    stat_path: PathBuf,
    statm_path: PathBuf,
    ticks_per_second: f64,
    page_size: f64,
    buf: String,
}

impl SelfCollector {
    pub fn new() -> Self {
        // SAFETY: sysconf has no preconditions; it only reads configuration values.
        let (ticks, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
        Self {
            log_records: None,
            stat_path: "/proc/self/stat".into(),
            statm_path: "/proc/self/statm".into(),
            ticks_per_second: if ticks > 0 { ticks as f64 } else { 100.0 },
            page_size: if page > 0 { page as f64 } else { 4096.0 },
            buf: String::new(),
        }
    }

    /// Also reports `medic_agent_log_records_total` from the tailer's counter.
    pub fn with_log_records(mut self, c: prometheus_client::metrics::counter::Counter) -> Self {
        self.log_records = Some(c);
        self
    }

    fn read(&mut self, path: &std::path::Path) -> Result<(), CollectError> {
        use std::io::Read;
        self.buf.clear();
        std::fs::File::open(path)
            .and_then(|mut f| f.read_to_string(&mut self.buf))
            .map(|_| ())
            .map_err(|e| CollectError::io(path.display().to_string(), e))
    }
}

impl Default for SelfCollector {
    fn default() -> Self {
        Self::new()
    }
}

impl Collector for SelfCollector {
    fn name(&self) -> &'static str {
        "agent"
    }

    fn collect(&mut self, now_ms: i64, out: &mut Vec<medic_proto::v1::Sample>) -> Result<(), CollectError> {
        let stat_path = self.stat_path.clone();
        self.read(&stat_path)?;
        // Fields after the command name, which may itself contain spaces and parentheses.
        let after = self.buf.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let fields: Vec<&str> = after.split_whitespace().collect();
        let field = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
        let (utime, stime) = match (field(11), field(12)) {
            (Some(u), Some(s)) => (u, s),
            _ => return Err(CollectError::parse(stat_path.display().to_string(), "missing utime/stime")),
        };
        out.push(counter("medic_agent_cpu_seconds_total", &[], now_ms, (utime + stime) / self.ticks_per_second));
        if let Some(c) = &self.log_records {
            out.push(counter("medic_agent_log_records_total", &[], now_ms, c.get() as f64));
        }
        let statm_path = self.statm_path.clone();
        self.read(&statm_path)?;
        let rss_pages = self
            .buf
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| CollectError::parse(statm_path.display().to_string(), "missing resident pages"))?;
        out.push(gauge("medic_agent_resident_memory_bytes", &[], now_ms, rss_pages * self.page_size));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_its_own_cpu_and_memory() {
        let mut c = SelfCollector::new();
        let mut out = Vec::new();
        c.collect(1, &mut out).expect("reading /proc/self works on Linux");
        let names: Vec<&str> = out.iter().map(|s| s.metric.as_str()).collect();
        assert_eq!(names, ["medic_agent_cpu_seconds_total", "medic_agent_resident_memory_bytes"]);
        assert!(out[1].value > 1_000_000.0, "a running test process has more than 1 MB resident");
    }
}
