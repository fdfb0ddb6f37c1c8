//! /proc/diskstats: per block device IO counters.
//!
//! Skipped: ram/zram/loop/floppy devices (never interesting, and a host can have hundreds of
//! loops), devices that never did any IO, and partitions of the usual disk naming schemes, as
//! node_exporter does by default, so that `sum()` over devices does not count IO twice.

use super::{FileBuf, HostPaths};
use crate::collect::{CollectError, Collector, counter, gauge};
use medic_proto::v1::Sample;
use std::path::PathBuf;

/// diskstats always counts in 512-byte sectors, whatever the device's real sector size.
const SECTOR_BYTES: f64 = 512.0;

pub struct DiskCollector {
    path: PathBuf,
    buf: FileBuf,
}

impl DiskCollector {
    pub fn new(paths: &HostPaths) -> Self {
        Self { path: paths.proc_root.join("diskstats"), buf: FileBuf::default() }
    }
}

/// The 11 classic columns after major, minor and name (Documentation/admin-guide/iostats.rst).
/// Newer kernels append discard and flush columns, which are not reported.
#[derive(Default)]
struct Stats {
    reads: u64,
    reads_merged: u64,
    sectors_read: u64,
    read_ms: u64,
    writes: u64,
    writes_merged: u64,
    sectors_written: u64,
    write_ms: u64,
    in_flight: u64,
    io_ms: u64,
    weighted_io_ms: u64,
}

fn parse_line(line: &str) -> Option<(&str, Stats)> {
    let mut f = line.split_ascii_whitespace();
    let _major = f.next()?;
    let _minor = f.next()?;
    let name = f.next()?;
    let mut next = || f.next()?.parse::<u64>().ok();
    let stats = Stats {
        reads: next()?,
        reads_merged: next()?,
        sectors_read: next()?,
        read_ms: next()?,
        writes: next()?,
        writes_merged: next()?,
        sectors_written: next()?,
        write_ms: next()?,
        in_flight: next()?,
        io_ms: next()?,
        weighted_io_ms: next()?,
    };
    Some((name, stats))
}

impl Stats {
    fn all_zero(&self) -> bool {
        let Stats {
            reads,
            reads_merged,
            sectors_read,
            read_ms,
            writes,
            writes_merged,
            sectors_written,
            write_ms,
            in_flight,
            io_ms,
            weighted_io_ms,
        } = *self;
        reads
            | reads_merged
            | sectors_read
            | read_ms
            | writes
            | writes_merged
            | sectors_written
            | write_ms
            | in_flight
            | io_ms
            | weighted_io_ms
            == 0
    }
}

fn ignored_device(name: &str) -> bool {
    ["ram", "zram", "loop", "fd"].iter().any(|p| name.strip_prefix(p).is_some_and(all_digits)) || is_partition(name)
}

/// Partitions of sd/hd/vd/xvd disks ("sda1"), NVMe ("nvme0n1p2") and MMC ("mmcblk0p1").
/// Device-mapper and md devices are kept: they are what filesystems usually sit on.
fn is_partition(name: &str) -> bool {
    if let Some(rest) = ["sd", "hd", "vd", "xvd"].iter().find_map(|p| name.strip_prefix(p)) {
        let letters = rest.bytes().take_while(u8::is_ascii_lowercase).count();
        return letters > 0 && letters < rest.len() && all_digits(&rest[letters..]);
    }
    if let Some(rest) = name.strip_prefix("nvme").or_else(|| name.strip_prefix("mmcblk")) {
        return rest.rsplit_once('p').is_some_and(|(disk, part)| !disk.is_empty() && all_digits(part));
    }
    false
}

fn all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

