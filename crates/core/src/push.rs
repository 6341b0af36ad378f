//! token-pusher's work: for every service, its UID and newest local vault token, a
//! Kerberos ticket, and one rsync per node (per destination directory) in parallel.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use log::{info, warn};
use rayon::prelude::*;

use crate::accounts;
use crate::context::Context;
use crate::kerberos::Ccache;
use crate::report::{Failure, FailureClass, Outcome, Stage, Target};
use crate::service::Service;
use crate::transfer::{self, Batch};
use crate::vault;

/// Pushes every service's token to its nodes.
pub fn run(ctx: &Context, services: &[Service]) -> Vec<Outcome> {
    services
        .par_iter()
        .flat_map(|s| push_service(ctx, s))
        .collect()
}

/// Where a service's UID on the nodes comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UidSource {
    /// `desiredUIDOverride`.
    Override,
    /// The state database's cache (filled by an earlier lookup, or FERRY).
    State,
    /// FERRY (`ferry`), cached in the state afterwards.
    Ferry,
    /// The local passwd database.
    Passwd,
}

/// How long a UID cached from FERRY is used before FERRY is asked again.
const FERRY_REFRESH: Duration = Duration::from_secs(24 * 3600);

/// The cached UID of `account`, and whether it was confirmed within [`FERRY_REFRESH`].
fn cached_uid(ctx: &Context, account: &str) -> Option<(u32, bool)> {
    let state = ctx.state()?;
    let uid = match state.cached_uid(account) {
        Ok(uid) => uid?,
        Err(e) => {
            warn!("cannot read the cached UID of `{account}`: {e:#}");
            return None;
        }
    };
    let fresh = state
        .uid_refreshed(account)
        .ok()
        .flatten()
        .and_then(|at| at.elapsed().ok())
        .is_some_and(|age| age < FERRY_REFRESH);
    Some((uid, fresh))
}

fn cache_uid(ctx: &Context, account: &str, uid: u32) {
    if let Some(mut state) = ctx.state()
        && let Err(e) = state.store_uid(account, uid)
    {
        warn!("cannot cache the UID of `{account}`: {e:#}");
    }
}

/// The UID of `service` on the nodes: override, then state, then passwd (cached in the
/// state for the next run).
pub fn resolve_uid(ctx: &Context, service: &Service) -> Result<(u32, UidSource), Failure> {
    if let Some(uid) = service.desired_uid {
        return Ok((uid, UidSource::Override));
    }
    let cached = cached_uid(ctx, &service.account);
    if let Some((uid, fresh)) = cached
        && (fresh || ctx.config.ferry.is_none())
    {
        return Ok((uid, UidSource::State));
    }
    if let Some(ferry) = &ctx.config.ferry {
        match crate::ferry::lookup_uid(ferry, &service.account, ctx.config.timeouts.ferry) {
            Ok(Some(uid)) => {
                cache_uid(ctx, &service.account, uid);
                return Ok((uid, UidSource::Ferry));
            }
            Ok(None) => warn!("FERRY does not know the account `{}`", service.account),
            Err(e) => warn!("{e:#}"),
        }
        // FERRY could not confirm a cached UID: the cached one is still the best answer.
        if let Some((uid, _)) = cached {
            return Ok((uid, UidSource::State));
        }
    }
    let timeout = ctx.config.timeouts.kerberos;
    match accounts::lookup_uid(&ctx.runner, &service.account, timeout) {
        Ok(Some(uid)) => {
            cache_uid(ctx, &service.account, uid);
            Ok((uid, UidSource::Passwd))
        }
        Ok(None) => Err(Failure::new(
            FailureClass::NoUid,
            format!(
                "no UID for account `{}`: set `desiredUIDOverride` or make the account known to \
                 the passwd database",
                service.account
            ),
        )),
        Err(e) => Err(Failure::new(
            FailureClass::NoUid,
            format!("UID lookup of `{}` failed: {e:#}", service.account),
        )),
    }
}

fn push_service(ctx: &Context, service: &Service) -> Vec<Outcome> {
    let started = Instant::now();
    let fail = |stage, failure: Failure| {
        log::error!("`{}`: {failure}", service.name);
        vec![Outcome::failed(
            &service.name,
            Target::Service,
            stage,
            started.elapsed(),
            failure,
        )]
    };
    let uid = match resolve_uid(ctx, service) {
        Ok((uid, source)) => {
            log::debug!(
                "`{}`: UID {uid} on the nodes, from {source:?}",
                service.name
            );
            uid
        }
        Err(f) => return fail(Stage::Setup, f),
    };
    let token = match vault::newest_token(&service.token_store, ctx.local_uid, &service.real_name) {
        Ok(Some((path, token))) => {
            log::debug!(
                "`{}`: pushing the token from `{}`",
                service.name,
                path.display()
            );
            token
        }
        Ok(None) => {
            return fail(
                Stage::Setup,
                Failure::new(
                    FailureClass::NoToken,
                    format!(
                        "no valid vault token for `{}` in `{}`; run token-refresher first",
                        service.real_name,
                        service.token_store.display()
                    ),
                ),
            );
        }
        Err(e) => {
            return fail(
                Stage::Setup,
                Failure::new(FailureClass::NoToken, format!("{e:#}")),
            );
        }
    };
    let batches = match stage_files(ctx, service, uid, &token) {
        Ok(b) => b,
        Err(e) => {
            return fail(
                Stage::Setup,
                Failure::new(FailureClass::Setup, format!("{e:#}")),
            );
        }
    };

    let ccache = match ctx.kinit(service) {
        Ok(ccache) => ccache,
        Err(f) => return fail(Stage::Kerberos, f),
    };
    if ctx.test {
        info!(
            "test run: not pushing `{}` to {} nodes",
            service.name,
            service.nodes.len()
        );
        return vec![Outcome::ok(
            &service.name,
            Target::Service,
            Stage::Kerberos,
            started.elapsed(),
        )];
    }
    service
        .nodes
        .par_iter()
        .map(|node| push_node(ctx, service, node, &batches, &ccache))
        .collect()
}

