//! The text of every message: the admin report of a run, its abridged Slack form, the
//! stakeholder alerts and recovery notes, and the unit-failure alert.
//!
//! Child output reaches these texts only through [`scrub`], so no token is ever mailed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::SystemTime;

use crate::config::Config;
use crate::report::{Failure, FailureClass, Outcome, RunReport, Stage, Target, cap};
use crate::secret::scrub;
use crate::service::Service;
use crate::state::{Channel, Notification, RecordedRun, StreakKey, TargetChange};

use super::threshold_reached;

/// The messages of one run, and the streaks whose stakeholders they tell.
#[derive(Debug, Default)]
pub(super) struct RunMessages {
    /// Admin email and Slack first, then stakeholder messages.
    pub(super) messages: Vec<Notification>,
    /// Streaks to mark as notified once the messages are sent or kept.
    pub(super) notified: Vec<StreakKey>,
}

/// What a run has to say.
pub(super) struct RunFacts<'a> {
    pub(super) config: &'a Config,
    pub(super) report: &'a RunReport,
    pub(super) recorded: &'a RecordedRun,
    /// Whether `recorded` comes from the state (else every failure looks like a first).
    pub(super) history: bool,
    pub(super) test: bool,
}

/// Builds every message of a run.
pub(super) fn run_messages(facts: &RunFacts<'_>) -> RunMessages {
    let mut out = RunMessages::default();
    let recipients = recipients(facts.config, facts.test);
    let failures: Vec<&Outcome> = facts
        .report
        .failures()
        .filter(|o| notifiable(facts.config, o))
        .collect();

    let mut stakeholders = RunMessages::default();
    stakeholder_messages(facts, &mut stakeholders);

    if !failures.is_empty() || !facts.report.run_errors.is_empty() {
        let subject = admin_subject(facts, &failures);
        if recipients.admin_emails.is_empty() {
            log::warn!("no `admin_email` is configured: the run's failures are not emailed");
        } else {
            let mut body = admin_body(facts, &failures);
            if !stakeholders.messages.is_empty() {
                body.push_str(
                    "
Stakeholder messages of this run:
",
                );
                for m in &stakeholders.messages {
                    let _ = writeln!(body, "  - {} (to {})", m.subject, m.recipients.join(", "));
                }
            }
            let _ = writeln!(
                body,
                "\nThe journal of the {} unit has every command and its output.",
                facts.report.binary
            );
            out.messages.push(Notification {
                channel: Channel::Email,
                recipients: recipients.admin_emails.clone(),
                subject: subject.clone(),
                body,
            });
        }
        if recipients.slack_url.is_some() {
            out.messages
                .push(slack(facts.test, &subject, slack_lines(facts, &failures)));
        }
    } else if facts.test && recipients.slack_url.is_some() {
        let subject = format!(
            "{} {}: test run completed successfully",
            tag(facts),
            facts.report.binary
        );
        out.messages.push(slack(facts.test, &subject, Vec::new()));
    }

    out.messages.append(&mut stakeholders.messages);
    out.notified = stakeholders.notified;
    out
}

/// The admin alert that a systemd unit failed, with the journal excerpt.
pub(super) fn unit_failure(config: &Config, unit: &str, journal: &str) -> Vec<Notification> {
    let unit: String = unit.chars().filter(|c| !c.is_control()).collect();
    let subject = format!(
        "[managed-tokens {}] systemd unit {unit} failed",
        config.environment_label
    );
    let journal = scrub(journal);
    let lines: Vec<&str> = journal.lines().collect();
    let excerpt = lines[lines.len().saturating_sub(JOURNAL_LINES)..].join("\n");

    let mut body = format!("The systemd unit `{unit}` failed.\n\n");
    if excerpt.trim().is_empty() {
        body.push_str("No journal lines were available.\n");
    } else {
        let _ = writeln!(body, "The last lines of its journal:\n\n{excerpt}");
    }
    let _ = writeln!(
        body,
        "\nWhat to do: `systemctl status {unit}` and `journalctl -u {unit}` show the whole \
         run; a unit that fails this way sent no other alert."
    );

    let mut messages = Vec::new();
    if !config.notifications.admin_emails.is_empty() {
        messages.push(Notification {
            channel: Channel::Email,
            recipients: config.notifications.admin_emails.clone(),
            subject: subject.clone(),
            body,
        });
    }
    if config.notifications.slack_url.is_some() {
        let tail = lines[lines.len().saturating_sub(5)..]
            .iter()
            .map(|l| cap(l, 200))
            .collect();
        messages.push(slack(false, &subject, tail));
    }
    messages
}

