//! Which fault a thing seen during a run belongs to: a failed request, a lost transaction, a
//! replica change. Each fault has a window — from its injection to the end of what it is
//! watched for — and everything that happened is attributed to exactly one window, or to
//! none ("between faults"), so a report's rows and its summary always add up. Windows may
//! overlap (a nemesis run overlaps faults on purpose); then the fault injected last wins, as
//! the one most likely to be the cause. A leaf module: times are plain µs since the run's
//! epoch.

use serde::Serialize;

/// One fault's window, in µs since the run's epoch: `[from_us, until_us)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub from_us: u64,
    pub until_us: u64,
}

impl Window {
    /// A window from ms figures as reports carry them (negative or NaN count as 0).
    pub fn from_ms(from_ms: f64, until_ms: f64) -> Self {
        let us = |ms: f64| (ms.max(0.0) * 1_000.0) as u64;
        Self {
            from_us: us(from_ms),
            until_us: us(until_ms),
        }
    }

    fn contains(&self, at_us: u64) -> bool {
        self.from_us <= at_us && at_us < self.until_us
    }
}

/// The window `at_us` is attributed to: of those containing it, the one that began last
/// (the earlier index on a tie). `None` when it falls between faults.
pub fn window_of(windows: &[Window], at_us: u64) -> Option<usize> {
    windows
        .iter()
        .enumerate()
        .filter(|(_, window)| window.contains(at_us))
        .max_by(|(a_index, a), (b_index, b)| a.from_us.cmp(&b.from_us).then(b_index.cmp(a_index)))
        .map(|(index, _)| index)
}

/// Counts per window, and of what fell between faults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub per_window: Vec<u64>,
    pub between_faults: u64,
}

impl Counts {
    /// Every count, rows and "between faults" together.
    pub fn total(&self) -> u64 {
        self.per_window.iter().sum::<u64>() + self.between_faults
    }
}

/// Attributes each of `times_us` to its window (see [`window_of`]).
pub fn count(windows: &[Window], times_us: impl IntoIterator<Item = u64>) -> Counts {
    let mut counts = Counts {
        per_window: vec![0; windows.len()],
        between_faults: 0,
    };
    for at_us in times_us {
        match window_of(windows, at_us) {
            Some(index) => counts.per_window[index] += 1,
            None => counts.between_faults += 1,
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(from_us: u64, until_us: u64) -> Window {
        Window { from_us, until_us }
    }

    #[test]
    fn every_event_lands_in_one_row_or_between_faults() {
        // Two windows that overlap in 150..200, a gap, and one after.
        let windows = [window(100, 200), window(150, 300), window(500, 600)];
        let times = [
            0, 100, 149, 150, 199, 200, 299, 300, 450, 500, 599, 600, 10_000,
        ];
        let counts = count(&windows, times);
        assert_eq!(counts.per_window, vec![2, 4, 2]);
        assert_eq!(counts.between_faults, 5);
        assert_eq!(counts.total(), times.len() as u64, "rows and summary agree");
    }

    #[test]
    fn overlapping_windows_give_an_event_to_the_fault_injected_last() {
        let windows = [window(0, 1_000), window(400, 500), window(400, 450)];
        assert_eq!(window_of(&windows, 420), Some(1));
        assert_eq!(window_of(&windows, 470), Some(1));
        assert_eq!(window_of(&windows, 600), Some(0));
        assert_eq!(window_of(&[], 5), None);
    }

    #[test]
    fn windows_from_report_milliseconds() {
        assert_eq!(Window::from_ms(1.5, 2.0), window(1_500, 2_000));
        assert_eq!(Window::from_ms(-3.0, f64::NAN), window(0, 0));
    }
}
