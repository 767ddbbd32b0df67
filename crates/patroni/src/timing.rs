//! Patroni's three timing knobs and the rule that keeps a failover from producing two writers.
//! The leader refreshes its leader key every `loop_wait`; a replica may take the key only once
//! it expired (`ttl` after the last refresh). A leader that cannot refresh retries etcd for up
//! to `retry_timeout`, and a stuck PostgreSQL call in the same loop can cost another
//! `retry_timeout`, after which it demotes itself. So the old leader stops writing before
//! anyone else can be promoted only if `loop_wait + 2 × retry_timeout ≤ ttl` — Patroni's
//! documented rule, which this module enforces together with Patroni's floors (`loop_wait ≥ 1`,
//! `retry_timeout ≥ 3`). After a crash, the failover takes about `ttl` (less the time since the
//! last refresh), so `ttl` is what tuning buys down.

use std::fmt;
use std::str::FromStr;

/// `ttl`, `loop_wait` and `retry_timeout` in seconds (Patroni takes whole seconds only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub ttl_s: u32,
    pub loop_wait_s: u32,
    pub retry_timeout_s: u32,
}

/// Why a [`Timing`] is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimingError {
    #[error("{0:?} is not TTL/LOOP_WAIT/RETRY_TIMEOUT in whole seconds, e.g. 7/1/3")]
    Syntax(String),
    #[error("loop_wait must be at least {min} s (got {got} s)")]
    LoopWaitTooShort { min: u32, got: u32 },
    #[error(
        "retry_timeout must be at least {min} s (got {got} s): shorter, a routine etcd or \
         PostgreSQL stall (an fsync, a checkpoint) demotes a healthy leader"
    )]
    RetryTimeoutTooShort { min: u32, got: u32 },
    #[error(
        "ttl {ttl_s} s is below loop_wait + 2 × retry_timeout = {needed_s} s: the old leader \
         could still accept writes after its key expired and another member was promoted"
    )]
    TtlTooShort { ttl_s: u32, needed_s: u32 },
}

impl Timing {
    /// Patroni's defaults: failover after a crash took 23–30 s here.
    pub const PATRONI_DEFAULT: Timing = Timing {
        ttl_s: 30,
        loop_wait_s: 10,
        retry_timeout_s: 10,
    };

    /// The values issue 10 measured (8.8–9.4 s failover); the rule holds with no slack to spare.
    pub const ISSUE_10: Timing = Timing {
        ttl_s: 10,
        loop_wait_s: 2,
        retry_timeout_s: 4,
    };

    /// The lab's choice: both knobs at Patroni's floors and the smallest `ttl` the rule allows.
    /// See `docs/operations.md` for why it stops here.
    pub const TUNED: Timing = Timing {
        ttl_s: 7,
        loop_wait_s: 1,
        retry_timeout_s: 3,
    };

    pub const MIN_LOOP_WAIT_S: u32 = 1;
    pub const MIN_RETRY_TIMEOUT_S: u32 = 3;

    pub fn check(&self) -> Result<(), TimingError> {
        if self.loop_wait_s < Self::MIN_LOOP_WAIT_S {
            return Err(TimingError::LoopWaitTooShort {
                min: Self::MIN_LOOP_WAIT_S,
                got: self.loop_wait_s,
            });
        }
        if self.retry_timeout_s < Self::MIN_RETRY_TIMEOUT_S {
            return Err(TimingError::RetryTimeoutTooShort {
                min: Self::MIN_RETRY_TIMEOUT_S,
                got: self.retry_timeout_s,
            });
        }
        let needed_s = self.loop_wait_s + 2 * self.retry_timeout_s;
        if self.ttl_s < needed_s {
            return Err(TimingError::TtlTooShort {
                ttl_s: self.ttl_s,
                needed_s,
            });
        }
        Ok(())
    }
}

impl Default for Timing {
    fn default() -> Self {
        Self::TUNED
    }
}

impl fmt::Display for Timing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ttl {} s / loop_wait {} s / retry_timeout {} s",
            self.ttl_s, self.loop_wait_s, self.retry_timeout_s
        )
    }
}

/// `TTL/LOOP_WAIT/RETRY_TIMEOUT` in seconds, e.g. `7/1/3`, checked like [`Timing::check`].
impl FromStr for Timing {
    type Err = TimingError;

    fn from_str(text: &str) -> Result<Self, TimingError> {
        let parts: Vec<Option<u32>> = text
            .split('/')
            .map(|part| part.trim().parse().ok())
            .collect();
        let [Some(ttl_s), Some(loop_wait_s), Some(retry_timeout_s)] = parts[..] else {
            return Err(TimingError::Syntax(text.to_owned()));
        };
        let timing = Timing {
            ttl_s,
            loop_wait_s,
            retry_timeout_s,
        };
        timing.check()?;
        Ok(timing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_keep_the_rule() {
        for timing in [Timing::PATRONI_DEFAULT, Timing::ISSUE_10, Timing::TUNED] {
            assert_eq!(timing.check(), Ok(()), "{timing}");
        }
    }

    #[test]
    fn tuned_is_the_floor() {
        // One second less anywhere breaks a floor or the rule.
        let t = Timing::TUNED;
        let shorter = [
            Timing {
                ttl_s: t.ttl_s - 1,
                ..t
            },
            Timing {
                loop_wait_s: t.loop_wait_s - 1,
                ..t
            },
            Timing {
                retry_timeout_s: t.retry_timeout_s - 1,
                ..t
            },
        ];
        for timing in shorter {
            assert!(timing.check().is_err(), "{timing} must be refused");
        }
    }

    #[test]
    fn names_the_broken_rule() {
        let timing = Timing {
            ttl_s: 9,
            loop_wait_s: 2,
            retry_timeout_s: 4,
        };
        assert_eq!(
            timing.check(),
            Err(TimingError::TtlTooShort {
                ttl_s: 9,
                needed_s: 10
            })
        );
        assert!(matches!(
            Timing {
                retry_timeout_s: 2,
                ..Timing::ISSUE_10
            }
            .check(),
            Err(TimingError::RetryTimeoutTooShort { .. })
        ));
    }

    #[test]
    fn parses_seconds_triples() {
        assert_eq!("10/2/4".parse::<Timing>(), Ok(Timing::ISSUE_10));
        assert_eq!(" 7 / 1 / 3 ".parse::<Timing>(), Ok(Timing::TUNED));
        for bad in ["", "7/1", "7/1/3/4", "7/x/3", "-7/1/3"] {
            assert!(
                matches!(bad.parse::<Timing>(), Err(TimingError::Syntax(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            "6/1/3".parse::<Timing>(),
            Err(TimingError::TtlTooShort { .. })
        ));
    }
}
