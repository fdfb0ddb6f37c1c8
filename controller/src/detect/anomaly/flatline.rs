//! Flat lines: a series that stops changing.
//!
//! A lively series that suddenly repeats the same value (a stuck exporter, a frozen process,
//! a counter that stopped) produces tiny residuals and is invisible to every residual-based
//! score. Here the fraction of samples that repeat the previous value is learnt, and a run
//! of repeats is as surprising as the product of the repeat probabilities along it — so a series that is constant by nature never
//! alarms and one that never repeats alarms after a few samples. (The opposite case, a
//! constant series that starts to move, is caught by the residual scores, whose scale has
//! collapsed to the floor.)

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Flatline {
    last: f32,
    /// -log10 of the probability of the current run of repeats, accumulated step by step
    /// (slowly forgotten, so that a series which is flat by nature settles at 0).
    surprise: f32,
    p_repeat: f32,
    n: u32,
}

/// Never trust a repeat probability below this: a handful of samples cannot prove that a
/// series never repeats.
const P_FLOOR: f32 = 0.02;

impl Flatline {
    pub fn init(&mut self, x: f32) {
        self.last = x;
        self.p_repeat = 0.5;
    }

    /// Returns -log10 of the probability of the current run of repeats. The repeat rate keeps
    /// learning during the run, so the sum converges: a series that stays flat stops being news.
    #[inline]
    pub fn observe(&mut self, x: f32, alpha: f32) -> f32 {
        let tol = 1e-6 * self.last.abs().max(1e-12);
        let repeat = (x - self.last).abs() <= tol;
        self.last = x;
        // 1/n at first: a series that is flat from its first samples is flat by nature.
        self.n = self.n.saturating_add(1);
        let alpha = alpha.max(1.0 / self.n as f32);
        if repeat {
            self.surprise = self.surprise * (1.0 - alpha) - self.p_repeat.max(P_FLOOR).log10();
            self.p_repeat += alpha * (1.0 - self.p_repeat);
        } else {
            self.surprise = 0.0;
            self.p_repeat -= alpha * self.p_repeat;
        }
        self.surprise
    }

    pub fn reset_run(&mut self) {
        self.surprise = 0.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lively_series_going_flat_is_surprising_a_constant_one_is_not() {
        let mut f = Flatline::default();
        f.init(0.0);
        for i in 1..500 {
            f.observe((i as f32).sin(), 0.02);
        }
        let s = (0..7).map(|_| f.observe(0.5, 0.02)).fold(0.0, f32::max);
        assert!(s > 6.0, "flat after lively {s}");
        let mut g = Flatline::default();
        g.init(3.0);
        let s = (0..500).map(|_| g.observe(3.0, 0.02)).last().unwrap_or(0.0);
        assert!(s < 1.0, "constant series {s}");
    }
}
