//! Exponential backoff with jitter, for every reconnect loop. The delays come
//! from `backon`'s [`ExponentialBuilder`]; this type adds what the loops need
//! around it: it never runs out, and [`Backoff::reset`] starts over after a
//! success.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// Delays that double from `base` up to `max`, each drawn uniformly from
/// `[step/2, step)` of its step so that many clients that lost the broker at
/// once do not return at once.
///
/// backon's jitter adds a random part of the step on top of it (a delay in
/// `[step, 2*step)`), so the builder is given half the base and half the cap:
/// the delays then stay within `max`.
#[derive(Debug)]
pub struct Backoff {
    builder: ExponentialBuilder,
    max: Duration,
    delays: ExponentialBackoff,
}

impl Backoff {
    /// Delays that start below `base` and never exceed `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        let builder = ExponentialBuilder::new()
            .with_factor(2.0)
            .with_min_delay(base / 2)
            .with_max_delay(max / 2)
            .with_jitter()
            .without_max_times();
        Self {
            builder,
            max,
            delays: builder.build(),
        }
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        // Without a maximum number of times the iterator does not end; the
        // cap stands in should it ever do.
        self.delays.next().unwrap_or(self.max).min(self.max)
    }

    /// Back to the shortest delay (after a success).
    pub fn reset(&mut self) {
        self.delays = self.builder.build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_caps_with_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        for _ in 0..20 {
            let d = b.next_delay();
            assert!(d <= Duration::from_secs(2), "{d:?}");
        }
        assert!(b.next_delay() >= Duration::from_secs(1));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn never_runs_out_and_stays_within_the_cap() {
        let (base, max) = (Duration::from_millis(100), Duration::from_secs(10));
        let mut b = Backoff::new(base, max);
        let steps: Vec<Duration> = (0..10_000).map(|_| b.next_delay()).collect();
        // 100 ms doubled reaches the 10 s cap at the 8th delay. backon
        // computes in f32: allow a microsecond either way.
        let slack = Duration::from_micros(1);
        for (n, d) in steps.iter().enumerate() {
            let step = base.saturating_mul(1u32 << n.min(16)).min(max);
            assert!(
                *d + slack >= step / 2 && *d <= step + slack,
                "delay {n}: {d:?}"
            );
            assert!(*d <= max, "delay {n}: {d:?}");
        }
        let distinct: std::collections::HashSet<_> = steps[100..200].iter().collect();
        assert!(distinct.len() > 50, "jittered, not fixed");
    }
}
