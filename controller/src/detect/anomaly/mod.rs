//! Streaming anomaly detection: one score in [0, 1] per incoming sample, from the past only.
//!
//! # Design
//!
//! Every series gets a [`SeriesDetector`] of fixed size (about 1.5 KB, no heap) that does a
//! constant amount of work per sample. A sample goes through:
//!
//! 1. **Input hygiene.** Non-finite values and out-of-order or duplicate timestamps are
//!    ignored (score 0, state untouched). Counters are turned into a per-second rate; a
//!    decrease is a reset and yields no score (`counter`). The typical sampling interval is
//!    learnt as a running median of gaps (`interval`), so all horizons below are in samples of
//!    the series' own cadence and a hole in the data is recognised as one: after a gap the
//!    scale is widened and short-term evidence cleared, so "the series came back somewhere
//!    else after a restart" is judged leniently instead of exploding.
//! 2. **Baseline** (`seasonal`). Three one-step-ahead predictors — a robust EW level, a
//!    daily and a weekly Holt–Winters-style phase profile keyed on wall-clock time — run side
//!    by side; the one with the smallest recent error is used, seasons only once two periods
//!    have been seen and only if clearly better. Wall-clock phases make irregular sampling
//!    harmless and need no batch period detection. Level and scale are Huber-clipped EW
//!    estimates (`robust`), i.e. EW median/MAD-like, so anomalies do not poison the baseline
//!    they are measured against. The standardised residual `z` feeds four detectors:
//! 3. **Residual evidence**, each as a surprise `S = -log10 p` so they are comparable:
//!    * *spike* — `|z|` under a Laplace tail (heavy enough for real metrics): a single
//!      sample far from the baseline. Because the scale has a tiny floor, a constant series
//!      that suddenly moves scores maximally.
//!    * *level shift* — a two-sided CUSUM of clipped `z` (`changepoint`): shifts of one or two
//!      scales that no single sample reveals. Reported as a signal; by default it does not
//!      raise the score (see [`Weights`]) — on bursty series it alarmed too often.
//!    * *distribution* — Numenta-style anomaly likelihood (`likelihood`): the mean of the
//!      last 10 per-sample tail probabilities against their long-run distribution, counted
//!      only once those 10 are unusual on average (mean raw ≥ 0.8), so a merely unlucky
//!      cluster of ordinary noise in a clean series is not mistaken for a change. Catches
//!      sustained changes of behaviour — more volatility, a daily pattern that disappears or
//!      shifts phase — that are individually unremarkable.
//!    * *flatline* — the run of repeated values against the learnt repeat rate
//!      (`flatline`): a lively series that freezes.
//! 4. **Pattern novelty** (`novelty`): has the series been *here* before? One-step residuals
//!    cannot tell a place the series visits daily from one it has never been to, and they
//!    miss departures that build up over a few samples. The value and its residual are each
//!    followed at three horizons (the sample, EW means over ~4 and ~16 samples) and measured
//!    in octaves of far deviation (≥ 6, 12, 24 long-run robust scales) from a long-run centre
//!    of their own; the sample index of the last visit of each octave is kept. A sample is
//!    novel when a view lands in an octave not visited within [`Config::novelty_memory`]
//!    samples — a bounded-memory version of what the NAB leaders (CAD OSE, KNN-CAD, ARTime)
//!    score: how new a recent pattern is against everything seen. Nearer than 6 scales is the
//!    everyday range, so a clean series never becomes novel; a far level visited every day
//!    stays familiar. A novel sample counts as certain (surprise 10).
//! 5. **Calibration** (`calibrate`). The largest weighted residual surprise goes through a
//!    *repeat gate* that subtracts the decaying peak of recent reported surprise: an incident
//!    is reported when it starts and again only if it gets worse, not on every sample while
//!    it lasts — that is what makes automatic action safe (one trigger per incident) and what
//!    NAB rewards. Novelty has a repeat gate of its own with a shorter refractory: it marks a
//!    different kind of incident, which a recent spike must not hide (the residual gate holds
//!    for hundreds of samples after a large one). The score is the larger of the two, each
//!    mapped to [0, 1] by a logistic with 0.5 at [`Config::alert_surprise`] (about a
//!    one-in-100 000 sample event); the signals that exceeded the alert level are reported.
//!    Scores are 0 during the first [`Config::warmup`] samples, novelty is silent during its
//!    first [`Config::novelty_warmup`] (until then every far level is new).
//!
//! Measured (see `NAB.md`): NAB public part 67.2 / 59.3 / 73.1 (standard / low FP / low FN);
//! 40.5 / 31.5 / 48.8 before the novelty evidence. Throughput and state size: see
//! `controller bench detect` (figures in `NAB.md`).
//!
//! augurs is not used per sample: its fits are batch, and wall-clock phases make a period
//! detector unnecessary for the daily/weekly seasons of machine metrics.

