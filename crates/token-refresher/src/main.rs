//! `token-refresher`: see `token-refresher --help`; the work is done by `managed_tokens_core::app`.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use managed_tokens_core::cli::{self, Command, RefresherCli};
use managed_tokens_core::env::HostEnv;
use managed_tokens_core::exit::Exit;

fn main() -> ExitCode {
    let cli = RefresherCli::parse();
    let mut stdout = std::io::stdout().lock();
    if let Some(Command::Generate { what }) = cli.command {
        return match cli::generate::<RefresherCli>(what, &mut stdout).and_then(|()| stdout.flush())
        {
            Ok(()) => Exit::Success.into(),
            Err(_) => Exit::Fatal.into(),
        };
    }
    let exit = managed_tokens_core::app::refresher(cli, HostEnv::capture(), &mut stdout);
    let _ = stdout.flush();
    exit.into()
}
