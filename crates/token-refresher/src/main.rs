//! `token-refresher`: see `token-refresher --help`; the work is done by `managed_tokens_core::app`.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use managed_tokens_core::cli::RefresherCli;
use managed_tokens_core::env::HostEnv;

fn main() -> ExitCode {
    let cli = RefresherCli::parse();
    let mut stdout = std::io::stdout().lock();
    let exit = managed_tokens_core::app::refresher(cli, HostEnv::capture(), &mut stdout);
    let _ = stdout.flush();
    exit.into()
}
