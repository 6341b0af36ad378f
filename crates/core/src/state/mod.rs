//! The state shared by the three binaries: one SQLite database at `dbLocation` with the
//! consecutive-failure streak of every target, last successes, cached account UIDs and
//! the notifications that could not be delivered yet.
//!
//! The binaries may run at the same time, so every write is one short `IMMEDIATE`
//! transaction on a WAL database with a busy timeout. The Go service's database (schema
//! version 1, same `application_id`) is migrated forward in place.

mod pending;
mod schema;
mod status;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, ffi::ErrorCode, params};
use serde::Serialize;

use crate::report::{Binary, FailureClass, Outcome, RunReport, Stage, Target};
pub use pending::{Channel, Claimed, MAX_AGE, MAX_PENDING, Notification, PendingNotification};
pub use status::{CreddStatus, NodeStatus, ServiceStatus, StatusReport};

/// An open state database.
#[derive(Debug)]
pub struct State {
    conn: Connection,
    path: PathBuf,
    busy_timeout: Duration,
    /// Names this process in the `pending` table while it delivers a row.
    claimant: String,
}

impl State {
    /// Opens the database at `path`, creating it (and its directory, mode 0700) when
    /// missing, and migrates it to the current schema.
    ///
    /// Fails, naming the file and what to do, when the file is not SQLite or is corrupt,
    /// belongs to another application, has a newer schema than this program knows, or
    /// stays locked by another process for longer than `busy_timeout`.
    pub fn open(path: &Path, busy_timeout: Duration) -> anyhow::Result<Self> {
        prepare_file(path)?;
        let mut conn =
            Connection::open(path).map_err(|e| sql_error(e, path, "open the database"))?;
        conn.busy_timeout(busy_timeout)
            .map_err(|e| sql_error(e, path, "set the busy timeout"))?;
        {
            // One read transaction, so the checks see one snapshot even while another
            // process is creating the schema.
            let snapshot = conn
                .unchecked_transaction()
                .map_err(|e| sql_error(e, path, "read the database header"))?;
            schema::check_identity(&snapshot, path)?;
            snapshot
                .commit()
                .map_err(|e| sql_error(e, path, "read the database header"))?;
        }

        // WAL lets a reader (a status query, another binary's read) proceed while one
        // binary writes; it is persistent, so this only converts a Go database once.
        let mode = switch_to_wal(&conn, path, busy_timeout)?;
        if !mode.eq_ignore_ascii_case("wal") {
            log::warn!(
                "state database `{}` stays in journal mode `{mode}`",
                path.display()
            );
        }
        conn.pragma_update(None, "foreign_keys", true)
            .map_err(|e| sql_error(e, path, "enable foreign keys"))?;
        schema::migrate(&mut conn, path)?;

        let claimant = format!("{}-{}", std::process::id(), unix_nanos(SystemTime::now()));
        log::debug!("opened the state database `{}`", path.display());
        Ok(Self {
            conn,
            path: path.to_path_buf(),
            busy_timeout,
            claimant,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Changes how long a statement waits for another process's lock; notifications
    /// shorten it to what is left of their budget.
    pub fn set_busy_timeout(&mut self, timeout: Duration) -> anyhow::Result<()> {
        self.conn
            .busy_timeout(timeout)
            .map_err(|e| sql_error(e, &self.path, "set the busy timeout"))?;
        self.busy_timeout = timeout;
        Ok(())
    }

    /// Records every outcome of `report` in one transaction and returns what changed for
    /// each target the run touched.
    ///
    /// A target counts once per run however many of its outcomes failed; a run in which
    /// it only succeeded ends its streak. Targets the run did not touch keep their state.
    pub fn record_run(&mut self, report: &RunReport) -> anyhow::Result<RecordedRun> {
        let at = unix(report.started);
        let touched = touched_keys(report);
        let path = self.path.clone();
        let fail = |action: &str| {
            let path = path.clone();
            let action = action.to_string();
            move |e| sql_error(e, &path, &action)
        };

        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(fail("start recording the run"))?;
        let mut changes = Vec::with_capacity(touched.len());
        for (key, failed) in touched {
            changes.push(update_streak(&tx, key, failed, at).map_err(fail("update a streak"))?);
        }
        record_outcomes(&tx, report, at).map_err(fail("record the outcomes"))?;
        record_service_runs(&tx, report, at).map_err(fail("record the service runs"))?;
        tx.execute(
            "DELETE FROM streaks WHERE updated < ?1",
            params![at - FORGET_AFTER.as_secs() as i64],
        )
        .map_err(fail("forget old streaks"))?;
        tx.execute(
            "DELETE FROM outcomes WHERE at < ?1",
            params![at - FORGET_AFTER.as_secs() as i64],
        )
        .map_err(fail("forget old outcomes"))?;
        tx.commit().map_err(fail("commit the run"))?;

        log::debug!(
            "recorded the `{}` run in `{}`: {} targets",
            report.binary,
            self.path.display(),
            changes.len()
        );
        Ok(RecordedRun { changes })
    }

    /// Marks the current streaks of `keys` as notified to stakeholders, so that the
    /// success that ends them sends a recovery note.
    pub fn mark_notified(&mut self, keys: &[StreakKey]) -> anyhow::Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| sql_error(e, &self.path, "start marking notified streaks"))?;
        for key in keys {
            let (service, kind, name) = key.columns();
            tx.execute(
                "UPDATE streaks SET notified = 1
                 WHERE service = ?1 AND kind = ?2 AND name = ?3 AND count > 0",
                params![service, kind, name],
            )
            .map_err(|e| sql_error(e, &self.path, "mark a streak notified"))?;
        }
        tx.commit()
            .map_err(|e| sql_error(e, &self.path, "commit notified streaks"))
    }

    /// The UID cached for `account`, if any.
    pub fn cached_uid(&self, account: &str) -> anyhow::Result<Option<u32>> {
        let uid: Option<i64> = self
            .conn
            .query_row(
                "SELECT uid FROM uids WHERE username = ?1",
                [account],
                |row| row.get(0),
            )
            .optional()
            .map_err(|e| sql_error(e, &self.path, &format!("read the UID of `{account}`")))?;
        uid.map(|uid| {
            u32::try_from(uid).with_context(|| {
                format!(
                    "the UID cached for `{account}` in `{}` is out of range: {uid}",
                    self.path.display()
                )
            })
        })
        .transpose()
    }

    /// Caches `uid` for `account`, replacing any previous value.
    ///
    /// The Go schema makes UIDs unique, so another account cached with the same UID (an
    /// account renamed since) loses its entry.
    pub fn store_uid(&mut self, account: &str, uid: u32) -> anyhow::Result<()> {
        let fail = |e| sql_error(e, &self.path, &format!("store the UID of `{account}`"));
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(fail)?;
        tx.execute(
            "DELETE FROM uids WHERE uid = ?1 AND username <> ?2",
            params![uid, account],
        )
        .map_err(fail)?;
        tx.execute(
            "INSERT INTO uids (username, uid) VALUES (?1, ?2)
             ON CONFLICT (username) DO UPDATE SET uid = excluded.uid",
            params![account, uid],
        )
        .map_err(fail)?;
        tx.execute(
            "INSERT INTO uid_refreshed (username, refreshed) VALUES (?1, ?2)
             ON CONFLICT (username) DO UPDATE SET refreshed = excluded.refreshed",
            params![account, unix(SystemTime::now())],
        )
        .map_err(fail)?;
        tx.commit().map_err(fail)
    }

    /// When the UID of `account` was last cached; `None` when never, or when it came from
    /// the Go service's database.
    pub fn uid_refreshed(&self, account: &str) -> anyhow::Result<Option<SystemTime>> {
        self.conn
            .query_row(
                "SELECT refreshed FROM uid_refreshed WHERE username = ?1",
                [account],
                |row| row.get::<_, i64>(0),
            )
            .optional()
            .map(|secs| secs.map(from_unix))
            .map_err(|e| {
                sql_error(
                    e,
                    &self.path,
                    &format!("read when the UID of `{account}` was cached"),
                )
            })
    }
}

/// Rows not touched for this long are dropped: targets removed from the configuration.
const FORGET_AFTER: Duration = Duration::from_secs(90 * 24 * 3600);

/// The target a consecutive-failure streak is counted for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum StreakKey {
    /// Setup, Kerberos, discovery and store failures of a service, per binary: a
    /// successful push run must not end a streak of failing refreshes, nor the reverse.
    Service {
        /// Configuration name of the service.
        service: String,
        /// The binary whose runs the streak counts.
        binary: Binary,
    },
    /// Pushes of a service's tokens to one node.
    Push {
        /// Configuration name of the service.
        service: String,
        /// The destination node.
        node: String,
    },
    /// Vault asking for an interactive login: the service must be re-onboarded. A store
    /// that succeeds ends it; other store failures leave it as it is.
    Authentication {
        /// Configuration name of the service.
        service: String,
    },
    /// Reachability of one node, whatever services use it.
    Ping {
        /// The node.
        node: String,
    },
}

