//! Every counter series the ingest pipeline emits, collected from the stages
//! that declare them (each stage's `series()`, beside the code that emits
//! them), for the ingester to hand to [`crate::telemetry::install_metrics`],
//! which registers them at 0.
//!
//! Built from the stages' typed outcome lists ([`Outcome::ALL`]),
//! [`Reason::ALL`](super::decode::Reason) and the shared label values of
//! [`crate::telemetry::names`], so it cannot drift from what the stages emit
//! (the tests below run the real stages and compare).

use crate::pipeline::Outcome;
use crate::telemetry::names::{self, label};
use crate::telemetry::series::Series;

/// `miniscan_messages_total{stage, outcome}` for every outcome of `O`.
pub(crate) fn messages<O: Outcome>(stage: &'static str) -> Vec<Series> {
    O::ALL
        .iter()
        .map(|o| {
            Series::counter(
                names::MESSAGES_TOTAL,
                &[(label::STAGE, stage), (label::OUTCOME, o.as_str())],
            )
        })
        .collect()
}

/// `miniscan_errors_total{stage, kind}` for each of `kinds`.
pub(crate) fn errors(stage: &'static str, kinds: &[&'static str]) -> Vec<Series> {
    kinds
        .iter()
        .map(|&kind| {
            Series::counter(
                names::ERRORS_TOTAL,
                &[(label::STAGE, stage), (label::KIND, kind)],
            )
        })
        .collect()
}

