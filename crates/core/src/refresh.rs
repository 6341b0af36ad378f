//! token-refresher's work: for every service, kinit, find the credds, and run
//! condor_vault_storer for each credd in parallel (or htgettoken directly), keeping the
//! local store up to date.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::PoisonError;
use std::time::{Duration, Instant};

use log::warn;
use rayon::prelude::*;

use crate::condor::{self, StorerCall};
use crate::context::Context;
use crate::kerberos::Ccache;
use crate::report::{Failure, FailureClass, Outcome, Stage, Target};
use crate::runner::Command;
use crate::service::{Service, TokenGetter};
use crate::vault;

/// The directory condor_vault_storer writes its vault tokens to; hard-coded in the script.
const STORER_TMP: &str = "/tmp";

/// How the storer runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Unattended: captured output, `vaultStorerTimeout`.
    Batch,
    /// Onboarding: the operator's terminal attached, `onboardingTimeout`, one credd at a
    /// time.
    Onboarding,
}

/// Refreshes every service in parallel; one outcome per (service, stage, target).
pub fn run(ctx: &Context, services: &[Service], mode: Mode) -> Vec<Outcome> {
    services
        .par_iter()
        .flat_map(|s| refresh_service(ctx, s, mode))
        .collect()
}

fn refresh_service(ctx: &Context, service: &Service, mode: Mode) -> Vec<Outcome> {
    let started = Instant::now();
    let fail = |stage, target, failure: Failure| {
        log::error!(
            "`{}`: {target} failed at {stage:?}: {failure}",
            service.name
        );
        vec![Outcome::failed(
            &service.name,
            target,
            stage,
            started.elapsed(),
            failure,
        )]
    };
    let vault = match condor::vault_server(
        &ctx.runner,
        &ctx.host,
        service,
        &ctx.vault_from_condor,
        ctx.config.timeouts.collector,
    ) {
        Ok(v) => v,
        Err(f) => return fail(Stage::Setup, Target::Service, f),
    };

    let ccache = match ctx.kinit(service) {
        Ok(ccache) => ccache,
        Err(f) => return fail(Stage::Kerberos, Target::Service, f),
    };
    let timeouts = &ctx.config.timeouts;
    let mut outcomes = vec![Outcome::ok(
        &service.name,
        Target::Service,
        Stage::Kerberos,
        started.elapsed(),
    )];

    match service.token_getter {
        TokenGetter::GetToken => outcomes.push(get_token(ctx, service, &ccache, &vault, mode)),
        TokenGetter::StoreAndGetToken => {
            let discovery_started = Instant::now();
            let credds = match ctx
                .discovery
                .credds(&ctx.runner, service, timeouts.collector)
            {
                Ok(c) => c,
                Err(f) => {
                    let target = Target::Collector(service.collectors.join(","));
                    outcomes.extend(fail(Stage::Discovery, target, f));
                    return outcomes;
                }
            };
            let one = |credd: &String| {
                store(
                    ctx,
                    service,
                    credd,
                    credds.collector.as_deref(),
                    &ccache,
                    &vault,
                    mode,
                )
            };
            if mode == Mode::Onboarding {
                outcomes.extend(credds.credds.iter().map(one));
            } else {
                outcomes.extend(credds.credds.par_iter().map(one).collect::<Vec<_>>());
            }
            log::debug!(
                "`{}`: credds found in {:.2}s",
                service.name,
                discovery_started.elapsed().as_secs_f64()
            );
        }
    }
    outcomes
}

/// One condor_vault_storer call for (service, credd), with the local copy staged in
/// before and taken out after.
fn store(
    ctx: &Context,
    service: &Service,
    credd: &str,
    collector: Option<&str>,
    ccache: &Ccache,
    vault: &str,
    mode: Mode,
) -> Outcome {
    let started = Instant::now();
    let store_file = vault::store_path(
        &service.token_store,
        ctx.local_uid,
        Some(credd),
        &service.real_name,
    );
    let lock = ctx.storer_lock(&store_file.to_string_lossy());
    let _serial = lock.lock().unwrap_or_else(PoisonError::into_inner);

    let result = Staging::prepare(ctx, service, &store_file).and_then(|staging| {
        let call = StorerCall {
            service,
            credd,
            collector,
            vault,
            ccache: ccache.env_value(),
            id: staging.id.as_deref(),
            runtime_dir: &staging.runtime_dir,
            verbose: ctx.verbose,
        };
        let result = run_storer(ctx, &call, mode).and_then(|()| staging.take_out(&store_file));
        staging.clean_up();
        result
    });
    let target = Target::Credd(credd.to_string());
    Outcome::finish(
        &service.name,
        target,
        Stage::Store,
        started,
        result,
        |secs| {
            format!(
                "stored the vault token of `{}` in credd `{credd}` in {secs:.1}s",
                service.name
            )
        },
    )
}

