//! Pattern novelty: has the series been *here* before?
//!
//! The residual evidences ask whether a sample is far from what the baseline predicted a
//! moment ago. The baseline follows the series within tens of samples, so they cannot tell a
//! place the series visits every day from one it has never been to, a departure that builds up
//! over a few samples hides inside small one-step errors, and their gate, held by a recent
//! alert, hides the next incident. The detectors that lead NAB (CAD OSE's contexts, KNN-CAD's
//! and ARTime's windows) instead score how new a recent pattern is against everything seen
//! before. This is a bounded-memory, constant-work form of that idea.
//!
//! Two signals are followed: the value, and its residual against the baseline's prediction
//! (which is season-aware, so "a level normal at noon but not at midnight" is a far residual).
//! Each is summarised at three horizons — the sample itself and its EW means over about 4 and
//! 16 samples — so a lone spike, a burst of a few samples and a sustained departure are each
//! judged at their own time scale. Every one of these six views is measured against a long-run
//! robust centre and scale of its own (an EW median/MAD-like pair, [`super::Config::novelty_horizon`])
//! and quantised into octaves of far deviation: [6, 12), [12, 24) and ≥ 24 long-run scales,
//! above or below. For each octave only the sample index of its last visit is kept. A sample is
//! **novel** when one of its views lands in an octave that the series has not visited within
//! [`super::Config::novelty_memory`] samples.
//!
//! Why octaves and a 6-scale floor: everything nearer is the everyday range (6 mean absolute
//! deviations are about 5σ of Gaussian noise, and a smoothed view is standardised by its own,
//! smaller, scale), so a clean series never becomes novel however long it runs; a series that
//! keeps visiting some far level (a nightly batch spike) has visited that octave recently and
//! stops alerting on it, while a *different* far level still counts. Octaves make the memory
//! small and the test O(1): 36 timestamps and 6 centre/scale pairs per series.
//!
//! Measured on NAB (see `NAB.md`): without this evidence the detector scores 40.5; the value
//! views alone bring it to about 65, the residual views to about 67.

use super::robust::update_lanes;

/// Smoothing rates of the two averaged horizons (the sample itself is the third).
const SMOOTHING: [f32; 2] = [1.0 / 4.0, 1.0 / 16.0];
const HORIZONS: usize = 1 + SMOOTHING.len();
/// Value and residual, each on every horizon.
const VIEWS: usize = 2 * HORIZONS;
/// Views padded to a SIMD-friendly width; the padding lanes stay at 0 and are never far.
const LANES: usize = 8;
/// Nearer than this many long-run scales is the everyday range.
const NEAR: f32 = 6.0;
const OCTAVES: usize = 3;

/// The horizon on which a sample was novel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Horizon {
    /// The sample itself.
    Sample,
    /// The average of about the last 4 samples.
    Short,
    /// The average of about the last 16 samples.
    Long,
}

/// What was novel: the value or its residual against the baseline, and on which horizon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Novel {
    pub residual: bool,
    pub horizon: Horizon,
}

impl Novel {
    fn of_view(i: usize) -> Self {
        let horizon = [Horizon::Sample, Horizon::Short, Horizon::Long][i % HORIZONS];
        Self { residual: i >= HORIZONS, horizon }
    }
}

/// Views in the order value, value short, value long, residual, residual short, residual long.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Novelty {
    /// EW means of the value, then of the residual.
    smooth: [f32; 2 * SMOOTHING.len()],
    /// Long-run robust centre and scale of every view (EW median/MAD-like, see `robust`).
    center: [f32; LANES],
    scale: [f32; LANES],
    /// Per view, the sample index of the last visit of each far octave (above, then below);
    /// 0 = never.
    last: [[u32; 2 * OCTAVES]; VIEWS],
    /// The clock of `last`: wraps, and is never 0 once started.
    t: u32,
    /// Samples learnt (saturating).
    n: u32,
}

impl Novelty {
    /// Start from the first value and a first guess of the scale (residuals start at 0).
    pub fn init(&mut self, x: f32, scale: f32) {
        self.smooth = [x, x, 0.0, 0.0];
        for i in 0..VIEWS {
            self.center[i] = if i < HORIZONS { x } else { 0.0 };
            self.scale[i] = scale;
        }
    }

    pub fn samples(&self) -> u32 {
        self.n
    }

