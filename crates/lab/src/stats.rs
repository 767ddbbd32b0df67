//! Summary figures shared by the benchmarks, the drills and the workload: latency quantiles
//! from a histogram, the median and maximum of recovery times, and how a missing figure is
//! printed. A leaf module, so that every measuring module can use it without importing
//! another command.

/// Latency in milliseconds from a histogram of microseconds.
pub(crate) fn quantile_ms(histogram: &hdrhistogram::Histogram<u64>, quantile: f64) -> f64 {
    if histogram.is_empty() {
        return 0.0;
    }
    histogram.value_at_quantile(quantile) as f64 / 1_000.0
}

/// The median (the lower one of an even count) and the maximum of `values`, 0 when empty:
/// how failover benchmarks and drills summarise their recovery times.
pub(crate) fn median_and_max(values: Vec<f64>) -> (f64, f64) {
    let [median, max] = quantiles(values, [0.5, 1.0]);
    (median, max)
}

/// The nearest-rank `quantiles` of `values` (the smallest value with at least that share of
/// the values at or below it: 0.5 of an even count is the lower middle), 0 when empty.
pub(crate) fn quantiles<const N: usize>(mut values: Vec<f64>, quantiles: [f64; N]) -> [f64; N] {
    values.sort_by(f64::total_cmp);
    quantiles.map(|quantile| {
        let rank = (quantile * values.len() as f64).ceil() as usize;
        values
            .get(rank.saturating_sub(1).min(values.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    })
}

/// Milliseconds without decimals, or `-` for a figure that was never reached.
pub(crate) fn fmt_ms(value: Option<f64>) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{v:.0}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_is_the_lower_middle_and_empty_is_zero() {
        assert_eq!(median_and_max(vec![3.0, 1.0, 2.0, 4.0]), (2.0, 4.0));
        assert_eq!(median_and_max(Vec::new()), (0.0, 0.0));
        assert_eq!(fmt_ms(None), "-");
        assert_eq!(fmt_ms(Some(12.6)), "13");
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantiles(hundred, [0.5, 0.99, 1.0]), [50.0, 99.0, 100.0]);
        assert_eq!(quantiles(vec![7.0, 3.0], [0.5, 0.99]), [3.0, 7.0]);
        assert_eq!(quantiles(Vec::new(), [0.99]), [0.0]);
    }
}
