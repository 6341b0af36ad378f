//! The admin report of a run: every failure by service and target, with its class,
//! evidence, streak and what to do; and its abridged Slack form.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use super::{RunFacts, plural, stage_word, tag, time};
use crate::report::{Failure, FailureClass, Outcome, Stage, Target, cap};
use crate::secret::scrub;
use crate::service::Service;
use crate::state::{StreakKey, TargetChange};

pub(super) fn admin_subject(facts: &RunFacts<'_>, failures: &[&Outcome]) -> String {
    let errors = facts.report.run_errors.len();
    let mut subject = format!("{} {}: ", tag(facts), facts.report.binary);
    if !failures.is_empty() {
        let _ = write!(
            subject,
            "{} in {} of {} services",
            plural(failures.len(), "failure"),
            affected_services(failures).len(),
            facts.report.services.len()
        );
        if errors > 0 {
            subject.push_str(", ");
        }
    }
    if errors > 0 {
        subject.push_str(&plural(errors, "run error"));
    }
    subject
}

fn affected_services<'a>(failures: &[&'a Outcome]) -> BTreeSet<&'a str> {
    failures
        .iter()
        .flat_map(|o| o.service.iter().chain(o.services.iter()))
        .map(String::as_str)
        .filter(|s| !s.is_empty())
        .collect()
}

pub(super) fn admin_body(facts: &RunFacts<'_>, failures: &[&Outcome]) -> String {
    let report = facts.report;
    let mut body = String::new();
    let _ = writeln!(
        body,
        "{} run on managed-tokens {} started {}, took {:.1}s.",
        report.binary,
        facts.config.environment_label,
        time(report.started),
        report.duration.as_secs_f64()
    );
    if !failures.is_empty() {
        let _ = writeln!(
            body,
            "{} in {} of {} services.",
            plural(failures.len(), "failure"),
            affected_services(failures).len(),
            report.services.len()
        );
    }
    if !facts.history {
        body.push_str(
            "The failure history is unavailable (see the run errors): counts start at 1.\n",
        );
    }

    // Service-less outcomes (node checks) are listed after the services.
    let mut groups: BTreeMap<(bool, &str), BTreeMap<String, Vec<&Outcome>>> = BTreeMap::new();
    for outcome in failures {
        let service = outcome.service.as_deref().filter(|s| !s.is_empty());
        groups
            .entry((service.is_none(), service.unwrap_or("")))
            .or_default()
            .entry(outcome.target.to_string())
            .or_default()
            .push(outcome);
    }
    for ((_, service), targets) in &groups {
        let heading = if service.is_empty() { "Nodes" } else { service };
        let _ = writeln!(body, "\n{heading}");
        for (target, outcomes) in targets {
            for outcome in outcomes {
                admin_failure(&mut body, facts, target, outcome);
            }
        }
    }

    if !report.run_errors.is_empty() {
        body.push_str("\nRun errors\n");
        for error in &report.run_errors {
            let _ = writeln!(body, "  - {}", scrub(error));
        }
    }
    body
}

fn admin_failure(body: &mut String, facts: &RunFacts<'_>, target: &str, outcome: &Outcome) {
    let Some(failure) = &outcome.failure else {
        return;
    };
    let _ = writeln!(
        body,
        "  {target} ({}): {}",
        stage_word(outcome.stage),
        failure.class
    );
    if failure.message != failure.class.describe() {
        let _ = writeln!(body, "      {}", scrub(&failure.message));
    }
    if let Some(detail) = &failure.detail {
        let _ = writeln!(body, "      stderr: {}", scrub(detail));
    }
    if !outcome.services.is_empty() {
        let _ = writeln!(body, "      used by: {}", outcome.services.join(", "));
    }
    let key = StreakKey::of_failure(outcome, facts.report.binary);
    if let (true, Some(change)) = (facts.history, facts.recorded.change(&key)) {
        let _ = writeln!(body, "      {}", streak_words(change));
    }
    let service = outcome
        .service
        .as_deref()
        .and_then(|s| facts.config.service(s));
    let _ = writeln!(
        body,
        "      what to do: {}",
        admin_advice(outcome, failure, service)
    );
}

