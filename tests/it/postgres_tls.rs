//! PostgreSQL over TLS, as production runs it: a cluster with `ssl=on`, a CA and certificates
//! made at test time, `hostssl` rules that reject plaintext, and the real binary. Every failure
//! mode is asserted by its one line; a distinctive password must appear nowhere; the ingest role
//! made by `migrate --grant-ingest-to` ingests over verify-full and can do nothing else.
//!
//! Longer than our usual 400 lines: every test here shares the same few helpers (the TLS
//! cluster, the URLs with the password, `migrate` and its one-line failures), and one binary
//! keeps CI from linking another.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use crate::common;
use crate::common::tls::{CERT_USER, HBA, Pki, enable_tls, port};
use crate::common::{DedicatedPostgres, TestContext, TestDb, binary_command, wait_until};
use mini_scan::telemetry::names;

/// The ingest role's password: distinctive, so that finding it in any output is a leak.
const PASSWORD: &str = "Xy9-pw-NEVER-printed-31337";

/// The ingest role the tests create.
const INGEST_ROLE: &str = "miniscan_ingest";

/// Runs `mini-scan migrate` with `DATABASE_URL=url` and `args`, logging at `log` level
/// (`RUST_LOG`); returns its output whatever the exit status.
async fn migrate(url: &str, args: &[&str], log: &str) -> Output {
    let mut cmd = binary_command();
    cmd.arg("migrate")
        .args(args)
        .env("DATABASE_URL", url)
        .env("RUST_LOG", log)
        .stdin(std::process::Stdio::null());
    tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("mini-scan migrate did not finish within 60 s")
        .expect("run mini-scan migrate")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `migrate` must fail with exactly one line (logging off) containing every one of `want`.
async fn assert_fails_with(url: &str, want: &[&str]) {
    let out = migrate(url, &[], "off").await;
    let all = text(&out);
    assert!(
        !out.status.success(),
        "migrate succeeded with {url}:\n{all}"
    );
    let lines: Vec<&str> = all.lines().collect();
    assert_eq!(lines.len(), 1, "not one line:\n{all}");
    for w in want {
        assert!(lines[0].contains(w), "{url}: `{}` lacks `{w}`", lines[0]);
    }
    assert!(!all.contains(PASSWORD), "the password leaked: {all}");
    assert!(!all.contains("panicked"), "{all}");
}

async fn assert_migrates(url: &str) {
    let out = migrate(url, &[], "info").await;
    assert!(
        out.status.success(),
        "migrate failed with {url}:\n{}",
        text(&out)
    );
}

/// A URL on `pg`'s database `db` as `user` (with the distinctive password unless `postgres`).
fn url(pg: &DedicatedPostgres, host: &str, user: &str, db: &str, params: &str) -> String {
    let auth = if user == "postgres" {
        user.to_owned()
    } else {
        format!("{user}:{PASSWORD}")
    };
    format!("postgres://{auth}@{host}:{}/{db}?{params}", port(pg))
}

fn root(path: &Path) -> String {
    format!("sslrootcert={}", path.display())
}

/// A TLS cluster with one database, the ingest role and the certificate user.
async fn tls_cluster(pki: &Pki) -> (DedicatedPostgres, TestDb) {
    let pg = DedicatedPostgres::start_new().await;
    let db = TestDb::create_on(pg.admin_url()).await;
    create_roles(&db).await;
    enable_tls(&pg, pki, HBA).await;
    (pg, db)
}

async fn create_roles(db: &TestDb) {
    db.client()
        .await
        .batch_execute(&format!(
            "CREATE ROLE {INGEST_ROLE} LOGIN PASSWORD '{PASSWORD}'; CREATE ROLE {CERT_USER} LOGIN;"
        ))
        .await
        .expect("create the test roles");
}

/// Each sslmode means what it means to libpq, against a server that rejects plaintext for
/// everyone but the harness's superuser.
#[tokio::test]
async fn sslmodes_connect_as_libpq_does() {
    let pki = Pki::new();
    let (pg, db) = tls_cluster(&pki).await;
    let ca = root(&pki.ca);
    let other = root(&pki.other_ca);
    let cases = [
        // verify-full by the name on the certificate: the schema owner migrates.
        ("localhost", format!("sslmode=verify-full&{ca}")),
        // verify-ca checks the chain, not the name: 127.0.0.1 is fine.
        ("127.0.0.1", format!("sslmode=verify-ca&{ca}")),
        // require without a root certificate encrypts without checking.
        ("127.0.0.1", "sslmode=require".to_owned()),
        // prefer falls back to plaintext when the handshake fails (the superuser may use
        // plaintext).
        ("localhost", format!("sslmode=prefer&{other}")),
    ];
    for (host, params) in &cases {
        assert_migrates(&url(&pg, host, "postgres", &db.name, params)).await;
    }
    // The key=value form means the same.
    let kv = format!(
        "host=localhost port={} user=postgres dbname={} sslmode=verify-full sslrootcert='{}'",
        port(&pg),
        db.name,
        pki.ca.display()
    );
    assert_migrates(&kv).await;
    // A client certificate logs in a user whose rule is `cert`.
    let with_cert = format!(
        "postgres://{CERT_USER}@localhost:{}/{}?sslmode=verify-full&{ca}&sslcert={}&sslkey={}",
        port(&pg),
        db.name,
        pki.client_cert.display(),
        pki.client_key.display()
    );
    let (client, _conn) = mini_scan::db::connect(&mini_scan::db::config(&with_cert).unwrap())
        .await
        .expect("log in with the client certificate");
    let who: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(who, CERT_USER);
    let without = with_cert.split("&sslcert").next().unwrap().to_owned();
    let err = mini_scan::db::connect(&mini_scan::db::config(&without).unwrap())
        .await
        .err();
    assert!(
        err.is_some(),
        "logged in as {CERT_USER} without a certificate"
    );
}

/// Every TLS failure stops `migrate` with one line naming sslmode and the cause, and never the
/// password.
#[tokio::test]
async fn tls_failures_are_one_line_naming_sslmode_and_the_cause() {
    let pki = Pki::new();
    let (pg, db) = tls_cluster(&pki).await;
    let u = |host: &str, params: &str| url(&pg, host, INGEST_ROLE, &db.name, params);
    let other = root(&pki.other_ca);
    assert_fails_with(
        &u("localhost", &format!("sslmode=verify-full&{other}")),
        &["sslmode=verify-full", "unknown CA", "other-ca.pem"],
    )
    .await;
    // libpq: require with a root certificate verifies the chain.
    assert_fails_with(
        &u("localhost", &format!("sslmode=require&{other}")),
        &["sslmode=require", "unknown CA"],
    )
    .await;
    assert_fails_with(
        &u(
            "127.0.0.1",
            &format!("sslmode=verify-full&{}", root(&pki.ca)),
        ),
        &["sslmode=verify-full", "host name mismatch", "\"127.0.0.1\""],
    )
    .await;
    let missing = pki.ca.with_file_name("missing-ca.pem");
    assert_fails_with(
        &u(
            "localhost",
            &format!("sslmode=verify-full&{}", root(&missing)),
        ),
        &[
            "sslmode=verify-full",
            "cannot read the sslrootcert file",
            &format!("\"{}\"", missing.display()),
        ],
    )
    .await;
    let dir = pki.ca.parent().unwrap();
    assert_fails_with(
        &u("localhost", &format!("sslmode=verify-full&{}", root(dir))),
        &[
            "sslmode=verify-full",
            "cannot read the sslrootcert file",
            &format!("\"{}\"", dir.display()),
        ],
    )
    .await;
    assert_fails_with(
        &u("localhost", "sslmode=verify-full"),
        &["sslmode=verify-full", "needs the CA certificate"],
    )
    .await;
    assert_fails_with(
        &u("localhost", "sslmode=prefer&sslrootcert=system"),
        &["sslmode=prefer", "sslrootcert=system"],
    )
    .await;
    // Plaintext is refused by the server's `hostnossl ... reject` rule.
    assert_fails_with(
        &u("localhost", "sslmode=disable"),
        &["cannot connect to PostgreSQL", "no encryption"],
    )
    .await;
}

/// `sslmode=require` against a server without TLS: one line saying so.
#[tokio::test]
async fn require_against_a_server_without_tls_says_so() {
    let db = TestDb::create_on_shared().await;
    // The shared server trusts loopback, so the password is never checked, only carried.
    let url = db.url.replacen(
        "postgres://postgres@",
        &format!("postgres://postgres:{PASSWORD}@"),
        1,
    );
    let sep = if url.contains('?') { '&' } else { '?' };
    assert_fails_with(
        &format!("{url}{sep}sslmode=require"),
        &["sslmode=require", "the server does not support TLS"],
    )
    .await;
    // verify-full too; prefer and disable connect in plaintext.
    assert_fails_with(
        &format!("{url}{sep}sslmode=verify-full&sslrootcert=system"),
        &["sslmode=verify-full", "the server does not support TLS"],
    )
    .await;
    assert_migrates(&format!("{url}{sep}sslmode=prefer")).await;
}

/// The password in `DATABASE_URL` appears in no output, at any log level, whatever fails.
#[tokio::test]
async fn the_password_is_never_printed() {
    let pki = Pki::new();
    let (pg, db) = tls_cluster(&pki).await;
    let ca = root(&pki.ca);
    let cases = [
        (
            "malformed URL",
            format!("postgres://{INGEST_ROLE}:{PASSWORD}@localhost:notaport/db"),
        ),
        (
            "unknown option",
            format!("postgres://{INGEST_ROLE}:{PASSWORD}@localhost/db?nosuch=1"),
        ),
        (
            "unreachable host",
            format!("postgres://{INGEST_ROLE}:{PASSWORD}@127.0.0.1:1/db?connect_timeout=2"),
        ),
        (
            "wrong password",
            url(
                &pg,
                "localhost",
                INGEST_ROLE,
                &db.name,
                &format!("sslmode=verify-full&{ca}"),
            )
            .replace(PASSWORD, &format!("{PASSWORD}-wrong")),
        ),
        (
            "TLS failure",
            url(
                &pg,
                "127.0.0.1",
                INGEST_ROLE,
                &db.name,
                &format!("sslmode=verify-full&{ca}"),
            ),
        ),
        // Connects, then fails: the ingest role may not create the schema.
        (
            "permission denied",
            url(
                &pg,
                "localhost",
                INGEST_ROLE,
                &db.name,
                &format!("sslmode=verify-full&{ca}"),
            ),
        ),
    ];
    for (what, url) in &cases {
        let out = migrate(url, &[], "trace").await;
        let all = text(&out);
        assert!(!out.status.success(), "{what}: migrate succeeded:\n{all}");
        assert!(
            !all.contains(PASSWORD),
            "{what}: the password leaked:\n{all}"
        );
        let last = all.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("mini-scan: "),
            "{what}: no error line:\n{all}"
        );
    }
    // --help shows no environment values.
    let mut cmd = binary_command();
    cmd.args(["migrate", "--help"])
        .env("DATABASE_URL", &cases[3].1);
    let out = cmd.output().await.expect("run mini-scan migrate --help");
    assert!(out.status.success());
    assert!(!text(&out).contains(PASSWORD), "--help leaked the password");
}

