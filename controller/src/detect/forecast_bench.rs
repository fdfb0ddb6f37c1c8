//! `controller bench forecast`: time-to-exhaustion accuracy of [`forecast_exhaustion`] against
//! a least-squares line over the same window (what Prometheus' `predict_linear` does), on
//! synthetic free-space traces whose true exhaustion time is known by simulating the noiseless
//! signal forward.
//!
//! The mix is meant to be fair to the line: a third of the traces are exactly linear fills
//! (where least squares is the optimal estimator), and every class has random rates, noise and
//! phases. Errors are capped at the forecast horizon, so "never" vs "in 200 days" is no error.

use crate::detect::changepoint::median;
use crate::detect::forecast::{ForecastConfig, Limit, forecast_exhaustion};
use std::collections::BTreeMap;

#[derive(clap::Args, Debug, Clone)]
pub struct ForecastBenchArgs {
    /// Number of synthetic traces.
    #[arg(long, default_value_t = 200)]
    pub traces: usize,
    /// Seed of the trace generator.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Days of history handed to both forecasters.
    #[arg(long, default_value_t = 10.0)]
    pub history_days: f64,
}

const DAY: f64 = 86_400.0;
const SAMPLE_SECS: f64 = 600.0;

struct Rng(u64);
impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407) | 1)
    }
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }
    fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-12);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// Free space in GB at time t (seconds since the trace start), without noise.
#[derive(Debug, Clone)]
enum Shape {
    Linear {
        f0: f64,
        rate: f64,
    },
    Daily {
        f0: f64,
        rate: f64,
        amp: f64,
        phase: f64,
    },
    /// Writes `write` GB/day continuously, TTL purges `purge` GB once a day at `hour`.
    Sawtooth {
        f0: f64,
        write: f64,
        purge: f64,
        hour: f64,
    },
    /// Growth changes from `r1` to `r2` at `tau`, optionally with a daily pattern.
    RateChange {
        f0: f64,
        r1: f64,
        r2: f64,
        tau: f64,
        amp: f64,
        phase: f64,
    },
    /// A manual cleanup frees `jump` GB at `tau`; the fill rate is unchanged.
    Cleanup {
        f0: f64,
        rate: f64,
        jump: f64,
        tau: f64,
    },
    /// Free space that grows or holds.
    NotFilling {
        f0: f64,
        rate: f64,
    },
}

impl Shape {
    fn class(&self) -> &'static str {
        match self {
            Shape::Linear { .. } => "linear",
            Shape::Daily { .. } => "daily_seasonal",
            Shape::Sawtooth { .. } => "ttl_sawtooth",
            Shape::RateChange { .. } => "rate_change",
            Shape::Cleanup { .. } => "cleanup_jump",
            Shape::NotFilling { .. } => "not_filling",
        }
    }

    fn at(&self, t: f64) -> f64 {
        let d = t / DAY;
        let wave = |amp: f64, phase: f64| amp * (2.0 * std::f64::consts::PI * d + phase).sin();
        match *self {
            Shape::Linear { f0, rate } => f0 - rate * d,
            Shape::Daily { f0, rate, amp, phase } => f0 - rate * d + wave(amp, phase),
            Shape::Sawtooth { f0, write, purge, hour } => {
                let purges = ((t - hour * 3600.0) / DAY).floor() + 1.0;
                f0 - write * d + purge * purges.max(0.0)
            }
            Shape::RateChange { f0, r1, r2, tau, amp, phase } => {
                let td = tau / DAY;
                let base = if d < td { f0 - r1 * d } else { f0 - r1 * td - r2 * (d - td) };
                base + wave(amp, phase)
            }
            Shape::Cleanup { f0, rate, jump, tau } => f0 - rate * d + if t >= tau { jump } else { 0.0 },
            Shape::NotFilling { f0, rate } => f0 + rate * d,
        }
    }
}

/// One trace: the shape is drawn so that the true exhaustion falls 2–60 days after the end of
/// history for the filling classes (uniformly, so short and long horizons both count).
fn draw(rng: &mut Rng, hist: f64) -> (Shape, f64) {
    let hd = hist / DAY;
    let target = rng.range(2.0, 60.0);
    let rate = rng.range(5.0, 30.0);
    let noise = rng.range(0.2, 3.0);
    let u = rng.uniform();
    let shape = if u < 0.30 {
        Shape::Linear { f0: rate * (target + hd), rate }
    } else if u < 0.45 {
        Shape::Daily { f0: rate * (target + hd), rate, amp: rate * rng.range(0.2, 1.5), phase: rng.range(0.0, 6.3) }
    } else if u < 0.65 {
        let purge = rate * rng.range(1.0, 4.0);
        Shape::Sawtooth { f0: rate * (target + hd), write: rate + purge, purge, hour: rng.range(0.0, 24.0) }
    } else if u < 0.85 {
        let r2 = rate;
        let r1 = if rng.uniform() < 0.6 { r2 * rng.range(0.2, 0.6) } else { r2 * rng.range(1.6, 3.0) };
        let tau_d = hd - rng.range(1.5, 5.0);
        let amp = if rng.uniform() < 0.5 { rate * rng.range(0.1, 0.8) } else { 0.0 };
        let f0 = r2 * target + r2 * (hd - tau_d) + r1 * tau_d;
        Shape::RateChange { f0, r1, r2, tau: tau_d * DAY, amp, phase: rng.range(0.0, 6.3) }
    } else if u < 0.95 {
        let jump = rate * rng.range(3.0, 15.0);
        let tau = (hd - rng.range(1.0, 5.0)) * DAY;
        Shape::Cleanup { f0: rate * (target + hd) - jump, rate, jump, tau }
    } else {
        Shape::NotFilling { f0: rng.range(100.0, 900.0), rate: rng.range(0.0, 10.0) }
    };
    (shape, noise)
}

