//! The `cairn` command: argument parsing, terminal output and exit codes.
//! Everything else lives in the library crates.

mod commands;
mod common;
mod engine;
mod malloc;
mod output;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = commands::Cli::parse();
    common::init_logging(cli.global.verbose, cli.global.quiet);
    match commands::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", output::describe_error(&e));
            ExitCode::from(output::exit_code(&e))
        }
    }
}
