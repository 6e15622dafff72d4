//! The integration tests: one test binary, a module per area, and the harness as plain modules.
//!
//! One binary links the crate once and runs the harness's own unit tests once (matklad's "Delete
//! Cargo Integration Tests"). Cargo finds it by itself (`tests/<name>/main.rs`), so `Cargo.toml`
//! declares no `[[test]]`: a declared target's file must exist wherever the manifest is read, and
//! the Dockerfile's build copies no `tests/` (the `compose` area checks that). Any `tests/*.rs`
//! would become a binary of its own, so there is none. Run one area with a filter on the module
//! path, e.g. `cargo test --test it -- faults::`; list everything with
//! `cargo test --test it -- --list`.
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
//! A new area: `tests/it/<area>.rs` plus one `mod <area>;` line below; a file written the old way
//! (`tests/<area>.rs` with `mod common;`) moves there with `mod common;` deleted and `common::`
//! paths imported as `crate::common::`. An area that starts PostgreSQL also joins the PostgreSQL
//! 18 filters in `.ci/run`.

mod common;
mod provision;
mod stack;

mod alerts;
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
mod reopen;
mod traces;
