//! The run every binary shares: load and check the configuration, select services, take
//! the lock, do the binary's work on a bounded pool, then record, notify, report and
//! choose the exit status. `main` calls one of [`refresher`], [`pusher`], [`ping_nodes`].

use std::io::Write;
use std::time::{Duration, Instant};

use log::{error, info, warn};

use crate::cli::{Command, CommonArgs, Generated, PingCli, PusherCli, RefresherCli};
use crate::config::{self, Config};
use crate::context::Context;
use crate::env::HostEnv;
use crate::exit::Exit;
use crate::lock::{LockError, RunLock};
use crate::notify::{self, NotifyOptions};
use crate::plan::{self, Work};
use crate::progress::{self, Progress};
use crate::report::{Binary, RunReport};
use crate::runner::Runner;
use crate::service::Service;
use crate::state::State;
use crate::{check, push, reachability, refresh, status};

/// Runs `token-refresher`.
pub fn refresher(cli: RefresherCli, host: HostEnv, out: &mut dyn Write) -> Exit {
    let onboarding = cli.run_onboarding.then_some(cli.push_tokens);
    Invocation {
        binary: Binary::TokenRefresher,
        common: cli.common,
        command: cli.command,
        work: Work::Refresh,
        onboarding,
        generate: crate::cli::generate::<RefresherCli>,
    }
    .run(host, out)
}

/// Runs `token-pusher`.
pub fn pusher(cli: PusherCli, host: HostEnv, out: &mut dyn Write) -> Exit {
    Invocation {
        binary: Binary::TokenPusher,
        common: cli.common,
        command: cli.command,
        work: Work::Push,
        onboarding: None,
        generate: crate::cli::generate::<PusherCli>,
    }
    .run(host, out)
}

/// Runs `ping-nodes`.
pub fn ping_nodes(cli: PingCli, host: HostEnv, out: &mut dyn Write) -> Exit {
    Invocation {
        binary: Binary::PingNodes,
        common: cli.common,
        command: cli.command,
        work: Work::Ping(cli.probe),
        onboarding: None,
        generate: crate::cli::generate::<PingCli>,
    }
    .run(host, out)
}

struct Invocation {
    binary: Binary,
    common: CommonArgs,
    command: Option<Command>,
    work: Work,
    /// `Some(push_after)` for `--run-onboarding [--push-tokens]`.
    onboarding: Option<bool>,
    /// Writes this binary's man page or completions (`generate`).
    generate: fn(Generated, &mut dyn Write) -> std::io::Result<()>,
}

impl Invocation {
    fn run(self, host: HostEnv, out: &mut dyn Write) -> Exit {
        // Packaging generates man pages and completions where no configuration exists.
        if let Some(Command::Generate { what }) = self.command {
            return match (self.generate)(what, out).and_then(|()| out.flush()) {
                Ok(()) => Exit::Success,
                Err(_) => Exit::Fatal,
            };
        }
        crate::logging::init(self.common.verbosity(), &host);
        info!(
            "{} {} with configuration `{}`",
            self.binary,
            crate::cli::VERSION,
            self.common.config.display()
        );
        let config = match Config::load(&self.common.config) {
            Ok(config) => config,
            Err(e) => {
                for line in e.to_string().lines() {
                    error!("{line}");
                }
                return Exit::Usage;
            }
        };
        for key in &config.ignored_keys {
            warn!("configuration key `{key}` is accepted for compatibility but not acted on");
        }
        if rustix::process::geteuid().is_root() && !self.common.allow_root {
            error!(
                "refusing to run as root: files it writes would belong to root; use the service account, or --allow-root"
            );
            return Exit::Usage;
        }
        let services = match select(&config, &self.common) {
            Ok(services) => services,
            Err(message) => {
                error!("{message}");
                return Exit::Usage;
            }
        };
        if let Some(exit) = self.subcommand(&config, &services, &host, out) {
            return exit;
        }
        if self.common.list_services {
            return list_services(&services, self.common.json, out);
        }
        if self.common.dry_run {
            info!("dry run: printing the plan, running nothing");
            return match plan::print(out, self.work, &config, &host, &services) {
                Ok(()) => Exit::Success,
                Err(e) => {
                    error!("failed to print the plan: {e}");
                    Exit::Fatal
                }
            };
        }
        if self.onboarding.is_some() {
            if services.len() != 1 || self.common.services.len() != 1 {
                error!("--run-onboarding needs exactly one service, given with -s");
                return Exit::Usage;
            }
            if !host.stdin_is_terminal {
                warn!(
                    "--run-onboarding without a terminal: htgettoken cannot show the OIDC device flow"
                );
            }
        }
        self.work(config, services, host, out)
    }