impl StreakKey {
    /// The streak that describes a failed `outcome` of a run of `binary`: for an
    /// authentication-needed failure its own streak, else the one it counts in.
    pub fn of_failure(outcome: &Outcome, binary: Binary) -> Self {
        let keys = touches(outcome, binary);
        keys.iter()
            .find(|(key, _)| matches!(key, Self::Authentication { .. }))
            .or(keys.first())
            .map(|(key, _)| key.clone())
            .unwrap_or_else(|| Self::Service {
                service: outcome.service.clone().unwrap_or_default(),
                binary,
            })
    }

    /// The configuration name of the service, if the streak belongs to one.
    pub fn service(&self) -> Option<&str> {
        match self {
            Self::Service { service, .. }
            | Self::Push { service, .. }
            | Self::Authentication { service } => Some(service),
            Self::Ping { .. } => None,
        }
    }

    fn columns(&self) -> (&str, &'static str, &str) {
        match self {
            Self::Service { service, binary } => (service, "service", binary.name()),
            Self::Push { service, node } => (service, "push", node),
            Self::Authentication { service } => (service, "authentication", ""),
            Self::Ping { node } => ("", "ping", node),
        }
    }
}

/// What one run changed for one target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetChange {
    /// The target.
    pub key: StreakKey,
    /// Whether the target failed in this run.
    pub failed: bool,
    /// Consecutive failing runs including this one; 0 after a success.
    pub count: u32,
    /// The count before this run.
    pub previous_count: u32,
    /// First failure of the streak: the current one after a failure, the one that just
    /// ended after a success. `None` when unknown (a streak carried over from the Go
    /// service) or when there was no streak.
    #[serde(serialize_with = "status::rfc3339_opt")]
    pub since: Option<SystemTime>,
    /// Whether stakeholders had been told about the streak before this run.
    pub previously_notified: bool,
}

