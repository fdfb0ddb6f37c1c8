//! /proc/meminfo (memory and swap sizes) and /proc/vmstat (swap traffic, OOM kills).

use super::{FileBuf, HostPaths, all_or_nothing, parse_error};
use crate::collect::{CollectError, Collector, counter, gauge};
use medic_proto::v1::Sample;
use std::io;
use std::path::PathBuf;

pub struct MemoryCollector {
    meminfo: PathBuf,
    vmstat: PathBuf,
    buf: FileBuf,
}

impl MemoryCollector {
    pub fn new(paths: &HostPaths) -> Self {
        Self {
            meminfo: paths.proc_root.join("meminfo"),
            vmstat: paths.proc_root.join("vmstat"),
            buf: FileBuf::default(),
        }
    }
}

/// The meminfo fields worth a series: what page cache, dirty data, kernel memory and swap are
/// doing matters for ClickHouse, the other ~40 fields mostly do not.
fn meminfo_metric(key: &str) -> Option<&'static str> {
    Some(match key {
        "MemTotal" => "node_memory_MemTotal_bytes",
        "MemFree" => "node_memory_MemFree_bytes",
        "MemAvailable" => "node_memory_MemAvailable_bytes",
        "Buffers" => "node_memory_Buffers_bytes",
        "Cached" => "node_memory_Cached_bytes",
        "SwapCached" => "node_memory_SwapCached_bytes",
        "Active" => "node_memory_Active_bytes",
        "Inactive" => "node_memory_Inactive_bytes",
        "SwapTotal" => "node_memory_SwapTotal_bytes",
        "SwapFree" => "node_memory_SwapFree_bytes",
        "Dirty" => "node_memory_Dirty_bytes",
        "Writeback" => "node_memory_Writeback_bytes",
        "AnonPages" => "node_memory_AnonPages_bytes",
        "Mapped" => "node_memory_Mapped_bytes",
        "Shmem" => "node_memory_Shmem_bytes",
        "Slab" => "node_memory_Slab_bytes",
        "SReclaimable" => "node_memory_SReclaimable_bytes",
        "SUnreclaim" => "node_memory_SUnreclaim_bytes",
        "KernelStack" => "node_memory_KernelStack_bytes",
        "PageTables" => "node_memory_PageTables_bytes",
        "CommitLimit" => "node_memory_CommitLimit_bytes",
        "Committed_AS" => "node_memory_Committed_AS_bytes",
        "AnonHugePages" => "node_memory_AnonHugePages_bytes",
        _ => return None,
    })
}

fn vmstat_metric(key: &str) -> Option<&'static str> {
    Some(match key {
        "pswpin" => "node_vmstat_pswpin_total",
        "pswpout" => "node_vmstat_pswpout_total",
        "pgmajfault" => "node_vmstat_pgmajfault_total",
        // Only present on 4.13+ kernels; absent simply means no series.
        "oom_kill" => "node_vmstat_oom_kill_total",
        _ => return None,
    })
}