fn streak_words(change: &TargetChange) -> String {
    match (change.count, change.since) {
        (0 | 1, _) => "first failure".to_string(),
        (n, Some(since)) => format!("failing since {} ({n} consecutive runs)", time(since)),
        (n, None) => format!("{n} consecutive failing runs"),
    }
}

fn admin_advice(outcome: &Outcome, failure: &Failure, service: Option<&Service>) -> String {
    let name = outcome.service.as_deref().unwrap_or("<service>");
    let account = service.map_or("<account>", |s| s.account.as_str());
    let collectors = service.map_or_else(|| "<collector>".into(), |s| s.collectors.join(","));
    match (failure.class, &outcome.target) {
        (FailureClass::AuthenticationNeeded, _) => format!(
            "re-onboard: run `token-refresher --run-onboarding -s {name}` and complete the \
             login in a browser"
        ),
        (FailureClass::KinitFailed, _)
            if failure
                .detail
                .as_deref()
                .is_some_and(|d| d.contains("Cannot contact any KDC")) =>
        {
            "check that the KDCs of the realm are up and reachable from this host (krb5.conf)"
                .into()
        }
        (FailureClass::KinitFailed | FailureClass::PrincipalMismatch, _) => match service {
            Some(s) => format!(
                "check the keytab: `klist -k {}` must list `{}`",
                s.keytab.display(),
                s.principal
            ),
            None => "check the service's keytab with `klist -k`".into(),
        },
        (FailureClass::CollectorUnreachable | FailureClass::NoSchedds, _) => format!(
            "check the collector: `condor_status -pool {collectors} -schedd` and the schedd \
             constraint"
        ),
        (FailureClass::NoUid, _) => format!(
            "give `{account}` a UID: `desiredUIDOverride` on the role, or make `getent passwd \
             {account}` answer on this host"
        ),
        (FailureClass::NoToken, _) => {
            format!("no token to push: run `token-refresher -s {name}` and look at its failure")
        }
        (FailureClass::Cancelled, _) => "the run hit `timeouts.globalTimeout` or was stopped: \
             find what is slow in the journal, or raise the timeout"
            .into(),
        (FailureClass::Setup, _) => "check the configuration and this host: `token-refresher \
             check-config`"
            .into(),
        (_, Target::Node(node)) if outcome.stage == Stage::Ping => {
            format!("check that the node is up and answers: `ping {node}` from this host")
        }
        (_, Target::Node(node)) => format!(
            "check the node: `ssh {account}@{node}` with the service's ticket, and the \
             destination directory there"
        ),
        (_, Target::Credd(credd)) => format!(
            "check the credd and its collector: `condor_status -pool {collectors} -schedd \
             {credd}`; a refused store can also mean the service needs re-onboarding"
        ),
        (FailureClass::Timeout, _) if outcome.stage == Stage::Kerberos => {
            "check that the KDC answers from this host".into()
        }
        _ => "read the error above and the journal of the run".into(),
    }
}

pub(super) fn slack_lines(facts: &RunFacts<'_>, failures: &[&Outcome]) -> Vec<String> {
    let mut lines: Vec<String> = failures
        .iter()
        .map(|o| {
            let class = o.failure.as_ref().map_or("failed", |f| f.class.describe());
            let service = o
                .service
                .as_deref()
                .map(|s| format!("{s} "))
                .unwrap_or_default();
            let key = StreakKey::of_failure(o, facts.report.binary);
            let runs = match facts.recorded.change(&key) {
                Some(c) if facts.history && c.count > 1 => format!(" ({} runs)", c.count),
                _ => String::new(),
            };
            cap(&format!("• {service}{}: {class}{runs}", o.target), 200)
        })
        .chain(
            facts
                .report
                .run_errors
                .iter()
                .map(|e| cap(&format!("• run error: {}", scrub(e)), 200)),
        )
        .collect();
    if lines.len() > SLACK_LINES {
        let more = lines.len() - SLACK_LINES;
        lines.truncate(SLACK_LINES);
        lines.push(format!(
            "... and {more} more; the admin email has the details"
        ));
    }
    lines
}

/// Failure lines in a Slack message before the rest is summarised.
const SLACK_LINES: usize = 20;