/// Least-squares line over the samples; seconds after the last sample until it reaches 0.
pub fn linear_exhaustion(samples: &[(i64, f64)]) -> Option<f64> {
    let n = samples.len() as f64;
    if n < 2.0 {
        return None;
    }
    let t0 = samples[0].0;
    let xs: Vec<f64> = samples.iter().map(|s| (s.0 - t0) as f64 / 1000.0).collect();
    let mx = xs.iter().sum::<f64>() / n;
    let my = samples.iter().map(|s| s.1).sum::<f64>() / n;
    let sxy: f64 = xs.iter().zip(samples).map(|(x, s)| (x - mx) * (s.1 - my)).sum();
    let sxx: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
    if sxx <= 0.0 {
        return None;
    }
    let slope = sxy / sxx;
    let last_x = xs[xs.len() - 1];
    let at_last = my + slope * (last_x - mx);
    if at_last <= 0.0 {
        return Some(0.0);
    }
    (slope < 0.0).then(|| -at_last / slope)
}

pub fn run(args: ForecastBenchArgs) -> anyhow::Result<()> {
    let cfg = ForecastConfig::default();
    let cap = cfg.horizon_secs;
    let hist = args.history_days * DAY;
    let mut rng = Rng::new(args.seed);
    let mut ours_err = Vec::new();
    let mut lin_err = Vec::new();
    let mut by_class: BTreeMap<&str, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    let (mut pess_early, mut pess_n) = (0usize, 0usize);
    let started = std::time::Instant::now();
    for _ in 0..args.traces {
        let (shape, noise) = draw(&mut rng, hist);
        let n = (hist / SAMPLE_SECS) as i64;
        let samples: Vec<(i64, f64)> = (0..n)
            .map(|i| {
                let t = i as f64 * SAMPLE_SECS;
                ((t * 1000.0) as i64, shape.at(t) + noise * rng.normal())
            })
            .collect();
        let end = (n - 1) as f64 * SAMPLE_SECS;
        let mut truth = None;
        let mut t = end;
        while t <= end + cap {
            if shape.at(t) <= 0.0 {
                truth = Some(t - end);
                break;
            }
            t += 60.0;
        }
        let f = forecast_exhaustion("bench", &samples, Limit::Below(0.0), &cfg)
            .map_err(|e| anyhow::anyhow!("forecast failed on a {} trace: {e}", shape.class()))?;
        let lin = linear_exhaustion(&samples);
        let capped = |x: Option<f64>| x.unwrap_or(cap).min(cap);
        let tr = capped(truth);
        let eo = (capped(f.exhaustion_seconds) - tr).abs() / DAY;
        let el = (capped(lin) - tr).abs() / DAY;
        ours_err.push(eo);
        lin_err.push(el);
        let c = by_class.entry(shape.class()).or_default();
        c.0.push(eo);
        c.1.push(el);
        if let Some(tv) = truth {
            pess_n += 1;
            pess_early += usize::from(f.pessimistic_seconds.is_some_and(|p| p <= tv));
        }
    }
    println!(
        "traces={} history={}d samples_every={}s horizon_cap={}d seed={} elapsed={:.1}s",
        args.traces,
        args.history_days,
        SAMPLE_SECS,
        cap / DAY,
        args.seed,
        started.elapsed().as_secs_f64()
    );
    for (class, (o, l)) in &mut by_class {
        println!(
            "class={class} n={} ours_median_abs_error_days={:.2} linear_median_abs_error_days={:.2}",
            o.len(),
            median(o).unwrap_or(f64::NAN),
            median(l).unwrap_or(f64::NAN)
        );
    }
    println!("pessimistic_bound_at_or_before_truth={pess_early}/{pess_n}");
    let mo = median(&mut ours_err).unwrap_or(f64::NAN);
    let ml = median(&mut lin_err).unwrap_or(f64::NAN);
    println!("ours_median_abs_error_days={mo:.3}");
    println!("linear_median_abs_error_days={ml:.3}");
    println!("forecast_mae_ratio={:.3}", mo / ml);
    Ok(())
}
