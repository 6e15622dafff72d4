//! Every metric name, label key and shared label value the service exports,
//! defined once.
//!
//! Emitters use the metric names and label keys below, or the handles that
//! spell them ([`messages`], [`errors`], ...), so a series is spelled the same
//! way wherever it is touched. Shared label values come from here too: the
//! constants of [`stage`], [`outcome`], [`error_kind`], [`cache`],
//! [`reference`](mod@reference) and [`component`]. Some label values are
//! owned by the enums they label, because they are data as well as labels or
//! belong to the generic pipeline: decode's `Reason` (stored in
//! `dead_letters.reason`), and the pipeline's own outcomes (`received`,
//! `out`, and the settlements `ack` and `nack`).
//!
//! This module knows no stage and no pipeline type: strings only. Which
//! series exist with which label values, for zero-initialisation, each stage
//! declares itself (`stages::series`).

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

/// Messages through each stage: `{stage, outcome}`.
pub const MESSAGES_TOTAL: &str = "miniscan_messages_total";
/// Time a stage spends on its work: per message for per-item stages (the
/// mean over a flushed burst), per batch for batch stages: `{stage}`.
pub const STAGE_DURATION: &str = "miniscan_stage_duration_seconds";
/// Messages per batch handed to the write stage (histogram).
pub const BATCH_ROWS: &str = "miniscan_batch_rows";
/// One write transaction: COPY, upsert, dead letters, commit (histogram).
pub const WRITE_DURATION: &str = "miniscan_write_duration_seconds";
/// Dedup cache lookups: `{result}`.
pub const CACHE_LOOKUPS_TOTAL: &str = "miniscan_cache_lookups_total";
/// Keys held by the dedup cache (gauge).
pub const CACHE_ENTRIES: &str = "miniscan_cache_entries";
/// Messages received and not yet settled (gauge).
pub const INFLIGHT_MESSAGES: &str = "miniscan_inflight_messages";
/// Messages settled with the broker: `{kind}` = a settlement (`ack`, `nack`).
pub const ACKS_TOTAL: &str = "miniscan_acks_total";
/// Dead letters committed: `{reason}` = a `stages::decode::Reason`'s `as_str`.
pub const DEAD_LETTERS_TOTAL: &str = "miniscan_dead_letters_total";
/// Commit time minus the scan's timestamp or its publish time: `{reference}`.
pub const FRESHNESS_LAG: &str = "miniscan_freshness_lag_seconds";
/// Rows of `scan_results` this replica inserted or updated.
pub const ROWS_WRITTEN_TOTAL: &str = "miniscan_rows_written_total";
/// Errors: `{stage, kind}`, the pairs in [`ERRORS`].
pub const ERRORS_TOTAL: &str = "miniscan_errors_total";
/// Whether a dependency is reachable (gauge): `{component}`.
pub const UP: &str = "miniscan_up";
/// Always 1 (gauge): `{version}`.
pub const BUILD_INFO: &str = "miniscan_build_info";
/// Dead letters one run of a one-shot `mini-scan dead-letters` command
/// handled (gauge: the last run's count, written to `--metrics-file`):
/// `{command, result}`, the pairs in [`DEAD_LETTER_RESULTS`].
pub const DEAD_LETTERS_LAST_RUN: &str = "miniscan_dead_letters_last_run_messages";
/// When that run finished, in Unix seconds (gauge): `{command}`.
pub const DEAD_LETTERS_LAST_RUN_TIMESTAMP: &str =
    "miniscan_dead_letters_last_run_timestamp_seconds";
/// How long that run took (gauge): `{command}`.
pub const DEAD_LETTERS_LAST_RUN_DURATION: &str = "miniscan_dead_letters_last_run_duration_seconds";

