//! docs/configuration.md checked against the command line, so the page cannot
//! drift from `--help`: every flag of every command is a row of that
//! command's table with its env var and default, and the page names no flag,
//! env var or command the binary lacks.
//!
//! The page has one section per command, headed ``## `mini-scan ingest` ``
//! (the global flags under ``## `mini-scan` ``), each with a table whose rows
//! start `` | `--flag` | `ENV` | `default` | ``: `-` where a flag has no env
//! var, and a word without backticks (`required`, `unset`, `off`) where it
//! has no default value.

use super::Cli;
use clap::CommandFactory;

const PAGE: &str = include_str!("../../docs/configuration.md");

/// One flag as `--help` shows it.
struct Setting {
    long: String,
    env: Option<String>,
    /// `None` for a switch (`--dry-run`) and for a flag without a default.
    default: Option<String>,
}

impl Setting {
    /// The row the page should have, up to the meaning column.
    fn row(&self) -> String {
        format!(
            "| `--{}` | {} | {} |",
            self.long,
            self.env
                .as_ref()
                .map_or("-".to_owned(), |e| format!("`{e}`")),
            self.default
                .as_ref()
                .map_or("(no default)".to_owned(), |d| format!("`{d}`")),
        )
    }
}

/// Every command with its own flags, by its path (`mini-scan dead-letters
/// replay`), the root's global flags under `mini-scan`.
fn commands() -> Vec<(String, Vec<Setting>)> {
    fn walk(cmd: &clap::Command, path: String, out: &mut Vec<(String, Vec<Setting>)>) {
        let settings = cmd
            .get_arguments()
            .filter(|a| !matches!(a.get_id().as_str(), "help" | "version"))
            .map(|a| Setting {
                long: a
                    .get_long()
                    .unwrap_or_else(|| panic!("{path}: {} has no long flag", a.get_id()))
                    .to_owned(),
                env: a.get_env().map(|e| e.to_string_lossy().into_owned()),
                default: a
                    .get_action()
                    .takes_values()
                    .then(|| {
                        let d: Vec<_> = a
                            .get_default_values()
                            .iter()
                            .map(|v| v.to_string_lossy().into_owned())
                            .collect();
                        (!d.is_empty()).then(|| d.join(","))
                    })
                    .flatten(),
            })
            .collect();
        out.push((path.clone(), settings));
        for sub in cmd.get_subcommands() {
            walk(sub, format!("{path} {}", sub.get_name()), out);
        }
    }
    let mut out = Vec::new();
    walk(&Cli::command(), "mini-scan".to_owned(), &mut out);
    out
}

/// The table cells of each section's rows, by the command path in the
/// section's heading.
fn sections(page: &str) -> Vec<(String, Vec<Vec<String>>)> {
    let mut out: Vec<(String, Vec<Vec<String>>)> = Vec::new();
    for line in page.lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            let path = heading
                .strip_prefix('`')
                .and_then(|h| h.split_once('`'))
                .map(|(p, _)| p.to_owned())
                .unwrap_or_default();
            out.push((path, Vec::new()));
        } else if line.starts_with("| `--")
            && let Some((_, rows)) = out.last_mut()
        {
            rows.push(
                line.trim_matches('|')
                    .split(" | ")
                    .map(|c| c.trim().to_owned())
                    .collect(),
            );
        }
    }
    out
}

/// Backticked words of `page` that start with `prefix`, e.g. every `` `--flag` ``.
fn quoted<'a>(page: &'a str, prefix: &str) -> Vec<&'a str> {
    page.split('`')
        .skip(1)
        .step_by(2)
        .filter(|w| w.starts_with(prefix))
        .collect()
}