    /// Handles a subcommand; `None` when there is none (a normal run).
    fn subcommand(
        &self,
        config: &Config,
        services: &[Service],
        host: &HostEnv,
        out: &mut dyn Write,
    ) -> Option<Exit> {
        let exit = match self.command.as_ref()? {
            Command::CheckConfig => {
                for warning in check::role_file_overlaps(services) {
                    warn!("{warning}");
                }
                let problems = check::environment(self.binary, services, host.path.as_deref());
                for p in &problems {
                    error!("{}: {}", p.subject, p.message);
                }
                let _ = writeln!(
                    out,
                    "configuration `{}`: {} services; {}",
                    config.path.display(),
                    services.len(),
                    if problems.is_empty() {
                        "ok".to_string()
                    } else {
                        format!("{} problems", problems.len())
                    }
                );
                if problems.is_empty() {
                    Exit::Success
                } else {
                    Exit::Usage
                }
            }
            Command::Status => status::print(config, services, self.common.json, out),
            Command::NotifyUnitFailure { unit } => {
                let journal = journal_excerpt(unit);
                let mut state = open_state(config).ok();
                notify::notify_unit_failure(config, unit, &journal, state.as_mut());
                Exit::Success
            }
            Command::Generate { .. } => {
                unreachable!("`generate` is answered before the configuration is read")
            }
        };
        Some(exit)
    }

    /// The run itself: lock, work on the pool, then record, notify, publish and report.
    fn work(
        self,
        config: Config,
        services: Vec<Service>,
        host: HostEnv,
        out: &mut dyn Write,
    ) -> Exit {
        let _lock = match RunLock::acquire(&config.lock_dir, self.binary.name()) {
            Ok(lock) => lock,
            Err(LockError::Held { path }) => {
                warn!(
                    "another {} run holds `{}`; exiting",
                    self.binary,
                    path.display()
                );
                return Exit::Locked;
            }
            Err(LockError::Io(e)) => {
                error!("{e:#}");
                return Exit::Fatal;
            }
        };
        rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));

        let started = Instant::now();
        let names = services.iter().map(|s| s.name.clone()).collect();
        let mut report = RunReport::new(self.binary, self.common.test, names);
        let (ctx, pool) = match self.prepare(config, host, started, &mut report) {
            Ok(prepared) => prepared,
            Err(exit) => return exit,
        };
        info!(
            "{} for {} services (concurrency {})",
            self.binary,
            services.len(),
            ctx.config.concurrency
        );
        let progress = self.progress(&ctx.host, &services);
        report.outcomes = pool.install(|| self.outcomes(&ctx, &services, &progress));
        drop(progress);
        report.duration = started.elapsed();
        if ctx.runner.is_cancelled() {
            warn!("the run was cut short (global timeout or signal); reporting what was done");
        }

        self.finish(ctx, &mut report);
        summarize(&report);
        if self.common.json {
            let _ =
                serde_json::to_writer_pretty(&mut *out, &report.summary()).map(|()| writeln!(out));
        }
        report.exit()
    }

    /// Everything a run needs before its work: the runner with the run's deadline (and
    /// SIGTERM wired to it), the state, the private directory and the bounded pool. A state
    /// database that cannot be opened is a run error, not a reason to stay silent.
    fn prepare(
        &self,
        config: Config,
        host: HostEnv,
        started: Instant,
        report: &mut RunReport,
    ) -> Result<(Context, rayon::ThreadPool), Exit> {
        let runner = Runner::new(started + config.timeouts.global);
        let handler_runner = runner.clone();
        if let Err(e) = ctrlc::set_handler(move || {
            warn!("terminating: stopping every running command");
            handler_runner.cancel();
        }) {
            warn!("cannot handle SIGTERM: {e}");
        }
        let state = match open_state(&config) {
            Ok(state) => Some(state),
            Err(e) => {
                let message = format!("state database unavailable: {e:#}");
                error!("{message}");
                report.run_errors.push(message);
                None
            }
        };
        let mut builder = tempfile::Builder::new();
        builder.prefix("managed-tokens-");
        let run_dir = match &host.runtime_directory {
            Some(dir) => builder.tempdir_in(dir),
            None => builder.tempdir(),
        }
        .map_err(|e| {
            error!("failed to create a private run directory: {e}");
            Exit::Fatal
        })?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(config.concurrency)
            .thread_name(|i| format!("worker-{i}"))
            .build()
            .map_err(|e| {
                error!("failed to start {} workers: {e}", config.concurrency);
                Exit::Fatal
            })?;
        let mut ctx = Context::new(config, host, runner, run_dir, state);
        ctx.verbose = self.common.verbose > 0;
        ctx.test = self.common.test;
        Ok((ctx, pool))
    }

    /// After the work, whatever happened: the state, the notifications and the metrics.
    fn finish(&self, ctx: Context, report: &mut RunReport) {
        let enabled = !self.common.dont_notify && self.onboarding.is_none();
        if !enabled {
            info!("notifications are off for this run");
        }
        let Context { config, state, .. } = ctx;
        let mut state = state.map(|s| {
            s.into_inner()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        });
        let options = NotifyOptions {
            enabled,
            test: self.common.test,
        };
        notify::finish_run(&config, report, state.as_mut(), &options);
        crate::metrics::publish(&config, report, state.as_ref());
    }

    fn outcomes(
        &self,
        ctx: &Context,
        services: &[Service],
        progress: &Progress,
    ) -> Vec<crate::report::Outcome> {
        match (self.work, self.onboarding) {
            (Work::Refresh, Some(push_after)) => {
                let mut outcomes = refresh::run(ctx, services, refresh::Mode::Onboarding);
                if push_after && outcomes.iter().all(|o| o.is_ok()) {
                    outcomes.extend(push::run(ctx, services));
                }
                outcomes
            }
            (Work::Refresh, None) => {
                progress.each(services, |one| refresh::run(ctx, one, refresh::Mode::Batch))
            }
            (Work::Push, _) => progress.each(services, |one| push::run(ctx, one)),
            (Work::Ping(probe), _) => reachability::run(ctx, services, probe),
        }
    }

    /// The progress line of the run: none under systemd, off a terminal, with `--json`,
    /// `-q`, or `--run-onboarding` (the storer then owns the terminal).
    fn progress(&self, host: &HostEnv, services: &[Service]) -> Progress {
        let shown = self.onboarding.is_none()
            && progress::wanted(host, self.common.json, self.common.quiet > 0);
        match self.work {
            Work::Refresh => Progress::counted(shown, "refresh", services.len()),
            Work::Push => Progress::counted(shown, "push", services.len()),
            Work::Ping(_) => Progress::counted(shown, "ping", reachability::nodes(services).len()),
        }
    }
}

