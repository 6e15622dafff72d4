//! The retry policy: what is permanent, how long to wait, when to give up.
//!
//! * A failure that is the data's fault (SQLSTATE classes 22, 23, 54, see
//!   [`is_data_sqlstate`]) is not retried: the rows are handed back to be
//!   isolated (bisected, see [`super::commit`]).
//! * Any other failure (no answer at all, or any other SQLSTATE: a lost
//!   connection, a server restarting, a deadlock, a missing table or
//!   permission) is transient: retried with capped exponential backoff,
//!   forever, so the pipeline pauses rather than turning good messages into
//!   dead letters.
//! * Once shutdown is aborted ([`Shutdown::is_aborted`]), a transient failure
//!   gives up: the caller nacks the rows. An abort also cuts a wait short, so
//!   the rows get one last attempt.
//!
//! Health: the database is down (`/readyz`) after a transient failure and up
//! again after any answer, success or rejection.
//!
//! The policy keeps no metrics: it tells its owner of every failed attempt,
//! with the step it took ([`Retry::on_failure`]), and the owner counts.

use super::commit::StoreFault;
use crate::error::Chain;
use crate::pipeline::{Backoff, Shutdown};
use crate::telemetry::Health;
use std::future::Future;
use std::time::Duration;
use tokio_postgres::error::SqlState;
use tracing::Instrument as _;

/// SQLSTATE classes that blame the data: 22 data exception (a value the type
/// rejects), 23 integrity constraint violation (a CHECK), 54 program limit
/// exceeded (a value too large to index or store). Retrying the same rows
/// cannot succeed, so they are isolated and dead-lettered.
pub(super) fn is_data_sqlstate(code: &SqlState) -> bool {
    matches!(code.code().get(..2), Some("22" | "23" | "54"))
}

/// What to do after a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The data is at fault: stop, and let the caller isolate the rows.
    Reject,
    /// Transient: wait, then try again.
    Retry,
    /// Transient, but shutdown has been aborted: stop, and nack.
    GiveUp,
}

/// The policy's pure core: the next step after a failure with `code` (`None`:
/// no answer), with shutdown `aborted` or not.
pub(super) fn step(code: Option<&SqlState>, aborted: bool) -> Step {
    match code {
        Some(code) if is_data_sqlstate(code) => Step::Reject,
        _ if aborted => Step::GiveUp,
        _ => Step::Retry,
    }
}

/// Why rows could not be committed.
#[derive(Debug)]
pub(super) enum Failure<E> {
    /// The database rejected them for their data (permanent).
    Rejected(E),
    /// Shutdown was aborted while the database kept failing.
    GaveUp,
}

/// Retries attempts as the policy says, keeping the database's health.
#[derive(Clone, Debug)]
pub struct Retry {
    initial: Duration,
    max: Duration,
    health: Health,
    shutdown: Shutdown,
    on_failure: fn(Step),
}

impl Retry {
    /// Waits start at `initial` and double up to `max`; `health` says whether
    /// the database answers; once `shutdown` is aborted, transient failures
    /// give up.
    pub fn new(initial: Duration, max: Duration, health: Health, shutdown: Shutdown) -> Self {
        Self {
            initial,
            max,
            health,
            shutdown,
            on_failure: |_| {},
        }
    }

    /// Tells `observe` of every failed attempt, with the step taken after it.
    pub fn on_failure(self, observe: fn(Step)) -> Self {
        Self {
            on_failure: observe,
            ..self
        }
    }

    /// Runs `attempt` until it succeeds, is rejected, or is given up; `rows`
    /// is for the log.
    pub(super) async fn run<T, E, F, Fut>(
        &self,
        rows: usize,
        mut attempt: F,
    ) -> Result<T, Failure<E>>
    where
        E: StoreFault,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut backoff = Backoff::new(self.initial, self.max);
        let mut number = 0u32;
        loop {
            number += 1;
            let span = attempt_span(number, rows);
            let e = match attempt().instrument(span.clone()).await {
                Ok(done) => {
                    span.record("outcome", "committed");
                    self.health.set_database(true);
                    return Ok(done);
                }
                Err(e) => e,
            };
            let step = step(e.sqlstate(), self.shutdown.is_aborted());
            failed(&span, step, e.sqlstate());
            (self.on_failure)(step);
            self.health.set_database(step == Step::Reject);
            match step {
                Step::Reject => return Err(Failure::Rejected(e)),
                Step::GiveUp => {
                    tracing::error!(error = %Chain(&e), rows,
                        "giving up on a batch at shutdown; it will be delivered again");
                    return Err(Failure::GaveUp);
                }
                Step::Retry => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %Chain(&e), retry_in_ms = delay.as_millis() as u64,
                        "database unavailable; pausing the pipeline");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.shutdown.aborted() => {}
                    }
                }
            }
        }
    }
}