/// Label keys.
pub mod label {
    /// Which stage: a [`super::stage`] value.
    pub const STAGE: &str = "stage";
    /// What happened to a message at a stage: a [`super::outcome`] value.
    pub const OUTCOME: &str = "outcome";
    /// The kind of an error ([`super::error_kind`]) or of a settlement.
    pub const KIND: &str = "kind";
    /// Why a message is a dead letter.
    pub const REASON: &str = "reason";
    /// A cache lookup's result (a [`super::cache`] value), or what a
    /// dead-letters command did with a message (a [`super::dead_letter_result`]).
    pub const RESULT: &str = "result";
    /// What a lag is measured from: a [`super::reference`] value.
    pub const REFERENCE: &str = "reference";
    /// A dependency: a [`super::component`] value.
    pub const COMPONENT: &str = "component";
    /// The build's version.
    pub const VERSION: &str = "version";
    /// A one-shot command: a [`super::command`] value.
    pub const COMMAND: &str = "command";
}

/// `command` label values: the one-shot `mini-scan dead-letters` commands
/// that write metrics.
pub mod command {
    /// `dead-letters replay`.
    pub const REPLAY: &str = "replay";
    /// `dead-letters purge`.
    pub const PURGE: &str = "purge";
}

/// `result` label values of `miniscan_dead_letters_last_run_messages`.
pub mod dead_letter_result {
    /// replay: decodes now and is written newest-wins (stored, or superseded
    /// by a newer row); its dead letter is deleted.
    pub const REPLAYED: &str = "replayed";
    /// replay: still fails (decode or the database); kept, reason refreshed.
    pub const STILL_FAILING: &str = "still_failing";
    /// purge: deleted.
    pub const PURGED: &str = "purged";
}

/// Every `{command, result}` pair of `miniscan_dead_letters_last_run_messages`.
pub const DEAD_LETTER_RESULTS: &[(&str, &str)] = &[
    (command::REPLAY, dead_letter_result::REPLAYED),
    (command::REPLAY, dead_letter_result::STILL_FAILING),
    (command::PURGE, dead_letter_result::PURGED),
];

/// `stage` label values, in pipeline order.
pub mod stage {
    /// Pulls messages from Pub/Sub.
    pub const SOURCE: &str = "source";
    /// Parses and validates them.
    pub const DECODE: &str = "decode";
    /// Drops what is provably committed already.
    pub const DEDUP: &str = "dedup";
    /// Groups them for the write stage.
    pub const BATCH: &str = "batch";
    /// Commits them to PostgreSQL.
    pub const WRITE: &str = "write";
    /// Settles them with Pub/Sub.
    pub const ACK: &str = "ack";
}

/// `outcome` label values of the stages' own outcomes. Each stage's outcomes
/// are an enum implementing the pipeline's `Outcome`, whose `as_str` returns
/// one of these. (The pipeline's outcomes spell theirs: `received`, `out`,
/// `ack`, `nack`.)
pub mod outcome {
    /// decode: a valid scan.
    pub const OK: &str = "ok";
    /// decode: malformed; write: its dead letter is committed.
    pub const DEAD_LETTER: &str = "dead_letter";
    /// dedup: not provably stale, on to the write stage.
    pub const PASS: &str = "pass";
    /// dedup and write: not newer than what is committed.
    pub const STALE: &str = "stale";
    /// write: its row is committed.
    pub const STORED: &str = "stored";
    /// write: a newer observation of its key is committed.
    pub const SUPERSEDED: &str = "superseded";
    /// write: given up at shutdown, to be nacked; the same string as the
    /// pipeline's `Settlement::Nack` (the ack stage's outcome and a `kind` of
    /// `miniscan_acks_total`).
    pub const NACK: &str = "nack";
}

/// `kind` label values of `miniscan_errors_total`.
pub mod error_kind {
    /// source: a streaming pull failed and is reopened.
    pub const STREAM: &str = "stream";
    /// write: a transaction failed for a reason other than its data; retried.
    pub const TRANSIENT: &str = "transient";
    /// write: the database rejected the data; the rows at fault are isolated.
    pub const REJECTED: &str = "rejected";
}