mod calibrate;
mod changepoint;
mod counter;
mod flatline;
mod interval;
mod likelihood;
mod novelty;
mod robust;
mod seasonal;

#[cfg(test)]
mod tests;

pub use seasonal::Model;

use calibrate::Gate;
use changepoint::Cusum;
use counter::{CounterRate, Rate};
use flatline::Flatline;
use interval::Interval;
use likelihood::Likelihood;
use novelty::Novelty;
use seasonal::{Baseline, Rates};
use std::collections::HashMap;
use std::sync::Arc;

/// How the value of a sample is meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kind {
    #[default]
    Gauge,
    /// Monotonic total; the rate is scored, a decrease is a reset.
    Counter,
}

/// Which evidence fired on a sample (a small bit set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Signals(u8);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Signal {
    Spike = 1,
    LevelShift = 2,
    Distribution = 4,
    Flatline = 8,
    /// The recent values went somewhere far that the series has not been within its memory.
    Novelty = 64,
    /// Not evidence: the sample followed a hole in the data.
    Gap = 16,
    /// Not evidence: a counter went down and was treated as a reset.
    CounterReset = 32,
}

impl Signals {
    pub fn contains(self, s: Signal) -> bool {
        self.0 & s as u8 != 0
    }
    fn set(&mut self, s: Signal) {
        self.0 |= s as u8;
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    pub fn iter(self) -> impl Iterator<Item = Signal> {
        [
            Signal::Spike,
            Signal::LevelShift,
            Signal::Distribution,
            Signal::Flatline,
            Signal::Novelty,
            Signal::Gap,
            Signal::CounterReset,
        ]
        .into_iter()
        .filter(move |s| self.contains(*s))
    }
}

/// The verdict on one sample.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Score {
    /// 0..1; >= 0.5 means "anomalous, act on it" (see [`Config::alert_surprise`]).
    pub value: f64,
    pub signals: Signals,
    /// What the detector expected (for counters: the expected rate).
    pub baseline: f64,
    /// What it scored (for counters: the rate).
    pub observed: f64,
    /// The strongest evidence before the repeat gates, in -log10 p.
    pub surprise: f64,
}

/// Tunables. Horizons are in samples of the series' own (inferred) interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Config {
    /// Samples before any score is given.
    pub warmup: u32,
    pub level_horizon: f32,
    pub scale_horizon: f32,
    /// Horizon of the error that picks the baseline model.
    pub model_horizon: f32,
    /// Horizon of the long-run distribution in the likelihood.
    pub likelihood_horizon: f32,
    pub flat_horizon: f32,
    /// Surprise (-log10 p) that maps to a score of 0.5.
    pub alert_surprise: f32,
    /// Surprise levels below this are everyday noise and never gate later samples.
    pub quiet_surprise: f32,
    /// Samples over which the repeat gate forgets a peak of `alert_surprise`.
    pub refractory: f32,
    /// Scales never drop below this fraction of the baseline's magnitude.
    pub relative_floor: f32,
    /// Horizon of the long-run ranges the novelty evidence measures far excursions against.
    pub novelty_horizon: f32,
    /// Samples after a visit during which a far level stays familiar (not novel).
    pub novelty_memory: u32,
    /// Samples before the novelty evidence speaks (until then every far level is new).
    pub novelty_warmup: u32,
    /// Refractory of the novelty evidence's own gate (see [`Config::refractory`]).
    pub novelty_refractory: f32,
    pub weights: Weights,
}

/// How much each kind of evidence counts in the score (multiplies its surprise).
///
/// The level-shift CUSUM is computed and reported as a signal but does not raise the score by
/// default: on NAB every weight above 0 cost points (standard 38.8 at 0, 37.4 at 0.3),
/// because the distribution evidence already sees sustained shifts, a few samples later but
/// with far fewer false alarms on bursty series. The distribution evidence counts double for
/// the same reason: it is the best-calibrated of the four (38.8 → 43.5 on NAB). See NAB.md.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Weights {
    pub spike: f32,
    pub level_shift: f32,
    pub distribution: f32,
    pub flatline: f32,
    pub novelty: f32,
}

