//! Reading the Prometheus text that `GET /metrics` answers.

/// The value of one series, written exactly as Prometheus prints it (`name{label="value",...}`
/// with the labels in the exporter's order); `None` when the series is absent.
pub fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|value| value.trim().parse().expect("a sample value is a number"))
}

/// [`value`], with an absent series counted as 0 (a counter not yet incremented).
pub fn count(text: &str, series: &str) -> f64 {
    value(text, series).unwrap_or(0.0)
}

/// How much a counter rose from the scrape `before` to the scrape `after`.
pub fn delta(before: &str, after: &str, series: &str) -> f64 {
    count(after, series) - count(before, series)
}
