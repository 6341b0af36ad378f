//! `ping-nodes`: see `ping-nodes --help`; the work is done by `managed_tokens_core::app`.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use managed_tokens_core::cli::PingCli;
use managed_tokens_core::env::HostEnv;

fn main() -> ExitCode {
    let cli = PingCli::parse();
    let mut stdout = std::io::stdout().lock();
    let exit = managed_tokens_core::app::ping_nodes(cli, HostEnv::capture(), &mut stdout);
    let _ = stdout.flush();
    exit.into()
}
