//! `status`: what the state database knows, for people (a table) or scripts (`--json`).
//!
//! The table shows, per selected service, the last run of each binary without failure,
//! the age of the newest vault token, and the current failure streak; per node, the last
//! push of each service and the last ping; and the notifications waiting for delivery.
//! `--json` prints the same data as one object with `"schema": 1`.

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::config::Config;
use crate::exit::Exit;
use crate::service::Service;
use crate::state::StatusReport;

/// Version of the `status --json` schema; bumped on incompatible changes.
pub const SCHEMA_VERSION: u32 = 1;

/// Prints the status of `services` to `out`, as a table or as JSON.
pub fn print(config: &Config, services: &[Service], json: bool, out: &mut dyn Write) -> Exit {
    let state = match crate::app::open_state(config) {
        Ok(state) => state,
        Err(e) => {
            log::error!("{e:#}");
            return Exit::Fatal;
        }
    };
    let names: Vec<String> = services.iter().map(|s| s.name.clone()).collect();
    let mut report = match state.status(&names, SystemTime::now()) {
        Ok(report) => report,
        Err(e) => {
            log::error!("{e:#}");
            return Exit::Fatal;
        }
    };
    select_nodes(&mut report, services);

    let result = if json {
        write_json(&report, out)
    } else {
        write_table(&report, out)
    };
    match result {
        Ok(()) => Exit::Success,
        // `status | head` is not an error.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Exit::Success,
        Err(e) => {
            log::error!("failed to write the status: {e}");
            Exit::Fatal
        }
    }
}

/// Keeps the pings of the selected services' nodes only (the state has every node's).
fn select_nodes(report: &mut StatusReport, services: &[Service]) {
    let nodes: BTreeSet<&str> = services
        .iter()
        .flat_map(|s| s.nodes.iter().map(String::as_str))
        .collect();
    report
        .nodes
        .retain(|n| n.service.is_some() || nodes.contains(n.node.as_str()));
}

/// Writes `report` as one JSON object: `schema`, `generated`, `services`, `nodes`,
/// `pending_notifications`.
pub fn write_json(report: &StatusReport, out: &mut dyn Write) -> io::Result<()> {
    #[derive(Serialize)]
    struct Versioned<'a> {
        schema: u32,
        #[serde(flatten)]
        report: &'a StatusReport,
    }
    serde_json::to_writer_pretty(
        &mut *out,
        &Versioned {
            schema: SCHEMA_VERSION,
            report,
        },
    )?;
    writeln!(out)
}

/// Writes `report` as tables for people, ages relative to `report.generated`.
pub fn write_table(report: &StatusReport, out: &mut dyn Write) -> io::Result<()> {
    let now = report.generated;
    let mut services = vec![row([
        "SERVICE",
        "LAST REFRESH",
        "LAST PUSH",
        "TOKEN AGE",
        "FAILURES",
        "FAILING SINCE",
        "NOTE",
    ])];
    for s in &report.services {
        services.push(vec![
            s.service.clone(),
            ago(now, s.last_refresh),
            ago(now, s.last_push),
            s.token_age.map_or_else(|| "none".to_string(), age),
            s.consecutive_failures.to_string(),
            since(now, s.consecutive_failures, s.failing_since),
            if s.needs_onboarding {
                "needs onboarding".to_string()
            } else {
                String::new()
            },
        ]);
    }
    write_rows(out, &services)?;

    if !report.nodes.is_empty() {
        writeln!(out)?;
        let mut nodes = vec![row([
            "NODE",
            "CHECK",
            "SERVICE",
            "LAST SUCCESS",
            "FAILURES",
            "FAILING SINCE",
            "LAST FAILURE",
        ])];
        for n in &report.nodes {
            nodes.push(vec![
                n.node.clone(),
                n.check.clone(),
                n.service.clone().unwrap_or_else(|| "-".to_string()),
                ago(now, n.last_success),
                n.consecutive_failures.to_string(),
                since(now, n.consecutive_failures, n.failing_since),
                if n.ok {
                    String::new()
                } else {
                    n.class.clone().unwrap_or_else(|| "failed".to_string())
                },
            ]);
        }
        write_rows(out, &nodes)?;
    }

    writeln!(out)?;
    match report.pending_notifications {
        0 => writeln!(out, "no notification waiting for delivery"),
        1 => writeln!(out, "1 notification waiting for delivery"),
        n => writeln!(out, "{n} notifications waiting for delivery"),
    }
}

fn row<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.iter().map(|c| (*c).to_string()).collect()
}

