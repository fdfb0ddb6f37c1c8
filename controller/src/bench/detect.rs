//! Throughput of the production detector: many series, one thread.
//!
//! Samples arrive round-robin over the series (as a collection round does), each series a
//! daily sine plus noise with occasional spikes, so every code path — baseline models,
//! CUSUM, likelihood ring, flatline — runs as in production.

use crate::detect::anomaly::{Config, Detector, Kind, SeriesDetector};
use std::time::Instant;

#[derive(Debug, Clone, Copy)]
pub struct Report {
    pub series: usize,
    pub samples: u64,
    pub seconds: f64,
    pub samples_per_sec: f64,
    pub state_bytes_per_series: usize,
    pub alerts: u64,
}

pub fn run(series: usize, samples_per_series: usize) -> Report {
    let mut det = Detector::new(Config::default());
    det.reserve(series);
    let interval_ms = 10_000i64;
    let t0 = 1_700_000_000_000i64;
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut alerts = 0u64;
    let start = Instant::now();
    for t in 0..samples_per_series {
        let ts = t0 + t as i64 * interval_ms;
        let day = (ts % 86_400_000) as f64 / 86_400_000.0 * std::f64::consts::TAU;
        let season = day.sin();
        for s in 0..series {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let noise = (rng >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
            let spike = if rng & 0xFFFF == 0 { 20.0 } else { 0.0 };
            let v = 50.0 + (s % 7) as f64 + 10.0 * season + noise + spike;
            let sc = det.observe(s as u64, ts, v, Kind::Gauge);
            alerts += (sc.value >= 0.5) as u64;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let samples = (series * samples_per_series) as u64;
    Report {
        series,
        samples,
        seconds,
        samples_per_sec: samples as f64 / seconds.max(1e-9),
        state_bytes_per_series: std::mem::size_of::<SeriesDetector>() + std::mem::size_of::<u64>(),
        alerts,
    }
}
