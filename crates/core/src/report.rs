//! Outcomes of a run: one per (service, target, stage), classified, and the run summary
//! that the exit status, the state, the notifications and the metrics are built from.

use std::fmt;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::exit::Exit;
use crate::runner::CmdError;

/// Version of the `--json` summary schema; bumped on incompatible changes.
pub const SCHEMA_VERSION: u32 = 1;

/// Which binary produced a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Binary {
    /// `token-refresher`
    TokenRefresher,
    /// `token-pusher`
    TokenPusher,
    /// `ping-nodes`
    PingNodes,
}

impl Binary {
    /// The executable name.
    pub fn name(self) -> &'static str {
        match self {
            Self::TokenRefresher => "token-refresher",
            Self::TokenPusher => "token-pusher",
            Self::PingNodes => "ping-nodes",
        }
    }
}

impl fmt::Display for Binary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The step an outcome belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// Resolving what the service needs (UID, vault server, local token).
    Setup,
    /// kinit and klist.
    Kerberos,
    /// Finding the credds through the collectors.
    Discovery,
    /// condor_vault_storer into one credd.
    Store,
    /// htgettoken directly into the local store.
    GetToken,
    /// Reachability of a node.
    Ping,
    /// rsync of the tokens to one node.
    Push,
}

impl Stage {
    /// The stage as the `--json` summary, the state and the metrics spell it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Setup => "setup",
            Self::Kerberos => "kerberos",
            Self::Discovery => "discovery",
            Self::Store => "store",
            Self::GetToken => "get-token",
            Self::Ping => "ping",
            Self::Push => "push",
        }
    }
}

/// What an outcome is about, besides its service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "kind", content = "name", rename_all = "kebab-case")]
pub enum Target {
    /// The service as a whole.
    Service,
    /// One credd.
    Credd(String),
    /// One destination node.
    Node(String),
    /// One collector.
    Collector(String),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Service => f.write_str("service"),
            Self::Credd(c) => write!(f, "credd `{c}`"),
            Self::Node(n) => write!(f, "node `{n}`"),
            Self::Collector(c) => write!(f, "collector `{c}`"),
        }
    }
}

/// Why something failed, in words an operator acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureClass {
    /// The configuration or the environment does not allow the step.
    Setup,
    /// No UID for the account: no override, no cached value, not in passwd.
    NoUid,
    /// No valid local vault token to push.
    NoToken,
    /// kinit with the keytab failed.
    KinitFailed,
    /// klist shows another principal than the configured one.
    PrincipalMismatch,
    /// No collector answered.
    CollectorUnreachable,
    /// The collectors answered with no schedd.
    NoSchedds,
    /// The vault server did not answer.
    VaultUnreachable,
    /// The credd did not answer or did not accept the credential.
    CreddUnreachable,
    /// The step outlived its timeout.
    Timeout,
    /// Vault needs an interactive login: the service must be re-onboarded.
    AuthenticationNeeded,
    /// Vault or the credd refused the credentials.
    PermissionDenied,
    /// condor_vault_storer or htgettoken failed otherwise.
    StorerFailed,
    /// The node did not answer.
    Unreachable,
    /// The node refused the Kerberos login.
    AuthenticationRefused,
    /// rsync failed otherwise.
    RsyncFailed,
    /// The run ended (global timeout or SIGTERM) before the step could finish.
    Cancelled,
}

impl FailureClass {
    /// A short phrase for tables and subjects.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Setup => "setup error",
            Self::NoUid => "no UID",
            Self::NoToken => "no vault token",
            Self::KinitFailed => "kinit failed",
            Self::PrincipalMismatch => "principal mismatch",
            Self::CollectorUnreachable => "collector unreachable",
            Self::NoSchedds => "no schedds",
            Self::VaultUnreachable => "vault unreachable",
            Self::CreddUnreachable => "credd unreachable or refusing",
            Self::Timeout => "timeout",
            Self::AuthenticationNeeded => "authentication needed: re-onboard",
            Self::PermissionDenied => "permission denied",
            Self::StorerFailed => "token storer failed",
            Self::Unreachable => "unreachable",
            Self::AuthenticationRefused => "authentication refused",
            Self::RsyncFailed => "rsync failed",
            Self::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for FailureClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// A classified failure with its evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// The class.
    pub class: FailureClass,
    /// One-line summary.
    pub message: String,
    /// The decisive line of the child's stderr, if any.
    pub detail: Option<String>,
    /// The child's stderr (scrubbed of tokens, capped), kept for the admins.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub stderr: String,
}

