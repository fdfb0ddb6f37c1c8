//! Specifications of the detector on synthetic series.
//!
//! The series: one sample every 5 minutes, a daily sine of amplitude 10 around 100 plus
//! Gaussian noise of σ = 1. Warm-up is four simulated days. "Caught" means a score of at least
//! [`ALERT`] (the documented alert level, surprise = `Config::alert_surprise`) within the stated
//! number of samples after the anomaly starts; "raises nothing" means no score reaches it.

use super::*;

const ALERT: f64 = 0.5;
const STEP_MS: i64 = 300_000;
const DAY: usize = 288;
const T0: i64 = 1_700_000_000_000 - 1_700_000_000_000 % 86_400_000;

struct Noise(u64);

impl Noise {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn gauss(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

fn season(i: usize) -> f64 {
    10.0 * (std::f64::consts::TAU * (i % DAY) as f64 / DAY as f64).sin()
}

fn detector() -> SeriesDetector {
    SeriesDetector::new(Arc::new(Config::default()))
}

/// Feed `n` samples of `f(i, noise)`; returns all scores.
fn run(n: usize, seed: u64, mut f: impl FnMut(usize, f64) -> f64) -> Vec<Score> {
    let mut d = detector();
    let mut noise = Noise(seed);
    (0..n).map(|i| d.observe(T0 + i as i64 * STEP_MS, f(i, noise.gauss()), Kind::Gauge)).collect()
}

fn first_alert(scores: &[Score], from: usize) -> Option<usize> {
    scores[from..].iter().position(|s| s.value >= ALERT)
}

fn max_score(scores: &[Score], from: usize, to: usize) -> f64 {
    scores[from..to].iter().map(|s| s.value).fold(0.0, f64::max)
}

const WARM: usize = 4 * DAY;

#[test]
fn a_clean_seasonal_series_raises_nothing_after_warm_up() {
    for seed in [1, 2, 3] {
        let s = run(10 * DAY, seed, |i, e| 100.0 + season(i) + e);
        let m = max_score(&s, WARM, s.len());
        assert!(m < ALERT, "seed {seed}: max score {m}");
    }
}

#[test]
fn the_daily_season_is_learnt() {
    let mut d = detector();
    let mut noise = Noise(9);
    for i in 0..6 * DAY {
        d.observe(T0 + i as i64 * STEP_MS, 100.0 + season(i) + noise.gauss(), Kind::Gauge);
    }
    assert_eq!(d.model(), Model::Daily);
    assert!((d.interval_ms() - STEP_MS as f64).abs() < 0.05 * STEP_MS as f64);
}

#[test]
fn a_spike_is_caught_on_the_sample() {
    let at = WARM + 100;
    let s = run(at + 50, 4, |i, e| 100.0 + season(i) + e + if i == at { 25.0 } else { 0.0 });
    assert!(max_score(&s, WARM, at) < ALERT);
    assert_eq!(first_alert(&s, at), Some(0), "spike score {:?}", s[at]);
    assert!(s[at].signals.contains(Signal::Spike));
}

#[test]
fn a_level_shift_is_caught_within_a_few_samples() {
    let at = WARM + 100;
    let s = run(at + 100, 5, |i, e| 100.0 + season(i) + e + if i >= at { 6.0 } else { 0.0 });
    assert!(max_score(&s, WARM, at) < ALERT);
    let k = first_alert(&s, at).expect("level shift not caught");
    assert!(k <= 6, "caught {k} samples late");
}

#[test]
fn a_season_that_disappears_is_caught_once_it_departs_from_the_pattern() {
    // The pattern stops at a phase where the sine is near 0, so it departs only slowly
    // (> 5σ after about 8 samples). Measured today: caught 38 samples (about 3 hours) in;
    // the bound is 48 — the distribution evidence, not the spike, has to carry this one.
    let at = WARM + DAY;
    let s = run(at + 100, 6, |i, e| 100.0 + if i < at { season(i) } else { 0.0 } + e);
    assert!(max_score(&s, WARM, at) < ALERT);
    let k = first_alert(&s, at).expect("vanished season not caught");
    assert!(k <= 48, "caught {k} samples late");
}

#[test]
fn a_season_that_shifts_phase_is_caught() {
    // The daily pattern suddenly runs six hours late (caught after 9 samples today: the
    // first ones after the switch are still close to the old pattern).
    let at = WARM + DAY + DAY / 4;
    let s = run(at + 100, 7, |i, e| 100.0 + if i < at { season(i) } else { season(i + 3 * DAY / 4) } + e);
    assert!(max_score(&s, WARM, at) < ALERT);
    let k = first_alert(&s, at).expect("phase shift not caught");
    assert!(k <= 12, "caught {k} samples late");
}

#[test]
fn a_lively_series_that_goes_flat_is_caught() {
    let at = WARM + 100;
    let mut frozen = 0.0;
    let s = run(at + 50, 8, |i, e| {
        if i < at {
            frozen = 100.0 + season(i) + e;
        }
        frozen
    });
    assert!(max_score(&s, WARM, at) < ALERT);
    let k = first_alert(&s, at).expect("flatline not caught");
    assert!(k <= 5, "caught {k} samples late");
    assert!(s[at + k].signals.contains(Signal::Flatline));
}

#[test]
fn a_constant_series_that_moves_is_caught_and_staying_constant_is_not() {
    let at = 500;
    let s = run(at + 10, 1, |i, _| if i < at { 42.0 } else { 43.0 });
    assert!(max_score(&s, 0, at) < ALERT);
    assert_eq!(first_alert(&s, at), Some(0));
}

#[test]
fn counter_resets_do_not_raise() {
    let mut d = detector();
    let mut noise = Noise(11);
    let mut total = 0.0;
    let mut worst = 0.0f64;
    for i in 0..3000usize {
        // Restart every 700 samples: the counter starts again from zero.
        if i % 700 == 699 {
            total = 0.0;
        }
        total += 300.0 * (50.0 + noise.gauss());
        let s = d.observe(T0 + i as i64 * STEP_MS, total, Kind::Counter);
        if i % 700 == 699 {
            assert!(s.signals.contains(Signal::CounterReset));
        }
        if i > 100 {
            worst = worst.max(s.value);
        }
    }
    assert!(worst < ALERT, "worst {worst}");
}

#[test]
fn gaps_and_jitter_do_not_explode_scores() {
    let mut d = detector();
    let mut noise = Noise(12);
    let mut t = T0;
    let mut worst = 0.0f64;
    for i in 0..6 * DAY {
        // Jitter of ±30 s, and a hole of 2 to 12 hours every day or so.
        let jitter = (noise.uniform() * 60_000.0) as i64 - 30_000;
        t += STEP_MS + jitter;
        if i % 300 == 299 {
            t += (2 + i as i64 % 11) * 3_600_000;
        }
        let phase = (t.rem_euclid(86_400_000)) as f64 / 86_400_000.0;
        let v = 100.0 + 10.0 * (std::f64::consts::TAU * phase).sin() + noise.gauss();
        let s = d.observe(t, v, Kind::Gauge);
        if i > WARM {
            worst = worst.max(s.value);
        }
    }
    assert!(worst < ALERT, "worst {worst}");
}

#[test]
fn bad_input_is_ignored_without_touching_state() {
    let mut d = detector();
    for i in 0..100 {
        d.observe(T0 + i * STEP_MS, 1.0 + (i % 3) as f64, Kind::Gauge);
    }
    let before = format!("{d:?}");
    assert_eq!(d.observe(T0 + 200 * STEP_MS, f64::NAN, Kind::Gauge).value, 0.0);
    assert_eq!(d.observe(T0, 5.0, Kind::Gauge).value, 0.0, "out of order");
    assert_eq!(d.observe(T0 + 99 * STEP_MS, 5.0, Kind::Gauge).value, 0.0, "duplicate");
    assert_eq!(before, format!("{d:?}"));
}

#[test]
fn memory_per_series_is_small_and_fixed() {
    // All state is inline (fixed arrays, no Vec/Box): size_of is the whole footprint, and
    // it does not grow with the number of samples.
    let size = std::mem::size_of::<SeriesDetector>();
    assert!(size <= 2048, "{size} bytes");
    assert!(std::mem::size_of::<likelihood::Likelihood>() <= 4 * likelihood::SHORT + 24);
    // Pattern novelty: 8 centre/scale lanes, 4 running means, 36 visit timestamps, 2 counters.
    assert!(std::mem::size_of::<novelty::Novelty>() <= 256);
    let mut d = detector();
    for i in 0..100_000 {
        d.observe(T0 + i * STEP_MS, (i % 17) as f64, Kind::Gauge);
    }
    assert_eq!(std::mem::size_of_val(&d), size);
}

#[test]
fn the_detector_map_keeps_series_apart() {
    let mut det = Detector::new(Config::default());
    for i in 0..200 {
        det.observe(1, T0 + i * STEP_MS, 5.0, Kind::Gauge);
        det.observe(2, T0 + i * STEP_MS, 500.0 + (i % 5) as f64, Kind::Gauge);
    }
    assert_eq!(det.len(), 2);
    assert!(det.observe(1, T0 + 200 * STEP_MS, 9.0, Kind::Gauge).value >= ALERT);
    assert!(det.observe(2, T0 + 200 * STEP_MS, 502.0, Kind::Gauge).value < ALERT);
    assert!(det.remove(1) && !det.remove(1));
}

#[test]
fn a_move_to_a_level_never_visited_is_caught_even_right_after_another_incident() {
    // The spike holds the residual evidence's gate for hundreds of samples (one report per
    // incident). The novelty evidence has a gate of its own, so the series settling where it
    // has never been, 100 samples later, is still reported at once.
    let spike_at = WARM + 100;
    let at = spike_at + 100;
    let s = run(at + 50, 13, |i, e| {
        100.0 + season(i) + e + if i == spike_at { 40.0 } else { 0.0 } + if i >= at { 20.0 } else { 0.0 }
    });
    assert!(max_score(&s, WARM, spike_at) < ALERT);
    assert!(s[spike_at].value >= ALERT, "spike {:?}", s[spike_at]);
    assert!(max_score(&s, spike_at + 1, at) < ALERT);
    let k = first_alert(&s, at).expect("move not caught");
    assert!(k <= 3, "caught {k} samples late");
    assert!(s[at + k].signals.contains(Signal::Novelty), "{:?}", s[at + k]);
}
