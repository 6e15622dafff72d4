//! Google credentials: without `PUBSUB_EMULATOR_HOST`, a credentials file named by
//! `GOOGLE_APPLICATION_CREDENTIALS` that cannot be read stops every command that talks to Pub/Sub
//! at start-up, with one line naming the file and the variable. Nothing here reaches Google: the
//! check comes before any client is built.

use std::time::Duration;

use crate::common::binary_command;

async fn run(args: &[&str], credentials: &std::path::Path) -> std::process::Output {
    let mut cmd = binary_command();
    cmd.args(args)
        .env("GOOGLE_APPLICATION_CREDENTIALS", credentials)
        .env("PUBSUB_PROJECT_ID", "some-project")
        .env("DATABASE_URL", "postgres://u@127.0.0.1:1/db")
        .env("MINISCAN_METRICS_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "off")
        .stdin(std::process::Stdio::null());
    tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("mini-scan {args:?} did not stop within 60 s"))
        .expect("run mini-scan")
}

#[tokio::test]
async fn an_unreadable_credentials_file_stops_start_up_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    // Missing, and a directory (unreadable as a file even for root).
    for path in [dir.path().join("missing-key.json"), dir.path().to_owned()] {
        for args in [
            &["setup"][..],
            &["scan", "--count", "1"][..],
            &["ingest"][..],
        ] {
            let out = run(args, &path).await;
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{args:?} started: {stderr}");
            let lines: Vec<&str> = stderr.lines().collect();
            assert_eq!(lines.len(), 1, "{args:?}: not one line:\n{stderr}");
            let want = format!(
                "\"{}\" named by GOOGLE_APPLICATION_CREDENTIALS",
                path.display()
            );
            assert!(
                lines[0].contains(&want),
                "{args:?}: `{}` lacks `{want}`",
                lines[0]
            );
        }
    }
}

/// With `--log-format json` the line that stops start-up is a JSON object like every other log
/// line (severity `ERROR`), for a log collector; a command line that does not parse is reported
/// in the format it asked for too.
#[tokio::test]
async fn in_json_format_the_line_that_stops_start_up_is_json() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing-key.json");
    for args in [
        &["--log-format", "json", "ingest"][..],
        &["--log-format=json", "ingest", "--batch-max-rows", "0"][..],
    ] {
        let out = run(args, &path).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} started: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: not one line:\n{stderr}");
        let line: serde_json::Value = serde_json::from_str(lines[0])
            .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {}", lines[0]));
        assert_eq!(line["severity"], "ERROR", "{line}");
        let message = line["message"].as_str().unwrap_or_default();
        assert!(message.starts_with("mini-scan: "), "{line}");
    }
}
