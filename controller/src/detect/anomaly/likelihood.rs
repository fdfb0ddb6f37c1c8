//! Distribution evidence, after Numenta's "anomaly likelihood".
//!
//! Each residual is first turned into a per-sample tail probability (`raw` in [0, 1]). What
//! matters for slow-burning anomalies — more volatility, a season that stopped fitting — is
//! not one large `raw` but a *run* of unusually large ones: the mean of the last
//! `SHORT` raws is compared with the long-run distribution of raws (EW mean and variance),
//! and the normal tail of that comparison is the evidence. The long-run statistics are
//! learnt from the detector's own output, so a series whose model is systematically a bit
//! off does not alarm forever.

use super::robust::normal_sf;

pub(crate) const SHORT: usize = 10;

/// The short mean must reach this before the evidence speaks: the last `SHORT` residuals
/// must be unusual *on average* (raws are uniform on [0, 1] for well-calibrated residuals,
/// so 0.8 is more than three spreads above their mean). Without it a merely unlucky cluster
/// of ordinary residuals in a clean series — improbable against a spread learnt in calm
/// weather, but no change of behaviour — raised alerts about once a week of 5-minute data.
const MIN_SHORT: f32 = 0.8;

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Likelihood {
    ring: [f32; SHORT],
    pos: u8,
    filled: u8,
    sum: f32,
    mean: f32,
    var: f32,
    n: u32,
}

impl Likelihood {
    /// Feed one raw score; returns -log10 of the tail probability of the recent short mean
    /// (0 while the long-run statistics are still too young to mean anything, or while the
    /// short mean is below `MIN_SHORT`). The spread
    /// is floored near what uniform raws would give (0.09) so a spell of calm cannot make
    /// ordinary noise look improbable.
    #[inline]
    pub fn observe(&mut self, raw: f32, alpha: f32) -> f32 {
        let p = self.pos as usize;
        self.sum += raw - self.ring[p];
        self.ring[p] = raw;
        self.pos = ((p + 1) % SHORT) as u8;
        if (self.filled as usize) < SHORT {
            self.filled += 1;
        }
        let short = self.sum / self.filled as f32;
        let out = if self.n >= 200 && short >= MIN_SHORT {
            let sd = self.var.sqrt().max(0.05);
            let q = normal_sf((short - self.mean) / sd).max(1e-12);
            -q.log10()
        } else {
            0.0
        };
        // Long-run moments of the short mean itself, so the comparison is like for like.
        let a = alpha.max(1.0 / (self.n as f32 + 1.0));
        let d = short - self.mean;
        self.mean += a * d;
        self.var = (1.0 - a) * (self.var + a * d * d);
        self.n = self.n.saturating_add(1);
        out
    }

    /// Forget the long-run distribution (the residuals it described came from another model).
    pub fn clear_long(&mut self) {
        self.n = 0;
        self.mean = 0.0;
        self.var = 0.0;
    }

    pub fn clear_short(&mut self) {
        self.ring = [0.0; SHORT];
        self.sum = 0.0;
        self.filled = 0;
        self.pos = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_of_large_raws_is_unlikely_single_ones_are_not() {
        let mut l = Likelihood::default();
        let mut x = 1u32;
        for _ in 0..2000 {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            l.observe((x >> 8) as f32 / (1u32 << 24) as f32, 0.001);
        }
        let one = l.observe(1.0, 0.001);
        assert!(one < 3.0, "one {one}");
        let run = (0..SHORT).map(|_| l.observe(1.0, 0.001)).fold(0.0, f32::max);
        assert!(run > 5.0, "run {run}");
    }

    #[test]
    fn a_cluster_of_ordinary_raws_is_no_evidence_however_calm_the_past() {
        let mut l = Likelihood::default();
        for _ in 0..2000 {
            l.observe(0.5, 0.001);
        }
        let s = (0..SHORT).map(|_| l.observe(0.75, 0.001)).fold(0.0, f32::max);
        assert_eq!(s, 0.0);
    }
}