    /// Learn the value `x` and its residual `r` against the baseline's prediction; returns what
    /// was novel, if anything. `horizon` is the memory of the long-run ranges, `memory` how
    /// many samples an octave stays familiar after a visit.
    #[inline]
    pub fn observe(&mut self, x: f32, r: f32, horizon: f32, memory: u32, floor: f32) -> Option<Novel> {
        self.t = self.t.wrapping_add(1).max(1);
        self.n = self.n.saturating_add(1);
        let [a, b] = SMOOTHING;
        let m = &mut self.smooth;
        m[0] += a * (x - m[0]);
        m[1] += b * (x - m[1]);
        m[2] += a * (r - m[2]);
        m[3] += b * (r - m[3]);
        let ys = [x, m[0], m[1], r, m[2], m[3], 0.0, 0.0];
        // Far from the long-run range, before learning the sample (branch-free; a far view is
        // rare, and looked at below).
        let mut far = false;
        #[allow(clippy::needless_range_loop)] // indexed lanes: this form vectorises
        for i in 0..LANES {
            far |= (ys[i] - self.center[i]).abs() >= NEAR * self.scale[i].max(floor);
        }
        let found = if far { self.visit(&ys, memory, floor) } else { None };
        // 1/n at first, so the ranges settle quickly on a young series.
        let alpha = (1.0 / horizon).max(1.0 / (self.n as f32 + 1.0));
        update_lanes(&mut self.center, &mut self.scale, &ys, alpha, floor);
        found
    }

    /// Record the far octaves visited now; the first view whose octave was not visited within
    /// `memory` samples is the novelty.
    #[cold]
    fn visit(&mut self, ys: &[f32; LANES], memory: u32, floor: f32) -> Option<Novel> {
        let mut found = None;
        for (i, last) in self.last.iter_mut().enumerate() {
            let d = ys[i] - self.center[i];
            let near = NEAR * self.scale[i].max(floor);
            let a = d.abs();
            // NaN cannot arrive here, but must not index anything.
            if a.is_nan() || a < near {
                continue;
            }
            let o = if a < 2.0 * near {
                0
            } else if a < 4.0 * near {
                1
            } else {
                2
            };
            let o = if d < 0.0 { OCTAVES + o } else { o };
            if found.is_none() && (last[o] == 0 || self.t.wrapping_sub(last[o]) > memory) {
                found = Some(Novel::of_view(i));
            }
            last[o] = self.t;
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(seed: &mut u64) -> f32 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        (*seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    }

    fn warmed(seed: &mut u64) -> Novelty {
        let mut n = Novelty::default();
        n.init(100.0, 1.0);
        for _ in 0..2000 {
            assert_eq!(n.observe(100.0 + noise(seed), 0.0, 1000.0, 1000, 1e-6), None);
        }
        n
    }

    #[test]
    fn noise_is_never_novel_a_far_level_is_until_it_was_visited() {
        let mut seed = 7;
        let mut n = warmed(&mut seed);
        assert_eq!(
            n.observe(110.0, 0.0, 1000.0, 1000, 1e-6),
            Some(Novel { residual: false, horizon: Horizon::Sample })
        );
        for _ in 0..50 {
            n.observe(100.0 + noise(&mut seed), 0.0, 1000.0, 1000, 1e-6);
        }
        assert_eq!(n.observe(110.0, 0.0, 1000.0, 1000, 1e-6), None, "visited 50 samples ago");
        for _ in 0..1100 {
            n.observe(100.0 + noise(&mut seed), 0.0, 1000.0, 1000, 1e-6);
        }
        assert_eq!(
            n.observe(110.0, 0.0, 1000.0, 1000, 1e-6),
            Some(Novel { residual: false, horizon: Horizon::Sample }),
            "forgotten after the memory"
        );
    }

    #[test]
    fn a_sustained_departure_is_novel_on_a_smoothed_horizon() {
        // A shift of 4 value-scales is within the everyday range of single values, but the
        // averages, whose own scales are far smaller, settle where they have never been.
        let mut seed = 9;
        let mut n = warmed(&mut seed);
        let hits: Vec<_> =
            (0..40).filter_map(|_| n.observe(101.0 + noise(&mut seed), 0.0, 1000.0, 1000, 1e-6)).collect();
        assert!(!hits.is_empty() && hits.iter().all(|h| h.horizon != Horizon::Sample), "{hits:?}");
    }

    #[test]
    fn a_level_visited_every_day_stops_being_novel() {
        let mut seed = 11;
        let mut n = warmed(&mut seed);
        let mut novel = 0;
        for day in 0..5 {
            for i in 0..288 {
                let spike = if i == 100 { 20.0 } else { 0.0 };
                if n.observe(100.0 + noise(&mut seed) + spike, 0.0, 1000.0, 1000, 1e-6).is_some() {
                    novel += 1;
                    assert_eq!(day, 0, "a daily spike is news only the first time");
                }
            }
        }
        assert!(novel >= 1);
    }
}
