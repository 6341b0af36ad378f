//! Read-only queries behind a `status` report: last successes, token ages, failing
//! targets and waiting notifications, as plain serialisable structs.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use rusqlite::params;
use serde::{Serialize, Serializer};

use super::{State, from_unix, sql_error};

/// Everything the state knows, for a `status` table or `--json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusReport {
    /// When the report was made; ages are relative to it.
    #[serde(serialize_with = "rfc3339")]
    pub generated: SystemTime,
    /// One entry per service, sorted by name.
    pub services: Vec<ServiceStatus>,
    /// One entry per (service, node) push and per node ping, sorted by node.
    pub nodes: Vec<NodeStatus>,
    /// Notifications waiting for delivery.
    pub pending_notifications: u64,
}

/// One service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ServiceStatus {
    /// Configuration name.
    pub service: String,
    /// Last `token-refresher` run in which the service had no failure.
    #[serde(serialize_with = "rfc3339_opt")]
    pub last_refresh: Option<SystemTime>,
    /// Last `token-pusher` run in which the service had no failure.
    #[serde(serialize_with = "rfc3339_opt")]
    pub last_push: Option<SystemTime>,
    /// Time since a vault token was last stored for the service (any credd, or
    /// htgettoken directly); `None` when never.
    #[serde(rename = "token_age_seconds", serialize_with = "seconds_opt")]
    pub token_age: Option<Duration>,
    /// Consecutive failing runs of the service's own stages (the larger of the binaries').
    pub consecutive_failures: u32,
    /// First failure of that streak, when known.
    #[serde(serialize_with = "rfc3339_opt")]
    pub failing_since: Option<SystemTime>,
    /// Whether Vault asked for an interactive login in the last store attempts.
    pub needs_onboarding: bool,
    /// Per credd, the last store.
    pub credds: Vec<CreddStatus>,
}

/// The last store into one credd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CreddStatus {
    /// The credd host.
    pub credd: String,
    /// When it was last attempted.
    #[serde(serialize_with = "rfc3339")]
    pub last_attempt: SystemTime,
    /// Whether that attempt succeeded.
    pub ok: bool,
    /// When it last succeeded.
    #[serde(serialize_with = "rfc3339_opt")]
    pub last_success: Option<SystemTime>,
    /// The failure class of the last attempt (as in the `--json` summary).
    pub class: Option<String>,
}

/// The last push of one service to one node, or the last ping of one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeStatus {
    /// The node.
    pub node: String,
    /// The service for a push; `None` for a ping.
    pub service: Option<String>,
    /// `push` or `ping`.
    pub check: String,
    /// When it was last attempted.
    #[serde(serialize_with = "rfc3339")]
    pub last_attempt: SystemTime,
    /// Whether that attempt succeeded.
    pub ok: bool,
    /// When it last succeeded.
    #[serde(serialize_with = "rfc3339_opt")]
    pub last_success: Option<SystemTime>,
    /// The failure class of the last attempt.
    pub class: Option<String>,
    /// The failure of the last attempt, one line.
    pub message: Option<String>,
    /// Consecutive failing runs.
    pub consecutive_failures: u32,
    /// First failure of that streak, when known.
    #[serde(serialize_with = "rfc3339_opt")]
    pub failing_since: Option<SystemTime>,
}

type Streak = (u32, Option<SystemTime>);