/// With tracing on, the span of one commit attempt (a child of the batch's
/// `write` span); with it off, none.
fn attempt_span(attempt: u32, rows: usize) -> tracing::Span {
    if !crate::traces::enabled() {
        return tracing::Span::none();
    }
    tracing::info_span!(
        "commit",
        attempt,
        rows,
        outcome = tracing::field::Empty,
        sqlstate = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    )
}

/// Records a failed attempt on its span: what follows, and the SQLSTATE.
fn failed(span: &tracing::Span, step: Step, code: Option<&SqlState>) {
    if span.is_none() {
        return;
    }
    let outcome = match step {
        Step::Reject => "rejected",
        Step::GiveUp => "gave_up",
        Step::Retry => "retry",
    };
    span.record("outcome", outcome);
    span.record("otel.status_code", "ERROR");
    if let Some(code) = code {
        span.record("sqlstate", code.code());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::commit::Injected;
    use proptest::prelude::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::time::Instant;

    /// Runs `retry` over attempts (counted from 0) that fail as `fault` says;
    /// returns the result (the number of the attempt that succeeded), the
    /// number of attempts and the time it took.
    async fn run(
        retry: &Retry,
        fault: impl Fn(usize) -> Option<Injected>,
    ) -> (Result<usize, Failure<Injected>>, usize, Duration) {
        let attempts = AtomicUsize::new(0);
        let (counter, fault) = (&attempts, &fault);
        let started = Instant::now();
        let result = retry
            .run(1, move || async move {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                fault(n).map_or(Ok(n), Err)
            })
            .await;
        (result, attempts.into_inner(), started.elapsed())
    }

    /// Waits from 100 ms up to `max`.
    fn policy(max: Duration, health: &Health, shutdown: &Shutdown) -> Retry {
        Retry::new(
            Duration::from_millis(100),
            max,
            health.clone(),
            shutdown.clone(),
        )
    }

    #[test]
    fn only_data_errors_are_permanent() {
        assert!(is_data_sqlstate(&SqlState::INVALID_TEXT_REPRESENTATION));
        assert!(is_data_sqlstate(&SqlState::CHECK_VIOLATION));
        assert!(is_data_sqlstate(&SqlState::PROGRAM_LIMIT_EXCEEDED));
        assert!(!is_data_sqlstate(&SqlState::T_R_DEADLOCK_DETECTED));
        assert!(!is_data_sqlstate(&SqlState::ADMIN_SHUTDOWN));
        assert!(!is_data_sqlstate(&SqlState::UNDEFINED_TABLE));
        assert!(!is_data_sqlstate(&SqlState::CONNECTION_FAILURE));
    }

    /// Real SQLSTATEs from PostgreSQL's manual (Appendix A, "PostgreSQL
    /// Error Codes"), each with what the policy is meant to do with it,
    /// written out here rather than derived from the code's list of classes,
    /// so that a mistake in that list shows.
    const CASES: &[(&str, &str, Class)] = &[
        // The data's fault: retrying the same rows cannot succeed.
        ("22000", "data_exception", Class::Data),
        ("22001", "string_data_right_truncation", Class::Data),
        ("22003", "numeric_value_out_of_range", Class::Data),
        ("22007", "invalid_datetime_format", Class::Data),
        ("22008", "datetime_field_overflow", Class::Data),
        ("22021", "character_not_in_repertoire", Class::Data),
        ("22P02", "invalid_text_representation", Class::Data),
        ("22P04", "bad_copy_file_format", Class::Data),
        ("22P05", "untranslatable_character", Class::Data),
        ("23000", "integrity_constraint_violation", Class::Data),
        ("23502", "not_null_violation", Class::Data),
        ("23503", "foreign_key_violation", Class::Data),
        ("23505", "unique_violation", Class::Data),
        ("23514", "check_violation", Class::Data),
        ("23P01", "exclusion_violation", Class::Data),
        ("54000", "program_limit_exceeded", Class::Data),
        ("54001", "statement_too_complex", Class::Data),
        ("54011", "too_many_columns", Class::Data),
        // Not the data's: retried, so the pipeline pauses instead of
        // dead-lettering good messages.
        ("08000", "connection_exception", Class::Transient),
        ("08003", "connection_does_not_exist", Class::Transient),
        ("08006", "connection_failure", Class::Transient),
        (
            "08001",
            "sqlclient_unable_to_establish_sqlconnection",
            Class::Transient,
        ),
        ("08P01", "protocol_violation", Class::Transient),
        ("25P02", "in_failed_sql_transaction", Class::Transient),
        ("40000", "transaction_rollback", Class::Transient),
        ("40001", "serialization_failure", Class::Transient),
        ("40P01", "deadlock_detected", Class::Transient),
        ("53000", "insufficient_resources", Class::Transient),
        ("53100", "disk_full", Class::Transient),
        ("53200", "out_of_memory", Class::Transient),
        ("53300", "too_many_connections", Class::Transient),
        ("55P03", "lock_not_available", Class::Transient),
        ("57014", "query_canceled", Class::Transient),
        ("57P01", "admin_shutdown", Class::Transient),
        ("57P02", "crash_shutdown", Class::Transient),
        ("57P03", "cannot_connect_now", Class::Transient),
        ("58030", "io_error", Class::Transient),
        // A missing table, column or privilege is fixed by a migration or a
        // grant, not by the data: retried (the policy's documented choice).
        ("42P01", "undefined_table", Class::Transient),
        ("42703", "undefined_column", Class::Transient),
        ("42501", "insufficient_privilege", Class::Transient),
        ("3D000", "invalid_catalog_name", Class::Transient),
        ("28P01", "invalid_password", Class::Transient),
        ("XX000", "internal_error", Class::Transient),
    ];

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Class {
        Data,
        Transient,
    }

    #[test]
    fn real_sqlstates_are_classified_as_the_policy_says() {
        for &(code, name, class) in CASES {
            let state = SqlState::from_code(code);
            let want = |aborted| match (class, aborted) {
                (Class::Data, _) => Step::Reject,
                (Class::Transient, false) => Step::Retry,
                (Class::Transient, true) => Step::GiveUp,
            };
            assert_eq!(
                is_data_sqlstate(&state),
                class == Class::Data,
                "{code} {name}"
            );
            for aborted in [false, true] {
                assert_eq!(step(Some(&state), aborted), want(aborted), "{code} {name}");
            }
        }
        // No answer at all (no connection, I/O error): transient.
        assert_eq!(step(None, false), Step::Retry);
        assert_eq!(step(None, true), Step::GiveUp);
    }

    proptest! {
        /// Whatever the code: the step is decided by its class (the first two
        /// characters) alone, and an abort turns a retry into giving up and
        /// leaves a rejection as it is.
        #[test]
        fn the_step_follows_the_sqlstate_class_then_shutdown(
            code in "[0-9A-Z]{5}",
            rest in "[0-9A-Z]{3}",
        ) {
            let state = SqlState::from_code(&code);
            let same_class = SqlState::from_code(&format!("{}{rest}", &code[..2]));
            for aborted in [false, true] {
                prop_assert_eq!(step(Some(&state), aborted), step(Some(&same_class), aborted));
            }
            match step(Some(&state), false) {
                Step::Reject => prop_assert_eq!(step(Some(&state), true), Step::Reject),
                Step::Retry => prop_assert_eq!(step(Some(&state), true), Step::GiveUp),
                Step::GiveUp => prop_assert!(false, "gave up without an abort: {}", code),
            }
        }

        /// `k` transient failures then success: `k + 1` attempts, the
        /// database up again, and waits within the backoff's bounds (each
        /// between half its cap and its cap; caps double from 100 ms to 1 s).
        #[test]
        fn transient_failures_are_retried_with_capped_backoff(k in 0usize..12) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()?;
            let health = Health::new();
            let retry = policy(Duration::from_secs(1), &health, &Shutdown::new());
            let (result, attempts, waited) =
                rt.block_on(run(&retry, |n| (n < k).then(Injected::connection_lost)));
            prop_assert!(matches!(result, Ok(n) if n == k));
            prop_assert_eq!(attempts, k + 1);
            prop_assert!(health.down().is_empty());
            let caps: Duration = (0..k)
                .map(|i| Duration::from_millis(100 << i.min(4)).min(Duration::from_secs(1)))
                .sum();
            prop_assert!(waited >= caps / 2 && waited <= caps, "{waited:?} for caps {caps:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_data_error_is_not_retried_and_the_database_counts_as_up() {
        let health = Health::new();
        health.set_database(false);
        let retry = policy(Duration::from_secs(1), &health, &Shutdown::new());
        let (result, attempts, _) = run(&retry, |_| Some(Injected::too_large())).await;
        assert!(matches!(result, Err(Failure::Rejected(_))));
        assert_eq!(attempts, 1);
        assert!(health.down().is_empty());
    }

    /// An outage outlasting the grace period: retried until shutdown is
    /// aborted (which cuts the wait short), then one last attempt, then given
    /// up, with the database reported down.
    #[tokio::test(start_paused = true)]
    async fn an_outage_is_retried_until_shutdown_is_aborted() {
        let (health, shutdown) = (Health::new(), Shutdown::new());
        let retry = policy(Duration::from_secs(60), &health, &shutdown);
        shutdown.trigger(Duration::from_secs(10));
        let (result, attempts, took) = run(&retry, |_| Some(Injected::connection_lost())).await;
        assert!(matches!(result, Err(Failure::GaveUp)));
        assert_eq!(took, Duration::from_secs(10));
        // Waits of 50..100, 100..200, 200..400 ms and so on: six to seven
        // end within 10 s, then one more attempt once the abort cuts a wait.
        assert!((8..=9).contains(&attempts), "{attempts} attempts");
        assert_eq!(health.down(), ["database"]);
    }
}
