//! From surprise to score: the repeat gate and the logistic.
//!
//! While an incident lasts its evidence stays high on every sample. Reporting each of those
//! samples again would make an automatic responder act repeatedly on one incident (and costs
//! false positives in NAB, where only the first detection in a window counts). The gate keeps
//! the peak surprise of the last report, decaying linearly, and only the part of a new surprise above
//! that peak (less the everyday-noise level) counts, so a second, worse incident still fires.

use super::Config;

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Gate {
    peak: f32,
}

impl Gate {
    /// A sample without evidence: the peak only decays (its score would be the constant
    /// logistic of 0, below every other score).
    #[inline]
    pub fn idle(&mut self, cfg: &Config, refractory: f32) {
        self.peak -= cfg.alert_surprise / refractory;
    }

    #[inline]
    pub fn score(&mut self, surprise: f32, cfg: &Config, refractory: f32) -> f32 {
        // Beyond this the score is saturated anyway; capping keeps one enormous spike from
        // holding the gate shut for thousands of samples.
        let surprise = surprise.min(cfg.alert_surprise + 4.0);
        let held = (self.peak - cfg.quiet_surprise).max(0.0);
        let effective = (surprise - held).max(0.0);
        let decay = cfg.alert_surprise / refractory;
        // Only what was reported holds the gate: a slow ramp towards the alert level must not
        // keep raising the bar ahead of itself.
        self.peak = if effective >= cfg.alert_surprise { surprise.max(self.peak - decay) } else { self.peak - decay };
        1.0 / (1.0 + (cfg.alert_surprise - effective).exp())
    }
}