impl Failure {
    /// A failure with no child output.
    pub fn new(class: FailureClass, message: impl Into<String>) -> Self {
        Self {
            class,
            message: message.into(),
            detail: None,
            stderr: String::new(),
        }
    }

    /// A failure of a child, classified by `class`; timeouts and cancellations are
    /// recognised here.
    pub fn from_cmd(class: FailureClass, message: impl Into<String>, err: &CmdError) -> Self {
        let class = match err {
            CmdError::TimedOut { global: false, .. } => FailureClass::Timeout,
            CmdError::TimedOut { global: true, .. } | CmdError::Cancelled { .. } => {
                FailureClass::Cancelled
            }
            _ => class,
        };
        let mut output = err.stderr().to_string();
        if output.trim().is_empty() {
            output = err.stdout().to_string();
        }
        let stderr = crate::secret::scrub(&cap(&output, 4000));
        let detail = match err {
            CmdError::Spawn { source, .. } => Some(source.to_string()),
            CmdError::TimedOut { limit, .. } => Some(format!(
                "killed after {}",
                humantime::format_duration(*limit)
            )),
            CmdError::Cancelled { reason, .. } => Some((*reason).to_string()),
            CmdError::Failed { .. } => decisive_line(&stderr),
        };
        Self {
            class,
            message: message.into(),
            detail,
            stderr,
        }
    }
}

impl Failure {
    /// A failure of a child whose output `patterns` classify (else `otherwise`), with the
    /// line that decided as its detail; timeouts and cancellations keep their own class.
    pub fn classified(
        what: impl Into<String>,
        err: &CmdError,
        patterns: &[Pattern],
        otherwise: FailureClass,
    ) -> Self {
        let output = format!("{}\n{}", err.stderr(), err.stdout());
        let (class, line) = classify_output(&output, patterns, otherwise);
        let mut failure = Self::from_cmd(class, what, err);
        if failure.class == class && line.is_some() {
            failure.detail = line;
        }
        failure
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.class, self.message)?;
        if let Some(detail) = &self.detail {
            write!(f, ": {detail}")?;
        }
        Ok(())
    }
}

/// Words that must all appear (in any case) in one line of a child's output, and the
/// class such a line means.
pub type Pattern = (&'static [&'static str], FailureClass);

/// The class of the first of `patterns`, in order, that a line of `output` matches, with
/// that line (scrubbed of tokens); `otherwise` and no line when none matches.
pub fn classify_output(
    output: &str,
    patterns: &[Pattern],
    otherwise: FailureClass,
) -> (FailureClass, Option<String>) {
    let lines: Vec<(String, &str)> = output
        .lines()
        .map(|l| (l.to_ascii_lowercase(), l.trim()))
        .collect();
    for (words, class) in patterns {
        let found = lines
            .iter()
            .find(|(lower, _)| words.iter().all(|w| lower.contains(w)));
        if let Some((_, line)) = found {
            return (*class, Some(crate::secret::scrub(line)));
        }
    }
    (otherwise, None)
}

/// The line of a child's output that says what went wrong: the last line that mentions
/// an error, else the last non-empty line.
pub fn decisive_line(output: &str) -> Option<String> {
    let lines: Vec<&str> = output
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    const HINTS: [&str; 8] = [
        "error",
        "denied",
        "failed",
        "refused",
        "timed out",
        "not ",
        "unable",
        "cannot",
    ];
    lines
        .iter()
        .rev()
        .find(|l| {
            let lower = l.to_ascii_lowercase();
            HINTS.iter().any(|h| lower.contains(h))
        })
        .or(lines.last())
        .map(|l| cap(l, 300))
}

/// `text` cut to at most `max` bytes at a character boundary, marked when cut.
pub(crate) fn cap(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// What happened to one (service, target, stage).
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// The service's configuration name; `None` for node-level outcomes (ping).
    pub service: Option<String>,
    /// The target.
    pub target: Target,
    /// The stage.
    pub stage: Stage,
    /// Wall time.
    #[serde(serialize_with = "seconds")]
    pub duration: Duration,
    /// `None` on success.
    pub failure: Option<Failure>,
    /// For node-level outcomes, the services that use the node.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
}

impl Outcome {
    /// A success.
    pub fn ok(service: &str, target: Target, stage: Stage, duration: Duration) -> Self {
        Self {
            service: Some(service.to_string()),
            target,
            stage,
            duration,
            failure: None,
            services: Vec::new(),
        }
    }

    /// A failure.
    pub fn failed(
        service: &str,
        target: Target,
        stage: Stage,
        duration: Duration,
        failure: Failure,
    ) -> Self {
        Self {
            failure: Some(failure),
            ..Self::ok(service, target, stage, duration)
        }
    }