impl TargetChange {
    /// Whether this run ended a streak stakeholders had been told about.
    pub fn recovered(&self) -> bool {
        !self.failed && self.previous_count > 0 && self.previously_notified
    }
}

/// What [`State::record_run`] changed, one entry per target the run touched.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RecordedRun {
    /// One change per target, in the order the report first mentions them.
    pub changes: Vec<TargetChange>,
}

impl RecordedRun {
    /// What a run would have changed on an empty history: every failure is the first of
    /// its streak. Used when the state database is unavailable.
    pub fn without_history(report: &RunReport) -> Self {
        let changes = touched_keys(report)
            .into_iter()
            .map(|(key, failed)| TargetChange {
                key,
                failed,
                count: u32::from(failed),
                previous_count: 0,
                since: failed.then_some(report.started),
                previously_notified: false,
            })
            .collect();
        Self { changes }
    }

    /// The change for `key`, if the run touched it.
    pub fn change(&self, key: &StreakKey) -> Option<&TargetChange> {
        self.changes.iter().find(|c| &c.key == key)
    }
}

/// Every streak the report touches, once, with whether it failed in this run.
fn touched_keys(report: &RunReport) -> Vec<(StreakKey, bool)> {
    let mut order: Vec<(StreakKey, bool)> = Vec::new();
    let mut index: HashMap<StreakKey, usize> = HashMap::new();
    for outcome in &report.outcomes {
        for (key, failed) in touches(outcome, report.binary) {
            match index.get(&key) {
                Some(&i) => order[i].1 |= failed,
                None => {
                    index.insert(key.clone(), order.len());
                    order.push((key, failed));
                }
            }
        }
    }
    order
}

/// The streaks one outcome counts in, each with whether it is a failure there.
fn touches(outcome: &Outcome, binary: Binary) -> Vec<(StreakKey, bool)> {
    let failed = !outcome.is_ok();
    let service = outcome.service.clone().unwrap_or_default();
    match (outcome.stage, &outcome.target) {
        (Stage::Ping, Target::Node(node)) => vec![(StreakKey::Ping { node: node.clone() }, failed)],
        (Stage::Push, Target::Node(node)) => {
            vec![(
                StreakKey::Push {
                    service,
                    node: node.clone(),
                },
                failed,
            )]
        }
        (stage, _) => {
            let class = outcome.failure.as_ref().map(|f| f.class);
            let mut keys = vec![(
                StreakKey::Service {
                    service: service.clone(),
                    binary,
                },
                failed,
            )];
            let storing = matches!(stage, Stage::Store | Stage::GetToken);
            if class == Some(FailureClass::AuthenticationNeeded) {
                keys.push((StreakKey::Authentication { service }, true));
            } else if storing && class.is_none() {
                keys.push((StreakKey::Authentication { service }, false));
            }
            keys
        }
    }
}