impl Default for Weights {
    fn default() -> Self {
        Self { spike: 1.0, level_shift: 0.0, distribution: 2.0, flatline: 1.0, novelty: 1.0 }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            warmup: 50,
            level_horizon: 20.0,
            scale_horizon: 50.0,
            model_horizon: 300.0,
            likelihood_horizon: 1000.0,
            flat_horizon: 300.0,
            alert_surprise: 5.0,
            quiet_surprise: 3.0,
            refractory: 600.0,
            weights: Weights::default(),
            relative_floor: 1e-4,
            novelty_horizon: 1000.0,
            novelty_memory: 3000,
            novelty_warmup: 300,
            novelty_refractory: 100.0,
        }
    }
}

/// Samples used to seed the scale (mean absolute first difference).
const SEED: u32 = 10;

/// Surprise of a novel sample: certain enough to saturate the score (the gate caps any
/// surprise at `alert_surprise + 4`), so its weight decides whether it alerts at all.
const NOVEL_SURPRISE: f32 = 10.0;

/// Streaming detector state for one series: fixed size, no heap.
#[derive(Debug, Clone)]
pub struct SeriesDetector {
    cfg: Arc<Config>,
    first_ts: i64,
    last_ts: i64,
    started: bool,
    /// Scored samples seen (a counter's first sample only primes the rate).
    n: u32,
    interval: Interval,
    counter: CounterRate,
    last_x: f32,
    seed_acc: f32,
    baseline: Baseline,
    cusum: Cusum,
    likelihood: Likelihood,
    flat: Flatline,
    novelty: Novelty,
    gate: Gate,
    /// Novelty alerts are incidents of their own: a recent spike alert must not hide the
    /// series moving somewhere new, nor a novelty alert hide a later spike.
    novelty_gate: Gate,
    /// Extra tolerance right after a hole in the data (1 = none).
    slack: f32,
}

impl SeriesDetector {
    pub fn new(cfg: Arc<Config>) -> Self {
        Self {
            cfg,
            first_ts: 0,
            last_ts: 0,
            started: false,
            n: 0,
            interval: Interval::default(),
            counter: CounterRate::default(),
            last_x: 0.0,
            seed_acc: 0.0,
            baseline: Baseline::default(),
            cusum: Cusum::default(),
            likelihood: Likelihood::default(),
            flat: Flatline::default(),
            novelty: Novelty::default(),
            gate: Gate::default(),
            novelty_gate: Gate::default(),
            slack: 1.0,
        }
    }

    /// The baseline model currently in use.
    pub fn model(&self) -> Model {
        self.baseline.model
    }

    /// The inferred sampling interval in ms (0 before the second sample).
    pub fn interval_ms(&self) -> f64 {
        self.interval.ms() as f64
    }

