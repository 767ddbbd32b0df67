//! The case count of the hostile-input property tests (`hostile_*`, issue 11 item 6): small by
//! default so the whole set stays well under a minute in a debug build on two cores, and as
//! large as a benchmark-style run wants through one environment variable:
//!
//! ```text
//! MERIDIAN_HOSTILE_CASES=100000 cargo nextest run --release -E 'test(hostile)'
//! ```

/// The environment variable that sets how many cases each hostile property runs.
pub const CASES_VAR: &str = "MERIDIAN_HOSTILE_CASES";

/// Cases per property when [`CASES_VAR`] is unset or not a positive number.
pub const DEFAULT_CASES: u32 = 512;

/// How many cases each hostile property runs: [`CASES_VAR`], else [`DEFAULT_CASES`].
pub fn hostile_cases() -> u32 {
    cases_from(std::env::var(CASES_VAR).ok().as_deref())
}

fn cases_from(value: Option<&str>) -> u32 {
    value
        .and_then(|text| text.trim().parse::<u32>().ok())
        .filter(|&cases| cases > 0)
        .unwrap_or(DEFAULT_CASES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_variable_sets_the_count_and_nonsense_falls_back() {
        assert_eq!(cases_from(None), DEFAULT_CASES);
        assert_eq!(cases_from(Some("100000")), 100_000);
        assert_eq!(cases_from(Some(" 7 ")), 7);
        assert_eq!(cases_from(Some("0")), DEFAULT_CASES);
        assert_eq!(cases_from(Some("lots")), DEFAULT_CASES);
    }
}
