//! Sampling-interval inference.
//!
//! Agents have their own collection intervals and NAB files range from 5 minutes to hours, so
//! every horizon of the detector is expressed in *samples* of the series' own typical spacing,
//! which is learnt here as a running median of the gaps in log space (a multiplicative
//! quantile tracker: O(1), robust to the odd late or duplicated sample).

/// A gap this many typical intervals long counts as missing data, not jitter.
pub(crate) const GAP_FACTOR: f32 = 4.0;

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Interval {
    est_ms: f32,
    n: u32,
}

impl Interval {
    /// The typical interval in ms, 0 until the first gap has been seen.
    #[inline]
    pub fn ms(&self) -> f32 {
        self.est_ms
    }

    /// Learn from the gap `dt_ms` (> 0) and say whether it is a hole in the data.
    #[inline]
    pub fn observe(&mut self, dt_ms: i64) -> bool {
        let dt = dt_ms as f32;
        if self.n == 0 {
            self.est_ms = dt;
            self.n = 1;
            return false;
        }
        let gap = dt > GAP_FACTOR * self.est_ms;
        // Big steps while young so the first odd gap does not stick; small ones later.
        let step = if self.n < 32 { 0.1 } else { 0.01 };
        if dt > self.est_ms {
            self.est_ms *= 1.0 + step;
        } else if dt < self.est_ms {
            self.est_ms *= 1.0 - step;
        }
        self.n = self.n.saturating_add(1);
        gap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_the_typical_interval_despite_jitter_and_holes() {
        let mut iv = Interval::default();
        for i in 0..500 {
            let dt = match i % 10 {
                0 => 3_600_000, // an hour-long hole now and then
                1 => 290_000,
                2 => 310_000,
                _ => 300_000,
            };
            iv.observe(dt);
        }
        assert!((iv.ms() - 300_000.0).abs() < 20_000.0, "interval {}", iv.ms());
        assert!(iv.observe(3_600_000), "an hour after a 5-minute cadence is a gap");
        assert!(!iv.observe(310_000));
    }
}
