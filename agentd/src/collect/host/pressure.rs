//! Pressure stall information (/proc/pressure/*, Linux 4.20+): how long tasks waited for CPU,
//! memory or IO. A better saturation signal than load, since it counts actual lost time.
//!
//! PSI is optional in the kernel (CONFIG_PSI, `psi=0`), so its absence yields no samples and no
//! error.

use super::{FileBuf, HostPaths, all_or_nothing, parse_error};
use crate::collect::{CollectError, Collector, counter, gauge};
use medic_proto::v1::Sample;
use std::io;
use std::path::PathBuf;

/// Metric names for one resource's `some` and `full` lines: (total counter, avg10 gauge).
/// `some` = at least one task stalled, `full` = all non-idle tasks stalled at once. The
/// system-wide cpu `full` line is always zero (5.13+ prints it only for cgroups' sake), so it is
/// not reported.
struct Resource {
    file: &'static str,
    some: (&'static str, &'static str),
    full: Option<(&'static str, &'static str)>,
}

const RESOURCES: [Resource; 3] = [
    Resource {
        file: "cpu",
        some: ("node_pressure_cpu_waiting_seconds_total", "node_pressure_cpu_some_avg10_ratio"),
        full: None,
    },
    Resource {
        file: "memory",
        some: ("node_pressure_memory_waiting_seconds_total", "node_pressure_memory_some_avg10_ratio"),
        full: Some(("node_pressure_memory_stalled_seconds_total", "node_pressure_memory_full_avg10_ratio")),
    },
    Resource {
        file: "io",
        some: ("node_pressure_io_waiting_seconds_total", "node_pressure_io_some_avg10_ratio"),
        full: Some(("node_pressure_io_stalled_seconds_total", "node_pressure_io_full_avg10_ratio")),
    },
];

pub struct PressureCollector {
    paths: [PathBuf; 3],
    buf: FileBuf,
}

impl PressureCollector {
    pub fn new(paths: &HostPaths) -> Self {
        let dir = paths.proc_root.join("pressure");
        Self { paths: RESOURCES.map(|r| dir.join(r.file)), buf: FileBuf::default() }
    }
}

/// Parses "some avg10=1.50 avg60=0.20 avg300=0.05 total=123456" into (avg10 %, total µs).
fn parse_line(line: &str) -> Option<(&str, f64, u64)> {
    let mut fields = line.split_ascii_whitespace();
    let kind = fields.next()?;
    let (mut avg10, mut total) = (None, None);
    for field in fields {
        let (key, value) = field.split_once('=')?;
        match key {
            "avg10" => avg10 = value.parse::<f64>().ok().filter(|v| v.is_finite()),
            "total" => total = value.parse::<u64>().ok(),
            _ => {}
        }
    }
    Some((kind, avg10?, total?))
}

impl Collector for PressureCollector {
    fn name(&self) -> &'static str {
        "pressure"
    }

    fn collect(&mut self, now_ms: i64, out: &mut Vec<Sample>) -> Result<(), CollectError> {
        all_or_nothing(out, |out| {
            for (resource, path) in RESOURCES.iter().zip(&self.paths) {
                let text = match self.buf.read(path) {
                    Ok(text) => text,
                    Err(e) if psi_unavailable(&e) => continue,
                    Err(e) => return Err(CollectError::io(path.display().to_string(), e)),
                };
                for line in text.lines().filter(|l| !l.trim().is_empty()) {
                    let Some((kind, avg10, total_us)) = parse_line(line) else {
                        return Err(parse_error(path, format!("unexpected line {line:?}")));
                    };
                    let names = match kind {
                        "some" => Some(resource.some),
                        "full" => resource.full,
                        _ => None,
                    };
                    if let Some((total_name, avg_name)) = names {
                        out.push(counter(total_name, &[], now_ms, total_us as f64 / 1e6));
                        out.push(gauge(avg_name, &[], now_ms, avg10 / 100.0));
                    }
                }
            }
            Ok(())
        })
    }
}

