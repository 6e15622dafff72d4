//! The `mini-scan` binary: parses the command line and runs a subcommand.

use clap::Parser;
use mini_scan::app;
use mini_scan::config::{Cli, Command, one_line_error};
use mini_scan::logging::{fatal_line, requested_format};
use std::process::ExitCode;

/// The command line, or how the process ends: 0 after `--help` and
/// `--version`, 2 with one line after an invalid command line.
fn parse() -> Result<Cli, ExitCode> {
    Cli::try_parse().map_err(|e| {
        if !e.use_stderr() {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        let format = requested_format(
            std::env::args().skip(1),
            std::env::var("MINISCAN_LOG_FORMAT").ok().as_deref(),
        );
        eprintln!("{}", fatal_line(format, &one_line_error(&e)));
        ExitCode::from(2)
    })
}

fn main() -> ExitCode {
    let cli = match parse() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let format = cli.log_format;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let error = format!("cannot start the async runtime: {e}");
            eprintln!("{}", fatal_line(format, &error));
            return ExitCode::FAILURE;
        }
    };
    // Inside the runtime: the OTLP gRPC exporter's channel lives on it.
    let traces = match runtime.block_on(async { app::init_logging(format) }) {
        Ok(traces) => traces,
        Err(e) => {
            let chain = mini_scan::error::Chain(&e).to_string();
            eprintln!("{}", fatal_line(format, &chain));
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Migrate(args) => app::migrate(args).await,
            Command::Ingest(args) => app::ingest(args).await.map(|_| ()),
            Command::Scan(args) => app::scan(args).await,
            Command::Setup(args) => app::setup(args).await,
            Command::DeadLetters(args) => app::dead_letters(args).await,
        }
    });
    // Spans still buffered are exported while the runtime still runs.
    if let Some(traces) = traces {
        traces.shutdown();
    }
    // The ingester stops its own tasks; this bounds what the client
    // libraries may have left running.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes.
            let chain = mini_scan::error::Chain(e.as_ref()).to_string();
            eprintln!("{}", fatal_line(format, &chain));
            ExitCode::FAILURE
        }
    }
}
