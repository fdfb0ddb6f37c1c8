//! Counters: score the rate, not the ever-growing total.
//!
//! A decrease is a reset (process restart, wrap) — the sample gives no rate and is not
//! anomalous; the next increase is measured from the new value.

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CounterRate {
    last: f64,
    has_last: bool,
}

/// What a counter sample turns into.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Rate {
    /// Per-second increase since the previous sample.
    PerSec(f64),
    /// First sample or a reset: nothing to score yet.
    None { reset: bool },
}

impl CounterRate {
    #[inline]
    pub fn observe(&mut self, value: f64, dt_ms: i64) -> Rate {
        let prev = self.last;
        let had = self.has_last;
        self.last = value;
        self.has_last = true;
        if !had || dt_ms <= 0 {
            return Rate::None { reset: false };
        }
        if value < prev {
            return Rate::None { reset: true };
        }
        Rate::PerSec((value - prev) * 1000.0 / dt_ms as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_per_second_and_reset_on_decrease() {
        let mut c = CounterRate::default();
        assert_eq!(c.observe(100.0, 0), Rate::None { reset: false });
        assert_eq!(c.observe(110.0, 10_000), Rate::PerSec(1.0));
        assert_eq!(c.observe(3.0, 10_000), Rate::None { reset: true });
        assert_eq!(c.observe(13.0, 10_000), Rate::PerSec(1.0));
    }
}
