//! `bulwark`: runs CI jobs in hardened sandboxes.
//!
//! Thin on purpose: parse arguments, call library code, map outcomes to exit statuses.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Helper mode first, before anything can start a thread: the sandbox helper must be
    // single-threaded to create a user namespace and to fork.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == bulwark_sandbox::helper::HELPER_ARG)
    {
        bulwark_sandbox::helper::main();
    }
    let cli = bulwark_runner::cli::Cli::parse();
    bulwark_runner::logging::init(cli.verbose);
    let code = bulwark_runner::cli::dispatch(cli);
    ExitCode::from(code)
}