/// Fails if `text` shows the password, as text or as the bytes a careless `{:?}` of a config
/// would print.
fn assert_no_password(what: &str, text: &str) {
    let bytes = format!("{:?}", PASSWORD.as_bytes());
    let bytes = bytes.trim_matches(['[', ']']);
    assert!(
        !text.contains(PASSWORD) && !text.contains(bytes),
        "{what} shows the password:\n{text}"
    );
}

/// A dedicated TLS cluster with a migrated database whose ingest role was granted by
/// `migrate --grant-ingest-to` (twice: granting is idempotent); returns the ingest role's URL
/// (verify-full, with the password).
async fn granted_tls_context(pki: &Pki) -> (DedicatedPostgres, TestContext, String) {
    let pg = DedicatedPostgres::start_new().await;
    let ctx = TestContext::on_dedicated(&pg).await;
    create_roles(&ctx.db).await;
    enable_tls(&pg, pki, HBA).await;
    let tls = format!("sslmode=verify-full&{}", root(&pki.ca));
    let owner = url(&pg, "localhost", "postgres", &ctx.db.name, &tls);
    for _ in 0..2 {
        let out = migrate(&owner, &["--grant-ingest-to", INGEST_ROLE], "info").await;
        assert!(out.status.success(), "{}", text(&out));
    }
    let ingest_url = url(&pg, "localhost", INGEST_ROLE, &ctx.db.name, &tls);
    (pg, ctx, ingest_url)
}

