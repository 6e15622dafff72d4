//! mini-scan: keeps the newest observation of every scanned service, from
//! Google Cloud Pub/Sub, in PostgreSQL.
//!
//! # Layout
//!
//! * [`pipeline`]: the generic stage machinery (envelopes carrying ack handles,
//!   combinators, instrumentation, shutdown). Knows nothing about scans.
//! * [`stages`]: the concrete stages, one module each: source, decode, dedup,
//!   batch, write, ack.
//! * [`store`]: the newest-wins upsert into PostgreSQL (layout, SQL,
//!   retries, isolation of rejected rows, verdicts), shared by the write
//!   stage and `dead-letters replay`.
//! * [`config`]: the command line (every setting is a flag with an env var)
//!   and [`config::IngestConfig`], the validated settings of the ingester.
//! * [`ingester`]: the ingester, built from an `IngestConfig` then run until a
//!   shutdown; it owns and stops its background tasks.
//! * [`dead_letters`]: `mini-scan dead-letters stats | replay | purge`.
//! * [`db`]: connecting (libpq's TLS parameters), the pool, migrations and
//!   the ingest role's grants.
//! * [`logging`]: log lines as text or JSON (`--log-format`).
//! * [`error`]: formatting error chains on one line.
//! * [`pubsub`]: building Pub/Sub clients (emulator aware) and resource names.
//! * [`telemetry`]: logs, the metrics registry, and the `/metrics`, `/healthz`
//!   and `/readyz` endpoints.
//! * [`app`]: the subcommands (`migrate`, `ingest`, `scan`, `setup`,
//!   `dead-letters`) wired up;
//!   `ingest` adds signal handling to the [`ingester`].
//! * [`scan`]: the synthetic scanner and load generator.

#![warn(missing_docs, unreachable_pub)]

pub mod app;
pub mod config;
pub mod db;
pub mod dead_letters;
pub mod error;
pub mod ingester;
pub mod logging;
pub mod pipeline;
pub mod pubsub;
pub mod scan;
pub mod stages;
pub mod store;
pub mod telemetry;
pub mod traces;

/// jemalloc instead of the system allocator, for every binary, test and bench
/// linking this crate (so the e2e bench's null consumer, which runs in the
/// bench process, allocates as the ingester does). Per message the ingester
/// allocates and frees a few dozen blocks of very different sizes (pull
/// responses, decoded rows, batches, COPY buffers, `RETURNING` rows); glibc's
/// malloc spent ~10% of its sampled CPU on them, much of it consolidating
/// free lists (`malloc_consolidate`, `unlink_chunk`). docs/BENCHMARKS.md
/// section 10 has the before/after.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