/// Missing files mean no PSI in this kernel; EOPNOTSUPP means PSI compiled in but disabled at
/// boot (`psi=0`, the default on some distributions).
fn psi_unavailable(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::EOPNOTSUPP)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::host::testutil::{FakeHost, assert_close, render, value};

    fn collect(host: &FakeHost) -> Result<Vec<Sample>, CollectError> {
        let mut out = Vec::new();
        PressureCollector::new(&host.paths).collect(7, &mut out)?;
        Ok(out)
    }

    fn full_host() -> FakeHost {
        let host = FakeHost::new();
        host.proc_file(
            "pressure/cpu",
            "some avg10=21.74 avg60=6.77 avg300=2.49 total=10501529\n\
             full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
        );
        host.proc_file(
            "pressure/memory",
            "some avg10=1.50 avg60=0.20 avg300=0.05 total=2500000\n\
             full avg10=0.50 avg60=0.10 avg300=0.01 total=1000000\n",
        );
        host.proc_file(
            "pressure/io",
            "some avg10=0.17 avg60=0.22 avg300=0.14 total=1210370\n\
             full avg10=0.00 avg60=0.12 avg300=0.11 total=1050666\n",
        );
        host
    }

    #[test]
    fn reports_stall_seconds_and_avg10_ratios() {
        let out = collect(&full_host()).unwrap();
        let names: Vec<String> =
            render(&out).iter().map(|l| l.split(' ').take(2).collect::<Vec<_>>().join(" ")).collect();
        assert_eq!(
            names,
            [
                "counter node_pressure_cpu_waiting_seconds_total{}",
                "gauge node_pressure_cpu_some_avg10_ratio{}",
                "counter node_pressure_memory_waiting_seconds_total{}",
                "gauge node_pressure_memory_some_avg10_ratio{}",
                "counter node_pressure_memory_stalled_seconds_total{}",
                "gauge node_pressure_memory_full_avg10_ratio{}",
                "counter node_pressure_io_waiting_seconds_total{}",
                "gauge node_pressure_io_some_avg10_ratio{}",
                "counter node_pressure_io_stalled_seconds_total{}",
                "gauge node_pressure_io_full_avg10_ratio{}",
            ]
        );
        let v = |m: &str| value(&out, m, &[]).unwrap();
        assert_close(v("node_pressure_cpu_waiting_seconds_total"), 10.501529);
        assert_close(v("node_pressure_cpu_some_avg10_ratio"), 0.2174);
        assert_close(v("node_pressure_memory_waiting_seconds_total"), 2.5);
        assert_close(v("node_pressure_memory_stalled_seconds_total"), 1.0);
        assert_close(v("node_pressure_memory_full_avg10_ratio"), 0.005);
        assert_close(v("node_pressure_io_waiting_seconds_total"), 1.21037);
        assert_close(v("node_pressure_io_some_avg10_ratio"), 0.0017);
        assert_close(v("node_pressure_io_stalled_seconds_total"), 1.050666);
        assert_close(v("node_pressure_io_full_avg10_ratio"), 0.0);
    }

    #[test]
    fn no_psi_in_the_kernel_gives_no_samples_and_no_error() {
        let host = FakeHost::new();
        assert!(collect(&host).unwrap().is_empty());
    }

    #[test]
    fn kernels_with_cpu_some_only_report_what_is_there() {
        // 4.20..5.12 print no cpu "full" line; a missing io file is treated like missing PSI.
        let host = FakeHost::new();
        host.proc_file("pressure/cpu", "some avg10=0.00 avg60=0.00 avg300=0.00 total=5\n");
        let out = collect(&host).unwrap();
        assert_eq!(out.len(), 2);
        assert_close(value(&out, "node_pressure_cpu_waiting_seconds_total", &[]).unwrap(), 5e-6);
    }

    #[test]
    fn malformed_lines_are_an_error_and_leave_nothing_behind() {
        let host = full_host();
        host.proc_file("pressure/io", "some avg10=abc total=1\n");
        let mut out = Vec::new();
        let err = PressureCollector::new(&host.paths).collect(7, &mut out).unwrap_err();
        assert!(matches!(err, CollectError::Parse { .. }));
        assert!(out.is_empty());

        host.proc_file("pressure/io", "some avg10=1.0\n");
        assert!(collect(&host).is_err(), "a line without total is not PSI");
    }
}
