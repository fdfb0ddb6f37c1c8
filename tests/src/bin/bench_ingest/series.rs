//! What a node sends: ~250 node_exporter-like series per node, and a generator that walks
//! through collection rounds producing plausible, strictly time-increasing samples.

/// One series of a node: metric name, labels sorted by name, and how its value moves.
#[derive(Debug, Clone)]
pub struct SeriesDef {
    pub metric: String,
    pub labels: Vec<(String, String)>,
    pub counter: bool,
    /// Starting value (counters) or level (gauges).
    pub base: f64,
    /// Increase per round (counters) or relative swing (gauges).
    pub rate: f64,
}

fn def(metric: &str, labels: &[(&str, &str)], counter: bool, base: f64, rate: f64) -> SeriesDef {
    let mut labels: Vec<(String, String)> = labels.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
    labels.sort();
    SeriesDef { metric: metric.to_string(), labels, counter, base, rate }
}

/// The series catalogue of a node: a 8-CPU host with 4 NICs, 4 disks and 6 filesystems, as
/// node_exporter would report it. Exactly `count` series (cycling extra hwmon sensors if more
/// are asked for than the catalogue has).
pub fn node_series(count: usize) -> Vec<SeriesDef> {
    let mut s = Vec::new();
    let cpus: Vec<String> = (0..8).map(|c| c.to_string()).collect();
    for cpu in &cpus {
        for (mode, rate) in [
            ("idle", 0.7),
            ("iowait", 0.01),
            ("irq", 0.001),
            ("nice", 0.002),
            ("softirq", 0.005),
            ("steal", 0.0),
            ("system", 0.08),
            ("user", 0.2),
        ] {
            s.push(def(
                "node_cpu_seconds_total",
                &[("cpu", cpu), ("mode", mode)],
                true,
                1.2e6 * rate + 10.0,
                rate * 10.0,
            ));
        }
    }
    for dev in ["eth0", "eth1", "lo", "docker0"] {
        for (m, base, rate) in [
            ("node_network_receive_bytes_total", 8e12, 4e6),
            ("node_network_transmit_bytes_total", 6e12, 3e6),
            ("node_network_receive_packets_total", 9e9, 4e3),
            ("node_network_transmit_packets_total", 7e9, 3e3),
            ("node_network_receive_errs_total", 12.0, 0.0),
            ("node_network_transmit_errs_total", 3.0, 0.0),
            ("node_network_receive_drop_total", 1500.0, 0.01),
            ("node_network_transmit_drop_total", 40.0, 0.0),
        ] {
            s.push(def(m, &[("device", dev)], true, base, rate));
        }
    }
    for (dev, fstype, mp) in [
        ("/dev/nvme0n1p2", "ext4", "/"),
        ("/dev/nvme0n1p1", "vfat", "/boot/efi"),
        ("/dev/md0", "xfs", "/var/lib/clickhouse"),
        ("/dev/nvme0n1p3", "ext4", "/var/log"),
        ("/dev/nvme0n1p4", "ext4", "/home"),
        ("tmpfs", "tmpfs", "/run"),
    ] {
        for (m, base, swing) in [
            ("node_filesystem_size_bytes", 1.9e12, 0.0),
            ("node_filesystem_avail_bytes", 7.4e11, 0.01),
            ("node_filesystem_free_bytes", 8.1e11, 0.01),
            ("node_filesystem_files", 1.2e8, 0.0),
            ("node_filesystem_files_free", 1.1e8, 0.001),
            ("node_filesystem_readonly", 0.0, 0.0),
        ] {
            s.push(def(m, &[("device", dev), ("fstype", fstype), ("mountpoint", mp)], false, base, swing));
        }
    }
    for dev in ["nvme0n1", "nvme1n1", "sda", "sdb"] {
        for (m, counter, base, rate) in [
            ("node_disk_read_bytes_total", true, 4e13, 2e7),
            ("node_disk_written_bytes_total", true, 9e13, 5e7),
            ("node_disk_reads_completed_total", true, 3e9, 900.0),
            ("node_disk_writes_completed_total", true, 7e9, 2500.0),
            ("node_disk_io_time_seconds_total", true, 2e5, 0.3),
            ("node_disk_read_time_seconds_total", true, 9e4, 0.1),
            ("node_disk_write_time_seconds_total", true, 3e5, 0.5),
            ("node_disk_io_now", false, 4.0, 0.5),
        ] {
            s.push(def(m, &[("device", dev)], counter, base, rate));
        }
    }
    for (m, base, swing) in [
        ("MemTotal", 2.7e11, 0.0),
        ("MemFree", 1.1e10, 0.2),
        ("MemAvailable", 9.8e10, 0.05),
        ("Buffers", 2.1e9, 0.02),
        ("Cached", 8.2e10, 0.05),
        ("SwapTotal", 0.0, 0.0),
        ("SwapFree", 0.0, 0.0),
        ("Active", 1.2e11, 0.03),
        ("Inactive", 6.1e10, 0.03),
        ("Dirty", 3.1e8, 0.5),
        ("Writeback", 1.0e6, 0.9),
        ("Shmem", 1.3e9, 0.01),
        ("Slab", 6.4e9, 0.01),
        ("SReclaimable", 4.9e9, 0.01),
        ("SUnreclaim", 1.5e9, 0.01),
        ("Mapped", 2.2e9, 0.02),
        ("AnonPages", 1.5e11, 0.03),
        ("PageTables", 4.1e8, 0.02),
        ("Committed_AS", 2.0e11, 0.02),
        ("HugePages_Total", 0.0, 0.0),
    ] {
        s.push(def(&format!("node_memory_{m}_bytes"), &[], false, base, swing));
    }
    for (m, counter, base, rate) in [
        ("node_load1", false, 6.2, 0.3),
        ("node_load5", false, 5.9, 0.2),
        ("node_load15", false, 5.5, 0.1),
        ("node_procs_running", false, 7.0, 0.5),
        ("node_procs_blocked", false, 0.0, 0.0),
        ("node_context_switches_total", true, 9e11, 4e4),
        ("node_intr_total", true, 6e11, 3e4),
        ("node_forks_total", true, 5e7, 3.0),
        ("node_boot_time_seconds", false, 1.76e9, 0.0),
        ("node_time_seconds", true, 1.79e9, 10.0),
        ("node_entropy_available_bits", false, 256.0, 0.0),
        ("node_filefd_allocated", false, 9400.0, 0.02),
        ("node_filefd_maximum", false, 9.2e18, 0.0),
    ] {
        s.push(def(m, &[], counter, base, rate));
    }
    for (m, base, rate) in [
        ("pgpgin", 2e10, 2e4),
        ("pgpgout", 5e10, 5e4),
        ("pswpin", 0.0, 0.0),
        ("pswpout", 0.0, 0.0),
        ("pgfault", 4e11, 1e5),
        ("pgmajfault", 2e6, 0.2),
        ("oom_kill", 0.0, 0.0),
    ] {
        s.push(def(&format!("node_vmstat_{m}"), &[], true, base, rate));
    }
    for (m, counter, base, rate) in [
        ("Tcp_ActiveOpens", true, 3e8, 40.0),
        ("Tcp_PassiveOpens", true, 9e8, 120.0),
        ("Tcp_CurrEstab", false, 850.0, 0.1),
        ("Tcp_RetransSegs", true, 4e6, 0.5),
        ("Tcp_InErrs", true, 1200.0, 0.0),
        ("Tcp_OutRsts", true, 7e6, 1.0),
        ("Udp_InDatagrams", true, 2e8, 20.0),
        ("Udp_OutDatagrams", true, 2e8, 20.0),
        ("Udp_InErrors", true, 0.0, 0.0),
        ("Udp_NoPorts", true, 3e4, 0.01),
    ] {
        s.push(def(&format!("node_netstat_{m}"), &[], counter, base, rate));
    }
    for (m, base, rate) in [
        ("node_pressure_cpu_waiting_seconds_total", 4e4, 0.05),
        ("node_pressure_memory_waiting_seconds_total", 300.0, 0.001),
        ("node_pressure_memory_stalled_seconds_total", 120.0, 0.0005),
        ("node_pressure_io_waiting_seconds_total", 9e3, 0.02),
        ("node_pressure_io_stalled_seconds_total", 7e3, 0.015),
    ] {
        s.push(def(m, &[], true, base, rate));
    }
    for (m, base, swing) in [
        ("node_sockstat_TCP_inuse", 900.0, 0.1),
        ("node_sockstat_TCP_tw", 3100.0, 0.2),
        ("node_sockstat_TCP_alloc", 1100.0, 0.1),
        ("node_sockstat_UDP_inuse", 14.0, 0.0),
        ("node_sockstat_sockets_used", 2400.0, 0.05),
    ] {
        s.push(def(m, &[], false, base, swing));
    }
    for cpu in &cpus {
        s.push(def("node_schedstat_running_seconds_total", &[("cpu", cpu)], true, 3e5, 2.8));
        s.push(def("node_schedstat_waiting_seconds_total", &[("cpu", cpu)], true, 4e4, 0.4));
        s.push(def("node_cpu_scaling_frequency_hertz", &[("cpu", cpu)], false, 3.1e9, 0.1));
    }
    s.push(def("node_nf_conntrack_entries", &[], false, 1.8e4, 0.05));
    s.push(def("node_nf_conntrack_entries_limit", &[], false, 262144.0, 0.0));
    let mut i = 0;
    while s.len() < count {
        let chip = format!("platform_coretemp_{}", i / 16);
        let sensor = format!("temp{}", i % 16 + 1);
        s.push(def("node_hwmon_temp_celsius", &[("chip", &chip), ("sensor", &sensor)], false, 55.0, 0.1));
        i += 1;
    }
    s.truncate(count);
    s
}