/// Left-aligned columns two spaces apart, without trailing blanks.
fn write_rows(out: &mut dyn Write, rows: &[Vec<String>]) -> io::Result<()> {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            line.extend(std::iter::repeat_n(' ', widths[i] - cell.chars().count()));
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

/// "12m ago", or "never".
fn ago(now: SystemTime, time: Option<SystemTime>) -> String {
    match time {
        Some(time) => format!("{} ago", age(now.duration_since(time).unwrap_or_default())),
        None => "never".to_string(),
    }
}

/// When the current streak began, "-" when there is none, "unknown" when the state does
/// not say (a streak carried over from the Go service).
fn since(now: SystemTime, count: u32, since: Option<SystemTime>) -> String {
    match (count, since) {
        (0, _) => "-".to_string(),
        (_, Some(time)) => ago(now, Some(time)),
        (_, None) => "unknown".to_string(),
    }
}

/// An age to two units at most: "45s", "12m", "3h 5m", "2days 4h".
fn age(d: Duration) -> String {
    const MINUTE: u64 = 60;
    const HOUR: u64 = 3600;
    const DAY: u64 = 86_400;
    let secs = d.as_secs();
    let rounded = match secs {
        0..MINUTE => secs,
        MINUTE..HOUR => secs / MINUTE * MINUTE,
        HOUR..DAY => secs / MINUTE * MINUTE,
        _ => secs / HOUR * HOUR,
    };
    humantime::format_duration(Duration::from_secs(rounded)).to_string()
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::state::{CreddStatus, NodeStatus, ServiceStatus};

    fn report() -> StatusReport {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let before = |secs| Some(now - Duration::from_secs(secs));
        StatusReport {
            generated: now,
            services: vec![
                ServiceStatus {
                    service: "dune_production".into(),
                    last_refresh: before(720),
                    last_push: before(180),
                    token_age: Some(Duration::from_secs(725)),
                    credds: vec![CreddStatus {
                        credd: "credd1".into(),
                        last_attempt: now - Duration::from_secs(720),
                        ok: true,
                        last_success: before(720),
                        class: None,
                    }],
                    ..Default::default()
                },
                ServiceStatus {
                    service: "mu2e_analysis".into(),
                    consecutive_failures: 3,
                    failing_since: before(3 * 3600 + 300),
                    needs_onboarding: true,
                    ..Default::default()
                },
                ServiceStatus {
                    service: "nova_production".into(),
                    ..Default::default()
                },
            ],
            nodes: vec![
                NodeStatus {
                    node: "gpvm01".into(),
                    service: None,
                    check: "ping".into(),
                    last_attempt: now,
                    ok: true,
                    last_success: Some(now),
                    class: None,
                    message: None,
                    consecutive_failures: 0,
                    failing_since: None,
                },
                NodeStatus {
                    node: "gpvm02".into(),
                    service: Some("dune_production".into()),
                    check: "push".into(),
                    last_attempt: now,
                    ok: false,
                    last_success: before(2 * 86_400 + 4 * 3600 + 59),
                    class: Some("unreachable".into()),
                    message: Some("unreachable: no route".into()),
                    consecutive_failures: 2,
                    failing_since: None,
                },
            ],
            pending_notifications: 2,
        }
    }

    #[test]
    fn table_shows_ages_streaks_and_pending() {
        let mut out = Vec::new();
        write_table(&report(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "SERVICE          LAST REFRESH  LAST PUSH  TOKEN AGE  FAILURES  FAILING SINCE  NOTE"
        );
        assert_eq!(
            lines[1],
            "dune_production  12m ago       3m ago     12m        0         -"
        );
        assert_eq!(
            lines[2],
            "mu2e_analysis    never         never      none       3         3h 5m ago      needs onboarding"
        );
        assert_eq!(
            lines[3],
            "nova_production  never         never      none       0         -"
        );
        assert_eq!(lines[4], "");
        assert!(lines[5].starts_with("NODE    CHECK  SERVICE          LAST SUCCESS"));
        assert_eq!(
            lines[6],
            "gpvm01  ping   -                0s ago        0         -"
        );
        assert_eq!(
            lines[7],
            "gpvm02  push   dune_production  2days 4h ago  2         unknown        unreachable"
        );
        assert_eq!(
            lines.last().unwrap(),
            &"2 notifications waiting for delivery"
        );
        assert!(text.lines().all(|l| l == l.trim_end()));
    }

    #[test]
    fn json_is_versioned_and_covers_services_without_history() {
        let mut out = Vec::new();
        write_json(&report(), &mut out).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["schema"], 1);
        assert_eq!(v["generated"], "2027-01-15T08:00:00Z");
        assert_eq!(v["pending_notifications"], 2);
        assert_eq!(v["services"][0]["token_age_seconds"], 725);
        assert_eq!(v["services"][1]["needs_onboarding"], true);
        assert_eq!(v["services"][2]["service"], "nova_production");
        assert_eq!(v["services"][2]["last_refresh"], serde_json::Value::Null);
        assert_eq!(v["nodes"][1]["class"], "unreachable");
    }

    #[test]
    fn ages_keep_two_units() {
        assert_eq!(age(Duration::from_secs(45)), "45s");
        assert_eq!(age(Duration::from_secs(12 * 60 + 59)), "12m");
        assert_eq!(age(Duration::from_secs(3 * 3600 + 5 * 60 + 7)), "3h 5m");
        assert_eq!(
            age(Duration::from_secs(2 * 86_400 + 4 * 3600 + 1800)),
            "2days 4h"
        );
    }
}
