//! Messages to an experiment's stakeholders: alerts at every N consecutive failures of a
//! push or of the Vault login, and a recovery note once a notified streak ends.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use super::super::threshold_reached;
use super::{RunFacts, RunMessages, plural, tag, time};
use crate::report::{Failure, FailureClass};
use crate::secret::scrub;
use crate::service::Service;
use crate::state::{Channel, Notification, StreakKey, TargetChange};

/// One stakeholder item: a target that passed the threshold or recovered.
struct Item<'a> {
    service: &'a Service,
    change: &'a TargetChange,
    failure: Option<&'a Failure>,
}

pub(super) fn stakeholder_messages(facts: &RunFacts<'_>, out: &mut RunMessages) {
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
