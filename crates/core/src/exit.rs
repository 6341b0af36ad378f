//! Exit statuses shared by the three binaries.

use std::process::ExitCode;

/// How a run ended; `main` turns it into the process exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Exit {
    /// 0: everything succeeded.
    Success,
    /// 1: a fatal error stopped the run.
    Fatal,
    /// 2: bad usage or configuration; nothing was done.
    Usage,
    /// 3: the run finished but some services, credds or nodes failed (already reported).
    Partial,
    /// 75: another run of the same binary holds the lock.
    Locked,
}

impl Exit {
    /// The numeric status.
    pub fn code(self) -> u8 {
        match self {
            Self::Success => 0,
            Self::Fatal => 1,
            Self::Usage => 2,
            Self::Partial => 3,
            Self::Locked => 75,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        Self::from(exit.code())
    }
}
