//! Baselines: what the next sample "should" be.
//!
//! Three one-step-ahead predictors run side by side on every sample and the one with the
//! smallest recent error is used (with a bias toward the simplest):
//!
//! * **level** — a robust EW level (see `robust`), for series without a usable season;
//! * **daily** — Holt–Winters-style: a slow robust level of the deseasonalised series plus a
//!   per-phase offset, 48 half-hour phases of the UTC day;
//! * **weekly** — the same with 168 hourly phases of the week.
//!
//! Phases come from wall-clock time, not sample counts, so irregular or missing samples land
//! in the right phase and no period detection is needed for the two periods that matter for
//! machine metrics. A season only competes once two full periods have been seen and the
//! sampling is fine enough to resolve it; running all three costs a few multiplications
//! and keeps switching free of any refit.

use super::robust::EwRobust;

const DAY_MS: i64 = 86_400_000;
const WEEK_MS: i64 = 7 * DAY_MS;
pub(crate) const DAILY_PHASES: usize = 48;
pub(crate) const WEEKLY_PHASES: usize = 168;

/// A seasonal model must beat the plain level by this factor to be used: a season that only
/// fits noise would otherwise flip the baseline back and forth.
const SEASON_ADVANTAGE: f32 = 0.8;

#[derive(Debug, Clone, Copy)]
pub(crate) struct Profile<const N: usize> {
    offset: [f32; N],
    seen: [u8; N],
}

impl<const N: usize> Default for Profile<N> {
    fn default() -> Self {
        Self { offset: [0.0; N], seen: [0; N] }
    }
}

impl<const N: usize> Profile<N> {
    #[inline]
    fn phase(ts_ms: i64, period_ms: i64) -> usize {
        let p = ts_ms.rem_euclid(period_ms) as i128 * N as i128 / period_ms as i128;
        (p as usize).min(N - 1)
    }

    #[inline]
    fn update(&mut self, b: usize, dev: f32, alpha_min: f32) {
        // 1/n first so a phase is usable after a single visit, then a floor so it keeps adapting.
        let n = self.seen[b];
        let a = (1.0 / (n as f32 + 1.0)).max(alpha_min);
        self.offset[b] += a * (dev - self.offset[b]);
        self.seen[b] = n.saturating_add(1);
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Seasonal<const N: usize> {
    level: EwRobust,
    profile: Profile<N>,
    err: f32,
}

impl<const N: usize> Seasonal<N> {
    #[inline]
    fn predict(&self, b: usize) -> f32 {
        self.level.center + self.profile.offset[b]
    }
}

/// Which predictor produced the baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Model {
    #[default]
    Level,
    Daily,
    Weekly,
}

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Baseline {
    plain: EwRobust,
    plain_err: f32,
    daily: Seasonal<DAILY_PHASES>,
    weekly: Seasonal<WEEKLY_PHASES>,
    pub model: Model,
}

/// The baseline's view of one sample, computed before the sample is learnt.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Prediction {
    pub baseline: f32,
    pub scale: f32,
}

/// Learning rates, per sample.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rates {
    pub level: f32,
    pub scale: f32,
    pub err: f32,
    /// Level of the seasonal models, per sample; slow next to the period so the level does
    /// not soak up the season.
    pub season_level: f32,
}

/// How many periods a phase offset remembers once it has settled.
const SEASON_MEMORY: f32 = 3.0;

/// Per-visit learning rate of a phase, so that its memory is a few *periods* whatever the
/// sampling interval (a 10 s series visits a half-hour phase 180 times a day, a 5 min one 6).
#[inline]
fn phase_rate(interval_ms: f32, phases: usize, period_ms: i64) -> f32 {
    (interval_ms * phases as f32 / (SEASON_MEMORY * period_ms as f32)).clamp(0.002, 0.5)
}

impl Baseline {
    pub fn init(&mut self, x: f32) {
        self.plain.center = x;
        self.daily.level.center = x;
        self.weekly.level.center = x;
    }

    /// Seed the scale of every model (from the first few samples) so the first scores are
    /// not divided by zero.
    pub fn seed_scale(&mut self, s: f32) {
        for e in [&mut self.plain, &mut self.daily.level, &mut self.weekly.level] {
            if e.scale <= 0.0 {
                e.scale = s;
            }
        }
        for err in [&mut self.plain_err, &mut self.daily.err, &mut self.weekly.err] {
            if *err <= 0.0 {
                *err = s;
            }
        }
    }

    #[inline]
    pub fn predict_and_learn(
        &mut self,
        ts_ms: i64,
        x: f32,
        interval_ms: f32,
        age_ms: i64,
        r: &Rates,
        floor: f32,
    ) -> Prediction {
        let bd = Profile::<DAILY_PHASES>::phase(ts_ms, DAY_MS);
        let bw = Profile::<WEEKLY_PHASES>::phase(ts_ms, WEEK_MS);
        let daily_ok = interval_ms <= (DAY_MS / 24) as f32 && age_ms >= 2 * DAY_MS;
        let weekly_ok = interval_ms <= (DAY_MS / 12) as f32 && age_ms >= 2 * WEEK_MS;

        let mut model = Model::Level;
        let mut best = self.plain_err;
        if daily_ok && self.daily.err < SEASON_ADVANTAGE * best {
            model = Model::Daily;
            best = self.daily.err;
        }
        if weekly_ok && self.weekly.err < SEASON_ADVANTAGE * best {
            model = Model::Weekly;
        }
        self.model = model;
        let pred = match model {
            Model::Level => Prediction { baseline: self.plain.center, scale: self.plain.scale },
            Model::Daily => Prediction { baseline: self.daily.predict(bd), scale: self.daily.level.scale },
            Model::Weekly => Prediction { baseline: self.weekly.predict(bw), scale: self.weekly.level.scale },
        };

        // Errors are clipped so one spike does not decide the model for a day.
        let clip = |e: f32, s: f32| e.abs().min(6.0 * s.max(floor));
        self.plain_err += r.err * (clip(self.plain.residual(x), self.plain.scale) - self.plain_err);
        self.plain.update(x, r.level, r.scale, floor);

        let d = &mut self.daily;
        let e = x - d.predict(bd);
        d.err += r.err * (clip(e, d.level.scale) - d.err);
        d.level.update(x - d.profile.offset[bd], r.season_level, r.scale, floor);
        let dev = (x - d.level.center).clamp(
            d.profile.offset[bd] - 6.0 * d.level.scale.max(floor),
            d.profile.offset[bd] + 6.0 * d.level.scale.max(floor),
        );
        d.profile.update(bd, dev, phase_rate(interval_ms, DAILY_PHASES, DAY_MS));

        let w = &mut self.weekly;
        let e = x - w.predict(bw);
        w.err += r.err * (clip(e, w.level.scale) - w.err);
        w.level.update(x - w.profile.offset[bw], r.season_level, r.scale, floor);
        let dev = (x - w.level.center).clamp(
            w.profile.offset[bw] - 6.0 * w.level.scale.max(floor),
            w.profile.offset[bw] + 6.0 * w.level.scale.max(floor),
        );
        w.profile.update(bw, dev, phase_rate(interval_ms, WEEKLY_PHASES, WEEK_MS));

        pred
    }
}
