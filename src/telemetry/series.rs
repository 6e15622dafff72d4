//! Which series exist, with which label values: the list that
//! [`zero_init`] registers at 0 when the metrics are installed.
//!
//! A healthy ingester then reports `miniscan_errors_total` as 0 rather than
//! having no series, and the dashboard shows 0, not "No data". The list is
//! built from the typed outcome lists of the stages ([`Outcome::ALL`]),
//! [`Reason::ALL`] and [`names::ERRORS`], so it cannot drift from what the
//! stages emit.

use super::names::{self, cache, label, stage};
use crate::pipeline::{BatchOutcome, Outcome, Settle, Settlement, SourceOutcome};
use crate::stages::decode::{DecodeOutcome, Reason};
use crate::stages::dedup::DedupOutcome;
use crate::stages::write::Written;
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
    fn new(name: &'static str, labels: &[(&'static str, &'static str)]) -> Self {
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
}

fn strings<O: Outcome>() -> impl Iterator<Item = &'static str> {
    O::ALL.iter().map(|o| o.as_str())
}

/// Every stage with the `outcome` values it counts under, in pipeline order.
pub fn stage_outcomes() -> Vec<(&'static str, Vec<&'static str>)> {
    vec![
        (stage::SOURCE, strings::<SourceOutcome>().collect()),
        (stage::DECODE, strings::<DecodeOutcome>().collect()),
        (stage::DEDUP, strings::<DedupOutcome>().collect()),
        (stage::BATCH, strings::<BatchOutcome>().collect()),
        (
            stage::WRITE,
            strings::<<Written as Settle>::Outcome>().collect(),
        ),
        (stage::ACK, strings::<Settlement>().collect()),
    ]
}

/// Every counter series the service emits, with every known label value.
pub fn known_counters() -> Vec<Series> {
    let mut all = Vec::new();
    for (stage, outcomes) in stage_outcomes() {
        for outcome in outcomes {
            all.push(Series::new(
                names::MESSAGES_TOTAL,
                &[(label::STAGE, stage), (label::OUTCOME, outcome)],
            ));
        }
    }
    for &(stage, kind) in names::ERRORS {
        all.push(Series::new(
            names::ERRORS_TOTAL,
            &[(label::STAGE, stage), (label::KIND, kind)],
        ));
    }
    for kind in strings::<Settlement>() {
        all.push(Series::new(names::ACKS_TOTAL, &[(label::KIND, kind)]));
    }
    for reason in Reason::ALL {
        all.push(Series::new(
            names::DEAD_LETTERS_TOTAL,
            &[(label::REASON, reason.as_str())],
        ));
    }
    for result in [cache::HIT, cache::MISS] {
        all.push(Series::new(
            names::CACHE_LOOKUPS_TOTAL,
            &[(label::RESULT, result)],
        ));
    }
    all.push(Series::new(names::ROWS_WRITTEN_TOTAL, &[]));
    all
}

