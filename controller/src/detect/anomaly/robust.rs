//! Robust exponentially weighted location/scale.
//!
//! A Huber-clipped EW mean and an EW mean absolute deviation of clipped residuals behave
//! like an EW median/MAD pair: one wild sample moves them by at most `clip * scale * alpha`,
//! so a spike cannot drag the baseline along and hide the samples that follow it, yet a
//! real level shift is still absorbed within a few dozen samples.

/// Clip residuals at this many scales when updating the centre.
const CENTER_CLIP: f32 = 3.0;
/// Clip absolute residuals at this many scales when updating the scale; larger than the
/// centre clip so that a genuine rise in volatility is learnt within tens of samples.
const SCALE_CLIP: f32 = 6.0;

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct EwRobust {
    pub center: f32,
    pub scale: f32,
}

impl EwRobust {
    /// Residual of `x` against the current centre.
    #[inline]
    pub fn residual(&self, x: f32) -> f32 {
        x - self.center
    }

    #[inline]
    pub fn update(&mut self, x: f32, alpha_c: f32, alpha_s: f32, floor: f32) {
        let r = x - self.center;
        let s = self.scale.max(floor);
        let c = CENTER_CLIP * s;
        self.center += alpha_c * r.clamp(-c, c);
        let a = r.abs().min(SCALE_CLIP * s);
        self.scale += alpha_s * (a - self.scale);
    }
}

/// [`EwRobust::update`] on `N` independent lanes at once (centres and scales kept apart so
/// the loop is branch-free and vectorises).
#[inline]
pub(crate) fn update_lanes<const N: usize>(
    center: &mut [f32; N],
    scale: &mut [f32; N],
    x: &[f32; N],
    alpha: f32,
    floor: f32,
) {
    for i in 0..N {
        let r = x[i] - center[i];
        let s = scale[i].max(floor);
        let c = CENTER_CLIP * s;
        center[i] += alpha * r.clamp(-c, c);
        scale[i] += alpha * (r.abs().min(SCALE_CLIP * s) - scale[i]);
    }
}

/// Upper tail of the standard normal, P(N > u); Abramowitz–Stegun 7.1.26 via erfc, good to
/// ~1e-7 absolute, which is plenty for a score that is read on a log scale.
#[inline]
pub(crate) fn normal_sf(u: f32) -> f32 {
    let x = u as f64 / std::f64::consts::SQRT_2;
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    let erfc = if x >= 0.0 { r } else { 2.0 - r };
    (0.5 * erfc) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_outlier_moves_the_centre_by_at_most_clip_times_scale_times_alpha() {
        let mut e = EwRobust { center: 10.0, scale: 1.0 };
        e.update(1e6, 0.1, 0.05, 1e-6);
        assert!((e.center - 10.3).abs() < 1e-4, "centre {}", e.center);
        assert!(e.scale < 1.3, "scale {}", e.scale);
    }

    #[test]
    fn lanes_update_exactly_like_one_estimator_each() {
        let mut one = [EwRobust { center: 10.0, scale: 1.0 }, EwRobust { center: -3.0, scale: 0.5 }];
        let (mut c, mut s) = ([10.0, -3.0], [1.0, 0.5]);
        for x in [12.0, 1e6, -7.0, 9.5] {
            for e in &mut one {
                e.update(x, 0.05, 0.05, 1e-6);
            }
            update_lanes(&mut c, &mut s, &[x, x], 0.05, 1e-6);
        }
        assert_eq!([one[0].center, one[1].center], c);
        assert_eq!([one[0].scale, one[1].scale], s);
    }

    #[test]
    fn normal_tail_matches_known_values() {
        assert!((normal_sf(0.0) - 0.5).abs() < 1e-6);
        assert!((normal_sf(1.96) - 0.025).abs() < 1e-4);
        assert!((normal_sf(-1.96) - 0.975).abs() < 1e-4);
        assert!(normal_sf(8.0) < 1e-14 + 1e-9);
    }
}
