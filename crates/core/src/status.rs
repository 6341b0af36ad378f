//! `status`: what the state database knows, for people (a table) or scripts (`--json`).

use std::io::Write;

use crate::config::Config;
use crate::exit::Exit;
use crate::service::Service;

/// Prints the status of `services`.
pub fn print(config: &Config, services: &[Service], json: bool, out: &mut dyn Write) -> Exit {
    let state = match crate::app::open_state(config) {
        Ok(state) => state,
        Err(e) => {
            log::error!("{e:#}");
            return Exit::Fatal;
        }
    };
    let pending = state.pending_count().unwrap_or(0);
    let result = if json {
        let names: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
        writeln!(
            out,
            "{}",
            serde_json::json!({"schema": 1, "services": names, "pending_notifications": pending})
        )
    } else {
        writeln!(
            out,
            "{} services; {pending} notifications waiting for delivery",
            services.len()
        )
    };
    if let Err(e) = result {
        log::error!("failed to write the status: {e}");
        return Exit::Fatal;
    }
    Exit::Success
}
