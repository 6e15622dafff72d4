//! A counter series to register at 0 when the metrics are installed.
//!
//! A healthy ingester then reports `miniscan_errors_total` as 0 rather than
//! having no series, and the dashboard shows 0, not "No data". Which series
//! exist is not known here: each stage declares the series it emits, beside
//! the code that emits them, and the ingester hands the list to
//! [`super::install_metrics`].

use metrics::counter;

/// One counter series: a name and its labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Series {
    /// The metric name.
    pub name: &'static str,
    /// `(key, value)` pairs.
    pub labels: Vec<(&'static str, &'static str)>,
}

impl Series {
    /// The counter `name` with `labels`.
    pub fn counter(name: &'static str, labels: &[(&'static str, &'static str)]) -> Self {
        Self {
            name,
            labels: labels.to_vec(),
        }
    }

    /// Registers the series (a counter at 0 if it is new).
    pub fn register(&self) {
        let labels: Vec<metrics::Label> = self
            .labels
            .iter()
            .map(|&(k, v)| metrics::Label::from_static_parts(k, v))
            .collect();
        counter!(self.name, labels).increment(0);
    }

    /// How Prometheus renders the series, without its value.
    pub fn key(&self) -> String {
        let labels: Vec<String> = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{v}\""))
            .collect();
        if labels.is_empty() {
            self.name.to_owned()
        } else {
            format!("{}{{{}}}", self.name, labels.join(","))
        }
    }
}

/// Registers every series of `all` at 0, so that each exists from start-up.
pub fn zero_init(all: &[Series]) {
    for series in all {
        series.register();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_exporter_prometheus::PrometheusBuilder;

    #[test]
    fn registered_series_are_rendered_at_zero_as_their_key_says() {
        let all = [
            Series::counter("t_total", &[("a", "x"), ("b", "y")]),
            Series::counter("u_total", &[]),
        ];
        let recorder = PrometheusBuilder::new().build_recorder();
        metrics::with_local_recorder(&recorder, || zero_init(&all));
        let text = recorder.handle().render();
        for s in &all {
            let line = format!("{} 0", s.key());
            assert!(text.lines().any(|l| l == line), "{line}\n{text}");
        }
    }
}