/// Every counter series the stages emit, with every known label value, in
/// pipeline order.
pub fn all() -> Vec<Series> {
    [
        super::source::series(),
        super::decode::series(),
        super::dedup::series(),
        super::batch::series(),
        super::write::series(),
        super::ack::series(),
    ]
    .concat()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::Metrics;
    use crate::stages::decode::Reason;
    use crate::stages::dedup::CommittedOrders;
    use crate::stages::write::Written;
    use crate::telemetry::series::zero_init;
    use metrics_exporter_prometheus::PrometheusBuilder;
    use names::{
        ACKS_TOTAL, BATCH_ROWS, BUILD_INFO, CACHE_ENTRIES, CACHE_LOOKUPS_TOTAL, DEAD_LETTERS_TOTAL,
        ERRORS, ERRORS_TOTAL, FRESHNESS_LAG, INFLIGHT_MESSAGES, MESSAGES_TOTAL, ROWS_WRITTEN_TOTAL,
        STAGE_DURATION, UP, WRITE_DURATION, stage,
    };

    fn rendered_after_zero_init() -> String {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || zero_init(&all()));
        handle.render()
    }

    fn line(s: &Series) -> String {
        format!("{} 0", s.key())
    }

    /// The series, spelled out: the dashboard, the alerts and the tests
    /// query these very strings, so a change here must be deliberate.
    #[test]
    fn the_series_are_exactly_these() {
        let mut got: Vec<String> = all().iter().map(Series::key).collect();
        got.sort();
        let mut want: Vec<String> = [
            r#"miniscan_messages_total{stage="source",outcome="received"}"#,
            r#"miniscan_messages_total{stage="decode",outcome="ok"}"#,
            r#"miniscan_messages_total{stage="decode",outcome="dead_letter"}"#,
            r#"miniscan_messages_total{stage="dedup",outcome="pass"}"#,
            r#"miniscan_messages_total{stage="dedup",outcome="stale"}"#,
            r#"miniscan_messages_total{stage="batch",outcome="out"}"#,
            r#"miniscan_messages_total{stage="write",outcome="stored"}"#,
            r#"miniscan_messages_total{stage="write",outcome="superseded"}"#,
            r#"miniscan_messages_total{stage="write",outcome="stale"}"#,
            r#"miniscan_messages_total{stage="write",outcome="dead_letter"}"#,
            r#"miniscan_messages_total{stage="write",outcome="nack"}"#,
            r#"miniscan_messages_total{stage="ack",outcome="ack"}"#,
            r#"miniscan_messages_total{stage="ack",outcome="nack"}"#,
            r#"miniscan_errors_total{stage="source",kind="stream"}"#,
            r#"miniscan_errors_total{stage="write",kind="transient"}"#,
            r#"miniscan_errors_total{stage="write",kind="rejected"}"#,
            r#"miniscan_acks_total{kind="ack"}"#,
            r#"miniscan_acks_total{kind="nack"}"#,
            r#"miniscan_dead_letters_total{reason="invalid_json"}"#,
            r#"miniscan_dead_letters_total{reason="missing_field"}"#,
            r#"miniscan_dead_letters_total{reason="invalid_field_type"}"#,
            r#"miniscan_dead_letters_total{reason="invalid_ip"}"#,
            r#"miniscan_dead_letters_total{reason="port_out_of_range"}"#,
            r#"miniscan_dead_letters_total{reason="empty_service"}"#,
            r#"miniscan_dead_letters_total{reason="timestamp_out_of_range"}"#,
            r#"miniscan_dead_letters_total{reason="unknown_data_version"}"#,
            r#"miniscan_dead_letters_total{reason="missing_response"}"#,
            r#"miniscan_dead_letters_total{reason="invalid_base64"}"#,
            r#"miniscan_dead_letters_total{reason="rejected_by_database"}"#,
            r#"miniscan_cache_lookups_total{result="hit"}"#,
            r#"miniscan_cache_lookups_total{result="miss"}"#,
            "miniscan_rows_written_total",
        ]
        .map(str::to_owned)
        .to_vec();
        want.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn every_known_series_is_rendered_at_zero() {
        let text = rendered_after_zero_init();
        for s in all() {
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

    /// [`names::ERRORS`] (which tests and docs read) lists exactly the error
    /// series the stages declare.
    #[test]
    fn the_error_pairs_are_the_declared_ones() {
        let declared: Vec<(&str, &str)> = all()
            .into_iter()
            .filter(|s| s.name == ERRORS_TOTAL)
            .map(|s| (s.labels[0].1, s.labels[1].1))
            .collect();
        assert_eq!(declared, ERRORS);
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
    fn run_pipeline(data: &[&'static [u8]], orders: CommittedOrders) -> String {
        use crate::pipeline::{BatchPipelineExt, Envelope, PipelineExt, SettleExt};
        use crate::stages::{Received, decode::Decode, dedup::Dedup};
        use std::future::IntoFuture;
        let received: Vec<_> = data
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
        let m = Metrics;
        let summary = metrics::with_local_recorder(&recorder, || {
            runtime.block_on(
                futures::stream::iter(received)
                    .source(stage::SOURCE, m)
                    .transform(Decode, m)
                    .transform(Dedup::new(orders), m)
                    .batch(stage::BATCH, 10, std::time::Duration::from_secs(1), m)
                    .write(NullSink, 1, m)
                    .ack(stage::ACK, m)
                    .into_future(),
            )
        });
        assert_eq!(summary.acked, data.len() as u64);
        recorder.handle().render()
    }

    /// Every counter series a pipeline of the real stages emits is one of
    /// [`all`], so none of them starts missing.
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

        let known: Vec<String> = all().iter().map(Series::key).collect();
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
        let known: Vec<&str> = all().iter().map(|s| s.name).collect();
        let queried: Vec<&str> = dashboard
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("miniscan_") && w.ends_with("_total"))
            .collect();
        assert!(queried.contains(&ERRORS_TOTAL), "{queried:?}");
        for name in queried {
            assert!(known.contains(&name), "{name} is not zero-initialised");
        }
    }

    /// The observability page's metric table names every series, stage
    /// outcome and reason.
    #[test]
    fn the_docs_document_every_name() {
        let readme = include_str!("../../docs/observability.md");
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
        for s in all().iter().filter(|s| s.name == MESSAGES_TOTAL) {
            words.extend(s.labels.iter().map(|&(_, v)| v));
        }
        words.extend(Reason::ALL.iter().map(|r| r.as_str()));
        words.extend(ERRORS.iter().map(|(_, kind)| *kind));
        for word in words {
            assert!(
                readme.contains(&format!("`{word}`")),
                "docs/observability.md lacks `{word}`"
            );
        }
    }
}
