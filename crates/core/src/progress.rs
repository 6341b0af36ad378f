//! A progress line for people watching a run on a terminal: "refresh 3/8" while the work
//! goes on, erased when it ends.
//!
//! It is shown only when stderr is a terminal and not the journal, and never with
//! `--json`, `-q` or `--run-onboarding` (whose storer owns the terminal). Log records
//! must reach stderr through [`LogWriter`] (see [`log_target`]): it hides the line while
//! a record is written, so the two never garble each other.

use std::io::{self, Write};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rayon::prelude::*;

use crate::env::HostEnv;
use crate::report::Outcome;
use crate::service::Service;

/// The line being shown, for [`LogWriter`] and [`inc`].
static ACTIVE: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Whether a run may show progress: stderr is an interactive terminal that is not the
/// journal, and neither `--json` nor `-q` was given.
pub fn wanted(host: &HostEnv, json: bool, quiet: bool) -> bool {
    host.stderr_is_terminal && !host.journal && !json && !quiet
}

/// The progress line of one run; hidden when not [`wanted`]. Erased when dropped.
#[derive(Debug)]
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// No progress line.
    pub fn hidden() -> Self {
        Self { bar: None }
    }

    /// "`label` done/`total`" with a spinner and the elapsed time, when `shown`.
    pub fn counted(shown: bool, label: &str, total: usize) -> Self {
        if !shown {
            return Self::hidden();
        }
        Self::start(ProgressDrawTarget::stderr(), label, total)
    }

    fn start(target: ProgressDrawTarget, label: &str, total: usize) -> Self {
        let len = u64::try_from(total).unwrap_or(u64::MAX);
        let bar = ProgressBar::with_draw_target(Some(len), target).with_prefix(label.to_string());
        if let Ok(style) =
            ProgressStyle::with_template("{spinner} {prefix} {pos}/{len} [{elapsed}]")
        {
            bar.set_style(style);
        }
        bar.enable_steady_tick(Duration::from_millis(120));
        *ACTIVE.lock().unwrap_or_else(PoisonError::into_inner) = Some(bar.clone());
        Self { bar: Some(bar) }
    }

    /// Counts one unit of work done.
    pub fn inc(&self) {
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
    }

    /// Runs `work` for each service on its own, in parallel on the current pool, counting
    /// each service done; the outcomes keep the order of `services`.
    pub fn each<F>(&self, services: &[Service], work: F) -> Vec<Outcome>
    where
        F: Fn(&[Service]) -> Vec<Outcome> + Sync,
    {
        services
            .par_iter()
            .flat_map_iter(|service| {
                let outcomes = work(std::slice::from_ref(service));
                self.inc();
                outcomes
            })
            .collect()
    }

    #[cfg(test)]
    fn position(&self) -> Option<u64> {
        self.bar.as_ref().map(ProgressBar::position)
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
            *ACTIVE.lock().unwrap_or_else(PoisonError::into_inner) = None;
        }
    }
}

/// Counts one unit of work on the progress line being shown, if any; for stages that
/// have no [`Progress`] at hand.
pub fn inc() {
    if let Some(bar) = active() {
        bar.inc(1);
    }
}

fn active() -> Option<ProgressBar> {
    ACTIVE
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

/// Writes log records to stderr, hiding the progress line while it does.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let write = || io::stderr().lock().write_all(buf);
        match active() {
            Some(bar) => bar.suspend(write)?,
            None => write()?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

/// The env_logger target that sends records through [`LogWriter`].
pub fn log_target() -> env_logger::Target {
    env_logger::Target::Pipe(Box::new(LogWriter))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(terminal: bool, journal: bool) -> HostEnv {
        HostEnv {
            stderr_is_terminal: terminal,
            journal,
            ..HostEnv::default()
        }
    }

    #[test]
    fn shown_only_on_a_quiet_free_terminal() {
        assert!(wanted(&host(true, false), false, false));
        assert!(!wanted(&host(false, false), false, false));
        assert!(!wanted(&host(true, true), false, false));
        assert!(!wanted(&host(true, false), true, false));
        assert!(!wanted(&host(true, false), false, true));
    }

    #[test]
    fn hidden_progress_draws_nothing_and_counts_nothing() {
        let progress = Progress::counted(false, "push", 3);
        progress.inc();
        assert_eq!(progress.position(), None);
    }

    #[test]
    fn each_counts_services_and_keeps_their_order() {
        let progress = Progress::start(ProgressDrawTarget::hidden(), "refresh", 3);
        let services: Vec<Service> = ["a_x", "b_x", "c_x"].iter().map(|n| service(n)).collect();
        let outcomes = progress.each(&services, |one| {
            assert_eq!(one.len(), 1);
            vec![Outcome::ok(
                &one[0].name,
                crate::report::Target::Service,
                crate::report::Stage::Kerberos,
                Duration::ZERO,
            )]
        });
        let names: Vec<_> = outcomes
            .iter()
            .map(|o| o.service.clone().unwrap())
            .collect();
        assert_eq!(names, ["a_x", "b_x", "c_x"]);
        assert_eq!(progress.position(), Some(3));
        inc();
        assert_eq!(progress.position(), Some(4));
        drop(progress);
        assert!(active().is_none());
        // With no line shown, records go straight to stderr.
        assert_eq!(LogWriter.write(b"").unwrap(), 0);
    }

    fn service(name: &str) -> Service {
        let yaml = format!(
            "keytabPath: /k\nkerberosPrincipalPattern: \"{{{{.Account}}}}@R\"\n\
             condorCollectorHost: c\nexperiments:\n  {e}:\n    roles:\n      x:\n        \
             account: a\n        destinationNodes: [n]\n",
            e = name.trim_end_matches("_x")
        );
        let config = crate::config::Config::from_str(&yaml, false, std::path::Path::new("t.yml"))
            .expect("a valid configuration");
        config.services[0].clone()
    }
}