/// Whether a failure is reported: its service (or, for a node check, any service using
/// the node) has notifications on. Unknown names are reported.
fn notifiable(config: &Config, outcome: &Outcome) -> bool {
    let wants = |name: &str| config.service(name).is_none_or(|s| s.notify);
    match outcome.service.as_deref() {
        Some(name) if !name.is_empty() => wants(name),
        _ => outcome.services.is_empty() || outcome.services.iter().any(|s| wants(s)),
    }
}

fn recipients(config: &Config, test: bool) -> &crate::config::Recipients {
    if test {
        &config.notifications_test
    } else {
        &config.notifications
    }
}

fn tag(facts: &RunFacts<'_>) -> String {
    let test = if facts.test { ", test" } else { "" };
    format!("[managed-tokens {}{test}]", facts.config.environment_label)
}

fn slack(test: bool, subject: &str, lines: Vec<String>) -> Notification {
    let mut body = subject.to_string();
    for line in lines {
        body.push('\n');
        body.push_str(&line);
    }
    Notification {
        channel: if test {
            Channel::SlackTest
        } else {
            Channel::Slack
        },
        recipients: Vec::new(),
        subject: subject.to_string(),
        body,
    }
}

fn admin_subject(facts: &RunFacts<'_>, failures: &[&Outcome]) -> String {
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

fn admin_body(facts: &RunFacts<'_>, failures: &[&Outcome]) -> String {
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

fn slack_lines(facts: &RunFacts<'_>, failures: &[&Outcome]) -> Vec<String> {
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

/// One stakeholder item: a target that passed the threshold or recovered.
struct Item<'a> {
    service: &'a Service,
    change: &'a TargetChange,
    failure: Option<&'a Failure>,
}

fn stakeholder_messages(facts: &RunFacts<'_>, out: &mut RunMessages) {
    let every = facts.config.error_count_to_send_message;
    let mut failing: BTreeMap<&str, Vec<Item<'_>>> = BTreeMap::new();
    let mut recovered: BTreeMap<&str, Vec<Item<'_>>> = BTreeMap::new();
    for change in &facts.recorded.changes {
        if !matches!(
            change.key,
            StreakKey::Push { .. } | StreakKey::Authentication { .. }
        ) {
            continue;
        }
        let Some(service) = change.key.service().and_then(|s| facts.config.service(s)) else {
            continue;
        };
        if !service.notify || (service.emails.is_empty() && !facts.test) {
            continue;
        }
        if change.failed && threshold_reached(change.count, every) {
            let failure = facts
                .report
                .failures()
                .find(|o| StreakKey::of_failure(o, facts.report.binary) == change.key)
                .and_then(|o| o.failure.as_ref());
            failing.entry(&service.experiment).or_default().push(Item {
                service,
                change,
                failure,
            });
        } else if change.recovered() {
            recovered
                .entry(&service.experiment)
                .or_default()
                .push(Item {
                    service,
                    change,
                    failure: None,
                });
        }
    }

    for (experiment, items) in &failing {
        let subject = format!(
            "{} {experiment}: managed vault tokens are failing ({})",
            tag(facts),
            plural(items.len(), "problem")
        );
        let body = stakeholder_body(facts, items);
        if push_stakeholder(facts, out, items, subject, body) {
            out.notified
                .extend(items.iter().map(|i| i.change.key.clone()));
        }
    }
    for (experiment, items) in &recovered {
        let subject = format!(
            "{} {experiment}: managed vault tokens work again",
            tag(facts)
        );
        let body = recovery_body(facts, items);
        push_stakeholder(facts, out, items, subject, body);
    }
}

/// Adds a stakeholder message; false when it has nobody to go to.
fn push_stakeholder(
    facts: &RunFacts<'_>,
    out: &mut RunMessages,
    items: &[Item<'_>],
    subject: String,
    body: String,
) -> bool {
    // A test run never writes to experimenters: its stakeholder messages go to the test
    // admins, so the wording can be checked.
    let recipients: Vec<String> = if facts.test {
        facts.config.notifications_test.admin_emails.clone()
    } else {
        let set: BTreeSet<&String> = items.iter().flat_map(|i| &i.service.emails).collect();
        set.into_iter().cloned().collect()
    };
    if recipients.is_empty() {
        return false;
    }
    out.messages.push(Notification {
        channel: Channel::Email,
        recipients,
        subject,
        body,
    });
    true
}

fn stakeholder_body(facts: &RunFacts<'_>, items: &[Item<'_>]) -> String {
    let mut body = String::from("Hello,\n\n");
    let _ = writeln!(
        body,
        "Managed Tokens keeps a valid vault token for your experiment's managed accounts on \
         your submit nodes ({}). It has been failing for the following:",
        facts.config.environment_label
    );
    for (service, items) in by_service(items).into_values() {
        let _ = writeln!(body, "\n{} (account {})", service.name, service.account);
        for item in items {
            stakeholder_item(&mut body, item);
        }
    }
    body.push_str(
        "\nJobs keep working until the token already on a node expires; after that they fail \
         to authenticate.\n",
    );
    let every = facts.config.error_count_to_send_message;
    let cadence = if every <= 1 {
        "after every failed run".to_string()
    } else {
        format!("after every {every} failed runs in a row")
    };
    let _ = writeln!(
        body,
        "\nYou receive this message {cadence}, and a short note once things work again."
    );
    let _ = write!(
        body,
        "\n-- \nManaged Tokens ({})\n",
        facts.config.environment_label
    );
    body
}

fn stakeholder_item(body: &mut String, item: &Item<'_>) {
    let change = item.change;
    let runs = plural(change.count as usize, "failed run");
    let since = match change.since {
        Some(since) => format!("since {}, {runs} in a row", time(since)),
        None => format!("{runs} in a row"),
    };
    let reason = item.failure.map(|f| {
        let mut reason = format!("{}: {}", f.class, scrub(&f.message));
        if let Some(detail) = &f.detail {
            let _ = write!(reason, " ({})", scrub(detail));
        }
        reason
    });
    let account = &item.service.account;
    match &change.key {
        StreakKey::Push { node, .. } => {
            let _ = writeln!(
                body,
                "  * node {node}: the token could not be copied there ({since})."
            );
            if let Some(reason) = reason {
                let _ = writeln!(body, "    Reason: {reason}");
            }
            let advice = match item.failure.map(|f| f.class) {
                Some(FailureClass::Unreachable) => format!(
                    "check that {node} is up and reachable; if it is down, please contact its \
                     administrators."
                ),
                Some(FailureClass::AuthenticationRefused) => format!(
                    "the node refused the Kerberos login of {account}: check that the account \
                     exists there and that its ~/.k5login lists {}.",
                    item.service.principal
                ),
                _ => format!(
                    "check that {account} can log in to {node} and write to the token's \
                     directory; if it persists, contact the Managed Tokens operators."
                ),
            };
            let _ = writeln!(body, "    What you can do: {advice}");
        }
        StreakKey::Authentication { service } => {
            let _ = writeln!(
                body,
                "  * Vault needs a new interactive login for {service} ({since}); no new token \
                 can be made until then."
            );
            let _ = writeln!(
                body,
                "    What you can do: ask the Managed Tokens operators to re-onboard {service} \
                 (`token-refresher --run-onboarding -s {service}`); someone with the account's \
                 identity may have to approve the login in a browser."
            );
        }
        _ => {}
    }
}

fn recovery_body(facts: &RunFacts<'_>, items: &[Item<'_>]) -> String {
    let mut body = String::from("Hello,\n\nThe problems reported earlier are resolved:\n");
    for (service, items) in by_service(items).into_values() {
        let _ = writeln!(body, "\n{}", service.name);
        for item in items {
            let change = item.change;
            let what = match &change.key {
                StreakKey::Push { node, .. } => format!("node {node}: tokens are copied again"),
                _ => "Vault accepts the service's login again".to_string(),
            };
            let since = change
                .since
                .map(|s| format!(" since {}", time(s)))
                .unwrap_or_default();
            let _ = writeln!(
                body,
                "  * {what} (as of {}, after {}{since}).",
                time(facts.report.started),
                plural(change.previous_count as usize, "failed run")
            );
        }
    }
    let _ = write!(
        body,
        "\n-- \nManaged Tokens ({})\n",
        facts.config.environment_label
    );
    body
}

fn by_service<'a, 'b>(items: &'b [Item<'a>]) -> BTreeMap<&'a str, (&'a Service, Vec<&'b Item<'a>>)>
where
    'a: 'b,
{
    let mut map: BTreeMap<&str, (&Service, Vec<&Item<'_>>)> = BTreeMap::new();
    for item in items {
        map.entry(item.service.name.as_str())
            .or_insert_with(|| (item.service, Vec::new()))
            .1
            .push(item);
    }
    map
}

fn stage_word(stage: Stage) -> &'static str {
    match stage {
        Stage::Setup => "setup",
        Stage::Kerberos => "kerberos",
        Stage::Discovery => "discovery",
        Stage::Store => "store",
        Stage::GetToken => "htgettoken",
        Stage::Ping => "ping",
        Stage::Push => "push",
    }
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

fn time(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Journal lines kept in a unit-failure alert.
const JOURNAL_LINES: usize = 200;

/// Failure lines in a Slack message before the rest is summarised.
const SLACK_LINES: usize = 20;

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::report::Binary;

    const CONFIG: &str = r#"
keytabPath: /k
kerberosPrincipalPattern: "{{.Account}}@EXAMPLE.COM"
condorCollectorHost: collector.example.com
errorCountToSendMessage: 3
email: {from: managed-tokens@example.com, smtpHost: 127.0.0.1, smtpPort: 2525}
notifications:
  admin_email: [admin@example.com]
  SLACK_ALERTS_URL: https://hooks.example.com/services/T/B/X
notifications_test:
  admin_email: [tester@example.com]
  SLACK_ALERTS_URL: https://hooks.example.com/services/T/B/TEST
experiments:
  dune:
    emails: [dune-ops@example.com, dune-boss@example.com]
    roles:
      production: {account: dunepro, destinationNodes: [n1.example.com, n2.example.com]}
      analysis:
        account: duneana
        destinationNodes: [n1.example.com]
        disableNotificationsOverride: true
  nova:
    roles:
      production: {account: novapro, destinationNodes: [n3.example.com]}
"#;

    fn config() -> Config {
        Config::from_str(
            CONFIG,
            false,
            Path::new("/etc/managed-tokens/managedTokens.yml"),
        )
        .unwrap()
    }

    fn push_failure(service: &str, node: &str, class: FailureClass) -> Outcome {
        let mut failure = Failure::new(class, format!("failed to push to `{node}`"));
        failure.detail =
            Some("ssh: connect: No route to host, token hvs.CAESIJ1234567890abcdefgh".into());
        Outcome::failed(
            service,
            Target::Node(node.into()),
            Stage::Push,
            Duration::from_secs(1),
            failure,
        )
    }

    fn report(test: bool) -> RunReport {
        let services = ["dune_analysis", "dune_production", "nova_production"];
        let mut report = RunReport::new(
            Binary::TokenPusher,
            test,
            services.map(String::from).to_vec(),
        );
        report.started = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        report.outcomes = vec![
            push_failure(
                "dune_production",
                "n1.example.com",
                FailureClass::Unreachable,
            ),
            Outcome::ok(
                "dune_production",
                Target::Node("n2.example.com".into()),
                Stage::Push,
                Duration::ZERO,
            ),
            push_failure(
                "nova_production",
                "n3.example.com",
                FailureClass::RsyncFailed,
            ),
            push_failure("dune_analysis", "n1.example.com", FailureClass::Unreachable),
        ];
        report
    }

    /// The run as recorded with `count` consecutive failures for every failing target.
    fn recorded(report: &RunReport, count: u32) -> RecordedRun {
        let mut run = RecordedRun::without_history(report);
        for change in &mut run.changes {
            if change.failed {
                change.count = count;
                change.previous_count = count - 1;
            }
        }
        run
    }

    fn messages(report: &RunReport, recorded: &RecordedRun, test: bool) -> RunMessages {
        let config = config();
        run_messages(&RunFacts {
            config: &config,
            report,
            recorded,
            history: true,
            test,
        })
    }

    #[test]
    fn admin_message_lists_notified_failures_without_tokens() {
        let report = report(false);
        let out = messages(&report, &recorded(&report, 4), false);
        let admin = &out.messages[0];
        assert_eq!(admin.recipients, ["admin@example.com"]);
        assert_eq!(
            admin.subject,
            "[managed-tokens production] token-pusher: 2 failures in 2 of 3 services"
        );
        let body = &admin.body;
        assert!(
            body.contains("dune_production\n  node `n1.example.com` (push): unreachable\n"),
            "{body}"
        );
        assert!(
            body.contains("stderr: ssh: connect: No route to host, token ***"),
            "{body}"
        );
        assert!(
            body.contains("failing since 2027-01-15T08:00:00Z (4 consecutive runs)"),
            "{body}"
        );
        assert!(
            body.contains("what to do: check the node: `ssh dunepro@n1.example.com`"),
            "{body}"
        );
        assert!(body.contains("nova_production\n  node `n3.example.com` (push): rsync failed"));
        assert!(
            !body.contains("dune_analysis") && !body.contains("hvs."),
            "{body}"
        );

        let slack = &out.messages[1];
        assert_eq!(slack.channel, Channel::Slack);
        assert!(slack.body.starts_with(&admin.subject));
        assert!(
            slack
                .body
                .contains("• dune_production node `n1.example.com`: unreachable (4 runs)")
        );
    }

    #[test]
    fn stakeholders_hear_at_every_threshold_multiple() {
        let report = report(false);
        for (count, expected) in [(1, false), (2, false), (3, true), (4, false), (6, true)] {
            let out = messages(&report, &recorded(&report, count), false);
            let dune: Vec<_> = out
                .messages
                .iter()
                .filter(|m| m.recipients.contains(&"dune-ops@example.com".into()))
                .collect();
            assert_eq!(dune.len(), usize::from(expected), "count {count}");
            // nova has no stakeholder addresses; its admins still hear of it.
            assert!(out.messages[0].body.contains("nova_production"));
            if expected {
                let mail = dune[0];
                assert_eq!(
                    mail.recipients,
                    ["dune-boss@example.com", "dune-ops@example.com"]
                );
                assert!(
                    mail.subject
                        .contains("dune: managed vault tokens are failing (1 problem)")
                );
                assert!(
                    mail.body
                        .contains("node n1.example.com: the token could not be copied")
                );
                assert!(mail.body.contains("after every 3 failed runs in a row"));
                assert!(!mail.body.contains("hvs."));
                assert_eq!(
                    out.notified,
                    [StreakKey::Push {
                        service: "dune_production".into(),
                        node: "n1.example.com".into()
                    }]
                );
            }
        }
    }

    #[test]
    fn test_runs_send_stakeholder_mail_to_the_test_admins() {
        let report = report(true);
        let out = messages(&report, &recorded(&report, 3), true);
        assert!(
            out.messages
                .iter()
                .all(|m| !m.recipients.iter().any(|r| r.starts_with("dune")))
        );
        let stakeholder = out
            .messages
            .iter()
            .find(|m| m.subject.contains("dune:"))
            .unwrap();
        assert_eq!(stakeholder.recipients, ["tester@example.com"]);
        assert!(
            stakeholder
                .subject
                .starts_with("[managed-tokens production, test]")
        );
        assert!(out.messages.iter().any(|m| m.channel == Channel::SlackTest));
    }

    #[test]
    fn recovery_note_after_a_notified_streak() {
        let mut report = report(false);
        report.outcomes.truncate(2);
        report.outcomes[0] = Outcome::ok(
            "dune_production",
            Target::Node("n1.example.com".into()),
            Stage::Push,
            Duration::ZERO,
        );
        let mut run = RecordedRun::without_history(&report);
        run.changes[0].previous_count = 5;
        run.changes[0].previously_notified = true;
        let out = messages(&report, &run, false);
        assert_eq!(out.messages.len(), 1, "{:?}", out.messages);
        let note = &out.messages[0];
        assert!(
            note.subject
                .ends_with("dune: managed vault tokens work again")
        );
        assert!(
            note.body
                .contains("node n1.example.com: tokens are copied again")
        );
        assert!(note.body.contains("after 5 failed runs"));
    }

    #[test]
    fn successful_test_run_posts_to_slack_only() {
        let mut report = report(true);
        report.outcomes.retain(Outcome::is_ok);
        let out = messages(&report, &RecordedRun::without_history(&report), true);
        assert_eq!(out.messages.len(), 1);
        assert_eq!(out.messages[0].channel, Channel::SlackTest);
        assert!(
            out.messages[0]
                .body
                .ends_with("token-pusher: test run completed successfully")
        );
    }

    #[test]
    fn run_errors_alone_send_the_admin_mail() {
        let mut report = report(false);
        report.outcomes.retain(Outcome::is_ok);
        report
            .run_errors
            .push("state database unavailable: disk full".into());
        let out = messages(&report, &RecordedRun::without_history(&report), false);
        assert_eq!(
            out.messages[0].subject,
            "[managed-tokens production] token-pusher: 1 run error"
        );
        assert!(
            out.messages[0]
                .body
                .contains("Run errors\n  - state database unavailable: disk full")
        );
    }

    #[test]
    fn unit_failure_alert() {
        let journal = "started\nrsync: token s.AbCdEfGhIjKlMnOpQrSt leaked\nfailed\n";
        let out = unit_failure(&config(), "token-pusher.service\n", journal);
        assert_eq!(
            out[0].subject,
            "[managed-tokens production] systemd unit token-pusher.service failed"
        );
        assert!(out[0].body.contains("rsync: token *** leaked"));
        assert_eq!(out[1].channel, Channel::Slack);
    }
}
