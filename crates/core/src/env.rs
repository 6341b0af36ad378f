//! The few values this program takes from its own environment, read once by `main` and
//! passed down, so the rest of the core never reads process state.

use std::io::IsTerminal;

/// A snapshot of the environment variables and terminal state the tools honour.
#[derive(Debug, Clone, Default)]
pub struct HostEnv {
    /// `HTGETTOKENOPTS`: the operator's htgettoken options, honoured and completed.
    pub htgettoken_options: Option<String>,
    /// `_condor_SEC_CREDENTIAL_GETTOKEN_OPTS`: first source of the vault server (`-a`).
    pub gettoken_options: Option<String>,
    /// `RUST_LOG`: replaces the level chosen by `-v`/`-q`.
    pub rust_log: Option<String>,
    /// Whether stderr is connected to the journal (`JOURNAL_STREAM`).
    pub journal: bool,
    /// Whether stderr is a terminal (progress display).
    pub stderr_is_terminal: bool,
    /// Whether stdin is a terminal (onboarding needs one).
    pub stdin_is_terminal: bool,
    /// `PATH`, where `check-config` looks for the external tools.
    pub path: Option<std::ffi::OsString>,
    /// `RUNTIME_DIRECTORY`, set by systemd's `RuntimeDirectory=`: the run's private files
    /// go there, and systemd removes them even if the process is killed.
    pub runtime_directory: Option<std::path::PathBuf>,
}

impl HostEnv {
    /// Reads the environment of this process.
    pub fn capture() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        Self {
            htgettoken_options: var("HTGETTOKENOPTS"),
            gettoken_options: var("_condor_SEC_CREDENTIAL_GETTOKEN_OPTS"),
            rust_log: var("RUST_LOG"),
            journal: std::env::var_os("JOURNAL_STREAM").is_some(),
            stderr_is_terminal: std::io::stderr().is_terminal(),
            stdin_is_terminal: std::io::stdin().is_terminal(),
            path: std::env::var_os("PATH"),
            runtime_directory: var("RUNTIME_DIRECTORY").map(std::path::PathBuf::from),
        }
    }
}