/// What is wrong with `page` as the reference of the command line.
fn problems(page: &str) -> Vec<String> {
    let commands = commands();
    let sections = sections(page);
    let mut problems = Vec::new();
    for (path, settings) in &commands {
        let Some((_, rows)) = sections.iter().find(|(p, _)| p == path) else {
            if !settings.is_empty() {
                problems.push(format!("no section ## `{path}`"));
            }
            continue;
        };
        for s in settings {
            let flag = format!("`--{}`", s.long);
            let Some(row) = rows.iter().find(|r| r[0] == flag) else {
                problems.push(format!("{path}: no row for {flag}; expected {}", s.row()));
                continue;
            };
            let env = s.env.as_ref().map_or("-".to_owned(), |e| format!("`{e}`"));
            if row.get(1) != Some(&env) {
                problems.push(format!(
                    "{path} {flag}: env should be {env}, not {:?}",
                    row.get(1)
                ));
            }
            let default = row.get(2).map(String::as_str).unwrap_or_default();
            match &s.default {
                Some(d) if default != format!("`{d}`") => problems.push(format!(
                    "{path} {flag}: default should be `{d}`, not {default:?}"
                )),
                None if default.contains('`') => problems.push(format!(
                    "{path} {flag}: has no default value, but the page says {default:?}"
                )),
                _ => {}
            }
        }
        for row in rows {
            if !settings.iter().any(|s| row[0] == format!("`--{}`", s.long)) {
                problems.push(format!("{path}: {} is not a flag of this command", row[0]));
            }
        }
    }
    for (path, _) in &sections {
        if !path.is_empty() && !commands.iter().any(|(p, _)| p == path) {
            problems.push(format!("## `{path}` is not a command"));
        }
    }
    let all: Vec<&Setting> = commands.iter().flat_map(|(_, s)| s).collect();
    for word in quoted(page, "--") {
        let long = word.trim_start_matches("--");
        let long = long.split([' ', '=']).next().unwrap_or_default();
        if !matches!(long, "help" | "version") && !all.iter().any(|s| s.long == long) {
            problems.push(format!("`{word}` names no flag of any command"));
        }
    }
    for word in quoted(page, "MINISCAN_") {
        if !all.iter().any(|s| s.env.as_deref() == Some(word)) {
            problems.push(format!("`{word}` is the env var of no flag"));
        }
    }
    problems
}

#[test]
fn the_configuration_page_matches_the_command_line() {
    let problems = problems(PAGE);
    assert!(
        problems.is_empty(),
        "docs/configuration.md differs from --help:\n{}",
        problems.join("\n")
    );
}

#[test]
fn a_wrong_page_is_caught() {
    let row = |flag: &str| {
        PAGE.lines()
            .find(|l| l.starts_with(&format!("| `{flag}` |")))
            .unwrap_or_else(|| panic!("no row for {flag}"))
            .to_owned()
    };
    let batch = row("--batch-max-rows");
    let missing = PAGE.replace(&format!("{batch}\n"), "");
    assert!(
        problems(&missing)
            .iter()
            .any(|p| p.contains("no row for `--batch-max-rows`")),
        "a missing flag"
    );
    let changed = PAGE.replace(&batch, &batch.replace("`1000`", "`2000`"));
    assert!(
        problems(&changed)
            .iter()
            .any(|p| p.contains("default should be `1000`")),
        "a wrong default"
    );
    let env = PAGE.replace(&batch, &batch.replace("`MINISCAN_BATCH_MAX_ROWS`", "-"));
    assert!(
        problems(&env).iter().any(|p| p.contains("env should be")),
        "a missing env var"
    );
    let invented = PAGE.replace(
        &batch,
        &format!("{batch}\n| `--batch-min-rows` | - | `1` | invented |"),
    );
    assert!(
        problems(&invented)
            .iter()
            .any(|p| p.contains("`--batch-min-rows` is not a flag")),
        "an invented flag"
    );
    let prose = format!("{PAGE}\nSee `MINISCAN_BATCH_ROWS`.\n");
    assert!(
        problems(&prose)
            .iter()
            .any(|p| p.contains("MINISCAN_BATCH_ROWS")),
        "an invented env var"
    );
}
