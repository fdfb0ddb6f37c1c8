//! Host metrics read straight from /proc and /sys (node_exporter-compatible names where one
//! exists, so existing dashboards and alerts keep working when Prometheus scrapes agentd).
//! PLACEHOLDER: being implemented.

use super::Collector;
use std::path::PathBuf;

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
}

/// All host collectors, in a fixed order.
pub fn collectors(_opts: &HostOptions) -> Vec<Box<dyn Collector>> {
    Vec::new()
}