/// Writes the files under their destination names, one directory per destination
/// directory, so each node gets one rsync call per directory.
fn stage_files(
    ctx: &Context,
    service: &Service,
    uid: u32,
    token: &str,
) -> anyhow::Result<Vec<Batch>> {
    let token_line = format!("{token}\n");
    let role_line = format!("{}\n", service.role);
    let by_dir = destinations(service, &uid.to_string());

    let root = ctx.dir().join(format!("push-{}", service.name));
    let mut batches = Vec::new();
    for (i, (dir, files)) in by_dir.into_iter().enumerate() {
        let local = root.join(i.to_string());
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&local)?;
        let mut paths = Vec::new();
        for (name, content) in files {
            let path = local.join(&name);
            let content = match content {
                Content::Token => &token_line,
                Content::Role => &role_line,
            };
            write_private(&path, content)?;
            paths.push(path);
        }
        batches.push(Batch { dir, files: paths });
    }
    Ok(batches)
}

/// What a destination file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    /// The vault token.
    Token,
    /// The role name (the default-role file).
    Role,
}

/// The files a service puts on each node, grouped by destination directory (one rsync
/// call per directory): `vt_u<uid>` and `vt_u<uid>-<real name>` in `/tmp`, and the
/// default-role file where its template says. `uid` is as written (a number, or a
/// placeholder for display).
pub fn destinations(service: &Service, uid: &str) -> BTreeMap<String, Vec<(String, Content)>> {
    let mut by_dir: BTreeMap<String, Vec<(String, Content)>> = BTreeMap::new();
    let tmp = by_dir.entry("/tmp".into()).or_default();
    tmp.push((format!("vt_u{uid}"), Content::Token));
    tmp.push((format!("vt_u{uid}-{}", service.real_name), Content::Token));
    let role_file = PathBuf::from(service.role_file_destination_for(uid));
    let dir = role_file
        .parent()
        .map_or_else(|| "/".to_string(), |d| d.display().to_string());
    let name = role_file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    by_dir.entry(dir).or_default().push((name, Content::Role));
    by_dir
}

fn write_private(path: &Path, content: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(content.as_bytes())?;
    Ok(())
}

/// Pushes every batch to `node`, retrying per `workerType.pushTokens` within
/// `pushTimeout`; an unreachable node is not retried.
fn push_node(
    ctx: &Context,
    service: &Service,
    node: &str,
    batches: &[Batch],
    ccache: &Ccache,
) -> Outcome {
    let started = Instant::now();
    let end = started + ctx.config.timeouts.push;
    let target = Target::Node(node.to_string());
    let result = ctx.runner.retry(
        ctx.config.retries.push,
        &format!("`{}`: push to `{node}`", service.name),
        Some(end),
        retryable,
        || push_once(ctx, service, node, batches, ccache, end),
    );
    Outcome::finish(
        &service.name,
        target,
        Stage::Push,
        started,
        result,
        |secs| {
            format!(
                "pushed the vault token of `{}` to `{node}` in {secs:.1}s",
                service.name
            )
        },
    )
}

fn retryable(f: &Failure) -> bool {
    !matches!(
        f.class,
        FailureClass::Unreachable | FailureClass::Cancelled | FailureClass::Timeout
    )
}

fn push_once(
    ctx: &Context,
    service: &Service,
    node: &str,
    batches: &[Batch],
    ccache: &Ccache,
    end: Instant,
) -> Result<(), Failure> {
    for batch in batches {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Failure::new(
                FailureClass::Timeout,
                format!("push to `{node}` exceeded pushTimeout"),
            ));
        }
        let cmd = transfer::rsync_command(
            service,
            node,
            batch,
            &ccache.env_value(),
            left.max(Duration::from_millis(100)),
        );
        ctx.runner.run(&cmd).map_err(|e| {
            let what = format!("rsync to `{node}:{}` failed", batch.dir);
            Failure::classified(what, &e, &transfer::PATTERNS, FailureClass::RsyncFailed)
        })?;
    }
    Ok(())
}