/// Publishes `n` scans (seeded by `seed`) and waits until the table holds them.
async fn ingest_scans(ctx: &TestContext, seed: &str, n: usize) {
    let mut rng = common::scans::seeded_rng(seed);
    let scans: Vec<common::Scan> = common::scans::generate(&mut rng, n, 1);
    let payloads: Vec<Vec<u8>> = scans.iter().map(|s| s.either_version(&mut rng)).collect();
    ctx.publish(&payloads).await;
    let expected = common::scans::expected_table(&scans);
    wait_until(Duration::from_secs(120), "the scans", async || {
        common::scans::compare_tables(&ctx.table().await, &expected)
    })
    .await;
}

/// The database dropped under running ingesters (their sessions terminated, then `DROP DATABASE
/// ... WITH (FORCE)`), one logging text and one json, both at debug level: each reports the
/// database down (`/readyz`, `miniscan_up`, a log line saying why), and the password shows in none
/// of their logs, `/metrics` or `/readyz`.
#[tokio::test]
async fn a_database_dropped_mid_run_never_shows_the_password() {
    let pki = Pki::new();
    let (pg, ctx, ingest_url) = granted_tls_context(&pki).await;
    let mut ingesters = Vec::new();
    for format in ["text", "json"] {
        let env = [
            ("DATABASE_URL", ingest_url.as_str()),
            ("RUST_LOG", "debug"),
            ("MINISCAN_LOG_FORMAT", format),
            ("MINISCAN_RETRY_MAX_MS", "500"),
            ("MINISCAN_SHUTDOWN_GRACE_SECS", "1"),
        ];
        ingesters.push((format, ctx.start_ingester(&env).await));
    }
    ingest_scans(&ctx, "dropped-before", 10).await;

    let admin = common::postgres::connect(&pg.admin_url())
        .await
        .expect("connect to the dedicated cluster");
    // Two statements apart: DROP DATABASE refuses to run in a transaction block.
    for sql in [
        format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = '{}' AND pid <> pg_backend_pid()",
            ctx.db.name
        ),
        format!("DROP DATABASE \"{}\" WITH (FORCE)", ctx.db.name),
    ] {
        admin
            .batch_execute(&sql)
            .await
            .unwrap_or_else(|e| panic!("`{sql}`: {e}"));
    }
    // Messages to write into the void: the write path fails and retries too.
    let mut rng = common::scans::seeded_rng("dropped-after");
    let scans: Vec<common::Scan> = common::scans::generate(&mut rng, 10, 1);
    ctx.publish(
        &scans
            .iter()
            .map(|s| s.either_version(&mut rng))
            .collect::<Vec<_>>(),
    )
    .await;

    let gone = format!("database \"{}\" does not exist", ctx.db.name);
    for (format, ingester) in &ingesters {
        let what = format!("the {format} ingester to report the database gone");
        wait_until(Duration::from_secs(60), &what, async || {
            ingester.assert_running();
            let ready = readyz(&ingester.metrics_addr).await;
            let up = ingester
                .metric(
                    names::UP,
                    &[(names::label::COMPONENT, names::component::DATABASE)],
                )
                .await;
            let said = logged(&ingester.log(), &gone);
            let down = ready.0 == 503 && ready.1.contains(names::component::DATABASE);
            if down && up == 0.0 && said {
                Ok(())
            } else {
                Err(format!(
                    "/readyz {ready:?}, miniscan_up {up}, `{gone}` logged: {said}"
                ))
            }
        })
        .await;
        assert_no_password(&format!("{format}: /metrics"), &ingester.metrics().await);
        let (_, body) = readyz(&ingester.metrics_addr).await;
        assert_no_password(&format!("{format}: /readyz"), &body);
    }
    for (format, ingester) in &ingesters {
        ingester.terminate();
        ingester.wait_exit(common::ingester::SHUTDOWN_TIMEOUT).await;
        let log = ingester.log();
        if *format == "json" {
            for line in log.lines() {
                serde_json::from_str::<serde_json::Value>(line)
                    .unwrap_or_else(|e| panic!("not a json line ({e}): {line}"));
            }
        }
        assert!(
            log.lines().count() > 20,
            "{format}: debug logging is off:\n{log}"
        );
        assert_no_password(&format!("{format}: the log"), &log);
    }
}

