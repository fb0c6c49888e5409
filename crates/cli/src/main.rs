//! The `cairn` command: argument parsing, terminal output and exit codes.
//! Everything else lives in the library crates.

// Standard output goes through `outln!`/`out!` (see output.rs), which end
// quietly on a closed pipe where `println!` panics.
#![deny(clippy::print_stdout)]

// First: its `outln!` and `out!` macros are used by the modules below.
#[macro_use]
mod output;
mod commands;
mod common;
mod malloc;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    // KDMP's job image runs `/kopiaexecutor <op> ...`: the binary under that name.
    if commands::invoked_as_executor() {
        return commands::main_as_executor();
    }
    let cli = commands::Cli::parse();
    common::init_logging(cli.global.verbose, cli.global.quiet, cli.global.log_format);
    let verbose = cli.global.verbose;
    match commands::run(cli) {
        Ok(code) => code,
        Err(e) if output::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", output::describe_error(&e, verbose));
            ExitCode::from(output::exit_code(&e))
        }
    }
}
