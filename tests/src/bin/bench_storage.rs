//! Bytes per sample on disk, for both stores, with typical host metrics at a 10 s interval.
//!
//! The series are what agentd's real host collectors report on this machine (names, labels,
//! starting values); their values then evolve the way host metrics do — CPU-seconds counters
//! advance in 10 ms ticks along a daily cycle, byte and packet counters in bursty integer steps,
//! memory gauges in 4 KiB pages, load averages with two decimals, sizes and boot time stay put —
//! for a simulated day. They are written through the real store code (`ClickHouseStore`, one
//! batch per node per round, as the controller does), the ClickHouse table is merged as it would
//! be after a day, and `system.parts` says how many bytes the rows take.
//!
//! The embedded store gets the same batches; its compaction then runs over every bucket
//! closed by now (what its background thread has done once the buckets closed) and its
//! memtables are flushed, and the files say what the data takes at rest. fjall's journal (its
//! write-ahead log) is reported apart: it holds every write since it last rotated, which fjall
//! does at 64 MiB, so for a small store (3 nodes, one day: ~43 MB written) it holds all of them,
//! while for a large one it is a bounded overhead. Bytes are allocated bytes (`du`): fjall
//! preallocates its journal as a sparse 64 MiB file.
//!
//! Usage: bench_storage [--nodes N] [--hours H] [--codec-probe]   (needs tests/clickhouse/install)

use anyhow::{Context, Result};
use clap::Parser;
use controller::store::clickhouse::{ClickHouseOptions, ClickHouseStore};
use controller::store::embedded::{COMPACT_LAG_MS, EmbeddedOptions, EmbeddedStore};
use controller::store::{NodeRecord, Store, WriteSet};
use medic_proto::v1::{Batch, MetricKind, Sample};
use medic_tests::ClickHouseProc;
use rand::{Rng, SeedableRng};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    /// Simulated nodes.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Simulated hours at a 10 s interval.
    #[arg(long, default_value_t = 24)]
    hours: u64,
    /// Also measure the value column under other ClickHouse codecs (how the codec was chosen).
    #[arg(long)]
    codec_probe: bool,
}

/// How one series' value moves from round to round.
#[derive(Clone, Copy)]
enum Motion {
    Constant,
    /// Counter of seconds with 10 ms resolution; `share` of a core on average.
    CpuSeconds {
        share: f64,
    },
    /// Integer counter with bursty increments averaging `per_round`.
    Events {
        per_round: f64,
    },
    /// Gauge in 4 KiB pages drifting by about `swing` bytes per round.
    Pages {
        swing: f64,
    },
    /// Gauge with two decimals (load, ratios).
    Decimal {
        swing: f64,
    },
}

fn motion(s: &Sample) -> Motion {
    let m = s.metric.as_str();
    let counter = s.kind == MetricKind::Counter as i32;
    if m.contains("size_bytes")
        || m.contains("boot_time")
        || m.contains("Total_bytes")
        || m.ends_with("_files")
        || m.contains("readonly")
        || m.contains("device_error")
    {
        Motion::Constant
    } else if counter && m.ends_with("seconds_total") {
        let mode = s.labels.iter().find(|l| l.name == "mode").map(|l| l.value.as_str());
        Motion::CpuSeconds {
            share: match mode {
                Some("idle") => 0.7,
                Some("user") => 0.15,
                Some("system") => 0.06,
                Some("iowait") => 0.02,
                Some(_) => 0.003,
                None => 0.05,
            },
        }
    } else if counter {
        let per_round = if m.contains("bytes") {
            200_000.0
        } else if m.contains("errs") || m.contains("drop") {
            0.02
        } else {
            300.0
        };
        Motion::Events { per_round }
    } else if m.ends_with("_bytes") {
        Motion::Pages { swing: 2_000_000.0 }
    } else {
        Motion::Decimal { swing: 0.05 }
    }
}

