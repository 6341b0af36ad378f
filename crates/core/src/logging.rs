//! Log setup: one event per line on stderr, no timestamp (journald adds one), and syslog
//! priority prefixes when stderr is the journal so that `journalctl -p err` works.

use std::io::Write;

use log::{Level, LevelFilter};

use crate::env::HostEnv;

/// Initialises logging for a binary; `verbosity` is `-v` count minus `-q` count.
pub fn init(verbosity: i8, host: &HostEnv) {
    let level = match verbosity {
        i8::MIN..=-2 => LevelFilter::Error,
        -1 => LevelFilter::Warn,
        0 => LevelFilter::Info,
        1 => LevelFilter::Debug,
        2..=i8::MAX => LevelFilter::Trace,
    };
    let mut builder = env_logger::Builder::new();
    // Third-party crates stay at warn unless RUST_LOG says otherwise.
    builder.filter_level(LevelFilter::Warn.min(level));
    for target in [
        "managed_tokens_core",
        "token_refresher",
        "token_pusher",
        "ping_nodes",
    ] {
        builder.filter_module(target, level);
    }
    if let Some(spec) = &host.rust_log {
        builder.parse_filters(spec);
    }
    // ureq logs request paths at debug and trace, and a Slack webhook's path is its secret.
    builder.filter_module("ureq", LevelFilter::Warn);
    // Log lines go through the progress display, which clears its line first.
    builder.target(crate::progress::log_target());
    let journal = host.journal;
    builder.format(move |buf, record| {
        let message = record.args().to_string().replace('\n', " | ");
        if journal {
            writeln!(buf, "<{}>{}", priority(record.level()), message)
        } else {
            writeln!(buf, "{:<5} {}", record.level(), message)
        }
    });
    // A second initialisation (tests) keeps the first logger.
    let _ = builder.try_init();
}

/// The sd-daemon priority of a level.
fn priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}