fn update_streak(
    tx: &rusqlite::Transaction<'_>,
    key: StreakKey,
    failed: bool,
    at: i64,
) -> rusqlite::Result<TargetChange> {
    let (service, kind, name) = key.columns();
    let previous: Option<(i64, Option<i64>, bool)> = tx
        .prepare_cached(
            "SELECT count, since, notified FROM streaks
             WHERE service = ?1 AND kind = ?2 AND name = ?3",
        )?
        .query_row(params![service, kind, name], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })
        .optional()?;
    let (previous_count, previous_since, previously_notified) =
        previous.unwrap_or((0, None, false));
    let previous_count = u32::try_from(previous_count).unwrap_or(0);
    let previously_notified = previous_count > 0 && previously_notified;

    let (count, since, notified) = if failed {
        let since = if previous_count == 0 {
            Some(at)
        } else {
            previous_since
        };
        (previous_count.saturating_add(1), since, previously_notified)
    } else {
        (0, None, false)
    };
    tx.prepare_cached(
        "INSERT INTO streaks (service, kind, name, count, since, notified, updated)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (service, kind, name) DO UPDATE SET
             count = excluded.count, since = excluded.since,
             notified = excluded.notified, updated = excluded.updated",
    )?
    .execute(params![service, kind, name, count, since, notified, at])?;

    let since = if failed {
        since
    } else {
        previous_since.filter(|_| previous_count > 0)
    };
    Ok(TargetChange {
        key,
        failed,
        count,
        previous_count,
        since: since.map(from_unix),
        previously_notified,
    })
}

/// Keeps the last outcome of every (service, stage, target), with its last success.
fn record_outcomes(
    tx: &rusqlite::Transaction<'_>,
    report: &RunReport,
    at: i64,
) -> rusqlite::Result<()> {
    type Columns = (String, &'static str, &'static str, String);
    let mut rows: Vec<(&Outcome, Columns)> = Vec::new();
    let mut index: HashMap<Columns, usize> = HashMap::new();
    for outcome in &report.outcomes {
        let key = outcome_columns(outcome);
        match index.get(&key) {
            // A failure of the same target in the same run wins over its successes.
            Some(&i) if rows[i].0.is_ok() && !outcome.is_ok() => rows[i].0 = outcome,
            Some(_) => {}
            None => {
                index.insert(key.clone(), rows.len());
                rows.push((outcome, key));
            }
        }
    }
    let mut statement = tx.prepare(
        "INSERT INTO outcomes
             (service, stage, target_kind, target_name, binary, at, ok, class, message, last_success)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
         ON CONFLICT (service, stage, target_kind, target_name) DO UPDATE SET
             binary = excluded.binary, at = excluded.at, ok = excluded.ok,
             class = excluded.class, message = excluded.message,
             last_success = coalesce(excluded.last_success, outcomes.last_success)",
    )?;
    for (outcome, (service, stage, target_kind, target_name)) in rows {
        let failure = outcome.failure.as_ref();
        statement.execute(params![
            service,
            stage,
            target_kind,
            target_name,
            report.binary.name(),
            at,
            outcome.is_ok(),
            failure.map(|f| class_name(f.class)),
            failure.map(|f| crate::secret::scrub(&f.to_string())),
            outcome.is_ok().then_some(at),
        ])?;
    }
    Ok(())
}

/// Keeps, per service and binary, the last run and the last run without any failure.
fn record_service_runs(
    tx: &rusqlite::Transaction<'_>,
    report: &RunReport,
    at: i64,
) -> rusqlite::Result<()> {
    let mut services: Vec<&str> = report
        .outcomes
        .iter()
        .filter_map(|o| o.service.as_deref())
        .filter(|s| !s.is_empty())
        .collect();
    services.sort_unstable();
    services.dedup();
    let failed: HashSet<&str> = report
        .failures()
        .filter_map(|o| o.service.as_deref())
        .collect();
    let mut statement = tx.prepare(
        "INSERT INTO service_runs (service, binary, last_run, ok, last_success)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (service, binary) DO UPDATE SET
             last_run = excluded.last_run, ok = excluded.ok,
             last_success = coalesce(excluded.last_success, service_runs.last_success)",
    )?;
    for service in services {
        let ok = !failed.contains(service);
        statement.execute(params![
            service,
            report.binary.name(),
            at,
            ok,
            ok.then_some(at)
        ])?;
    }
    Ok(())
}

