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
    hostile_cases_or(DEFAULT_CASES)
}

/// [`hostile_cases`] with another default, for a property cheap enough to run more in CI.
pub fn hostile_cases_or(default_cases: u32) -> u32 {
    cases_from(std::env::var(CASES_VAR).ok().as_deref(), default_cases)
}

/// The proptest config of a hostile property: [`hostile_cases`] cases, and no failure files
/// next to the sources (a failure found becomes a named regression test instead).
pub fn hostile_config() -> proptest::test_runner::Config {
    hostile_config_with(hostile_cases())
}

/// [`hostile_config`] running `cases` cases.
pub fn hostile_config_with(cases: u32) -> proptest::test_runner::Config {
    proptest::test_runner::Config {
        cases,
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    }
}

fn cases_from(value: Option<&str>, default_cases: u32) -> u32 {
    value
        .and_then(|text| text.trim().parse::<u32>().ok())
        .filter(|&cases| cases > 0)
        .unwrap_or(default_cases)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_variable_sets_the_count_and_nonsense_falls_back() {
        assert_eq!(cases_from(None, DEFAULT_CASES), DEFAULT_CASES);
        assert_eq!(cases_from(Some("100000"), DEFAULT_CASES), 100_000);
        assert_eq!(cases_from(Some(" 7 "), DEFAULT_CASES), 7);
        assert_eq!(cases_from(Some("0"), DEFAULT_CASES), DEFAULT_CASES);
        assert_eq!(cases_from(Some("lots"), DEFAULT_CASES), DEFAULT_CASES);
        assert_eq!(cases_from(None, 2_000), 2_000);
    }
}
