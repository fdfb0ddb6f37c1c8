//! Level-shift evidence: a two-sided CUSUM of standardised residuals.
//!
//! A shift of one or two scales is invisible sample by sample yet adds up here within a
//! handful of samples, before the baseline has absorbed it. Inputs are clipped so a lone
//! spike (the spike detector's business) cannot trip it on its own.

const DRIFT: f32 = 0.5;
const CLIP: f32 = 4.0;

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Cusum {
    up: f32,
    down: f32,
}

impl Cusum {
    /// Feed one standardised residual; returns the larger one-sided statistic.
    #[inline]
    pub fn observe(&mut self, z: f32) -> f32 {
        let z = z.clamp(-CLIP, CLIP);
        self.up = (self.up + z - DRIFT).max(0.0);
        self.down = (self.down - z - DRIFT).max(0.0);
        self.up.max(self.down)
    }

    pub fn reset(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_two_scale_shift_accumulates_a_lone_spike_does_not() {
        let mut c = Cusum::default();
        let spike = [0.0, 50.0, 0.0, 0.0].iter().map(|&z| c.observe(z)).fold(0.0, f32::max);
        assert!(spike <= CLIP, "spike {spike}");
        let mut c = Cusum::default();
        let shift = (0..8).map(|_| c.observe(2.0)).fold(0.0, f32::max);
        assert!(shift >= 12.0, "shift {shift}");
    }
}
