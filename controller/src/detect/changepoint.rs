//! Changepoints (level shifts) on key series, found with augurs' Bayesian online changepoint
//! detector (Normal-Gamma conjugate prior) over a sliding window.
//!
//! The detector runs on a schedule ([`ChangepointTracker::run_if_due`]) over the last
//! `window` of each series rather than per sample: BOCPD's run-length posterior is only
//! trustworthy with context on both sides of a change, and a scheduled batch keeps the cost
//! off the ingest path. Successive runs see the same change again, so events are de-duplicated
//! by series and time.

use augurs::changepoint::{Detector, NormalGammaDetector, dist::NormalGamma};
use std::collections::{BTreeMap, HashMap, VecDeque};

#[derive(Debug, thiserror::Error)]
pub enum ChangepointError {
    #[error("invalid Normal-Gamma prior: {0}")]
    Prior(String),
}

/// Tuning for [`detect_level_shifts`] and [`ChangepointTracker`].
#[derive(Debug, Clone)]
pub struct ChangepointConfig {
    /// How much history each run looks at.
    pub window_ms: i64,
    /// How often [`ChangepointTracker::run_if_due`] actually runs.
    pub every_ms: i64,
    /// Expected run length between changes (BOCPD hazard), in samples.
    pub hazard_lambda: f64,
    /// Fewest samples on each side of a change; shorter segments are blips, not shifts.
    pub min_segment: usize,
    /// Smallest shift reported, in units of the sample-to-sample noise.
    pub min_effect_sigmas: f64,
    /// Changes this close in time on the same series are the same change seen again.
    pub dedup_tolerance_ms: i64,
    /// Samples kept per series (bounds memory regardless of the sample rate).
    pub max_samples: usize,
}

impl Default for ChangepointConfig {
    fn default() -> Self {
        Self {
            window_ms: 6 * 3_600_000,
            every_ms: 5 * 60_000,
            hazard_lambda: 250.0,
            min_segment: 8,
            min_effect_sigmas: 4.0,
            dedup_tolerance_ms: 15 * 60_000,
            max_samples: 4096,
        }
    }
}

/// A level shift inside one window of values.
#[derive(Debug, Clone, PartialEq)]
pub struct LevelShift {
    /// Index of the first sample of the new level.
    pub index: usize,
    pub before_mean: f64,
    pub after_mean: f64,
}

/// A recorded changepoint on one series.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangepointEvent {
    pub node: String,
    pub metric: String,
    pub labels: BTreeMap<String, String>,
    /// Timestamp (ms) of the first sample at the new level.
    pub ts_ms: i64,
    pub before_mean: f64,
    pub after_mean: f64,
}

pub(crate) fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    Some(if v.len().is_multiple_of(2) { (v[m - 1] + v[m]) / 2.0 } else { v[m] })
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.iter().sum::<f64>() / v.len() as f64
}

/// Noise scale from first differences: unlike the spread of the values themselves it is not
/// inflated by the very level shifts we are looking for.
pub(crate) fn diff_noise_sigma(y: &[f64]) -> Option<f64> {
    let mut d: Vec<f64> = y.windows(2).map(|w| (w[1] - w[0]).abs()).collect();
    let mad = median(&mut d)?;
    // |x1 - x0| of iid N(0, s²) has median 0.954 s.
    let sigma = mad / 0.954;
    if sigma > 0.0 && sigma.is_finite() {
        return Some(sigma);
    }
    // Quantised or mostly-constant series: fall back to the plain standard deviation of the
    // differences so that a single step on an otherwise flat line still has a scale.
    let diffs: Vec<f64> = y.windows(2).map(|w| w[1] - w[0]).collect();
    let m = mean(&diffs);
    let var = diffs.iter().map(|d| (d - m).powi(2)).sum::<f64>() / diffs.len().max(1) as f64;
    let sd = var.sqrt() / std::f64::consts::SQRT_2;
    (sd > 0.0 && sd.is_finite()).then_some(sd)
}

