//! Host metrics read straight from /proc and /sys (node_exporter-compatible names where one
//! exists, so existing dashboards and alerts keep working when Prometheus scrapes agentd).
//!
//! Every collector keeps its file buffer between rounds: at a 1 s interval the agent re-reads the
//! same handful of files forever, so steady state should allocate only the samples themselves.
//!
//! Contract shared by all collectors here: on `Err`, nothing from that round is left in `out`, so
//! a half-parsed file never shows up as a partial set of series.

pub mod cpu;
pub mod disk;
pub mod filesystem;
pub mod load;
pub mod memory;
pub mod network;
pub mod pressure;
pub mod process;

use super::{CollectError, Collector};
use medic_proto::v1::Sample;
use std::borrow::Cow;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// Where the host's pseudo-filesystems are mounted. In a container they are the host mounts
/// (e.g. /host/proc); on bare metal the defaults.
#[derive(Debug, Clone)]
pub struct HostPaths {
    pub proc_root: PathBuf,
    pub sys_root: PathBuf,
    /// Prefix under which the host's mount points are visible (for statvfs). "/" on bare metal.
    pub rootfs: PathBuf,
}

impl Default for HostPaths {
    fn default() -> Self {
        Self { proc_root: "/proc".into(), sys_root: "/sys".into(), rootfs: "/".into() }
    }
}

#[derive(Debug, Clone, Default)]
pub struct HostOptions {
    pub paths: HostPaths,
    /// Process names (comm or argv[0] basename) whose count, CPU and RSS are reported.
    pub processes: Vec<String>,
    /// Also statvfs network and FUSE filesystems (nfs, cifs, sshfs, ...). Off by default because
    /// statvfs on a dead server or hung FUSE daemon blocks in the kernel, uninterruptibly, and
    /// would wedge the collection thread.
    pub statvfs_network_mounts: bool,
}

/// All host collectors, in a fixed order.
pub fn collectors(opts: &HostOptions) -> Vec<Box<dyn Collector>> {
    let p = &opts.paths;
    vec![
        Box::new(cpu::CpuCollector::new(p)),
        Box::new(memory::MemoryCollector::new(p)),
        Box::new(load::LoadCollector::new(p)),
        Box::new(pressure::PressureCollector::new(p)),
        Box::new(disk::DiskCollector::new(p)),
        Box::new(filesystem::FilesystemCollector::new(p, opts.statvfs_network_mounts)),
        Box::new(network::NetworkCollector::new(p)),
        Box::new(process::ProcessCollector::new(p, &opts.processes)),
    ]
}

/// Runs one round so that a failure leaves `out` exactly as it was (see the module contract).
fn all_or_nothing(
    out: &mut Vec<Sample>,
    round: impl FnOnce(&mut Vec<Sample>) -> Result<(), CollectError>,
) -> Result<(), CollectError> {
    let start = out.len();
    let result = round(out);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

/// A file buffer reused across rounds.
///
/// Hand-rolled rather than `File::read_to_string` because std sizes that read with an extra
/// fstat + lseek per call, pure overhead on procfs (which reports every size as 0) that adds up
/// in the per-pid scan. The bytes stay initialised between reads so growing is the only time the
/// buffer is zeroed.
#[derive(Debug, Default)]
struct FileBuf {
    bytes: Vec<u8>,
    len: usize,
}

impl FileBuf {
    /// Reads all of `path`. Invalid UTF-8 (legal in mount points and process names) is replaced
    /// rather than failing the whole file; the copy that needs is only made in that rare case.
    fn read(&mut self, path: &Path) -> io::Result<Cow<'_, str>> {
        self.fill(path)?;
        Ok(self.text())
    }

    /// `read` split in two, for callers that pick a fallback file on error: returning the text
    /// from the same call would keep the buffer borrowed in the error path too.
    fn fill(&mut self, path: &Path) -> io::Result<()> {
        self.len = 0;
        let mut file = File::open(path)?;
        loop {
            if self.bytes.len() - self.len < 1024 {
                let grown = (self.bytes.len() * 2).max(4096);
                self.bytes.resize(grown, 0);
            }
            match file.read(&mut self.bytes[self.len..]) {
                Ok(0) => return Ok(()),
                Ok(n) => self.len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn text(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.bytes[..self.len])
    }

    /// `read` for files a collector cannot do without.
    fn read_required(&mut self, path: &Path) -> Result<Cow<'_, str>, CollectError> {
        self.read(path).map_err(|e| CollectError::io(path.display().to_string(), e))
    }
}

/// Reads the host's view of a per-namespace file (`paths[0]`, under /proc/1) if visible, else our
/// own (`paths[1]`). In a container sharing the host's pid namespace, pid 1 is the host's init, so
/// its mount table and network devices are the host's, while /proc/self would show the
/// container's. On bare metal both are the same.
fn read_host_view<'a>(buf: &'a mut FileBuf, paths: &[PathBuf; 2]) -> Result<Cow<'a, str>, CollectError> {
    let [host, own] = paths;
    match buf.fill(host) {
        Ok(()) => {}
        Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied) => {
            buf.fill(own).map_err(|e| CollectError::io(own.display().to_string(), e))?
        }
        Err(e) => return Err(CollectError::io(host.display().to_string(), e)),
    }
    Ok(buf.text())
}

fn parse_error(path: &Path, message: impl Into<String>) -> CollectError {
    CollectError::parse(path.display().to_string(), message)
}

/// Kernel tick rate for the jiffies in /proc/stat and /proc/pid/stat.
fn user_hz() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    // 100 is what the kernel ABI has exposed on every mainstream architecture.
    if hz > 0 { hz as f64 } else { 100.0 }
}

