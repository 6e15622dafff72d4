//! Migrations that run once, on a real PostgreSQL: concurrent `migrate`s serialise and all exit 0,
//! a non-idempotent migration is applied exactly once however often and however concurrently
//! `migrate` runs, a changed migration is refused by name, a failed one leaves nothing behind,
//! and a database made by the old runner (`schema_migrations`) upgrades with no manual step.

use std::time::Duration;

use crate::common::{TestDb, binary_command};
use mini_scan::db::{self, MigrateError, Migration};

/// A migration that fails if applied twice.
const ADD_COLUMN: &str = "ALTER TABLE scan_results ADD COLUMN probe integer";

fn with_extra(extra: &[(&str, &str)]) -> Vec<Migration> {
    let mut all = db::migrations();
    all.extend(extra.iter().map(|(name, sql)| Migration::new(*name, *sql)));
    all
}

fn cfg(db: &TestDb) -> db::Config {
    db::config(&db.url).expect("the test database URL parses")
}

/// `(version, name)` of every recorded migration, in order.
async fn history(db: &TestDb) -> Vec<(i32, String)> {
    db.client()
        .await
        .query(
            "SELECT version, name FROM refinery_schema_history ORDER BY version",
            &[],
        )
        .await
        .expect("read the migration history")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

async fn run_migrate(db: &TestDb) -> std::process::Output {
    let mut cmd = binary_command();
    cmd.arg("migrate")
        .env("DATABASE_URL", &db.url)
        .env("RUST_LOG", "off")
        .stdin(std::process::Stdio::null());
    tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("mini-scan migrate did not finish within 60 s")
        .expect("run mini-scan migrate")
}

/// Four replicas starting together: all exit 0 and the schema is recorded once.
#[tokio::test]
async fn four_concurrent_migrates_all_exit_0() {
    let db = TestDb::create_on_shared().await;
    let runs = futures::future::join_all((0..4).map(|_| run_migrate(&db))).await;
    for out in &runs {
        assert!(
            out.status.success(),
            "a concurrent migrate failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(history(&db).await, [(1, "schema".to_owned())]);
}

/// A non-idempotent migration is applied once over three runs, and once when four run at once.
#[tokio::test]
async fn a_non_idempotent_migration_is_applied_once() {
    let db = TestDb::create_on_shared().await;
    let all = with_extra(&[("V1000__test_add_column", ADD_COLUMN)]);
    let mut applied = Vec::new();
    for _ in 0..3 {
        applied.push(db::migrate_with(&cfg(&db), &all, None).await.unwrap());
    }
    assert_eq!(applied[0], ["V1__schema", "V1000__test_add_column"]);
    assert!(
        applied[1].is_empty() && applied[2].is_empty(),
        "{applied:?}"
    );
    let client = db.client().await;
    client
        .batch_execute("SELECT probe FROM scan_results")
        .await
        .unwrap();

    let fresh = TestDb::create_on_shared().await;
    let config = cfg(&fresh);
    let runs =
        futures::future::join_all((0..4).map(|_| db::migrate_with(&config, &all, None))).await;
    let applied: Vec<Vec<String>> = runs.into_iter().map(Result::unwrap).collect();
    assert_eq!(
        applied.iter().filter(|a| !a.is_empty()).count(),
        1,
        "{applied:?}"
    );
    assert_eq!(history(&fresh).await.len(), 2);
}

/// An applied migration whose SQL changed stops `migrate` with one line naming it, both through
/// the library and the binary.
#[tokio::test]
async fn a_changed_migration_is_refused_by_name() {
    let db = TestDb::create_on_shared().await;
    let before = with_extra(&[("V2__test_add_column", ADD_COLUMN)]);
    db::migrate_with(&cfg(&db), &before, None).await.unwrap();
    let changed = with_extra(&[(
        "V2__test_add_column",
        "ALTER TABLE scan_results ADD COLUMN other int",
    )]);
    let err = db::migrate_with(&cfg(&db), &changed, None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, MigrateError::Changed(name) if name == "V2__test_add_column"),
        "{err:?}"
    );
    // Nothing of the changed version ran.
    let client = db.client().await;
    assert!(
        client
            .batch_execute("SELECT other FROM scan_results")
            .await
            .is_err()
    );

    // The binary's own V1, "changed" by altering its recorded checksum.
    let db = TestDb::create_on_shared().await;
    assert!(run_migrate(&db).await.status.success());
    db.client()
        .await
        .batch_execute("UPDATE refinery_schema_history SET checksum = '42' WHERE version = 1")
        .await
        .unwrap();
    let out = run_migrate(&db).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("migration V1__schema has changed"),
        "{stderr}"
    );
}

/// A migration that fails is rolled back whole, is not recorded, and names itself.
#[tokio::test]
async fn a_failing_migration_leaves_nothing_behind() {
    let db = TestDb::create_on_shared().await;
    let broken = with_extra(&[(
        "V2__test_broken",
        "CREATE TABLE half_done (x int); SELECT 1/0;",
    )]);
    let err = db::migrate_with(&cfg(&db), &broken, None)
        .await
        .unwrap_err();
    let line = mini_scan::error::Chain(&err).to_string();
    assert!(
        line.contains("V2__test_broken") && line.contains("division by zero"),
        "{line}"
    );
    let client = db.client().await;
    assert!(
        client
            .batch_execute("SELECT * FROM half_done")
            .await
            .is_err(),
        "half applied"
    );
    // V1 committed in its own transaction before V2 failed.
    assert_eq!(history(&db).await, [(1, "schema".to_owned())]);
}

/// A database made by the old runner, which recorded versions in `schema_migrations` and re-ran
/// every file, upgrades by running `migrate`: its data stays, and V1 is recorded once.
#[tokio::test]
async fn an_old_schema_migrations_database_upgrades() {
    let db = TestDb::create_on_shared().await;
    let client = db.client().await;
    // Exactly what the old `db::migrate` did.
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version text PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now()
             );",
        )
        .await
        .unwrap();
    client.batch_execute(db::MIGRATIONS[0].1).await.unwrap();
    client
        .batch_execute(
            "INSERT INTO schema_migrations (version) VALUES ('0001_schema');
             INSERT INTO scan_results (ip, port, service, last_scanned, response, published_at, message_id)
             VALUES ('1.1.1.1', 80, 'HTTP', now(), 'kept', now(), 'm1');",
        )
        .await
        .unwrap();
    for _ in 0..2 {
        let out = run_migrate(&db).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(history(&db).await, [(1, "schema".to_owned())]);
    assert_eq!(db.count_rows().await, 1, "the upgrade lost data");
}
