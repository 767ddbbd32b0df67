//! Bounded exponential backoff with jitter, as a pure iterator of delays.
//!
//! Every retry in Meridian draws its waits from here — the client's reconnects and sends, and
//! every node's waits for its database, topology manager and sequencer (through
//! `meridian_node::retry`) — so that no loop can spin or retry without a limit: the number of
//! attempts is capped and every delay is capped. The jitter keeps many members that lost the
//! same sequencer from reconnecting in lockstep when it comes back. The iterator does no I/O
//! and can be seeded, so the schedule is unit-testable.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How retries are spaced and how many are made.
///
/// The `k`-th delay (from 0) is drawn uniformly from `[c/2, c]` where
/// `c = min(initial * 2^k, max)` ("equal jitter"). While `c` is still doubling, each delay is
/// therefore at least as long as the previous one; once `c` reaches `max` the delays stay in
/// `[max/2, max]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Ceiling of the first delay.
    pub initial: Duration,
    /// Ceiling of every delay.
    pub max: Duration,
    /// Attempts in total, the first one included; after this many failures the operation gives
    /// up. `0` is treated as `1`: an operation is always tried at least once.
    pub max_attempts: u32,
}

impl Default for Backoff {
    /// About 30 s of retrying in total: long enough to ride out a sequencer restart or
    /// failover, short enough that a member notices a lasting outage.
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(2),
            max_attempts: 20,
        }
    }
}

impl Backoff {
    /// The delays to wait between attempts: `max_attempts - 1` of them, randomly jittered.
    pub fn delays(&self) -> Delays {
        self.delays_seeded(rand::random())
    }

    /// Like [`Backoff::delays`] with a fixed jitter seed, for reproducible schedules.
    pub fn delays_seeded(&self, seed: u64) -> Delays {
        Delays {
            ceiling: self.initial.min(self.max),
            max: self.max,
            remaining: self.max_attempts.saturating_sub(1),
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// Upper bound of the total time spent waiting between all attempts.
    pub fn max_total_delay(&self) -> Duration {
        let mut ceiling = self.initial.min(self.max);
        let mut total = Duration::ZERO;
        for _ in 0..self.max_attempts.saturating_sub(1) {
            total = total.saturating_add(ceiling);
            ceiling = ceiling.saturating_mul(2).min(self.max);
        }
        total
    }
}

/// Iterator over the delays of one retry sequence; see [`Backoff`].
#[derive(Debug, Clone)]
pub struct Delays {
    ceiling: Duration,
    max: Duration,
    remaining: u32,
    rng: StdRng,
}

impl Iterator for Delays {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let ceiling = self.ceiling;
        self.ceiling = ceiling.saturating_mul(2).min(self.max);
        // Nanosecond arithmetic in u64 covers 584 years; longer ceilings saturate.
        let ceiling_ns = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        let floor_ns = ceiling_ns / 2;
        Some(Duration::from_nanos(
            self.rng.gen_range(floor_ns..=ceiling_ns),
        ))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let remaining = usize::try_from(self.remaining).unwrap_or(usize::MAX);
        (remaining, Some(remaining))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    #[test]
    fn delays_are_bounded_and_increasing_until_the_cap() {
        let backoff = Backoff {
            initial: ms(50),
            max: ms(2_000),
            max_attempts: 20,
        };
        for seed in 0..200 {
            let delays: Vec<Duration> = backoff.delays_seeded(seed).collect();
            assert_eq!(delays.len(), 19, "one delay between each pair of attempts");
            let mut ceiling = ms(50);
            for (k, &delay) in delays.iter().enumerate() {
                assert!(
                    delay <= ceiling,
                    "delay {k} = {delay:?} above its ceiling {ceiling:?}"
                );
                assert!(
                    delay >= ceiling / 2,
                    "delay {k} = {delay:?} below half of {ceiling:?}"
                );
                assert!(delay <= backoff.max);
                ceiling = (ceiling * 2).min(backoff.max);
            }
            // Ceilings 50, 100, ..., 1600 ms, then 2 s. As long as a ceiling is at most half
            // the cap, the next delay's floor is at least this delay's ceiling: the schedule
            // never shortens over delays 0..=5.
            for pair in delays[..6].windows(2) {
                assert!(pair[0] <= pair[1], "delays shrank: {pair:?}");
            }
            // And the growth is real: the capped tail is far above the first delay.
            assert!(delays[18] >= delays[0] * 10, "{delays:?}");
            let total: Duration = delays.iter().sum();
            assert!(total <= backoff.max_total_delay());
        }
    }

    #[test]
    fn total_delay_is_bounded() {
        let backoff = Backoff::default();
        // 50+100+200+400+800+1600 ms, then 13 capped delays of 2 s.
        assert_eq!(backoff.max_total_delay(), ms(3_150 + 13 * 2_000));
    }

    #[test]
    fn jitter_varies_but_seeds_reproduce() {
        let backoff = Backoff::default();
        let a: Vec<_> = backoff.delays_seeded(1).collect();
        let b: Vec<_> = backoff.delays_seeded(1).collect();
        let c: Vec<_> = backoff.delays_seeded(2).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn degenerate_settings_stay_bounded() {
        let once = Backoff {
            max_attempts: 1,
            ..Backoff::default()
        };
        assert_eq!(once.delays().count(), 0, "one attempt, no retry");
        let zero = Backoff {
            max_attempts: 0,
            ..Backoff::default()
        };
        assert_eq!(zero.delays().count(), 0);

        // An initial delay above the cap is clamped to the cap.
        let inverted = Backoff {
            initial: ms(10_000),
            max: ms(100),
            max_attempts: 5,
        };
        assert!(inverted.delays().all(|d| d <= ms(100) && d >= ms(50)));

        let zero_delay = Backoff {
            initial: Duration::ZERO,
            max: Duration::ZERO,
            max_attempts: 3,
        };
        assert_eq!(
            zero_delay.delays().collect::<Vec<_>>(),
            vec![Duration::ZERO; 2]
        );

        let huge = Backoff {
            initial: Duration::MAX,
            max: Duration::MAX,
            max_attempts: 3,
        };
        assert_eq!(huge.delays().count(), 2, "saturates instead of overflowing");
    }
}