    /// Score one sample and learn from it.
    pub fn observe(&mut self, ts_ms: i64, value: f64, kind: Kind) -> Score {
        let mut signals = Signals::default();
        if !value.is_finite() || (self.started && ts_ms <= self.last_ts) {
            return Score { observed: value, baseline: self.baseline_value(), ..Score::default() };
        }
        let dt = ts_ms - self.last_ts;
        let had_any = self.started;
        self.started = true;
        let gap = had_any && self.interval.observe(dt);
        let first_ts = if had_any { self.first_ts } else { ts_ms };
        self.first_ts = first_ts;
        self.last_ts = ts_ms;

        let x = match kind {
            Kind::Gauge => value,
            Kind::Counter => match self.counter.observe(value, if had_any { dt } else { 0 }) {
                Rate::PerSec(r) => r,
                Rate::None { reset } => {
                    if reset {
                        signals.set(Signal::CounterReset);
                    }
                    return Score { signals, observed: f64::NAN, baseline: self.baseline_value(), ..Score::default() };
                }
            },
        } as f32;

        if self.n == 0 {
            self.baseline.init(x);
            self.flat.init(x);
            self.last_x = x;
            self.n = 1;
            return Score { observed: x as f64, baseline: x as f64, ..Score::default() };
        }

        if gap {
            signals.set(Signal::Gap);
            // How far a random walk could have gone in the hole, capped: lenient, not blind.
            let missed = dt as f32 / self.interval.ms().max(1.0);
            self.slack = self.slack.max(missed.sqrt().clamp(1.0, 4.0));
            self.cusum.reset();
            self.likelihood.clear_short();
            self.flat.reset_run();
        }

        let cfg = &*self.cfg;
        let floor = cfg.relative_floor * x.abs() + 1e-9;
        if self.n <= SEED {
            self.seed_acc += (x - self.last_x).abs();
            if self.n == SEED {
                let scale = (self.seed_acc / SEED as f32).max(floor);
                self.baseline.seed_scale(scale);
                self.novelty.init(x, scale);
            }
        }
        self.last_x = x;

        let iv = self.interval.ms().max(1.0);
        let rates = Rates {
            level: 1.0 / cfg.level_horizon,
            scale: 1.0 / cfg.scale_horizon,
            err: 1.0 / cfg.model_horizon,
            season_level: (iv / (6.0 * 3_600_000.0)).clamp(1e-4, 0.5),
        };
        let model = self.baseline.model;
        let pred = self.baseline.predict_and_learn(ts_ms, x, iv, ts_ms - first_ts, &rates, floor);
        if self.baseline.model != model {
            // Residuals of the new model are distributed differently (typically much tighter
            // once a season is learnt); judging them against the old ones would blind the
            // likelihood for its whole horizon.
            self.likelihood.clear_long();
        }
        let z = (x - pred.baseline) / (pred.scale.max(floor) * self.slack);
        // The widening after a gap fades over a few samples instead of compounding over gaps.
        self.slack = 1.0 + (self.slack - 1.0) * 0.8;

        let spike = (std::f32::consts::LOG10_E * z.abs()).min(30.0);
        let shift = 0.5 * self.cusum.observe(z);
        let raw = 1.0 - (-z.abs()).exp();
        let dist = self.likelihood.observe(raw, 1.0 / cfg.likelihood_horizon);
        let flat = self.flat.observe(x, 1.0 / cfg.flat_horizon);
        let novel = if self.n > SEED {
            self.novelty.observe(x, x - pred.baseline, cfg.novelty_horizon, cfg.novelty_memory, floor).is_some()
                && self.novelty.samples() >= cfg.novelty_warmup
        } else {
            false
        };
        let w = &cfg.weights;
        let novelty = if novel { w.novelty * NOVEL_SURPRISE } else { 0.0 };
        self.n = self.n.saturating_add(1);

        let a = cfg.alert_surprise;
        for (s, sig) in [
            (spike, Signal::Spike),
            (shift, Signal::LevelShift),
            (dist, Signal::Distribution),
            (flat, Signal::Flatline),
            (if novel { NOVEL_SURPRISE } else { 0.0 }, Signal::Novelty),
        ] {
            if s >= a {
                signals.set(sig);
            }
        }
        let residual = (w.spike * spike).max(w.level_shift * shift).max(w.distribution * dist).max(w.flatline * flat);
        let value = if self.n <= cfg.warmup {
            0.0
        } else {
            let r = self.gate.score(residual, cfg, cfg.refractory);
            if novelty > 0.0 {
                r.max(self.novelty_gate.score(novelty, cfg, cfg.novelty_refractory))
            } else {
                self.novelty_gate.idle(cfg, cfg.novelty_refractory);
                r
            }
        };
        let surprise = residual.max(novelty);
        Score {
            value: value as f64,
            signals,
            baseline: pred.baseline as f64,
            observed: x as f64,
            surprise: surprise as f64,
        }
    }

    fn baseline_value(&self) -> f64 {
        self.last_x as f64
    }
}

/// Detectors for many series, keyed by a series id (e.g. a hash of metric + labels).
#[derive(Debug)]
pub struct Detector {
    cfg: Arc<Config>,
    series: HashMap<u64, SeriesDetector, IdHasher>,
}

/// Series ids are already hashes; re-hashing them with SipHash would cost more than scoring.
#[derive(Debug, Clone, Copy, Default)]
pub struct IdHasher;

impl std::hash::BuildHasher for IdHasher {
    type Hasher = IdHash;
    fn build_hasher(&self) -> IdHash {
        IdHash(0)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct IdHash(u64);

impl std::hash::Hasher for IdHash {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, v: u64) {
        // Fibonacci mixing so sequential ids still spread over the table.
        self.0 = (self.0 ^ v).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

impl Detector {
    pub fn new(cfg: Config) -> Self {
        Self { cfg: Arc::new(cfg), series: HashMap::with_hasher(IdHasher) }
    }

    pub fn observe(&mut self, series: u64, ts_ms: i64, value: f64, kind: Kind) -> Score {
        let cfg = &self.cfg;
        self.series.entry(series).or_insert_with(|| SeriesDetector::new(cfg.clone())).observe(ts_ms, value, kind)
    }

    /// Forget a series (e.g. its node left); its memory is returned.
    pub fn remove(&mut self, series: u64) -> bool {
        self.series.remove(&series).is_some()
    }

    pub fn len(&self) -> usize {
        self.series.len()
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    pub fn reserve(&mut self, n: usize) {
        self.series.reserve(n);
    }
}