/// Every `{stage, kind}` pair of `miniscan_errors_total`, as the stages
/// declare them (a test in `stages::series` checks).
pub const ERRORS: &[(&str, &str)] = &[
    (stage::SOURCE, error_kind::STREAM),
    (stage::WRITE, error_kind::TRANSIENT),
    (stage::WRITE, error_kind::REJECTED),
];

/// `result` label values of `miniscan_cache_lookups_total`.
pub mod cache {
    /// The cache knew the key.
    pub const HIT: &str = "hit";
    /// It did not.
    pub const MISS: &str = "miss";
}

/// `reference` label values of `miniscan_freshness_lag_seconds`.
pub mod reference {
    /// Measured from the scan's own timestamp.
    pub const SCAN: &str = "scan";
    /// Measured from the Pub/Sub publish time.
    pub const PUBLISH: &str = "publish";
}

/// `component` label values of `miniscan_up`.
pub mod component {
    /// PostgreSQL.
    pub const DATABASE: &str = "database";
    /// The Pub/Sub subscription.
    pub const SUBSCRIPTION: &str = "subscription";
}

/// `miniscan_messages_total{stage, outcome}`.
pub fn messages(stage: &'static str, outcome: &'static str) -> Counter {
    counter!(MESSAGES_TOTAL, label::STAGE => stage, label::OUTCOME => outcome)
}

/// `miniscan_stage_duration_seconds{stage}`.
pub fn stage_duration(stage: &'static str) -> Histogram {
    histogram!(STAGE_DURATION, label::STAGE => stage)
}

/// `miniscan_errors_total{stage, kind}`, one of [`ERRORS`].
pub fn errors(stage: &'static str, kind: &'static str) -> Counter {
    counter!(ERRORS_TOTAL, label::STAGE => stage, label::KIND => kind)
}

/// `miniscan_acks_total{kind}`, a settlement's string (`ack`, `nack`).
pub fn acks(kind: &'static str) -> Counter {
    counter!(ACKS_TOTAL, label::KIND => kind)
}

/// `miniscan_cache_lookups_total{result}`, a [`cache`] value.
pub fn cache_lookups(result: &'static str) -> Counter {
    counter!(CACHE_LOOKUPS_TOTAL, label::RESULT => result)
}

/// `miniscan_up{component}`, a [`component`] value.
pub fn up(component: &'static str) -> Gauge {
    gauge!(UP, label::COMPONENT => component)
}

/// `miniscan_inflight_messages`.
pub fn inflight_messages() -> Gauge {
    gauge!(INFLIGHT_MESSAGES)
}

/// `miniscan_batch_rows`.
pub fn batch_rows() -> Histogram {
    histogram!(BATCH_ROWS)
}

/// `miniscan_cache_entries`.
pub fn cache_entries() -> Gauge {
    gauge!(CACHE_ENTRIES)
}

/// `miniscan_build_info{version}`.
pub fn build_info(version: &'static str) -> Gauge {
    gauge!(BUILD_INFO, label::VERSION => version)
}

/// `miniscan_dead_letters_last_run_messages{command, result}`, one of
/// [`DEAD_LETTER_RESULTS`].
pub fn dead_letters_last_run(command: &'static str, result: &'static str) -> Gauge {
    gauge!(DEAD_LETTERS_LAST_RUN, label::COMMAND => command, label::RESULT => result)
}

/// `miniscan_dead_letters_last_run_timestamp_seconds{command}`.
pub fn dead_letters_last_run_timestamp(command: &'static str) -> Gauge {
    gauge!(DEAD_LETTERS_LAST_RUN_TIMESTAMP, label::COMMAND => command)
}

/// `miniscan_dead_letters_last_run_duration_seconds{command}`.
pub fn dead_letters_last_run_duration(command: &'static str) -> Gauge {
    gauge!(DEAD_LETTERS_LAST_RUN_DURATION, label::COMMAND => command)
}