fn step(rng: &mut impl Rng, v: f64, m: Motion, day_phase: f64) -> f64 {
    // Busier by day than by night.
    let load = 0.6 + 0.4 * (day_phase * std::f64::consts::TAU).sin();
    match m {
        Motion::Constant => v,
        Motion::CpuSeconds { share } => {
            let ticks = (share * load * 1000.0 * rng.random_range(0.7..1.3)).round();
            ((v * 100.0).round() + ticks) / 100.0
        }
        Motion::Events { per_round } => {
            if per_round < 1.0 {
                v + if rng.random_bool(per_round) { 1.0 } else { 0.0 }
            } else {
                v + (per_round * load * rng.random_range(0.0..2.0)).round()
            }
        }
        Motion::Pages { swing } => {
            if rng.random_bool(0.6) {
                (v + (rng.random_range(-swing..swing) / 4096.0).round() * 4096.0).max(0.0)
            } else {
                v
            }
        }
        Motion::Decimal { swing } => ((v + rng.random_range(-swing..swing)).max(0.0) * 100.0).round() / 100.0,
    }
}

fn host_catalog() -> Vec<Sample> {
    let mut out = Vec::new();
    for mut c in agentd::collect::host::collectors(&Default::default()) {
        let _ = c.collect(0, &mut out);
    }
    out
}