fn run_storer(ctx: &Context, call: &StorerCall<'_>, mode: Mode) -> Result<(), Failure> {
    let timeouts = &ctx.config.timeouts;
    let what = format!("condor_vault_storer for credd `{}`", call.credd);
    match mode {
        Mode::Onboarding => {
            let cmd = condor::storer_command(
                call,
                &ctx.host,
                ctx.config.min_token_lifetime,
                timeouts.onboarding,
            )
            .interactive();
            ctx.runner
                .run(&cmd)
                .map(|_| ())
                .map_err(|e| Failure::from_cmd(FailureClass::StorerFailed, &what, &e))
        }
        Mode::Batch => {
            let cmd = condor::storer_command(
                call,
                &ctx.host,
                ctx.config.min_token_lifetime,
                timeouts.vault_storer,
            );
            with_retries(ctx, &cmd, &what)
        }
    }
}

/// Runs `cmd` with the token stage's retry policy; authentication problems are not
/// retried, since only an operator can fix them.
fn with_retries(ctx: &Context, cmd: &Command, what: &str) -> Result<(), Failure> {
    let final_class = |f: &Failure| {
        matches!(
            f.class,
            FailureClass::AuthenticationNeeded
                | FailureClass::PermissionDenied
                | FailureClass::Cancelled
        )
    };
    ctx.runner.retry(
        ctx.config.retries.token,
        what,
        None,
        |f| !final_class(f),
        || {
            ctx.runner.run(cmd).map(|_| ()).map_err(|e| {
                Failure::classified(what, &e, &condor::PATTERNS, FailureClass::StorerFailed)
            })
        },
    )
}

/// The files of one storer call: the staged token in the storer's `/tmp` path and a
/// private runtime directory for bearer tokens.
struct Staging {
    id: Option<String>,
    tmp_token: PathBuf,
    tmp_copy: PathBuf,
    runtime_dir: PathBuf,
    backup: Option<PathBuf>,
}

impl Staging {
    fn prepare(ctx: &Context, service: &Service, store_file: &Path) -> Result<Self, Failure> {
        let n = ctx.next_id();
        let setup = |e: anyhow::Error| Failure::new(FailureClass::Setup, format!("{e:#}"));
        let runtime_dir = ctx.dir().join(format!("xdg-{n}"));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&runtime_dir)
            .map_err(|e| {
                setup(anyhow::anyhow!(
                    "failed to create `{}`: {e}",
                    runtime_dir.display()
                ))
            })?;

