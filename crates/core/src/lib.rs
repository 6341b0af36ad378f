//! The shared core of the managed-tokens tools.
//!
//! `token-refresher`, `token-pusher` and `ping-nodes` are thin binaries over this crate.
//! It reads the configuration ([`config`]) into resolved [`service::Service`] plans, runs
//! every child process through one [`runner`], performs the stages ([`kerberos`],
//! [`condor`], [`vault`], [`transfer`], [`ping`]) in parallel on a bounded pool, and turns
//! per-target outcomes ([`report`]) into state, notifications, metrics and an exit status.
//!
//! Conventions: fallible operations return [`anyhow::Result`] with context naming the
//! object (file, service, node), except where a caller branches on the error, which then
//! has a typed error ([`runner::CmdError`], [`config::ConfigError`]). Logging goes through
//! the `log` macros, one event per line; secrets are wrapped in [`secret::Secret`] and
//! never logged.

#![warn(missing_docs)]
#![warn(clippy::unwrap_used)]

pub mod accounts;
pub mod app;
pub mod check;
pub mod cli;
pub mod condor;
pub mod config;
pub mod context;
pub mod env;
pub mod exit;
pub mod ferry;
pub mod kerberos;
pub mod lock;
pub mod logging;
pub mod metrics;
pub mod names;
pub mod notify;
pub mod ping;
pub mod plan;
pub mod progress;
pub mod push;
pub mod reachability;
pub mod refresh;
pub mod report;
pub mod runner;
pub mod secret;
pub mod service;
pub mod state;
pub mod status;
pub mod template;
pub mod transfer;
pub mod vault;