    /// The outcome of `result` for a target started at `started`, logged once: `done`
    /// (given the seconds taken) at info on success, the failure at error.
    pub fn finish(
        service: &str,
        target: Target,
        stage: Stage,
        started: std::time::Instant,
        result: Result<(), Failure>,
        done: impl FnOnce(f64) -> String,
    ) -> Self {
        let duration = started.elapsed();
        match result {
            Ok(()) => {
                log::info!("{}", done(duration.as_secs_f64()));
                Self::ok(service, target, stage, duration)
            }
            Err(f) => {
                log::error!("`{service}`: {} of {target} failed: {f}", stage.name());
                Self::failed(service, target, stage, duration, f)
            }
        }
    }

    /// Whether it succeeded.
    pub fn is_ok(&self) -> bool {
        self.failure.is_none()
    }
}

fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((d.as_secs_f64() * 1000.0).round() / 1000.0)
}

/// Everything a run did.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// The binary.
    pub binary: Binary,
    /// When the run started.
    pub started: SystemTime,
    /// Wall time of the work (filled at the end).
    pub duration: Duration,
    /// Whether `--test` was given.
    pub test: bool,
    /// The services the run selected (configuration names).
    pub services: Vec<String>,
    /// Every outcome.
    pub outcomes: Vec<Outcome>,
    /// Problems of the run itself (state database, notification delivery, metrics).
    pub run_errors: Vec<String>,
}

impl RunReport {
    /// An empty report for `binary`.
    pub fn new(binary: Binary, test: bool, services: Vec<String>) -> Self {
        Self {
            binary,
            started: SystemTime::now(),
            duration: Duration::ZERO,
            test,
            services,
            outcomes: Vec::new(),
            run_errors: Vec::new(),
        }
    }

    /// The failed outcomes.
    pub fn failures(&self) -> impl Iterator<Item = &Outcome> {
        self.outcomes.iter().filter(|o| !o.is_ok())
    }

    /// Whether `service` had any failure in this run.
    pub fn service_failed(&self, service: &str) -> bool {
        self.failures()
            .any(|o| o.service.as_deref() == Some(service))
    }

    /// The exit status the outcomes call for.
    pub fn exit(&self) -> Exit {
        if self.failures().next().is_some() || !self.run_errors.is_empty() {
            Exit::Partial
        } else {
            Exit::Success
        }
    }

    /// The `--json` run summary.
    pub fn summary(&self) -> serde_json::Value {
        let failed_services: Vec<&String> = self
            .services
            .iter()
            .filter(|s| self.service_failed(s))
            .collect();
        serde_json::json!({
            "schema": SCHEMA_VERSION,
            "binary": self.binary,
            "started": humantime::format_rfc3339_seconds(self.started).to_string(),
            "duration": (self.duration.as_secs_f64() * 1000.0).round() / 1000.0,
            "test": self.test,
            "services": self.services,
            "outcomes": self.outcomes,
            "run_errors": self.run_errors,
            "totals": {
                "services": self.services.len(),
                "failed_services": failed_services.len(),
                "outcomes": self.outcomes.len(),
                "failed": self.failures().count(),
            },
            "exit": self.exit().code(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisive_line_prefers_errors() {
        let out = "debug1: hello\nPermission denied (gssapi-with-mic).\nrsync: connection unexpectedly closed\n\n";
        assert_eq!(
            decisive_line(out).unwrap(),
            "Permission denied (gssapi-with-mic)."
        );
        assert_eq!(decisive_line("just\nlines").unwrap(), "lines");
        assert_eq!(decisive_line(""), None);
    }

    #[test]
    fn exit_reflects_failures() {
        let mut report = RunReport::new(Binary::TokenPusher, false, vec!["a_b".into()]);
        report.outcomes.push(Outcome::ok(
            "a_b",
            Target::Node("n".into()),
            Stage::Push,
            Duration::ZERO,
        ));
        assert_eq!(report.exit(), Exit::Success);
        report.outcomes.push(Outcome::failed(
            "a_b",
            Target::Node("m".into()),
            Stage::Push,
            Duration::ZERO,
            Failure::new(FailureClass::Unreachable, "no route"),
        ));
        assert_eq!(report.exit(), Exit::Partial);
        let summary = report.summary();
        assert_eq!(summary["schema"], 1);
        assert_eq!(summary["totals"]["failed"], 1);
        assert_eq!(summary["outcomes"][1]["target"]["name"], "m");
        assert_eq!(summary["outcomes"][1]["failure"]["class"], "unreachable");
    }
}