/// (apparent, allocated) bytes of the files under `p`. fjall preallocates its journal as a
/// sparse 64 MiB file: what it takes on disk is the allocated size (`du`), not its length.
fn dir_size(p: &std::path::Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let Ok(rd) = std::fs::read_dir(p) else { return (0, 0) };
    rd.filter_map(|e| e.ok())
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => (m.len(), m.blocks() * 512),
            Err(_) => (0, 0),
        })
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let catalog = host_catalog();
    anyhow::ensure!(!catalog.is_empty(), "the host collectors produced nothing");
    let rounds = args.hours * 360;
    println!(
        "{} nodes × {} series × {} rounds (10 s) = {} samples",
        args.nodes,
        catalog.len(),
        rounds,
        args.nodes as u64 * catalog.len() as u64 * rounds
    );

    let dir = tempfile::tempdir()?;
    let ch =
        ClickHouseProc::start(&dir.path().join("clickhouse")).await.context("starting the ClickHouse test engine")?;
    let mut opts = ClickHouseOptions::new(ch.url());
    opts.retention = Duration::from_secs(3650 * 86400);
    let clickhouse: Arc<dyn Store> = Arc::new(ClickHouseStore::open(opts).await?);
    // Compaction runs when this benchmark says, so that its figures cover all of it.
    let embedded_store =
        EmbeddedStore::open_with(&dir.path().join("embedded"), EmbeddedOptions { background_compaction: false })?;
    let embedded: Arc<dyn Store> = Arc::new(embedded_store.clone());

    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut values: Vec<Vec<f64>> = (0..args.nodes).map(|_| catalog.iter().map(|s| s.value).collect()).collect();
    let motions: Vec<Motion> = catalog.iter().map(motion).collect();
    let start_ms = chrono::Utc::now().timestamp_millis() - (args.hours as i64 * 3_600_000);
    let started = Instant::now();
    let mut total = 0u64;
    // Group several rounds per write, as the controller's writer groups concurrent batches.
    let group_rounds = 30;
    for first in (0..rounds).step_by(group_rounds) {
        let mut set = WriteSet::default();
        for r in first..(first + group_rounds as u64).min(rounds) {
            let ts = start_ms + r as i64 * 10_000;
            let phase = (r % 8640) as f64 / 8640.0;
            for (n, vals) in values.iter_mut().enumerate() {
                let samples: Vec<Sample> = catalog
                    .iter()
                    .zip(vals.iter_mut())
                    .zip(&motions)
                    .map(|((s, v), m)| {
                        *v = step(&mut rng, *v, *m, phase);
                        Sample { timestamp_ms: ts, value: *v, ..s.clone() }
                    })
                    .collect();
                total += samples.len() as u64;
                set.batches.push((
                    format!("node-{n}"),
                    Arc::new(Batch { seq: r + 1, created_unix_ms: ts, samples, logs: vec![], series: vec![] }),
                ));
            }
        }
        set.nodes = (0..args.nodes)
            .map(|n| NodeRecord {
                node: format!("node-{n}"),
                spool_id: "bench".into(),
                last_seq: first + 1,
                ..Default::default()
            })
            .collect();
        clickhouse.write(set.clone()).await?;
        embedded.write(set).await?;
    }
    println!("wrote {total} samples to both stores in {:.1} s", started.elapsed().as_secs_f64());

    ch.query("OPTIMIZE TABLE medic.samples FINAL").await?;
    let parts = ch
        .query(
            "SELECT sum(rows), sum(bytes_on_disk), sum(data_compressed_bytes), sum(data_uncompressed_bytes)
             FROM system.parts WHERE database = 'medic' AND table = 'samples' AND active",
        )
        .await?;
    let f: Vec<f64> = parts.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    anyhow::ensure!(f.len() == 4, "unexpected system.parts answer: {parts}");
    let columns = ch
        .query(
            "SELECT column, sum(column_data_compressed_bytes) AS b FROM system.parts_columns
             WHERE database = 'medic' AND table = 'samples' AND active GROUP BY column ORDER BY b DESC",
        )
        .await?;
    println!("medic.samples: {} rows, {} bytes on disk, compressed {} / uncompressed {}", f[0], f[1], f[2], f[3]);
    println!("per column (compressed bytes per sample):");
    for line in columns.lines() {
        if let Some((c, b)) = line.split_once('\t') {
            println!("  {c:<8} {:.3}", b.parse::<f64>().unwrap_or(0.0) / f[0]);
        }
    }
    // How the value column would fare under other codecs, on the same data.
    let probes: &[&str] = if args.codec_probe {
        &[
            "Gorilla, ZSTD(1)",
            "FPC(12), ZSTD(3)",
            "ZSTD(3)",
            "Delta, ZSTD(3)",
            "Delta, ZSTD(9)",
            "DoubleDelta, ZSTD(3)",
            "Delta(8), LZ4HC(9)",
        ]
    } else {
        &[]
    };
    for codec in probes {
        ch.query("DROP TABLE IF EXISTS medic.codec_probe").await?;
        ch.query(&format!(
            "CREATE TABLE medic.codec_probe (node LowCardinality(String), metric LowCardinality(String), labels String,
             ts DateTime64(3, 'UTC'), value Float64 CODEC({codec})) ENGINE = MergeTree ORDER BY (node, metric, labels, ts)"
        ))
        .await?;
        ch.query("INSERT INTO medic.codec_probe SELECT node, metric, labels, ts, value FROM medic.samples").await?;
        ch.query("OPTIMIZE TABLE medic.codec_probe FINAL").await?;
        let b = ch
            .query(
                "SELECT sum(column_data_compressed_bytes) FROM system.parts_columns
                 WHERE database = 'medic' AND table = 'codec_probe' AND active AND column = 'value'",
            )
            .await?;
        println!("  value CODEC({codec}): {:.3} bytes/sample", b.trim().parse::<f64>().unwrap_or(0.0) / f[0]);
    }
    // What the background compaction has done by the time the buckets closed.
    let compacting = Instant::now();
    let stats = embedded_store.compact(chrono::Utc::now().timestamp_millis() - COMPACT_LAG_MS)?;
    let secs = compacting.elapsed().as_secs_f64();
    println!(
        "embedded compaction: {} buckets, {} blocks, {} points, {} → {} bytes in {secs:.2} s ({:.1} M points/s)",
        stats.buckets,
        stats.blocks,
        stats.points,
        stats.bytes_in,
        stats.bytes_out,
        stats.points as f64 / secs / 1e6
    );
    embedded_store.flush()?;
    drop(embedded);
    drop(embedded_store);
    let (embedded_len, embedded_bytes) = dir_size(&dir.path().join("embedded"));
    println!("embedded store: {embedded_bytes} bytes on disk ({embedded_len} bytes of file length)");
    let store_dir = dir.path().join("embedded").join("store");
    for entry in std::fs::read_dir(&store_dir).into_iter().flatten().flatten() {
        let (len, size) = dir_size(&entry.path());
        let (len, size) = if entry.path().is_dir() {
            (len, size)
        } else {
            entry.metadata().map_or((0, 0), |m| {
                use std::os::unix::fs::MetadataExt;
                (m.len(), m.blocks() * 512)
            })
        };
        println!("  {:<12} {size} ({len})", entry.file_name().to_string_lossy());
    }
    let journal: u64 = std::fs::read_dir(&store_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "jnl"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| {
            use std::os::unix::fs::MetadataExt;
            m.blocks() * 512
        })
        .sum();
    println!("embedded_bytes_per_sample={:.2}", (embedded_bytes - journal) as f64 / total as f64);
    println!("embedded_journal_bytes={journal}");
    println!("embedded_bytes_per_sample_with_journal={:.2}", embedded_bytes as f64 / total as f64);
    println!("clickhouse_bytes_per_sample={:.3}", f[1] / f[0]);
    Ok(())
}
