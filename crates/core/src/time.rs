//! Sequencer time: microseconds since the Unix epoch. Members learn time only from sequenced
//! events, so this type is what every deadline in the protocol is expressed in.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// A point in sequencer time, in microseconds since the Unix epoch (UTC).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
pub struct Timestamp(u64);

impl Timestamp {
    pub const MIN: Timestamp = Timestamp(0);
    /// Largest value that still fits the `BIGINT` columns of the stores.
    pub const MAX: Timestamp = Timestamp(i64::MAX as u64);

    pub const fn from_micros(micros: u64) -> Self {
        Self(micros)
    }

    pub const fn as_micros(self) -> u64 {
        self.0
    }

    /// The wall clock now. Only sequencers and clients choosing deadlines read the clock;
    /// protocol logic receives time as an argument.
    pub fn now() -> Self {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_micros();
        Self(u64::try_from(micros).unwrap_or(u64::MAX).min(Self::MAX.0))
    }

    pub fn saturating_add(self, duration: Duration) -> Self {
        let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        Self(self.0.saturating_add(micros).min(Self::MAX.0))
    }

    pub fn saturating_sub(self, duration: Duration) -> Self {
        let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        Self(self.0.saturating_sub(micros))
    }

    /// The time from `earlier` to `self`, zero if `earlier` is later.
    pub fn duration_since(self, earlier: Timestamp) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }

    /// For `BIGINT` columns; every constructed timestamp is at most [`Timestamp::MAX`].
    pub fn as_i64(self) -> i64 {
        i64::try_from(self.0).unwrap_or(i64::MAX)
    }

    /// From a `BIGINT` column; negative values (never written by us) clamp to zero.
    pub fn from_i64(value: i64) -> Self {
        Self(u64::try_from(value).unwrap_or(0))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}us", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        let t = Timestamp::from_micros(10);
        assert_eq!(t.saturating_sub(Duration::from_secs(1)), Timestamp::MIN);
        assert_eq!(
            Timestamp::MAX.saturating_add(Duration::from_secs(1)),
            Timestamp::MAX
        );
        assert_eq!(
            Timestamp::from_micros(1_500).duration_since(t),
            Duration::from_micros(1_490)
        );
    }

    #[test]
    fn i64_round_trip() {
        let t = Timestamp::now();
        assert_eq!(Timestamp::from_i64(t.as_i64()), t);
        assert_eq!(Timestamp::from_i64(-5), Timestamp::MIN);
    }
}