        // With isolation every call has its own ID, so its /tmp files cannot collide with
        // another service's. Without it, the storer uses u<uid> and calls are serialised;
        // an existing file is moved aside and restored afterwards.
        let (id, stem) = if ctx.config.storer_isolation {
            let id = format!("u{}mt{}x{n}", ctx.local_uid, std::process::id());
            (Some(id.clone()), id)
        } else {
            (None, format!("u{}", ctx.local_uid))
        };
        let tmp_token = Path::new(STORER_TMP).join(format!("vt_{stem}-{}", service.real_name));
        let tmp_copy = Path::new(STORER_TMP).join(format!("vt_{stem}"));
        let mut staging = Self {
            id,
            tmp_token,
            tmp_copy,
            runtime_dir,
            backup: None,
        };
        if staging.id.is_none() && staging.tmp_token.exists() {
            let backup = ctx.dir().join(format!("backup-{n}"));
            fs::rename(&staging.tmp_token, &backup)
                .or_else(|_| {
                    fs::copy(&staging.tmp_token, &backup)
                        .and_then(|_| fs::remove_file(&staging.tmp_token))
                })
                .map_err(|e| {
                    setup(anyhow::anyhow!(
                        "failed to move `{}` aside: {e}",
                        staging.tmp_token.display()
                    ))
                })?;
            staging.backup = Some(backup);
        }
        match vault::read_token(store_file) {
            Ok(Some(token)) => vault::write_new(&staging.tmp_token, &token).map_err(setup)?,
            Ok(None) => {}
            Err(e) => warn!("`{}`: ignoring the local copy: {e:#}", service.name),
        }
        Ok(staging)
    }

    /// Moves the token the storer left into the store, if it is one.
    fn take_out(&self, store_file: &Path) -> Result<(), Failure> {
        let token = vault::read_token(&self.tmp_token)
            .map_err(|e| Failure::new(FailureClass::StorerFailed, format!("{e:#}")))?
            .ok_or_else(|| {
                Failure::new(
                    FailureClass::StorerFailed,
                    format!(
                        "the storer succeeded but left no vault token in `{}`",
                        self.tmp_token.display()
                    ),
                )
            })?;
        vault::install(store_file, &token)
            .map_err(|e| Failure::new(FailureClass::Setup, format!("{e:#}")))
    }

    fn clean_up(self) {
        for path in [&self.tmp_token, &self.tmp_copy] {
            if let Err(e) = fs::remove_file(path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                warn!("failed to remove `{}`: {e}", path.display());
            }
        }
        // The storer copies its token to `/tmp/vt_<ID>` through `mktemp /tmp/vt_<ID>.XXXXXXXXXX`;
        // a storer killed between the two leaves that copy. With isolation the ID is this
        // call's alone, so whatever carries it is ours to remove.
        if let Some(id) = &self.id {
            let prefix = format!("vt_{id}.");
            for entry in fs::read_dir(STORER_TMP).into_iter().flatten().flatten() {
                if entry.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        let _ = fs::remove_dir_all(&self.runtime_dir);
        if let Some(backup) = &self.backup
            && let Err(e) = fs::rename(backup, &self.tmp_token)
        {
            warn!(
                "failed to restore `{}` from `{}`: {e}",
                self.tmp_token.display(),
                backup.display()
            );
        }
    }
}

/// `htgettoken -a <vault> -i <experiment> -r <role> --vaulttokenfile <staged> -o <bearer>`
pub fn htgettoken_command(
    ctx: &Context,
    service: &Service,
    vault: &str,
    vault_token_file: &Path,
    bearer_file: &Path,
    ccache: &Ccache,
    timeout: Duration,
) -> Command {
    let mut cmd = Command::new("htgettoken")
        .arg("-a")
        .arg(vault)
        .arg("-i")
        .arg(&service.real_experiment)
        .arg("-r")
        .arg(&service.role)
        .arg("--vaulttokenfile")
        .arg(vault_token_file)
        .arg("-o")
        .arg(bearer_file);
    if ctx.verbose {
        cmd = cmd.arg("--verbose");
    }
    cmd.env("KRB5CCNAME", ccache.env_value())
        .env(
            "HTGETTOKENOPTS",
            condor::htgettoken_options(&ctx.host, service, ctx.config.min_token_lifetime),
        )
        .timeout(timeout)
}

/// `tokenGetterOverride: getToken`: htgettoken straight into the local store (through a
/// private staging file, so a failed call never touches a good copy).
fn get_token(
    ctx: &Context,
    service: &Service,
    ccache: &Ccache,
    vault: &str,
    mode: Mode,
) -> Outcome {
    let started = Instant::now();
    let store_file = vault::store_path(
        &service.token_store,
        ctx.local_uid,
        None,
        &service.real_name,
    );
    let n = ctx.next_id();
    let staged = ctx.dir().join(format!("vt-{n}"));
    let bearer = ctx.dir().join(format!("bt-{n}"));
    let result = (|| {
        if let Ok(Some(token)) = vault::read_token(&store_file) {
            vault::write_new(&staged, &token)
                .map_err(|e| Failure::new(FailureClass::Setup, format!("{e:#}")))?;
        }
        let timeout = match mode {
            Mode::Batch => ctx.config.timeouts.vault_storer,
            Mode::Onboarding => ctx.config.timeouts.onboarding,
        };
        let mut cmd = htgettoken_command(ctx, service, vault, &staged, &bearer, ccache, timeout);
        if mode == Mode::Onboarding {
            cmd = cmd.interactive();
        }
        with_retries(ctx, &cmd, "htgettoken")?;
        let token = vault::read_token(&staged).ok().flatten().ok_or_else(|| {
            Failure::new(
                FailureClass::StorerFailed,
                "htgettoken succeeded but wrote no vault token",
            )
        })?;
        vault::install(&store_file, &token)
            .map_err(|e| Failure::new(FailureClass::Setup, format!("{e:#}")))
    })();
    for path in [&staged, &bearer] {
        let _ = fs::remove_file(path);
    }
    Outcome::finish(
        &service.name,
        Target::Service,
        Stage::GetToken,
        started,
        result,
        |secs| {
            format!(
                "obtained the vault token of `{}` with htgettoken in {secs:.1}s",
                service.name
            )
        },
    )
}