/// Produces one node's samples: round after round over all its series, one timestamp per
/// round. A round's timestamp is the wall clock, but always at least 1 ms after the previous
/// round's, so every series' timestamps strictly increase (as Prometheus requires).
pub struct Generator {
    series_count: usize,
    /// Per-node variation of values.
    phase: f64,
    round: u64,
    pos: usize,
    ts: i64,
    /// How far behind the clock rounds are stamped.
    backdate_ms: i64,
}

impl Generator {
    pub fn new(series_count: usize, node_index: usize) -> Self {
        Self { series_count, phase: node_index as f64 * 0.37, round: 0, pos: 0, ts: 0, backdate_ms: 0 }
    }

    /// Stamps rounds `ms` behind the clock.
    pub fn backdated(self, ms: i64) -> Self {
        Self { backdate_ms: ms, ..self }
    }

    /// A generator whose rounds are stamped `ts + 1`, `ts + 2`, ... as long as that is ahead of
    /// the clock, so two of them produce identical samples (tests).
    #[cfg(test)]
    pub fn starting_at(series_count: usize, node_index: usize, ts: i64) -> Self {
        Self { ts, ..Self::new(series_count, node_index) }
    }

    /// Calls `f(series index, timestamp ms, value)` for the next `n` samples.
    pub fn next_samples(&mut self, series: &[SeriesDef], n: usize, mut f: impl FnMut(usize, i64, f64)) {
        for _ in 0..n {
            if self.pos == 0 {
                self.ts = (self.ts + 1).max(now_ms() - self.backdate_ms);
            }
            let d = &series[self.pos];
            let r = self.round as f64;
            let x = r * 0.7 + self.phase + self.pos as f64;
            let v = if d.counter {
                // Monotonic: the derivative of r + 0.5·sin(0.7r) is ≥ 0.65.
                d.base * (1.0 + self.phase * 0.01) + d.rate * (r + 0.5 * x.sin())
            } else {
                d.base * (1.0 + d.rate * 0.5 * (r * 0.05 + self.phase + self.pos as f64).sin())
            };
            f(self.pos, self.ts, v);
            self.pos += 1;
            if self.pos == self.series_count {
                self.pos = 0;
                self.round += 1;
            }
        }
    }
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    #[test]
    fn catalogue_is_distinct_and_sized() {
        for n in [1, 100, 250, 400] {
            let s = node_series(n);
            assert_eq!(s.len(), n);
            let keys: HashSet<String> = s.iter().map(|d| format!("{}{:?}", d.metric, d.labels)).collect();
            assert_eq!(keys.len(), n, "series must be distinct");
            for d in &s {
                assert!(d.labels.windows(2).all(|w| w[0].0 < w[1].0), "labels sorted: {d:?}");
            }
        }
    }

    #[test]
    fn timestamps_strictly_increase_and_counters_never_drop() {
        let series = node_series(250);
        let mut g = Generator::new(series.len(), 7);
        let mut last: HashMap<usize, (i64, f64)> = HashMap::new();
        for _ in 0..20 {
            g.next_samples(&series, 333, |i, ts, v| {
                if let Some(&(pts, pv)) = last.get(&i) {
                    assert!(ts > pts, "series {i}: {ts} after {pts}");
                    if series[i].counter {
                        assert!(v >= pv, "counter {i} dropped: {pv} → {v}");
                    }
                }
                assert!(v.is_finite());
                last.insert(i, (ts, v));
            });
        }
        assert_eq!(last.len(), 250);
    }
}
