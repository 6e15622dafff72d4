//! The integration tests: one test binary, a module per area, and the harness as plain modules.
//!
//! One binary links the crate once and runs the harness's own unit tests once (matklad's "Delete
//! Cargo Integration Tests"); `Cargo.toml` sets `autotests = false` so that no other file under
//! `tests/` becomes a binary by accident. Run one area with a filter on the module path, e.g.
//! `cargo test --test it -- faults::`; list everything with `cargo test --test it -- --list`.
//!
//! # Layout
//!
//! - [`common`]: the harness. [`common::TestContext`] gives a test its own database on the
//!   PostgreSQL server the whole binary shares and its own topic and subscription on its area's
//!   emulator (see [`common::pubsub`] for why each area gets its own); the real `mini-scan` binary
//!   as a child process.
//! - [`provision`]: starting throwaway PostgreSQL clusters, emulators and pgbouncer; shared with
//!   `benches/support` (which includes it with `#[path]`).
//! - [`stack`]: reading the compose stack's, Prometheus's and Kubernetes's files, and `--help`.
//! - One module per area, each a file beside this one: what the area's tests run and assert is
//!   in its `//!` doc.
//!
//! A new area is a file `tests/it/<area>.rs` (with `use crate::common::...;` where an old-style
//! test had `mod common;`) and one `mod <area>;` line below. Areas that start PostgreSQL also go
//! into the PostgreSQL 18 filter list in `.ci/run`.

mod common;
mod provision;
mod stack;

mod compose;
mod credentials;
mod dead_letters;
mod faults;
mod ingest;
mod ingester;
mod kubernetes;
mod migrations;
mod observability;
mod pooler;
mod postgres_tls;
mod traces;