/// Registers every series of [`known_counters`] at 0, so that each exists
/// from start-up.
pub fn zero_init() {
    for series in known_counters() {
        series.register();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::dedup::CommittedOrders;
    use metrics_exporter_prometheus::PrometheusBuilder;
    use names::*;

    fn rendered_after_zero_init() -> String {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, zero_init);
        handle.render()
    }

    /// How Prometheus renders `s`, without its value.
    fn key(s: &Series) -> String {
        let labels: Vec<String> = s
            .labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{v}\""))
            .collect();
        if labels.is_empty() {
            s.name.to_owned()
        } else {
            format!("{}{{{}}}", s.name, labels.join(","))
        }
    }

    fn line(s: &Series) -> String {
        format!("{} 0", key(s))
    }

    #[test]
    fn every_known_series_is_rendered_at_zero() {
        let text = rendered_after_zero_init();
        for s in known_counters() {
            assert!(text.lines().any(|l| l == line(&s)), "{}\n{text}", line(&s));
        }
        for (stage, kind) in ERRORS {
            let want = format!("{ERRORS_TOTAL}{{stage=\"{stage}\",kind=\"{kind}\"}} 0");
            assert!(text.contains(&want), "{want}\n{text}");
        }
        for reason in Reason::ALL {
            let want = format!("{DEAD_LETTERS_TOTAL}{{reason=\"{}\"}} 0", reason.as_str());
            assert!(text.contains(&want), "{want}\n{text}");
        }
    }

    /// A sink that settles every record as the write stage would, without I/O.
    #[derive(Clone)]
    struct NullSink;

    impl crate::pipeline::Sink<()> for NullSink {
        type In = crate::stages::Record;
        type Out = Written;
        fn name(&self) -> &'static str {
            stage::WRITE
        }
        async fn write(
            &self,
            batch: Vec<crate::pipeline::Envelope<Self::In, ()>>,
        ) -> Vec<crate::pipeline::Envelope<Written, ()>> {
            use crate::stages::Record;
            let verdict = |r| match r {
                Record::Scan(_) => Written::Stored,
                Record::Stale => Written::Stale,
                Record::Dead(_) => Written::DeadLetter,
            };
            batch.into_iter().map(|e| e.map(verdict)).collect()
        }
    }

    /// Runs `messages` through the real stages (and [`NullSink`]), with
    /// `orders` as the dedup cache; returns what the registry renders.
    fn run_pipeline(messages: &[&'static [u8]], orders: CommittedOrders) -> String {
        use crate::pipeline::{BatchPipelineExt, Envelope, PipelineExt, SettleExt};
        use crate::stages::{Received, decode::Decode, dedup::Dedup};
        use std::future::IntoFuture;
        let received: Vec<_> = messages
            .iter()
            .enumerate()
            .map(|(i, &data)| {
                let message = Received {
                    data: bytes::Bytes::from_static(data),
                    message_id: i.to_string(),
                    published_micros: 0,
                };
                Envelope::new(message, ())
            })
            .collect();
        let recorder = PrometheusBuilder::new().build_recorder();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let summary = metrics::with_local_recorder(&recorder, || {
            runtime.block_on(
                futures::stream::iter(received)
                    .source(stage::SOURCE)
                    .transform(Decode)
                    .transform(Dedup::new(orders))
                    .batch(stage::BATCH, 10, std::time::Duration::from_secs(1))
                    .write(NullSink, 1)
                    .ack()
                    .into_future(),
            )
        });
        assert_eq!(summary.acked, messages.len() as u64);
        recorder.handle().render()
    }

    /// Every counter series a pipeline of the real stages emits is one of
    /// [`known_counters`], so none of them starts missing.
    #[test]
    fn every_series_the_pipeline_emits_is_known() {
        use crate::stages::{Order, decode};
        let good = br#"{"ip":"1.2.3.4","port":1,"service":"S","timestamp":5,"data_version":2,"data":{"response_str":"x"}}"#;
        // `good` is committed already: dedup calls it stale.
        let orders = CommittedOrders::new(10);
        let obs = decode::decode(good).unwrap();
        let order = Order {
            timestamp: obs.timestamp,
            published_micros: 0,
            message_id: "0".into(),
        };
        orders.committed(obs.key, order);
        let text = run_pipeline(&[good, decode::MALFORMED[0].data], orders);

        let known: Vec<String> = known_counters().iter().map(key).collect();
        let emitted: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("miniscan_") && l.contains("_total"))
            .filter_map(|l| l.rsplit_once(' ').map(|(k, _)| k))
            .collect();
        for want in [
            "stage=\"dedup\",outcome=\"stale\"",
            "stage=\"decode\",outcome=\"dead_letter\"",
        ] {
            assert!(emitted.iter().any(|k| k.contains(want)), "{want}\n{text}");
        }
        for k in emitted {
            assert!(known.iter().any(|s| s == k), "{k} is emitted but not known");
        }
    }

    /// Every counter the Grafana dashboard queries has a zero-initialised
    /// series, so no panel starts as "No data".
    #[test]
    fn every_counter_on_the_dashboard_is_zero_initialised() {
        let dashboard = include_str!("../../grafana/dashboards/mini-scan.json");
        let known: Vec<&str> = known_counters().iter().map(|s| s.name).collect();
        let queried: Vec<&str> = dashboard
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("miniscan_") && w.ends_with("_total"))
            .collect();
        assert!(queried.contains(&ERRORS_TOTAL), "{queried:?}");
        for name in queried {
            assert!(known.contains(&name), "{name} is not zero-initialised");
        }
    }

    /// The README's metric table and dead-letter list name every series,
    /// stage outcome and reason.
    #[test]
    fn the_readme_documents_every_name() {
        let readme = include_str!("../../README.md");
        let mut words = vec![
            MESSAGES_TOTAL,
            STAGE_DURATION,
            BATCH_ROWS,
            WRITE_DURATION,
            CACHE_LOOKUPS_TOTAL,
            CACHE_ENTRIES,
            INFLIGHT_MESSAGES,
            ACKS_TOTAL,
            DEAD_LETTERS_TOTAL,
            FRESHNESS_LAG,
            ROWS_WRITTEN_TOTAL,
            ERRORS_TOTAL,
            UP,
            BUILD_INFO,
        ];
        for (stage, outcomes) in stage_outcomes() {
            words.push(stage);
            words.extend(outcomes);
        }
        words.extend(Reason::ALL.iter().map(|r| r.as_str()));
        words.extend(ERRORS.iter().map(|(_, kind)| *kind));
        for word in words {
            assert!(
                readme.contains(&format!("`{word}`")),
                "README lacks `{word}`"
            );
        }
    }
}