impl Collector for MemoryCollector {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn collect(&mut self, now_ms: i64, out: &mut Vec<Sample>) -> Result<(), CollectError> {
        all_or_nothing(out, |out| {
            let text = self.buf.read_required(&self.meminfo)?;
            let mut saw_total = false;
            for line in text.lines() {
                // "MemTotal:       16318508 kB"; the unit is absent for page counts.
                let Some((key, rest)) = line.split_once(':') else {
                    continue;
                };
                let Some(metric) = meminfo_metric(key) else {
                    continue;
                };
                let mut fields = rest.split_ascii_whitespace();
                let Some(v) = fields.next().and_then(|f| f.parse::<u64>().ok()) else {
                    continue;
                };
                let bytes = match fields.next() {
                    Some("kB") => v as f64 * 1024.0,
                    None => v as f64,
                    // A unit we do not know would make the value meaningless.
                    Some(_) => continue,
                };
                saw_total |= key == "MemTotal";
                out.push(gauge(metric, &[], now_ms, bytes));
            }
            // Every kernel prints MemTotal first; without it this is not meminfo.
            if !saw_total {
                return Err(parse_error(&self.meminfo, "no MemTotal"));
            }

            // Some sandboxed kernels (gVisor, old containers) have no vmstat: memory sizes are
            // still worth reporting then.
            let text = match self.buf.read(&self.vmstat) {
                Ok(text) => text,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(CollectError::io(self.vmstat.display().to_string(), e)),
            };
            for line in text.lines() {
                let Some((key, v)) = line.split_once(' ') else {
                    continue;
                };
                let Some(metric) = vmstat_metric(key) else {
                    continue;
                };
                if let Ok(v) = v.trim().parse::<u64>() {
                    out.push(counter(metric, &[], now_ms, v as f64));
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::host::testutil::{FakeHost, render};

    const MEMINFO: &str = "\
MemTotal:       16318508 kB
MemFree:         1234567 kB
MemAvailable:    9876543 kB
Buffers:          123456 kB
Cached:          7654321 kB
SwapCached:            0 kB
Active:          4000000 kB
Inactive:        3000000 kB
Active(anon):    1000000 kB
Unevictable:           0 kB
SwapTotal:       2097148 kB
SwapFree:        2097000 kB
Dirty:              1024 kB
Writeback:             0 kB
AnonPages:       2000000 kB
Mapped:           500000 kB
Shmem:             65536 kB
Slab:             400000 kB
SReclaimable:     300000 kB
SUnreclaim:       100000 kB
KernelStack:       12000 kB
PageTables:        30000 kB
CommitLimit:    10256400 kB
Committed_AS:    6000000 kB
AnonHugePages:         0 kB
HugePages_Total:       0
Hugepagesize:       2048 kB
";

    const VMSTAT: &str = "\
nr_free_pages 308641
pgpgin 1075685
pswpin 12
pswpout 34
pgfault 9999999
pgmajfault 4321
oom_kill 2
";

    fn collect(host: &FakeHost) -> Result<Vec<String>, CollectError> {
        let mut out = Vec::new();
        MemoryCollector::new(&host.paths).collect(7, &mut out)?;
        Ok(render(&out))
    }

    #[test]
    fn reports_meminfo_in_bytes_and_vmstat_counters() {
        let host = FakeHost::new();
        host.proc_file("meminfo", MEMINFO);
        host.proc_file("vmstat", VMSTAT);
        assert_eq!(
            collect(&host).unwrap(),
            [
                "gauge node_memory_MemTotal_bytes{} 16710152192",
                "gauge node_memory_MemFree_bytes{} 1264196608",
                "gauge node_memory_MemAvailable_bytes{} 10113580032",
                "gauge node_memory_Buffers_bytes{} 126418944",
                "gauge node_memory_Cached_bytes{} 7838024704",
                "gauge node_memory_SwapCached_bytes{} 0",
                "gauge node_memory_Active_bytes{} 4096000000",
                "gauge node_memory_Inactive_bytes{} 3072000000",
                "gauge node_memory_SwapTotal_bytes{} 2147479552",
                "gauge node_memory_SwapFree_bytes{} 2147328000",
                "gauge node_memory_Dirty_bytes{} 1048576",
                "gauge node_memory_Writeback_bytes{} 0",
                "gauge node_memory_AnonPages_bytes{} 2048000000",
                "gauge node_memory_Mapped_bytes{} 512000000",
                "gauge node_memory_Shmem_bytes{} 67108864",
                "gauge node_memory_Slab_bytes{} 409600000",
                "gauge node_memory_SReclaimable_bytes{} 307200000",
                "gauge node_memory_SUnreclaim_bytes{} 102400000",
                "gauge node_memory_KernelStack_bytes{} 12288000",
                "gauge node_memory_PageTables_bytes{} 30720000",
                "gauge node_memory_CommitLimit_bytes{} 10502553600",
                "gauge node_memory_Committed_AS_bytes{} 6144000000",
                "gauge node_memory_AnonHugePages_bytes{} 0",
                "counter node_vmstat_pswpin_total{} 12",
                "counter node_vmstat_pswpout_total{} 34",
                "counter node_vmstat_pgmajfault_total{} 4321",
                "counter node_vmstat_oom_kill_total{} 2",
            ]
        );
    }

    #[test]
    fn kernels_without_oom_kill_or_vmstat_still_report_memory() {
        let host = FakeHost::new();
        host.proc_file("meminfo", "MemTotal: 1000 kB\n");
        host.proc_file("vmstat", "pswpin 1\npswpout 2\n");
        let out = collect(&host).unwrap();
        assert!(!out.iter().any(|l| l.contains("oom_kill")));
        assert_eq!(out.len(), 3);

        std::fs::remove_file(host.paths.proc_root.join("vmstat")).unwrap();
        assert_eq!(collect(&host).unwrap(), ["gauge node_memory_MemTotal_bytes{} 1024000"]);
    }

    #[test]
    fn malformed_lines_are_skipped() {
        let host = FakeHost::new();
        host.proc_file("meminfo", "MemTotal: 1000 kB\nMemFree: lots kB\nCached: 5 MB\nBuffers\nDirty: 2 kB\n");
        host.proc_file("vmstat", "pswpin x\npswpout\n");
        assert_eq!(
            collect(&host).unwrap(),
            ["gauge node_memory_MemTotal_bytes{} 1024000", "gauge node_memory_Dirty_bytes{} 2048"]
        );
    }

    #[test]
    fn meminfo_without_memtotal_or_missing_is_an_error() {
        let host = FakeHost::new();
        assert!(matches!(collect(&host), Err(CollectError::Io { .. })));
        host.proc_file("meminfo", "garbage\nMemFree: 5 kB\n");
        assert!(matches!(collect(&host), Err(CollectError::Parse { .. })));
    }
}
