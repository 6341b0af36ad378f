use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use super::*;
use crate::report::{Binary, Failure, FailureClass, Target};

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