/// Level shifts in `y` (finite values, evenly spaced), strongest evidence first filtered by
/// segment length and effect size, returned in time order.
pub fn detect_level_shifts(y: &[f64], cfg: &ChangepointConfig) -> Result<Vec<LevelShift>, ChangepointError> {
    let min_seg = cfg.min_segment.max(2);
    if y.len() < 2 * min_seg || y.iter().any(|v| !v.is_finite()) {
        return Ok(Vec::new());
    }
    let Some(sigma) = diff_noise_sigma(y) else {
        return Ok(Vec::new());
    };
    // The prior (mean 0, precision ~1) assumes standardised data; raw bytes would make every
    // sample look like a new regime.
    let centre = median(&mut y.to_vec()).unwrap_or(0.0);
    let z: Vec<f64> = y.iter().map(|v| (v - centre) / sigma).collect();
    let prior = NormalGamma::new(0.0, 1.0, 1.0, 1.0).map_err(|e| ChangepointError::Prior(format!("{e:?}")))?;
    let mut det = NormalGammaDetector::normal_gamma(cfg.hazard_lambda, prior);
    let mut cps: Vec<usize> =
        det.detect_changepoints(&z).into_iter().filter(|&i| i >= min_seg && i + min_seg <= y.len()).collect();
    cps.dedup();

    // Greedily drop the weakest boundary until every remaining one separates segments that are
    // long enough and differ by enough; BOCPD alone happily splits noise into short runs.
    loop {
        let mut bounds = vec![0];
        bounds.extend(cps.iter().copied());
        bounds.push(y.len());
        let mut weakest: Option<(usize, f64)> = None;
        for k in 0..cps.len() {
            let (a, b, c) = (bounds[k], bounds[k + 1], bounds[k + 2]);
            let before = mean(&y[a..b]);
            let after = mean(&y[b..c]);
            let effect = (after - before).abs() / sigma;
            let short = b - a < min_seg || c - b < min_seg;
            let score = if short { -1.0 } else { effect };
            if score < cfg.min_effect_sigmas && weakest.is_none_or(|(_, s)| score < s) {
                weakest = Some((k, score));
            }
        }
        match weakest {
            Some((k, _)) => {
                cps.remove(k);
            }
            None => break,
        }
    }
    let mut bounds = vec![0];
    bounds.extend(cps.iter().copied());
    bounds.push(y.len());
    Ok((0..cps.len())
        .map(|k| LevelShift {
            index: bounds[k + 1],
            before_mean: mean(&y[bounds[k]..bounds[k + 1]]),
            after_mean: mean(&y[bounds[k + 1]..bounds[k + 2]]),
        })
        .collect())
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct SeriesKey {
    node: String,
    metric: String,
    labels: BTreeMap<String, String>,
}

#[derive(Debug, Default)]
struct SeriesState {
    samples: VecDeque<(i64, f64)>,
    /// Timestamps of changes already reported, for de-duplication across runs.
    reported: VecDeque<i64>,
}

/// Keeps a bounded window per series and reports each level shift once.
#[derive(Debug)]
pub struct ChangepointTracker {
    cfg: ChangepointConfig,
    series: HashMap<SeriesKey, SeriesState>,
    last_run_ms: Option<i64>,
}

impl ChangepointTracker {
    pub fn new(cfg: ChangepointConfig) -> Self {
        Self { cfg, series: HashMap::new(), last_run_ms: None }
    }

    pub fn observe(&mut self, node: &str, metric: &str, labels: &BTreeMap<String, String>, ts_ms: i64, value: f64) {
        if !value.is_finite() {
            return;
        }
        let key = SeriesKey { node: node.to_owned(), metric: metric.to_owned(), labels: labels.clone() };
        let st = self.series.entry(key).or_default();
        // Agents may resend; out-of-order samples would scramble the index-to-time mapping.
        if st.samples.back().is_some_and(|&(t, _)| ts_ms <= t) {
            return;
        }
        st.samples.push_back((ts_ms, value));
        while st.samples.len() > self.cfg.max_samples {
            st.samples.pop_front();
        }
    }

    /// Runs [`Self::run`] if `every_ms` has passed since the last run.
    pub fn run_if_due(&mut self, now_ms: i64) -> Result<Vec<ChangepointEvent>, ChangepointError> {
        if self.last_run_ms.is_some_and(|t| now_ms - t < self.cfg.every_ms) {
            return Ok(Vec::new());
        }
        self.run(now_ms)
    }

    /// Detects over the last `window_ms` of every series and returns only new events.
    pub fn run(&mut self, now_ms: i64) -> Result<Vec<ChangepointEvent>, ChangepointError> {
        self.last_run_ms = Some(now_ms);
        let start = now_ms - self.cfg.window_ms;
        let mut out = Vec::new();
        let mut idle = Vec::new();
        for (key, st) in self.series.iter_mut() {
            while st.samples.front().is_some_and(|&(t, _)| t < start) {
                st.samples.pop_front();
            }
            while st.reported.front().is_some_and(|&t| t < start - self.cfg.dedup_tolerance_ms) {
                st.reported.pop_front();
            }
            if st.samples.is_empty() {
                idle.push(key.clone());
                continue;
            }
            let (ts, ys): (Vec<i64>, Vec<f64>) = st.samples.iter().copied().unzip();
            for shift in detect_level_shifts(&ys, &self.cfg)? {
                let Some(&t) = ts.get(shift.index) else { continue };
                if st.reported.iter().any(|&r| (r - t).abs() <= self.cfg.dedup_tolerance_ms) {
                    continue;
                }
                st.reported.push_back(t);
                out.push(ChangepointEvent {
                    node: key.node.clone(),
                    metric: key.metric.clone(),
                    labels: key.labels.clone(),
                    ts_ms: t,
                    before_mean: shift.before_mean,
                    after_mean: shift.after_mean,
                });
            }
        }
        for k in idle {
            self.series.remove(&k);
        }
        out.sort_by(|a, b| (a.ts_ms, &a.node, &a.metric).cmp(&(b.ts_ms, &b.node, &b.metric)));
        Ok(out)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Small deterministic PRNG so the specifications do not depend on a crate or on luck.
    pub(crate) struct Rng(u64);
    impl Rng {
        pub(crate) fn new(seed: u64) -> Self {
            Self(seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407) | 1)
        }
        pub(crate) fn uniform(&mut self) -> f64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }
        pub(crate) fn normal(&mut self) -> f64 {
            let u1 = self.uniform().max(1e-12);
            let u2 = self.uniform();
            (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
        }
    }

    #[test]
    fn level_shift_is_found_near_its_true_position() {
        for seed in 0..20 {
            let mut rng = Rng::new(seed);
            let y: Vec<f64> = (0..300).map(|i| if i < 180 { 50.0 } else { 58.0 } + rng.normal()).collect();
            let shifts = detect_level_shifts(&y, &ChangepointConfig::default()).expect("detect");
            assert_eq!(shifts.len(), 1, "seed {seed}: {shifts:?}");
            assert!((shifts[0].index as i64 - 180).abs() <= 3, "seed {seed}: {shifts:?}");
            assert!((shifts[0].before_mean - 50.0).abs() < 0.5);
            assert!((shifts[0].after_mean - 58.0).abs() < 0.5);
        }
    }

    #[test]
    fn stationary_series_has_no_changepoint() {
        for seed in 0..20 {
            let mut rng = Rng::new(100 + seed);
            let y: Vec<f64> = (0..300).map(|_| 50.0 + 2.0 * rng.normal()).collect();
            let shifts = detect_level_shifts(&y, &ChangepointConfig::default()).expect("detect");
            assert!(shifts.is_empty(), "seed {seed}: {shifts:?}");
        }
    }

    #[test]
    fn tracker_reports_a_change_once_across_runs() {
        let mut tr = ChangepointTracker::new(ChangepointConfig::default());
        let labels = BTreeMap::from([("disk".to_owned(), "sda".to_owned())]);
        let mut rng = Rng::new(7);
        let mut events = Vec::new();
        for i in 0..400i64 {
            let ts = i * 30_000;
            let v = if i < 200 { 10.0 } else { 20.0 } + 0.5 * rng.normal();
            tr.observe("n1", "disk_busy", &labels, ts, v);
            events.extend(tr.run_if_due(ts).expect("run"));
        }
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].node, "n1");
        assert!((events[0].ts_ms - 200 * 30_000).abs() <= 3 * 30_000);
        assert!(events[0].before_mean < 11.0 && events[0].after_mean > 19.0);
    }
}
