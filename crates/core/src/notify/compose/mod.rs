//! The text of every message: the admin report of a run, its abridged Slack form, the
//! stakeholder alerts and recovery notes, and the unit-failure alert.
//!
//! Child output reaches these texts only through [`scrub`], so no token is ever mailed.

use std::fmt::Write as _;
use std::time::SystemTime;

use crate::config::Config;
use crate::report::{Outcome, RunReport, Stage, cap};
use crate::secret::scrub;
use crate::state::{Channel, Notification, RecordedRun, StreakKey};

mod admin;
mod stakeholder;

use admin::{admin_body, admin_subject, slack_lines};
use stakeholder::stakeholder_messages;

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

#[cfg(test)]
mod tests;
