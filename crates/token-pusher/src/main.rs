//! `token-pusher`: see `token-pusher --help`; the work is done by `managed_tokens_core::app`.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use managed_tokens_core::cli::{self, Command, PusherCli};
use managed_tokens_core::env::HostEnv;
use managed_tokens_core::exit::Exit;

fn main() -> ExitCode {
    let cli = PusherCli::parse();
    let mut stdout = std::io::stdout().lock();
    if let Some(Command::Generate { what }) = cli.command {
        return match cli::generate::<PusherCli>(what, &mut stdout).and_then(|()| stdout.flush()) {
            Ok(()) => Exit::Success.into(),
            Err(_) => Exit::Fatal.into(),
        };
    }
    let exit = managed_tokens_core::app::pusher(cli, HostEnv::capture(), &mut stdout);
    let _ = stdout.flush();
    exit.into()
}
