//! What every stage of a run shares: configuration, runner, pool, private directory,
//! and the per-run caches.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use crate::condor::Discovery;
use crate::config::Config;
use crate::env::HostEnv;
use crate::kerberos::{self, Ccache};
use crate::report::Failure;
use crate::runner::Runner;
use crate::service::Service;
use crate::state::State;

/// Shared by every stage of one run.
pub struct Context {
    /// The configuration.
    pub config: Config,
    /// The process environment snapshot.
    pub host: HostEnv,
    /// Starts every child.
    pub runner: Runner,
    /// A private 0700 directory for credential caches, staging and runtime dirs; removed
    /// when the run ends.
    pub run_dir: tempfile::TempDir,
    /// The UID this process runs as (names the local token store files).
    pub local_uid: u32,
    /// `-v` was given: pass verbosity to the storer.
    pub verbose: bool,
    /// `--test` was given.
    pub test: bool,
    /// Credd discovery, one query per collector list per run.
    pub discovery: Discovery,
    /// The vault server from `condor_config_val`, asked at most once.
    pub vault_from_condor: OnceLock<Option<String>>,
    /// The state database, when it could be opened.
    pub state: Option<Mutex<State>>,
    storer_locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    sequence: AtomicU64,
}

impl Context {
    /// A context for one run.
    pub fn new(
        config: Config,
        host: HostEnv,
        runner: Runner,
        run_dir: tempfile::TempDir,
        state: Option<State>,
    ) -> Self {
        Self {
            config,
            host,
            runner,
            run_dir,
            local_uid: rustix::process::getuid().as_raw(),
            verbose: false,
            test: false,
            discovery: Discovery::default(),
            vault_from_condor: OnceLock::new(),
            state: state.map(Mutex::new),
            storer_locks: Mutex::new(HashMap::new()),
            sequence: AtomicU64::new(0),
        }
    }

    /// The private run directory.
    pub fn dir(&self) -> &Path {
        self.run_dir.path()
    }

    /// A number unique within this run.
    pub fn next_id(&self) -> u64 {
        self.sequence.fetch_add(1, Ordering::Relaxed)
    }

    /// A lock serialising storer calls that share `key` (same local store file); one
    /// global key when storer calls cannot be isolated.
    pub fn storer_lock(&self, key: &str) -> Arc<Mutex<()>> {
        let key = if self.config.storer_isolation {
            key
        } else {
            ""
        };
        let mut locks = self
            .storer_locks
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Arc::clone(locks.entry(key.to_string()).or_default())
    }

    /// A Kerberos ticket for `service` in its private credential cache, with the
    /// configured timeout and retries.
    pub fn kinit(&self, service: &Service) -> Result<Ccache, Failure> {
        let ccache = Ccache::for_service(self.dir(), service);
        let timeout = self.config.timeouts.kerberos;
        kerberos::obtain(
            &self.runner,
            service,
            &ccache,
            timeout,
            self.config.retries.kerberos,
        )?;
        Ok(ccache)
    }

    /// The state database, if open.
    pub fn state(&self) -> Option<MutexGuard<'_, State>> {
        self.state
            .as_ref()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner))
    }
}
