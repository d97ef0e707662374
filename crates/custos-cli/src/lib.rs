//! The `custos` command line: `serve` runs the server; every other command except
//! `agent keygen` is a client of a running server (`CUSTOS_ADDR`, `CUSTOS_TOKEN`).
//!
//! Commands that print data accept `--json` and then print exactly one JSON document on
//! stdout; errors go to stderr with a non-zero exit.

mod client;
mod commands;
mod output;

use std::process::ExitCode;

use clap::Parser as _;

pub use commands::Cli;

/// Parses the command line, runs the command and returns the exit code.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
