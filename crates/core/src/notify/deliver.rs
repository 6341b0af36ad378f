//! Delivery: SMTP through lettre, the Slack webhook through ureq, both within the
//! notification budget, and the state's queue of messages that could not be delivered.

use std::time::{Duration, Instant, SystemTime};

use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{Message, SmtpTransport, Transport};

use crate::config::{Config, Email};
use crate::secret::Secret;
use crate::state::{Channel, Notification, State};

/// What became of one delivery attempt.
enum Delivery {
    Sent,
    /// The channel is not configured: nothing to deliver to, nothing to keep.
    Skipped,
    /// Not tried now (no time left, channel down or not configured); try a later run.
    Later(String),
    /// Tried and failed in a way a later run may not: keep it.
    Failed(String),
    /// Can never be delivered as it is (refused by the server, malformed address).
    Never(String),
}

/// Delivers messages until the deadline, remembering which channels are down so one
/// unreachable relay costs one timeout, not one per message.
pub(super) struct Courier<'a> {
    config: &'a Config,
    deadline: Instant,
    password: Option<Result<Secret, String>>,
    email_down: Option<String>,
    slack_down: Option<String>,
    kept: usize,
    no_relay_warned: bool,
    problems: Vec<String>,
}

impl<'a> Courier<'a> {
    pub(super) fn new(config: &'a Config, deadline: Instant) -> Self {
        Self {
            config,
            deadline,
            password: None,
            email_down: None,
            slack_down: None,
            kept: 0,
            no_relay_warned: false,
            problems: Vec::new(),
        }
    }

    /// Delivers what earlier runs could not, exactly once: rows are claimed first, and
    /// given back when they cannot be delivered now.
    pub(super) fn deliver_pending(&mut self, state: &mut State) {
        let claimed = match state.claim_pending(SystemTime::now()) {
            Ok(claimed) => claimed,
            Err(e) => {
                self.problem(format!("failed to read undelivered notifications: {e:#}"));
                return;
            }
        };
        if claimed.expired > 0 {
            self.problem(format!(
                "dropped {} notifications that could not be delivered for {}",
                claimed.expired,
                humantime::format_duration(crate::state::MAX_AGE)
            ));
        }
        if !claimed.notifications.is_empty() {
            log::info!(
                "delivering {} notifications kept by earlier runs",
                claimed.notifications.len()
            );
        }
        for pending in claimed.notifications {
            let result = match self.deliver(&pending.notification) {
                Delivery::Sent => state.finish_pending(pending.id),
                Delivery::Never(e) => {
                    self.problem(format!(
                        "dropped the undelivered notification `{}`: {e}",
                        pending.notification.subject
                    ));
                    state.finish_pending(pending.id)
                }
                Delivery::Skipped => {
                    log::warn!(
                        "dropped the undelivered notification `{}`: its channel is no longer \
                         configured",
                        pending.notification.subject
                    );
                    state.finish_pending(pending.id)
                }
                Delivery::Failed(e) => state.release_pending(pending.id, Some(&e)),
                Delivery::Later(_) => state.release_pending(pending.id, None),
            };
            if let Err(e) = result {
                self.problem(format!(
                    "failed to update the undelivered notification `{}` (it may be sent \
                     again): {e:#}",
                    pending.notification.subject
                ));
            }
        }
    }

    /// Delivers `notification`, or keeps it in `state` for a later run.
    pub(super) fn send_or_keep(&mut self, notification: &Notification, state: Option<&mut State>) {
        let error = match self.deliver(notification) {
            Delivery::Sent | Delivery::Skipped => return,
            Delivery::Never(e) => {
                self.problem(format!("failed to send `{}`: {e}", notification.subject));
                return;
            }
            Delivery::Failed(e) | Delivery::Later(e) => e,
        };
        let Some(state) = state else {
            self.problem(format!(
                "lost the notification `{}`: {error}, and there is no state database to keep it",
                notification.subject
            ));
            return;
        };
        match state.keep_notification(notification, &error, SystemTime::now()) {
            Ok(()) => {
                self.kept += 1;
                log::debug!("kept `{}` for the next run: {error}", notification.subject);
            }
            Err(e) => self.problem(format!(
                "lost the notification `{}`: {error}, and it could not be kept: {e:#}",
                notification.subject
            )),
        }
    }

    /// The problems met, each already logged once.
    pub(super) fn finish(mut self) -> Vec<String> {
        let mut down = Vec::new();
        if let Some(e) = self.email_down.take() {
            down.push(format!("email delivery failed: {e}"));
        }
        if let Some(e) = self.slack_down.take() {
            down.push(format!("Slack delivery failed: {e}"));
        }
        if down.is_empty() && self.kept > 0 {
            down.push("the notification budget (`timeouts.notificationTimeout`) ran out".into());
        }
        let last = down.len().saturating_sub(1);
        for (i, mut problem) in down.into_iter().enumerate() {
            if i == last && self.kept > 0 {
                problem.push_str(&format!(
                    "; {} notifications kept for the next run",
                    self.kept
                ));
            }
            self.problem(problem);
        }
        self.problems
    }

    fn problem(&mut self, message: String) {
        log::error!("{message}");
        self.problems.push(message);
    }

