//! Notifications at the end of every run: the run is recorded in the state, messages
//! kept by earlier runs are delivered, and this run's messages are built and sent.
//!
//! - **Admins** get one email per run with failures or run errors, listing every
//!   failure by service and target with its class, the decisive stderr line, how long it
//!   has been failing and what to do; Slack gets an abridged copy.
//! - **Stakeholders** (`experiments.<experiment>.emails`) hear about push and
//!   authentication-needed failures when a target's consecutive-failure count reaches
//!   `errorCountToSendMessage`, then every that many failing runs, and get a short note
//!   when it works again.
//!
//! Nothing here can fail the run or block it past `timeouts.notificationTimeout`:
//! problems go to the report's run errors, and a message that cannot be delivered stays
//! in the state for the next run of any binary.

mod compose;
mod deliver;

use std::time::{Duration, Instant};

use crate::config::Config;
use crate::report::RunReport;
use crate::state::{RecordedRun, State};
use compose::RunFacts;
use deliver::Courier;

/// How a run wants to be notified about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotifyOptions {
    /// Whether anything is sent: false for `--dont-notify` / `--disable-notifications`
    /// and `--run-onboarding`. The run is still recorded in the state.
    pub enabled: bool,
    /// `--test`: admin messages go to `notifications_test`, stakeholder messages too.
    pub test: bool,
}

/// Records the run in `state`, delivers what earlier runs could not, then sends this
/// run's messages, all within `config.timeouts.notification`.
///
/// Called once at the end of every run, also after the global deadline passed. With no
/// state (the database could not be opened; the report's run errors say why) messages
/// are still sent, every failure counting as the first of its streak. Problems are
/// appended to `report.run_errors` and logged once.
pub fn finish_run(
    config: &Config,
    report: &mut RunReport,
    mut state: Option<&mut State>,
    options: &NotifyOptions,
) {
    let deadline = Instant::now() + config.timeouts.notification;
    if let Some(state) = state.as_deref_mut() {
        limit_waits(state, config.timeouts.db, deadline);
    }
    let recorded = state
        .as_deref_mut()
        .and_then(|state| match state.record_run(report) {
            Ok(recorded) => Some(recorded),
            Err(e) => {
                problem(report, format!("failed to record the run: {e:#}"));
                None
            }
        });
    if !options.enabled {
        log::debug!("notifications are disabled: nothing is sent");
        return;
    }

    let mut courier = Courier::new(config, deadline);
    if let Some(state) = state.as_deref_mut() {
        limit_waits(state, config.timeouts.db, deadline);
        courier.deliver_pending(state);
        limit_waits(state, config.timeouts.db, deadline);
    }

    let history = recorded.is_some();
    let recorded = recorded.unwrap_or_else(|| RecordedRun::without_history(report));
    let facts = RunFacts {
        config,
        report,
        recorded: &recorded,
        history,
        test: options.test,
    };
    let messages = compose::run_messages(&facts);
    if let Some(state) = state.as_deref_mut()
        && !messages.notified.is_empty()
        && let Err(e) = state.mark_notified(&messages.notified)
    {
        problem(
            report,
            format!("failed to mark stakeholder alerts as sent: {e:#}"),
        );
    }
    for message in &messages.messages {
        courier.send_or_keep(message, state.as_deref_mut());
    }
    report.run_errors.extend(courier.finish());
}

/// Sends the admins an alert that the systemd unit `unit` failed, with `journal` (the
/// last lines of its journal, scrubbed of tokens here), for the units' `OnFailure=`
/// template. Pending messages of earlier runs are delivered too; what cannot be sent is
/// kept in `state`. Problems are logged.
pub fn notify_unit_failure(
    config: &Config,
    unit: &str,
    journal: &str,
    mut state: Option<&mut State>,
) {
    let deadline = Instant::now() + config.timeouts.notification;
    if let Some(state) = state.as_deref_mut() {
        limit_waits(state, config.timeouts.db, deadline);
    }
    let mut courier = Courier::new(config, deadline);
    if let Some(state) = state.as_deref_mut() {
        courier.deliver_pending(state);
    }
    let messages = compose::unit_failure(config, unit, journal);
    if messages.is_empty() {
        log::warn!(
            "no `admin_email` or Slack webhook is configured: unit `{unit}` failed silently"
        );
    }
    for message in &messages {
        courier.send_or_keep(message, state.as_deref_mut());
    }
    // Each problem was logged when it happened; there is no report to carry them.
    let _ = courier.finish();
}

/// Whether a target failing for `count` consecutive runs is notified to stakeholders
/// under `errorCountToSendMessage = every`: at `every`, then at every multiple of it;
/// 0 and 1 mean every failing run.
pub fn threshold_reached(count: u32, every: u32) -> bool {
    count > 0 && (every <= 1 || count.is_multiple_of(every))
}

/// Keeps database waits inside the notification budget.
fn limit_waits(state: &mut State, db_timeout: Duration, deadline: Instant) {
    let left = deadline.saturating_duration_since(Instant::now());
    if let Err(e) = state.set_busy_timeout(db_timeout.min(left)) {
        log::warn!("{e:#}");
    }
}

fn problem(report: &mut RunReport, message: String) {
    log::error!("{message}");
    report.run_errors.push(message);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_every_n() {
        let sent: Vec<u32> = (1..=10).filter(|&c| threshold_reached(c, 3)).collect();
        assert_eq!(sent, [3, 6, 9]);
        for every in [0, 1] {
            assert!((1..=5).all(|c| threshold_reached(c, every)));
            assert!(!threshold_reached(0, every));
        }
        // The first failure of a new target follows the same rule as any other.
        assert!(!threshold_reached(1, 2));
        assert!(threshold_reached(2, 2));
    }
}
