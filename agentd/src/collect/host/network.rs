//! /proc/net/dev: per interface traffic and error counters, from the host's network namespace
//! when visible (see `read_host_view`). Loopback is kept, like node_exporter, because ClickHouse
//! replicas on one host talk over it.

use super::{FileBuf, HostPaths, read_host_view};
use crate::collect::{CollectError, Collector, counter};
use medic_proto::v1::Sample;
use std::path::PathBuf;

pub struct NetworkCollector {
    paths: [PathBuf; 2],
    buf: FileBuf,
}

impl NetworkCollector {
    pub fn new(paths: &HostPaths) -> Self {
        Self { paths: [paths.proc_root.join("1/net/dev"), paths.proc_root.join("net/dev")], buf: FileBuf::default() }
    }
}

/// Metric names by column for the receive half (columns 0-3) and transmit half (8-11); the
/// remaining columns (fifo, frame/colls, compressed, multicast/carrier) are rarely actionable.
const RECEIVE: [&str; 4] = [
    "node_network_receive_bytes_total",
    "node_network_receive_packets_total",
    "node_network_receive_errs_total",
    "node_network_receive_drop_total",
];
const TRANSMIT: [&str; 4] = [
    "node_network_transmit_bytes_total",
    "node_network_transmit_packets_total",
    "node_network_transmit_errs_total",
    "node_network_transmit_drop_total",
];

fn parse_line(line: &str) -> Option<(&str, [u64; 16])> {
    // Old kernels glue big counters to the name ("eth0:123"), so split on ':' not whitespace.
    let (name, rest) = line.split_once(':')?;
    let name = name.trim();
    if name.is_empty() {
        return None;
    }
    let mut values = [0u64; 16];
    let mut fields = rest.split_ascii_whitespace();
    for v in &mut values {
        *v = fields.next()?.parse().ok()?;
    }
    Some((name, values))
}

impl Collector for NetworkCollector {
    fn name(&self) -> &'static str {
        "network"
    }

    fn collect(&mut self, now_ms: i64, out: &mut Vec<Sample>) -> Result<(), CollectError> {
        let text = read_host_view(&mut self.buf, &self.paths)?;
        // The two header lines have no ':', so parse_line skips them like any malformed line.
        for line in text.lines() {
            let Some((device, values)) = parse_line(line) else {
                continue;
            };
            let labels = [("device", device)];
            for (metric, v) in RECEIVE.iter().zip(&values[0..4]) {
                out.push(counter(metric, &labels, now_ms, *v as f64));
            }
            for (metric, v) in TRANSMIT.iter().zip(&values[8..12]) {
                out.push(counter(metric, &labels, now_ms, *v as f64));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::host::testutil::{FakeHost, render};

    const NET_DEV: &str = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:    3193      29    0    0    0     0          0         0     3193      29    0    0    0     0       0          0
  eth0: 987654321 1234567 3 4 0 0 0 12 123456789 765432 5 6 0 0 0 0
eth1:18446744073709551615 1 0 0 0 0 0 0 2 2 0 0 0 0 0 0
  bad0: 1 2 3
";

    #[test]
    fn reports_receive_and_transmit_counters_per_interface_including_loopback() {
        let host = FakeHost::new();
        host.proc_file("net/dev", NET_DEV);
        let mut out = Vec::new();
        NetworkCollector::new(&host.paths).collect(7, &mut out).unwrap();
        let out = render(&out);
        assert_eq!(
            out[8..16],
            [
                r#"counter node_network_receive_bytes_total{device="eth0"} 987654321"#,
                r#"counter node_network_receive_packets_total{device="eth0"} 1234567"#,
                r#"counter node_network_receive_errs_total{device="eth0"} 3"#,
                r#"counter node_network_receive_drop_total{device="eth0"} 4"#,
                r#"counter node_network_transmit_bytes_total{device="eth0"} 123456789"#,
                r#"counter node_network_transmit_packets_total{device="eth0"} 765432"#,
                r#"counter node_network_transmit_errs_total{device="eth0"} 5"#,
                r#"counter node_network_transmit_drop_total{device="eth0"} 6"#,
            ]
        );
        let devices: Vec<&str> =
            out.iter().filter(|l| l.contains("receive_bytes")).map(|l| l.split('"').nth(1).unwrap()).collect();
        assert_eq!(devices, ["lo", "eth0", "eth1"], "the truncated bad0 line is skipped");
        assert_eq!(out.len(), 24);
    }

    #[test]
    fn prefers_the_host_namespace_seen_through_pid_1() {
        let host = FakeHost::new();
        host.proc_file("net/dev", NET_DEV);
        host.proc_file("1/net/dev", "  eth9: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\n");
        let mut out = Vec::new();
        NetworkCollector::new(&host.paths).collect(7, &mut out).unwrap();
        assert_eq!(out.len(), 8);
        assert!(render(&out)[0].contains(r#"device="eth9""#));
    }

    #[test]
    fn a_missing_file_is_an_error() {
        let host = FakeHost::new();
        let err = NetworkCollector::new(&host.paths).collect(0, &mut Vec::new()).unwrap_err();
        assert!(matches!(err, CollectError::Io { .. }));
    }
}