    fn deliver(&mut self, notification: &Notification) -> Delivery {
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        if remaining < MIN_CALL {
            return Delivery::Later("no time left in the notification budget".into());
        }
        let timeout = remaining.min(MAX_CALL);
        match notification.channel {
            Channel::Email => self.send_email(notification, timeout),
            Channel::Slack | Channel::SlackTest => self.post_slack(notification, timeout),
        }
    }

    fn send_email(&mut self, notification: &Notification, timeout: Duration) -> Delivery {
        let Some(email) = &self.config.email else {
            if !self.no_relay_warned {
                self.no_relay_warned = true;
                log::warn!("no email relay is configured (`email.smtpHost`): emails are not sent");
            }
            return Delivery::Skipped;
        };
        if let Some(e) = &self.email_down {
            return Delivery::Later(e.clone());
        }
        let message = match build_message(email, notification) {
            Ok(message) => message,
            Err(e) => return Delivery::Never(e),
        };
        let transport = match self.transport(email, timeout) {
            Ok(transport) => transport,
            Err(e) => {
                self.email_down = Some(e.clone());
                return Delivery::Failed(e);
            }
        };
        match transport.send(&message) {
            Ok(_) => {
                log::info!(
                    "sent email to {} recipients: {}",
                    notification.recipients.len(),
                    notification.subject
                );
                Delivery::Sent
            }
            Err(e) if e.is_permanent() => Delivery::Never(format!(
                "the relay `{}:{}` refused it: {}",
                email.host,
                email.port,
                chain(&e)
            )),
            Err(e) => {
                let error = format!("relay `{}:{}`: {}", email.host, email.port, chain(&e));
                self.email_down = Some(error.clone());
                Delivery::Failed(error)
            }
        }
    }

    /// A transport for one message: plain SMTP to a local relay by default, STARTTLS
    /// and authentication when configured.
    fn transport(&mut self, email: &Email, timeout: Duration) -> Result<SmtpTransport, String> {
        let builder = if email.starttls {
            SmtpTransport::starttls_relay(&email.host).map_err(|e| {
                format!("cannot set up STARTTLS for `{}`: {}", email.host, chain(&e))
            })?
        } else {
            SmtpTransport::builder_dangerous(&email.host)
        };
        let mut builder = builder.port(email.port).timeout(Some(timeout));
        if let (Some(user), Some(file)) = (&email.username, &email.password_file) {
            let password = self
                .password
                .get_or_insert_with(|| {
                    std::fs::read_to_string(file)
                        .map(|p| Secret::new(p.trim_end_matches(['\n', '\r'])))
                        .map_err(|e| {
                            format!(
                                "failed to read the SMTP password file `{}`: {e}",
                                file.display()
                            )
                        })
                })
                .clone()?;
            builder = builder.credentials(Credentials::new(
                user.clone(),
                password.expose().to_string(),
            ));
        }
        Ok(builder.build())
    }

    fn post_slack(&mut self, notification: &Notification, timeout: Duration) -> Delivery {
        let recipients = match notification.channel {
            Channel::SlackTest => &self.config.notifications_test,
            _ => &self.config.notifications,
        };
        let Some(url) = &recipients.slack_url else {
            return Delivery::Skipped;
        };
        if let Some(e) = &self.slack_down {
            return Delivery::Later(e.clone());
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .build()
            .into();
        let payload = serde_json::json!({ "text": notification.body });
        match agent.post(url.expose()).send_json(&payload) {
            Ok(_) => {
                log::info!("posted to Slack: {}", notification.subject);
                Delivery::Sent
            }
            // Slack answers 4xx for a revoked or malformed webhook: retrying cannot help.
            Err(ureq::Error::StatusCode(code)) if (400..500).contains(&code) && code != 429 => {
                Delivery::Never(format!("the Slack webhook answered HTTP {code}"))
            }
            Err(e) => {
                // Error texts may quote the URL, which is a secret.
                let error = format!("Slack webhook: {}", chain(&e).replace(url.expose(), "***"));
                self.slack_down = Some(error.clone());
                Delivery::Failed(error)
            }
        }
    }
}

fn build_message(email: &Email, notification: &Notification) -> Result<Message, String> {
    let from: Mailbox = email
        .from
        .parse()
        .map_err(|e| format!("the sender `{}` is not a valid address: {e}", email.from))?;
    let mut builder = Message::builder()
        .from(from)
        .subject(notification.subject.clone())
        .header(ContentType::TEXT_PLAIN);
    for recipient in &notification.recipients {
        let to: Mailbox = recipient
            .parse()
            .map_err(|e| format!("the recipient `{recipient}` is not a valid address: {e}"))?;
        builder = builder.to(to);
    }
    builder
        .body(notification.body.clone())
        .map_err(|e| format!("cannot build the email: {e}"))
}

/// An error and its causes on one line.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let words = cause.to_string();
        if !text.contains(&words) {
            text.push_str(": ");
            text.push_str(&words);
        }
        source = cause.source();
    }
    text
}

/// No attempt starts with less time than this left.
const MIN_CALL: Duration = Duration::from_secs(1);

/// No single SMTP or HTTP call may take longer than this.
const MAX_CALL: Duration = Duration::from_secs(15);
