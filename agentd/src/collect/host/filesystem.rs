//! Filesystem capacity: the mount table from procfs, then statvfs on each real filesystem.
//!
//! The mount table is the host's view (see `read_host_view`).

use super::{FileBuf, HostPaths, all_or_nothing, read_host_view};
use crate::collect::{CollectError, Collector, gauge};
use medic_proto::v1::Sample;
use std::borrow::Cow;
use std::collections::HashSet;
use std::ffi::CStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// Filesystems with no disk capacity behind them (or, for squashfs/iso9660, capacity that is
/// always 100 % used by design), so their statvfs numbers only add noise and false alerts.
const PSEUDO_FS: &[&str] = &[
    "autofs",
    "binfmt_misc",
    "bpf",
    "cgroup",
    "cgroup2",
    "configfs",
    "debugfs",
    "devpts",
    "devtmpfs",
    "efivarfs",
    "fusectl",
    "fuse.lxcfs",
    "hugetlbfs",
    "iso9660",
    "mqueue",
    "nsfs",
    "proc",
    "pstore",
    "ramfs",
    "rpc_pipefs",
    "securityfs",
    "selinuxfs",
    "squashfs",
    "sysfs",
    "tmpfs",
    "tracefs",
];

/// statvfs on these goes to a server and blocks uninterruptibly while it is unreachable. FUSE
/// filesystems of any kind (see `may_block`) block the same way when their daemon hangs.
const NETWORK_FS: &[&str] = &["nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "9p", "afs"];

fn may_block(fstype: &str) -> bool {
    NETWORK_FS.contains(&fstype) || fstype == "fuse" || fstype.starts_with("fuse.")
}

/// Container runtimes' per-container rootfs and volume mounts: hundreds of them on a busy node,
/// all backed by filesystems already reported at their real mount point.
const IGNORED_MOUNT_PREFIXES: &[&str] = &[
    "/proc/",
    "/sys/",
    "/dev/",
    "/run/containerd/",
    "/run/docker/",
    "/var/lib/docker/",
    "/var/lib/containers/storage/",
];

pub struct FilesystemCollector {
    mounts_paths: [PathBuf; 2],
    rootfs: Vec<u8>,
    statvfs_network: bool,
    buf: FileBuf,
    /// rootfs + mount point + NUL, rebuilt per mount without allocating.
    cpath: Vec<u8>,
}

impl FilesystemCollector {
    pub fn new(paths: &HostPaths, statvfs_network: bool) -> Self {
        let mut rootfs = paths.rootfs.as_os_str().as_bytes().to_vec();
        while rootfs.last() == Some(&b'/') {
            rootfs.pop();
        }
        Self {
            mounts_paths: [paths.proc_root.join("1/mounts"), paths.proc_root.join("self/mounts")],
            rootfs,
            statvfs_network,
            buf: FileBuf::default(),
            cpath: Vec::new(),
        }
    }
}

struct Usage {
    size: f64,
    free: f64,
    avail: f64,
    files: f64,
    files_free: f64,
    readonly: bool,
}

fn statvfs(path: &CStr) -> io::Result<Usage> {
    // SAFETY: statvfs is plain old data; all-zero is a valid value that the call overwrites.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `st` is a valid out pointer for the call's duration.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // f_frsize is the unit of the block counts; f_bsize is only the preferred IO size.
    let unit = st.f_frsize as f64;
    Ok(Usage {
        size: st.f_blocks as f64 * unit,
        free: st.f_bfree as f64 * unit,
        avail: st.f_bavail as f64 * unit,
        files: st.f_files as f64,
        files_free: st.f_ffree as f64,
        readonly: st.f_flag & libc::ST_RDONLY != 0,
    })
}

/// Undoes the kernel's octal escaping of space, tab, newline and backslash in the mount table.
fn unescape(field: &str) -> Cow<'_, str> {
    if !field.contains('\\') {
        return Cow::Borrowed(field);
    }
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

impl Collector for FilesystemCollector {
    fn name(&self) -> &'static str {
        "filesystem"
    }

    fn collect(&mut self, now_ms: i64, out: &mut Vec<Sample>) -> Result<(), CollectError> {
        let (statvfs_network, rootfs, cpath) = (self.statvfs_network, &self.rootfs, &mut self.cpath);
        all_or_nothing(out, |out| {
            let text = read_host_view(&mut self.buf, &self.mounts_paths)?;
            let mut seen_devices = HashSet::new();
            for line in text.lines() {
                // "device mountpoint fstype options dump pass"
                let mut f = line.split_ascii_whitespace();
                let (Some(device), Some(mountpoint), Some(fstype)) = (f.next(), f.next(), f.next()) else {
                    continue;
                };
                if PSEUDO_FS.contains(&fstype)
                    || (!statvfs_network && may_block(fstype))
                    || IGNORED_MOUNT_PREFIXES.iter().any(|p| mountpoint.starts_with(p))
                {
                    continue;
                }
                // Bind mounts repeat the device; report it once, at its first (usually primary)
                // mount point. Devices without a '/' ("overlay", "none") name no single
                // filesystem, so every such mount is its own.
                if device.contains('/') && !seen_devices.insert(device) {
                    continue;
                }
                let mountpoint = unescape(mountpoint);
                cpath.clear();
                cpath.extend_from_slice(rootfs);
                if !mountpoint.starts_with('/') {
                    cpath.push(b'/');
                }
                cpath.extend_from_slice(mountpoint.as_bytes());
                cpath.push(0);
                let Ok(cstr) = CStr::from_bytes_with_nul(cpath) else {
                    continue;
                };
                let device = unescape(device);
                let labels = [("device", &*device), ("fstype", fstype), ("mountpoint", &*mountpoint)];
                let Ok(u) = statvfs(cstr) else {
                    // Stale or unreachable under rootfs: node_exporter's signal for it.
                    out.push(gauge("node_filesystem_device_error", &labels, now_ms, 1.0));
                    continue;
                };
                let g = |metric, value| gauge(metric, &labels, now_ms, value);
                out.extend([
                    g("node_filesystem_device_error", 0.0),
                    g("node_filesystem_size_bytes", u.size),
                    g("node_filesystem_free_bytes", u.free),
                    g("node_filesystem_avail_bytes", u.avail),
                    g("node_filesystem_files", u.files),
                    g("node_filesystem_files_free", u.files_free),
                    g("node_filesystem_readonly", if u.readonly { 1.0 } else { 0.0 }),
                ]);
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::host::testutil::{FakeHost, render, value};

    fn collect(host: &FakeHost, statvfs_network: bool) -> Vec<Sample> {
        let mut out = Vec::new();
        FilesystemCollector::new(&host.paths, statvfs_network).collect(7, &mut out).unwrap();
        out
    }

    fn mountpoints(out: &[Sample], metric: &str) -> Vec<String> {
        out.iter()
            .filter(|s| s.metric == metric)
            .flat_map(|s| s.labels.iter().filter(|l| l.name == "mountpoint"))
            .map(|l| l.value.clone())
            .collect()
    }

    /// Mount points exist as directories under the fake rootfs, so statvfs really runs on them.
    fn host_with_mounts(mounts: &str, dirs: &[&str]) -> FakeHost {
        let host = FakeHost::new();
        host.proc_file("1/mounts", mounts);
        for d in dirs {
            std::fs::create_dir_all(host.paths.rootfs.join(d)).unwrap();
        }
        host
    }

    #[test]
    fn reports_capacity_of_real_filesystems_with_device_fstype_and_mountpoint() {
        let host = host_with_mounts(
            "\
/dev/vda1 / ext4 rw,relatime 0 0
proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0
sysfs /sys sysfs rw 0 0
tmpfs /run tmpfs rw,nosuid,nodev,size=1632080k,mode=755 0 0
cgroup2 /sys/fs/cgroup cgroup2 rw 0 0
/dev/nvme0n1 /var/lib/clickhouse xfs rw,noatime 0 0
/dev/nvme0n1 /mnt/clickhouse-bind xfs rw,noatime 0 0
overlay /var/lib/docker/overlay2/abc/merged overlay rw 0 0
overlay /overlay-root overlay rw 0 0
/dev/loop3 /snap/core/1 squashfs ro 0 0
/dev/sdb1 /mnt/my\\040disk ext4 rw 0 0
",
            &["var/lib/clickhouse", "mnt/clickhouse-bind", "overlay-root", "mnt/my disk"],
        );
        let out = collect(&host, false);
        assert_eq!(
            mountpoints(&out, "node_filesystem_avail_bytes"),
            ["/", "/var/lib/clickhouse", "/overlay-root", "/mnt/my disk"]
        );
        let labels = [("device", "/dev/nvme0n1"), ("fstype", "xfs"), ("mountpoint", "/var/lib/clickhouse")];
        let size = value(&out, "node_filesystem_size_bytes", &labels).unwrap();
        let free = value(&out, "node_filesystem_free_bytes", &labels).unwrap();
        let avail = value(&out, "node_filesystem_avail_bytes", &labels).unwrap();
        assert!(size > 0.0 && free <= size && avail <= free, "{size} {free} {avail}");
        assert!(value(&out, "node_filesystem_files", &labels).unwrap() > 0.0);
        assert!(value(&out, "node_filesystem_files_free", &labels).is_some());
        assert_eq!(value(&out, "node_filesystem_readonly", &labels), Some(0.0));
        assert_eq!(value(&out, "node_filesystem_device_error", &labels), Some(0.0));
        assert!(render(&out).iter().all(|l| l.starts_with("gauge ")));
    }

    #[test]
    fn network_and_fuse_filesystems_are_not_statted_unless_enabled() {
        let host = host_with_mounts(
            "\
/dev/vda1 / ext4 rw 0 0
nas:/export /mnt/nas nfs4 rw,vers=4.2 0 0
//smb/share /mnt/smb cifs rw 0 0
user@host:/ /mnt/ssh fuse.sshfs rw 0 0
/dev/fuse /mnt/fuse fuse rw 0 0
",
            &["mnt/nas"],
        );
        assert_eq!(mountpoints(&collect(&host, false), "node_filesystem_device_error"), ["/"]);

        let out = collect(&host, true);
        assert_eq!(
            mountpoints(&out, "node_filesystem_device_error"),
            ["/", "/mnt/nas", "/mnt/smb", "/mnt/ssh", "/mnt/fuse"]
        );
        // The other two do not exist under the fake rootfs: reported as errored, not dropped.
        let smb = [("device", "//smb/share"), ("fstype", "cifs"), ("mountpoint", "/mnt/smb")];
        assert_eq!(value(&out, "node_filesystem_device_error", &smb), Some(1.0));
        assert_eq!(value(&out, "node_filesystem_size_bytes", &smb), None);
    }

    #[test]
    fn falls_back_to_self_mounts_and_skips_malformed_lines() {
        let host = FakeHost::new();
        host.proc_file("self/mounts", "garbage\n/dev/vda1 / ext4 rw 0 0\n\n/dev/vdb\n");
        assert_eq!(mountpoints(&collect(&host, false), "node_filesystem_size_bytes"), ["/"]);
    }

    #[test]
    fn no_readable_mount_table_is_an_error() {
        let host = FakeHost::new();
        let mut out = Vec::new();
        let err = FilesystemCollector::new(&host.paths, false).collect(0, &mut out).unwrap_err();
        assert!(matches!(err, CollectError::Io { .. }));
    }

    #[test]
    fn unescapes_octal_sequences_like_the_kernel_writes_them() {
        assert_eq!(unescape("/mnt/a\\040b\\011c\\134d"), "/mnt/a b\tc\\d");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/trailing\\04"), "/trailing\\04");
    }
}