impl State {
    /// The status of `services` (every service the state knows when empty), their
    /// pushes and every node's last ping, as of `now`.
    pub fn status(&self, services: &[String], now: SystemTime) -> anyhow::Result<StatusReport> {
        let fail = |e| sql_error(e, &self.path, "read the status");
        let streaks = self.streaks().map_err(fail)?;
        let mut by_service: BTreeMap<String, ServiceStatus> = services
            .iter()
            .map(|s| {
                (
                    s.clone(),
                    ServiceStatus {
                        service: s.clone(),
                        ..Default::default()
                    },
                )
            })
            .collect();
        let wanted = |service: &str| services.is_empty() || services.iter().any(|s| s == service);
        fn entry<'a>(
            map: &'a mut BTreeMap<String, ServiceStatus>,
            service: &str,
            wanted: bool,
        ) -> Option<&'a mut ServiceStatus> {
            if !wanted || service.is_empty() {
                return None;
            }
            Some(
                map.entry(service.to_string())
                    .or_insert_with(|| ServiceStatus {
                        service: service.to_string(),
                        ..Default::default()
                    }),
            )
        }

        for (service, binary, last_success) in self.service_runs().map_err(fail)? {
            let Some(status) = entry(&mut by_service, &service, wanted(&service)) else {
                continue;
            };
            match binary.as_str() {
                "token-refresher" => status.last_refresh = last_success,
                "token-pusher" => status.last_push = last_success,
                _ => {}
            }
        }
        for ((service, kind, name), (count, since)) in &streaks {
            let Some(status) = entry(&mut by_service, service, wanted(service)) else {
                continue;
            };
            match kind.as_str() {
                "service" if *count > status.consecutive_failures => {
                    status.consecutive_failures = *count;
                    status.failing_since = *since;
                }
                "authentication" if name.is_empty() => status.needs_onboarding = *count > 0,
                _ => {}
            }
        }

        let mut nodes = Vec::new();
        for row in self.outcome_rows().map_err(fail)? {
            match (row.stage.as_str(), row.target_kind.as_str()) {
                ("store" | "get-token", kind) => {
                    let Some(status) = entry(&mut by_service, &row.service, wanted(&row.service))
                    else {
                        continue;
                    };
                    if let Some(success) = row.last_success {
                        let age = now.duration_since(success).unwrap_or_default();
                        status.token_age = Some(status.token_age.map_or(age, |a| a.min(age)));
                    }
                    if kind == "credd" {
                        status.credds.push(CreddStatus {
                            credd: row.target_name,
                            last_attempt: row.at,
                            ok: row.ok,
                            last_success: row.last_success,
                            class: row.class,
                        });
                    }
                }
                ("push", "node") if wanted(&row.service) => {
                    let key = (
                        row.service.clone(),
                        "push".to_string(),
                        row.target_name.clone(),
                    );
                    nodes.push(node_status(row, Some(key.0.clone()), streaks.get(&key)));
                }
                ("ping", "node") => {
                    let key = (String::new(), "ping".to_string(), row.target_name.clone());
                    nodes.push(node_status(row, None, streaks.get(&key)));
                }
                _ => {}
            }
        }
        nodes.sort_by(|a, b| (&a.node, &a.service).cmp(&(&b.node, &b.service)));

        Ok(StatusReport {
            generated: now,
            services: by_service.into_values().collect(),
            nodes,
            pending_notifications: self.pending_count()?,
        })
    }

    fn streaks(&self) -> rusqlite::Result<BTreeMap<(String, String, String), Streak>> {
        let mut statement = self
            .conn
            .prepare("SELECT service, kind, name, count, since FROM streaks")?;
        let rows = statement.query_map([], |row| {
            let count: i64 = row.get(3)?;
            let since: Option<i64> = row.get(4)?;
            Ok((
                (row.get(0)?, row.get(1)?, row.get(2)?),
                (u32::try_from(count).unwrap_or(0), since.map(from_unix)),
            ))
        })?;
        rows.collect()
    }

    fn service_runs(&self) -> rusqlite::Result<Vec<(String, String, Option<SystemTime>)>> {
        let mut statement = self
            .conn
            .prepare("SELECT service, binary, last_success FROM service_runs")?;
        let rows = statement.query_map(params![], |row| {
            let last: Option<i64> = row.get(2)?;
            Ok((row.get(0)?, row.get(1)?, last.map(from_unix)))
        })?;
        rows.collect()
    }

    fn outcome_rows(&self) -> rusqlite::Result<Vec<OutcomeRow>> {
        let mut statement = self.conn.prepare(
            "SELECT service, stage, target_kind, target_name, at, ok, class, message, last_success
             FROM outcomes ORDER BY service, stage, target_kind, target_name",
        )?;
        let rows = statement.query_map([], |row| {
            let last: Option<i64> = row.get(8)?;
            Ok(OutcomeRow {
                service: row.get(0)?,
                stage: row.get(1)?,
                target_kind: row.get(2)?,
                target_name: row.get(3)?,
                at: from_unix(row.get(4)?),
                ok: row.get(5)?,
                class: row.get(6)?,
                message: row.get(7)?,
                last_success: last.map(from_unix),
            })
        })?;
        rows.collect()
    }
}

struct OutcomeRow {
    service: String,
    stage: String,
    target_kind: String,
    target_name: String,
    at: SystemTime,
    ok: bool,
    class: Option<String>,
    message: Option<String>,
    last_success: Option<SystemTime>,
}

fn node_status(row: OutcomeRow, service: Option<String>, streak: Option<&Streak>) -> NodeStatus {
    let (count, since) = streak.copied().unwrap_or((0, None));
    NodeStatus {
        node: row.target_name,
        service,
        check: row.stage,
        last_attempt: row.at,
        ok: row.ok,
        last_success: row.last_success,
        class: row.class,
        message: row.message,
        consecutive_failures: count,
        failing_since: since.filter(|_| count > 0),
    }
}

/// Serialises a time as RFC 3339 in UTC, to the second.
pub(crate) fn rfc3339<S: Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_seconds(*time))
}

/// Serialises an optional time as RFC 3339 in UTC, or `null`.
pub(crate) fn rfc3339_opt<S: Serializer>(
    time: &Option<SystemTime>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match time {
        Some(time) => rfc3339(time, s),
        None => s.serialize_none(),
    }
}

fn seconds_opt<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_u64(d.as_secs()),
        None => s.serialize_none(),
    }
}
