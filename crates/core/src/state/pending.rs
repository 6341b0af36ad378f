//! Notifications that could not be delivered, kept for the next run of any binary.
//!
//! A run claims rows in a transaction before delivering them, so two binaries finishing
//! at the same time never send the same message twice; a claim left by a crashed run
//! expires after [`STALE_CLAIM`].

use std::time::{Duration, SystemTime};

use rusqlite::{TransactionBehavior, params};
use serde::Serialize;

use super::{State, from_unix, sql_error, unix};

/// Where a notification goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Channel {
    /// Email to the notification's recipients.
    Email,
    /// The Slack webhook of `notifications`.
    Slack,
    /// The Slack webhook of `notifications_test`.
    SlackTest,
}

impl Channel {
    fn name(self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::Slack => "slack",
            Self::SlackTest => "slack-test",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        [Self::Email, Self::Slack, Self::SlackTest]
            .into_iter()
            .find(|c| c.name() == name)
    }
}

/// A message ready to deliver. It never holds a secret: the Slack webhook URL is looked
/// up in the configuration at delivery time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Notification {
    /// The channel.
    pub channel: Channel,
    /// Envelope recipients of an email; empty for Slack.
    pub recipients: Vec<String>,
    /// The subject (for Slack, the first line of the text).
    pub subject: String,
    /// The body (for Slack, the whole text).
    pub body: String,
}

/// A notification kept in the state, claimed by this process for delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingNotification {
    /// Row id, to report the delivery with [`State::finish_pending`].
    pub id: i64,
    /// The message.
    pub notification: Notification,
    /// When the first attempt failed.
    pub created: SystemTime,
    /// Failed attempts so far.
    pub attempts: u32,
}

/// The result of [`State::claim_pending`].
#[derive(Debug, Default)]
pub struct Claimed {
    /// The rows this process now owns, oldest first.
    pub notifications: Vec<PendingNotification>,
    /// Rows dropped because they waited longer than [`MAX_AGE`].
    pub expired: usize,
}

/// How long an undelivered notification is kept before it is dropped with a warning.
pub const MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// At most this many notifications are kept; the oldest go first.
pub const MAX_PENDING: i64 = 500;

/// A claim older than this is taken to belong to a run that died.
const STALE_CLAIM: Duration = Duration::from_secs(3600);

impl State {
    /// Keeps `notification` for a later run, after a delivery that failed with `error`.
    pub fn keep_notification(
        &mut self,
        notification: &Notification,
        error: &str,
        now: SystemTime,
    ) -> anyhow::Result<()> {
        let fail = |e| sql_error(e, &self.path, "keep an undelivered notification");
        let recipients = serde_json::to_string(&notification.recipients)?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(fail)?;
        tx.execute(
            "INSERT INTO pending (channel, recipients, subject, body, created, attempts, last_error)
             VALUES (?1, ?2, ?3, ?4, ?5, 1, ?6)",
            params![
                notification.channel.name(),
                recipients,
                notification.subject,
                notification.body,
                unix(now),
                error
            ],
        )
        .map_err(fail)?;
        let dropped = tx
            .execute(
                "DELETE FROM pending WHERE id NOT IN
                     (SELECT id FROM pending ORDER BY id DESC LIMIT ?1)",
                params![MAX_PENDING],
            )
            .map_err(fail)?;
        tx.commit().map_err(fail)?;
        if dropped > 0 {
            log::warn!(
                "dropped the {dropped} oldest undelivered notifications from `{}`: more than \
                 {MAX_PENDING} were waiting",
                self.path.display()
            );
        }
        Ok(())
    }

    /// Claims every undelivered notification no live run holds, oldest first, after
    /// dropping those older than [`MAX_AGE`].
    pub fn claim_pending(&mut self, now: SystemTime) -> anyhow::Result<Claimed> {
        let fail = |e| sql_error(e, &self.path, "claim undelivered notifications");
        let now_secs = unix(now);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(fail)?;
        let expired = tx
            .execute(
                "DELETE FROM pending WHERE created < ?1",
                params![now_secs - MAX_AGE.as_secs() as i64],
            )
            .map_err(fail)?;
        tx.execute(
            "UPDATE pending SET claimed_by = ?1, claimed_at = ?2
             WHERE claimed_by IS NULL OR claimed_at < ?3",
            params![
                self.claimant,
                now_secs,
                now_secs - STALE_CLAIM.as_secs() as i64
            ],
        )
        .map_err(fail)?;
        let rows = {
            let mut statement = tx
                .prepare(
                    "SELECT id, channel, recipients, subject, body, created, attempts
                     FROM pending WHERE claimed_by = ?1 ORDER BY id",
                )
                .map_err(fail)?;
            let rows = statement
                .query_map([&self.claimant], |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, String>(3)?,
                        row.get::<_, String>(4)?,
                        row.get::<_, i64>(5)?,
                        row.get::<_, i64>(6)?,
                    ))
                })
                .map_err(fail)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(fail)?
        };
        tx.commit().map_err(fail)?;

        let mut notifications = Vec::with_capacity(rows.len());
        for (id, channel, recipients, subject, body, created, attempts) in rows {
            let (Some(channel), Ok(recipients)) = (
                Channel::from_name(&channel),
                serde_json::from_str(&recipients),
            ) else {
                log::warn!(
                    "dropping unreadable undelivered notification {id} from `{}`",
                    self.path.display()
                );
                self.finish_pending(id)?;
                continue;
            };
            notifications.push(PendingNotification {
                id,
                notification: Notification {
                    channel,
                    recipients,
                    subject,
                    body,
                },
                created: from_unix(created),
                attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
            });
        }
        Ok(Claimed {
            notifications,
            expired,
        })
    }

    /// Removes a claimed notification: it was delivered, or it can never be.
    pub fn finish_pending(&mut self, id: i64) -> anyhow::Result<()> {
        self.conn
            .execute(
                "DELETE FROM pending WHERE id = ?1 AND claimed_by = ?2",
                params![id, self.claimant],
            )
            .map_err(|e| sql_error(e, &self.path, "remove a delivered notification"))?;
        Ok(())
    }

    /// Gives a claimed notification back for a later run; `error` is the failed attempt,
    /// `None` when it was not tried (no time left, or its channel is down).
    pub fn release_pending(&mut self, id: i64, error: Option<&str>) -> anyhow::Result<()> {
        self.conn
            .execute(
                "UPDATE pending SET claimed_by = NULL, claimed_at = NULL,
                     attempts = attempts + ?3, last_error = coalesce(?4, last_error)
                 WHERE id = ?1 AND claimed_by = ?2",
                params![id, self.claimant, i64::from(error.is_some()), error],
            )
            .map_err(|e| sql_error(e, &self.path, "release an undelivered notification"))?;
        Ok(())
    }

    /// How many notifications wait for delivery.
    pub fn pending_count(&self) -> anyhow::Result<u64> {
        let count: i64 = self
            .conn
            .query_row("SELECT count(*) FROM pending", [], |row| row.get(0))
            .map_err(|e| sql_error(e, &self.path, "count undelivered notifications"))?;
        Ok(u64::try_from(count).unwrap_or(0))
    }
}