fn outcome_columns(outcome: &Outcome) -> (String, &'static str, &'static str, String) {
    let (kind, name) = match &outcome.target {
        Target::Service => ("service", String::new()),
        Target::Credd(c) => ("credd", c.clone()),
        Target::Node(n) => ("node", n.clone()),
        Target::Collector(c) => ("collector", c.clone()),
    };
    let service = match outcome.stage {
        // A node's reachability does not depend on the service that asked.
        Stage::Ping => String::new(),
        _ => outcome.service.clone().unwrap_or_default(),
    };
    (service, outcome.stage.name(), kind, name)
}

/// The class as the `--json` summary spells it.
fn class_name(class: FailureClass) -> String {
    match serde_json::to_value(class) {
        Ok(serde_json::Value::String(name)) => name,
        _ => class.describe().to_string(),
    }
}

/// Creates the directory (0700) and the file (0600) with explicit modes, so the umask
/// does not decide who can read the failure history and the pending messages.
fn prepare_file(path: &Path) -> anyhow::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        let mut missing = Vec::new();
        let mut dir = parent;
        while !dir.exists() {
            missing.push(dir.to_path_buf());
            match dir.parent() {
                Some(up) if !up.as_os_str().is_empty() => dir = up,
                _ => break,
            }
        }
        for dir in missing.iter().rev() {
            match fs::DirBuilder::new().mode(0o700).create(dir) {
                Ok(()) => fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                    .with_context(|| format!("failed to set the mode of `{}`", dir.display()))?,
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("failed to create the state directory `{}`", dir.display())
                    });
                }
            }
        }
    }

    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => fs::set_permissions(path, fs::Permissions::from_mode(0o600))
            .with_context(|| format!("failed to set the mode of `{}`", path.display())),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            let mode = fs::metadata(path)
                .with_context(|| format!("failed to read the state database `{}`", path.display()))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                // Tighten what we can; a file we cannot chmod is reported, not fatal.
                match fs::set_permissions(path, fs::Permissions::from_mode(0o600)) {
                    Ok(()) => log::warn!(
                        "state database `{}` was readable by others (mode {:o}); set it to 0600",
                        path.display(),
                        mode & 0o777
                    ),
                    Err(e) => log::warn!(
                        "state database `{}` is readable by others (mode {:o}) and cannot be \
                         changed: {e}",
                        path.display(),
                        mode & 0o777
                    ),
                }
            }
            Ok(())
        }
        Err(e) => Err(e)
            .with_context(|| format!("failed to create the state database `{}`", path.display())),
    }
}

/// Wraps a SQLite error with the file and the action, and says what to do for the
/// errors an operator can act on.
fn sql_error(err: rusqlite::Error, path: &Path, action: &str) -> anyhow::Error {
    let path = path.display();
    let advice = match err.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => format!(
            "failed to {action}: the state database `{path}` stayed locked by another process \
             for the whole busy timeout (`timeouts.dbTimeout`); another run may be stuck"
        ),
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => format!(
            "failed to {action}: `{path}` is not a SQLite database or is corrupt; move it aside \
             (a new one is created on the next run, losing failure counts and cached UIDs) or \
             restore it from a backup"
        ),
        Some(ErrorCode::ReadOnly | ErrorCode::CannotOpen | ErrorCode::PermissionDenied) => format!(
            "failed to {action}: cannot write the state database `{path}` or its directory; \
             check their owner and modes"
        ),
        _ => format!("failed to {action} in the state database `{path}`"),
    };
    anyhow::Error::new(err).context(advice)
}

fn unix(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

/// Switches to WAL. SQLite answers "busy" at once, without its busy handler, when another
/// connection is opening the same new file, so this retries for the busy timeout itself.
fn switch_to_wal(conn: &Connection, path: &Path, busy_timeout: Duration) -> anyhow::Result<String> {
    let end = std::time::Instant::now() + busy_timeout;
    loop {
        match conn
            .pragma_update_and_check(None, "journal_mode", "wal", |row| row.get::<_, String>(0))
        {
            Ok(mode) => return Ok(mode),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy
                    && std::time::Instant::now() < end =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(sql_error(e, path, "switch to WAL")),
        }
    }
}

fn unix_nanos(time: SystemTime) -> u128 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn from_unix(secs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}
