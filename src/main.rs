//! The binary: parse the command line and hand it to [`portfolio_server::cli::run`].

use std::process::ExitCode;

use clap::Parser;
use portfolio_server::cli::{self, Cli};

fn main() -> ExitCode {
    cli::run(Cli::parse())
}