fn page_size() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 { size as f64 } else { 4096.0 }
}

#[cfg(test)]
pub(crate) mod testutil {
    use super::HostPaths;
    use medic_proto::v1::{MetricKind, Sample};
    use std::path::Path;

    /// A fake host: /proc, /sys and the rootfs all live in one tempdir.
    pub struct FakeHost {
        _dir: tempfile::TempDir,
        pub paths: HostPaths,
    }

    impl FakeHost {
        pub fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let paths = HostPaths {
                proc_root: dir.path().join("proc"),
                sys_root: dir.path().join("sys"),
                rootfs: dir.path().join("rootfs"),
            };
            for p in [&paths.proc_root, &paths.sys_root, &paths.rootfs] {
                std::fs::create_dir_all(p).unwrap();
            }
            Self { _dir: dir, paths }
        }

        /// Writes `content` to `rel` under the fake /proc, creating directories.
        pub fn proc_file(&self, rel: &str, content: &str) {
            write(&self.paths.proc_root.join(rel), content);
        }
    }

    pub fn write(path: &Path, content: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }

    /// One line per sample, e.g. `counter node_load1{} 0.5`, in emission order, so expectations
    /// read like a /metrics page.
    pub fn render(out: &[Sample]) -> Vec<String> {
        out.iter().map(render_one).collect()
    }

    pub fn render_one(s: &Sample) -> String {
        let kind = match MetricKind::try_from(s.kind) {
            Ok(MetricKind::Counter) => "counter",
            Ok(MetricKind::Gauge) => "gauge",
            _ => "unspecified",
        };
        let labels: Vec<String> = s.labels.iter().map(|l| format!("{}=\"{}\"", l.name, l.value)).collect();
        format!("{kind} {}{{{}}} {}", s.metric, labels.join(","), s.value)
    }

    /// The value of the one sample with exactly these labels (in any order).
    pub fn value(out: &[Sample], metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut want: Vec<(&str, &str)> = labels.to_vec();
        want.sort();
        let hits: Vec<f64> = out
            .iter()
            .filter(|s| s.metric == metric)
            .filter(|s| {
                let have: Vec<(&str, &str)> = s.labels.iter().map(|l| (l.name.as_str(), l.value.as_str())).collect();
                have == want
            })
            .map(|s| s.value)
            .collect();
        assert!(hits.len() <= 1, "duplicate series {metric}{labels:?}");
        hits.first().copied()
    }

    pub fn assert_close(actual: f64, expected: f64) {
        assert!((actual - expected).abs() <= 1e-9 * expected.abs().max(1.0), "expected {expected}, got {actual}");
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::value;
    use super::*;

    #[test]
    fn file_buf_reuses_its_allocation_and_forgets_old_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "x".repeat(10_000)).unwrap();
        let mut buf = FileBuf::default();
        assert_eq!(buf.read(&path).unwrap().len(), 10_000);
        let cap = buf.bytes.capacity();
        std::fs::write(&path, "short").unwrap();
        assert_eq!(buf.read(&path).unwrap(), "short");
        assert_eq!(buf.bytes.capacity(), cap, "a second read must not reallocate");
    }

    #[test]
    fn file_buf_tolerates_invalid_utf8() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"ok \xff ok").unwrap();
        assert_eq!(FileBuf::default().read(&path).unwrap(), "ok \u{fffd} ok");
    }

    #[test]
    fn a_failing_collector_leaves_no_partial_samples() {
        let mut out = vec![crate::collect::gauge("earlier", &[], 1, 1.0)];
        let result = all_or_nothing(&mut out, |out| {
            out.push(crate::collect::gauge("half_done", &[], 1, 1.0));
            Err(CollectError::parse("x", "boom"))
        });
        assert!(result.is_err());
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].metric, "earlier");
    }

    /// Runs everything against this machine's real /proc: the names dashboards depend on exist.
    #[test]
    fn all_collectors_work_on_the_real_host() {
        let opts = HostOptions {
            // The test binary itself is a process that surely exists.
            processes: vec![current_comm()],
            ..HostOptions::default()
        };
        let mut out = Vec::new();
        for mut c in collectors(&opts) {
            c.collect(1_000, &mut out).unwrap_or_else(|e| panic!("collector {}: {e}", c.name()));
        }
        let has = |metric: &str| out.iter().any(|s| s.metric == metric);
        for metric in [
            "node_cpu_seconds_total",
            "node_context_switches_total",
            "node_boot_time_seconds",
            "node_memory_MemTotal_bytes",
            "node_memory_MemAvailable_bytes",
            "node_load1",
            "node_network_receive_bytes_total",
            "node_processes_pids",
        ] {
            assert!(has(metric), "missing {metric}");
        }
        assert!(
            out.iter().any(|s| s.metric == "node_filesystem_avail_bytes"
                && s.labels.iter().any(|l| l.name == "mountpoint" && l.value == "/")),
            "missing node_filesystem_avail_bytes for /"
        );
        assert!(out.iter().any(|s| {
            s.metric == "node_cpu_seconds_total"
                && s.labels.iter().any(|l| l.name == "mode" && l.value == "idle")
                && s.value > 0.0
        }));
        let count = value(&out, "node_process_count", &[("process", &opts.processes[0])]);
        assert!(count.unwrap_or(0.0) >= 1.0, "test binary not found as {:?}", opts.processes);
        for s in &out {
            assert_eq!(s.timestamp_ms, 1_000);
            assert!(s.value.is_finite() && s.value >= 0.0, "{s:?}");
        }
    }

    fn current_comm() -> String {
        std::fs::read_to_string("/proc/self/comm").unwrap().trim_end().to_string()
    }
}