impl Collector for DiskCollector {
    fn name(&self) -> &'static str {
        "disk"
    }

    fn collect(&mut self, now_ms: i64, out: &mut Vec<Sample>) -> Result<(), CollectError> {
        let text = self.buf.read_required(&self.path)?;
        for line in text.lines() {
            // A line we cannot parse is one device's problem, not the whole host's.
            let Some((device, s)) = parse_line(line) else {
                continue;
            };
            if ignored_device(device) || s.all_zero() {
                continue;
            }
            let labels = [("device", device)];
            let c = |metric, value: f64| counter(metric, &labels, now_ms, value);
            out.extend([
                c("node_disk_reads_completed_total", s.reads as f64),
                c("node_disk_reads_merged_total", s.reads_merged as f64),
                c("node_disk_read_bytes_total", s.sectors_read as f64 * SECTOR_BYTES),
                c("node_disk_read_time_seconds_total", s.read_ms as f64 / 1000.0),
                c("node_disk_writes_completed_total", s.writes as f64),
                c("node_disk_writes_merged_total", s.writes_merged as f64),
                c("node_disk_written_bytes_total", s.sectors_written as f64 * SECTOR_BYTES),
                c("node_disk_write_time_seconds_total", s.write_ms as f64 / 1000.0),
                gauge("node_disk_io_now", &labels, now_ms, s.in_flight as f64),
                c("node_disk_io_time_seconds_total", s.io_ms as f64 / 1000.0),
                c("node_disk_io_time_weighted_seconds_total", s.weighted_io_ms as f64 / 1000.0),
            ]);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::host::testutil::{FakeHost, render};

    const DISKSTATS: &str = "\
   7       0 loop0 57 0 2168 11 0 0 0 0 0 28 11 0 0 0 0 0 0
   1       0 ram0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
 254       0 vda 9392 3242 2151370 7493 4002 23741 4510904 16437 0 3308 24876 5987 63 210656 944 66 1
 254       1 vda1 9000 3000 2000000 7000 4000 23000 4500000 16000 0 3000 24000
 259       0 nvme0n1 100 1 800 50 200 2 1600 70 3 120 150
 259       1 nvme0n1p1 100 1 800 50 200 2 1600 70 0 120 150
 253       0 dm-0 5 0 40 1 0 0 0 0 0 1 1
 253       1 dm-1 0 0 0 0 0 0 0 0 0 0 0
   8       0 sdb 1 2 3 4 5 6 7 8 9 10 oops
";

    #[test]
    fn reports_whole_disks_and_skips_loops_partitions_idle_and_malformed_lines() {
        let host = FakeHost::new();
        host.proc_file("diskstats", DISKSTATS);
        let mut out = Vec::new();
        DiskCollector::new(&host.paths).collect(7, &mut out).unwrap();
        let out = render(&out);
        let devices: Vec<&str> =
            out.iter().filter(|l| l.contains("reads_completed")).map(|l| l.split('"').nth(1).unwrap()).collect();
        assert_eq!(devices, ["vda", "nvme0n1", "dm-0"]);
        assert_eq!(
            out[..11],
            [
                r#"counter node_disk_reads_completed_total{device="vda"} 9392"#,
                r#"counter node_disk_reads_merged_total{device="vda"} 3242"#,
                r#"counter node_disk_read_bytes_total{device="vda"} 1101501440"#,
                r#"counter node_disk_read_time_seconds_total{device="vda"} 7.493"#,
                r#"counter node_disk_writes_completed_total{device="vda"} 4002"#,
                r#"counter node_disk_writes_merged_total{device="vda"} 23741"#,
                r#"counter node_disk_written_bytes_total{device="vda"} 2309582848"#,
                r#"counter node_disk_write_time_seconds_total{device="vda"} 16.437"#,
                r#"gauge node_disk_io_now{device="vda"} 0"#,
                r#"counter node_disk_io_time_seconds_total{device="vda"} 3.308"#,
                r#"counter node_disk_io_time_weighted_seconds_total{device="vda"} 24.876"#,
            ]
        );
        assert!(out.contains(&r#"gauge node_disk_io_now{device="nvme0n1"} 3"#.to_string()));
    }

    #[test]
    fn partition_names_follow_the_kernel_naming_schemes() {
        for part in ["sda1", "sdaa12", "xvda1", "vdb3", "hda2", "nvme0n1p1", "mmcblk0p2"] {
            assert!(is_partition(part), "{part}");
        }
        for disk in ["sda", "sdaa", "xvda", "nvme0n1", "nvme10n2", "mmcblk0", "dm-0", "md127"] {
            assert!(!is_partition(disk), "{disk}");
        }
        for dev in ["loop0", "ram15", "zram0", "fd0"] {
            assert!(ignored_device(dev), "{dev}");
        }
        assert!(!ignored_device("loopy"));
    }

    #[test]
    fn a_missing_file_is_an_error() {
        let host = FakeHost::new();
        let mut out = Vec::new();
        let err = DiskCollector::new(&host.paths).collect(0, &mut out).unwrap_err();
        assert!(matches!(err, CollectError::Io { .. }));
    }
}