/// Whether a line of `log` (text, or json whose fields are unescaped first) contains `needle`.
fn logged(log: &str, needle: &str) -> bool {
    log.lines().any(
        |line| match serde_json::from_str::<serde_json::Value>(line) {
            Ok(serde_json::Value::Object(fields)) => fields
                .values()
                .any(|v| v.as_str().is_some_and(|s| s.contains(needle))),
            _ => line.contains(needle),
        },
    )
}

/// `/readyz`'s status and body.
async fn readyz(addr: &str) -> (u16, String) {
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    match http.get(format!("http://{addr}/readyz")).send().await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

/// The ingest role, granted by `migrate --grant-ingest-to`, ingests over verify-full (scans and a
/// dead letter) and cannot delete, truncate, drop or create anything.
#[tokio::test]
async fn the_ingest_role_ingests_over_tls_and_can_do_nothing_else() {
    let pki = Pki::new();
    let (_pg, ctx, ingest_url) = granted_tls_context(&pki).await;
    let ingester = ctx
        .start_ingester(&[("DATABASE_URL", ingest_url.as_str()), ("RUST_LOG", "debug")])
        .await;
    let mut rng = common::scans::seeded_rng("tls");
    let scans: Vec<common::Scan> = common::scans::generate(&mut rng, 20, 2);
    let mut payloads: Vec<Vec<u8>> = scans.iter().map(|s| s.either_version(&mut rng)).collect();
    payloads.push(b"not json".to_vec());
    ctx.publish(&payloads).await;
    let expected = common::scans::expected_table(&scans);
    wait_until(
        Duration::from_secs(120),
        "the scans and the dead letter",
        async || {
            ingester.assert_running();
            common::scans::compare_tables(&ctx.table().await, &expected)?;
            match ctx.db.count_dead_letters().await {
                1 => Ok(()),
                n => Err(format!("{n} dead letters")),
            }
        },
    )
    .await;
    assert_no_password("/metrics", &ingester.metrics().await);
    ingester.stop().await;
    assert_no_password("the ingester's log", &ingester.log());
    assert_least_privilege(&ingest_url).await;
}

/// What the ingest role must not be able to do, each refused with insufficient_privilege.
async fn assert_least_privilege(ingest_url: &str) {
    let cfg = mini_scan::db::config(ingest_url).unwrap();
    let (client, _conn) = mini_scan::db::connect(&cfg)
        .await
        .expect("connect as the ingest role");
    for sql in [
        "DELETE FROM scan_results",
        "DELETE FROM dead_letters",
        "TRUNCATE scan_results",
        "TRUNCATE dead_letters",
        "DROP TABLE scan_results",
        "ALTER TABLE scan_results ADD COLUMN x int",
        "CREATE TABLE public.mine (x int)",
        "SELECT * FROM dead_letters",
        "UPDATE dead_letters SET reason = 'x'",
        "SELECT * FROM refinery_schema_history",
    ] {
        let err = client.batch_execute(sql).await.err();
        let code = err.as_ref().and_then(|e| e.code()).cloned();
        assert_eq!(
            code,
            Some(tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
            "`{sql}` as the ingest role: {err:?}"
        );
    }
}

/// A TLS failure while ingesting is the database being down: `/readyz` answers 503, the log says
/// why in one line naming sslmode, and the ingester keeps running (and retrying).
#[tokio::test]
async fn a_tls_failure_while_ingesting_shows_as_the_database_down() {
    let pki = Pki::new();
    let (pg, db) = tls_cluster(&pki).await;
    assert_migrates(&url(
        &pg,
        "localhost",
        "postgres",
        &db.name,
        &format!("sslmode=verify-full&{}", root(&pki.ca)),
    ))
    .await;
    let pubsub = common::PubSub::shared().await;
    let (topic, sub) = (common::random_name("topic"), common::random_name("sub"));
    pubsub.create_topic(&topic).await;
    pubsub.create_subscription(&sub, &topic).await;
    let bad = url(
        &pg,
        "localhost",
        INGEST_ROLE,
        &db.name,
        &format!("sslmode=verify-full&{}", root(&pki.other_ca)),
    );
    let scratch = tempfile::tempdir().unwrap();
    let log = scratch.path().join("ingest.log");
    let metrics = format!("127.0.0.1:{}", common::free_port());
    let mut cmd = binary_command();
    cmd.arg("ingest")
        .env("DATABASE_URL", &bad)
        .env("PUBSUB_EMULATOR_HOST", &pubsub.host)
        .env("PUBSUB_PROJECT_ID", common::PROJECT)
        .env("MINISCAN_SUBSCRIPTION", &sub)
        .env("MINISCAN_METRICS_ADDR", &metrics)
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::options().append(true).open(&log).unwrap());
    let mut child = cmd.spawn().expect("start mini-scan ingest");
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    wait_until(
        Duration::from_secs(60),
        "/readyz 503 and the reason logged",
        async || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "the ingester exited with {status}: {}",
                    std::fs::read_to_string(&log).unwrap()
                );
            }
            let code = match http.get(format!("http://{metrics}/readyz")).send().await {
                Ok(r) => r.status().as_u16(),
                Err(e) => return Err(format!("/readyz: {e}")),
            };
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let logged = text
                .lines()
                .any(|l| l.contains("sslmode=verify-full") && l.contains("unknown CA"));
            if code == 503 && logged {
                Ok(())
            } else {
                Err(format!("/readyz {code}, log:\n{text}"))
            }
        },
    )
    .await;
    child.kill().await.expect("stop the ingester");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains(PASSWORD),
        "the log shows the password:\n{text}"
    );
    // Logged once per change of reason, not once per retry.
    let reasons = text.lines().filter(|l| l.contains("unknown CA")).count();
    assert_eq!(reasons, 1, "{text}");
}
