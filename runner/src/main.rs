//! `bulwark`: runs CI jobs in hardened sandboxes.
//!
//! Thin on purpose: parse arguments, call library code, map outcomes to exit statuses.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = bulwark_runner::cli::Cli::parse();
    bulwark_runner::logging::init(cli.verbose);
    let code = bulwark_runner::cli::dispatch(cli);
    ExitCode::from(code)
}