/// Opens the state database with the configured lock timeout.
pub fn open_state(config: &Config) -> anyhow::Result<State> {
    State::open(&config.db_location, config.timeouts.db)
}

/// The services chosen by `-e` and `-s` (all when neither is given).
pub fn select(config: &Config, args: &CommonArgs) -> Result<Vec<Service>, String> {
    let experiments: Vec<&str> = {
        let mut e: Vec<&str> = config
            .services
            .iter()
            .map(|s| s.experiment.as_str())
            .collect();
        e.dedup();
        e
    };
    for wanted in &args.experiments {
        if !experiments.contains(&wanted.as_str()) {
            return Err(unknown("experiment", wanted, experiments.iter().copied()));
        }
    }
    for wanted in &args.services {
        if config.service(wanted).is_none() {
            return Err(unknown(
                "service",
                wanted,
                config.services.iter().map(|s| s.name.as_str()),
            ));
        }
    }
    let all = args.experiments.is_empty() && args.services.is_empty();
    Ok(config
        .services
        .iter()
        .filter(|s| {
            all || args.experiments.contains(&s.experiment) || args.services.contains(&s.name)
        })
        .cloned()
        .collect())
}

fn unknown<'a>(what: &str, wanted: &str, known: impl Iterator<Item = &'a str> + Clone) -> String {
    match config::suggest(wanted, known.clone()) {
        Some(near) => format!("unknown {what} `{wanted}`; did you mean `{near}`?"),
        None => format!(
            "unknown {what} `{wanted}`; known: {}",
            known.collect::<Vec<_>>().join(", ")
        ),
    }
}

fn list_services(services: &[Service], json: bool, out: &mut dyn Write) -> Exit {
    let result = if json {
        let list: Vec<_> = services
            .iter()
            .map(|s| {
                serde_json::json!({
                    "name": s.name, "real_name": s.real_name, "account": s.account,
                    "nodes": s.nodes, "token_getter": s.token_getter,
                })
            })
            .collect();
        serde_json::to_writer_pretty(&mut *out, &list)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(out))
    } else {
        services.iter().try_for_each(|s| {
            writeln!(
                out,
                "{}\t{}\t{}\t{}",
                s.name,
                s.real_name,
                s.account,
                s.nodes.join(",")
            )
        })
    };
    match result {
        Ok(()) => Exit::Success,
        Err(e) => {
            error!("failed to write the list: {e}");
            Exit::Fatal
        }
    }
}

fn summarize(report: &RunReport) {
    let failed: Vec<&String> = report
        .services
        .iter()
        .filter(|s| report.service_failed(s))
        .collect();
    let failed_nodes = report.failures().filter(|o| o.service.is_none()).count();
    let line = format!(
        "{}: {} services, {} succeeded, {} failed{} in {:.1}s",
        report.binary,
        report.services.len(),
        report.services.len() - failed.len(),
        failed.len(),
        if failed_nodes > 0 {
            format!(", {failed_nodes} unreachable nodes")
        } else {
            String::new()
        },
        report.duration.as_secs_f64()
    );
    if failed.is_empty() && report.run_errors.is_empty() && failed_nodes == 0 {
        info!("{line}");
    } else {
        warn!("{line}");
    }
}

/// The last lines of a unit's journal, for the failure notification.
fn journal_excerpt(unit: &str) -> String {
    let cmd = crate::runner::Command::new("journalctl")
        .args(["--no-pager", "--lines=30", "--output=short-iso", "--unit"])
        .arg(unit)
        .timeout(Duration::from_secs(10));
    let runner = Runner::new(Instant::now() + Duration::from_secs(15));
    match runner.run(&cmd) {
        Ok(out) => crate::secret::scrub(&out.stdout),
        Err(e) => format!("(the journal could not be read: {e})"),
    }
}
