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

use super::robust::EwRobust;

/// Smoothing rates of the two averaged horizons (the sample itself is the third).
const SMOOTHING: [f32; 2] = [1.0 / 4.0, 1.0 / 16.0];
const HORIZONS: usize = 1 + SMOOTHING.len();
/// Nearer than this many long-run scales is the everyday range.
const NEAR: f32 = 6.0;
const OCTAVES: usize = 3;

/// One signal at one horizon: its long-run range and when each far octave was last visited.
#[derive(Debug, Clone, Copy, Default)]
struct View {
    range: EwRobust,
    /// Sample index of the last visit per octave (above, then below); 0 = never.
    last: [u32; 2 * OCTAVES],
}

impl View {
    /// The far octave `y` falls in, measured against the range learnt before `y`.
    #[inline]
    fn octave(&self, y: f32, floor: f32) -> Option<usize> {
        let d = (y - self.range.center) / self.range.scale.max(floor);
        let a = d.abs();
        // Also false for NaN, which cannot arrive here but must not index anything.
        if !(a >= NEAR) {
            return None;
        }
        let o = if a < 2.0 * NEAR {
            0
        } else if a < 4.0 * NEAR {
            1
        } else {
            2
        };
        Some(if d < 0.0 { OCTAVES + o } else { o })
    }
}

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

/// One signal (the value, or its residual) followed on every horizon.
#[derive(Debug, Clone, Copy, Default)]
struct Track {
    smooth: [f32; SMOOTHING.len()],
    views: [View; HORIZONS],
}

impl Track {
    fn init(&mut self, y: f32, scale: f32) {
        self.smooth = [y; SMOOTHING.len()];
        for v in &mut self.views {
            v.range = EwRobust { center: y, scale };
        }
    }

    /// Learn `y` at sample `t`; returns the first novel horizon.
    #[inline]
    fn observe(&mut self, y: f32, t: u32, alpha: f32, memory: u32, floor: f32) -> Option<Horizon> {
        for (m, a) in self.smooth.iter_mut().zip(SMOOTHING) {
            *m += a * (y - *m);
        }
        let ys = [y, self.smooth[0], self.smooth[1]];
        let mut found = None;
        for ((view, y), h) in self.views.iter_mut().zip(ys).zip([Horizon::Sample, Horizon::Short, Horizon::Long]) {
            if let Some(o) = view.octave(y, floor) {
                let last = view.last[o];
                if found.is_none() && (last == 0 || t.wrapping_sub(last) > memory) {
                    found = Some(h);
                }
                view.last[o] = t;
            }
            view.range.update(y, alpha, alpha, floor);
        }
        found
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Novelty {
    value: Track,
    residual: Track,
    /// Samples learnt: the clock of `View::last` (never 0 once started).
    t: u32,
}

impl Novelty {
    /// Start from the first value and a first guess of the scale (residuals start at 0).
    pub fn init(&mut self, x: f32, scale: f32) {
        self.value.init(x, scale);
        self.residual.init(0.0, scale);
    }

    pub fn samples(&self) -> u32 {
        self.t
    }

    /// Learn the value `x` and its residual `r` against the baseline's prediction; returns what
    /// was novel, if anything. `horizon` is the memory of the long-run ranges, `memory` how
    /// many samples an octave stays familiar after a visit.
    #[inline]
    pub fn observe(&mut self, x: f32, r: f32, horizon: f32, memory: u32, floor: f32) -> Option<Novel> {
        self.t = self.t.wrapping_add(1).max(1);
        // 1/n at first, so the ranges settle quickly on a young series.
        let alpha = (1.0 / horizon).max(1.0 / (self.t as f32 + 1.0));
        let v = self.value.observe(x, self.t, alpha, memory, floor);
        let r = self.residual.observe(r, self.t, alpha, memory, floor);
        v.map(|horizon| Novel { residual: false, horizon }).or(r.map(|horizon| Novel { residual: true, horizon }))
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
