//! /proc/loadavg: load averages, plus the host's thread count that comes with it for free.

use super::{FileBuf, HostPaths, parse_error};
use crate::collect::{CollectError, Collector, gauge};
use medic_proto::v1::Sample;
use std::path::PathBuf;

pub struct LoadCollector {
    path: PathBuf,
    buf: FileBuf,
}

impl LoadCollector {
    pub fn new(paths: &HostPaths) -> Self {
        Self { path: paths.proc_root.join("loadavg"), buf: FileBuf::default() }
    }
}

impl Collector for LoadCollector {
    fn name(&self) -> &'static str {
        "load"
    }

    fn collect(&mut self, now_ms: i64, out: &mut Vec<Sample>) -> Result<(), CollectError> {
        // "0.47 0.28 0.10 7/120 6878"
        let text = self.buf.read_required(&self.path)?;
        let mut fields = text.split_ascii_whitespace();
        let mut load = [0f64; 3];
        for slot in &mut load {
            *slot = fields
                .next()
                .and_then(|f| f.parse().ok())
                .filter(|v: &f64| v.is_finite())
                .ok_or_else(|| parse_error(&self.path, "expected three load averages"))?;
        }
        out.push(gauge("node_load1", &[], now_ms, load[0]));
        out.push(gauge("node_load5", &[], now_ms, load[1]));
        out.push(gauge("node_load15", &[], now_ms, load[2]));
        // "running/total" scheduling entities: the total is every thread on the host, which
        // node_exporter otherwise gets by reading each /proc/pid/stat.
        let threads = fields.next().and_then(|f| f.split_once('/')).and_then(|(_, total)| total.parse::<u64>().ok());
        if let Some(threads) = threads {
            out.push(gauge("node_processes_threads", &[], now_ms, threads as f64));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::host::testutil::{FakeHost, render};

    fn collect(content: &str) -> Result<Vec<String>, CollectError> {
        let host = FakeHost::new();
        host.proc_file("loadavg", content);
        let mut out = Vec::new();
        LoadCollector::new(&host.paths).collect(7, &mut out)?;
        Ok(render(&out))
    }

    #[test]
    fn reports_the_three_load_averages_and_thread_count() {
        assert_eq!(
            collect("0.47 0.28 0.10 7/120 6878\n").unwrap(),
            [
                "gauge node_load1{} 0.47",
                "gauge node_load5{} 0.28",
                "gauge node_load15{} 0.1",
                "gauge node_processes_threads{} 120",
            ]
        );
    }

    #[test]
    fn a_missing_thread_field_only_drops_the_thread_count() {
        assert_eq!(collect("1.00 2.00 3.00").unwrap().len(), 3);
    }

    #[test]
    fn malformed_load_averages_are_an_error() {
        for bad in ["", "0.47 0.28\n", "0.47 abc 0.10 1/2 3\n", "NaN 1 1\n"] {
            assert!(matches!(collect(bad), Err(CollectError::Parse { .. })), "{bad:?}");
        }
    }
}
