//! Configuration: the Go service's `managedTokens.yml` (or its JSON rendering), loaded in
//! two stages.
//!
//! [`raw`] mirrors the file; [`Config::from_raw`] applies defaults, parses durations and
//! templates, validates every name that reaches a command line, enforces cross-field rules
//! and resolves each role into a [`Service`]. Every problem is reported with the file and
//! the key path, all at once.

mod keys;
pub mod raw;
mod resolve;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_yaml::Value;

use crate::service::{Retry, Service};
pub use keys::suggest;
use raw::{RawConfig, RawNotifications, RawRetry};

/// Where the configuration is read from when neither `--config` nor
/// `MANAGED_TOKENS_CONFIG` says otherwise.
pub const DEFAULT_PATH: &str = "/etc/managed-tokens/managedTokens.yml";

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from.
    pub path: PathBuf,
    /// Every configured service, sorted by configuration name.
    pub services: Vec<Service>,
    /// Children in flight at once (`concurrency`, default 16).
    pub concurrency: usize,
    /// The state database (`dbLocation`, default `/var/lib/managed-tokens/managed-tokens.db`).
    pub db_location: PathBuf,
    /// Where each binary keeps its run lock (`lockDir`, default: the database's directory).
    pub lock_dir: PathBuf,
    /// `minTokenLifetime` (default 10s), passed to htgettoken as `--vaulttokenminttl`.
    pub min_token_lifetime: Duration,
    /// `errorCountToSendMessage` (default 0: every failure is sent).
    pub error_count_to_send_message: u32,
    /// `devEnvironmentLabel` (default `production`).
    pub environment_label: String,
    /// Stage and run timeouts.
    pub timeouts: Timeouts,
    /// Retry policies per stage.
    pub retries: Retries,
    /// Whether each `condor_vault_storer` call gets its own `CONDOR_VAULT_STORER_ID`
    /// (`storerIsolation`, default true). Off, calls run one at a time as in the Go service.
    pub storer_isolation: bool,
    /// SMTP settings (`email`); `None` when no relay is configured.
    pub email: Option<Email>,
    /// Production recipients (`notifications`).
    pub notifications: Recipients,
    /// Recipients with `--test` (`notifications_test`).
    pub notifications_test: Recipients,
    /// Pushgateway (`prometheus`).
    pub prometheus: Option<Prometheus>,
    /// FERRY, where configured with a client certificate (`ferry`).
    pub ferry: Option<crate::ferry::Ferry>,
    /// node_exporter textfile (`metrics.textfile`).
    pub metrics_textfile: Option<PathBuf>,
    /// Keys accepted for compatibility but not acted on, to report once at `warn`.
    pub ignored_keys: Vec<String>,
}

/// `timeouts.*`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// The whole run (`globalTimeout`, default 300s).
    pub global: Duration,
    /// kinit and klist of one service (`kerberosTimeout`, default 20s).
    pub kerberos: Duration,
    /// One condor_vault_storer or htgettoken call (`vaultStorerTimeout`, default 60s).
    pub vault_storer: Duration,
    /// One ping (`pingTimeout`, default 10s).
    pub ping: Duration,
    /// One node's push, all attempts included (`pushTimeout`, default 30s).
    pub push: Duration,
    /// One `condor_status` query (`collectorTimeout`, default 20s).
    pub collector: Duration,
    /// The interactive storer call of `--run-onboarding` (`onboardingTimeout`, default 10m).
    pub onboarding: Duration,
    /// State and notifications after the work, beyond the global deadline
    /// (`notificationTimeout`, default 30s).
    pub notification: Duration,
    /// Waiting for the state database lock (`dbTimeout`, default 10s).
    pub db: Duration,
    /// One FERRY request (`ferryRequestTimeout`, default 30s).
    pub ferry: Duration,
}

/// `workerType.*`, per stage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retries {
    /// `getKerberosTickets`
    pub kerberos: Retry,
    /// `storeAndGetToken` and `getToken`
    pub token: Retry,
    /// `pingAggregator`
    pub ping: Retry,
    /// `pushTokens`
    pub push: Retry,
}

/// `email`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email {
    /// Sender address (`from`).
    pub from: String,
    /// Relay host (`smtpHost`).
    pub host: String,
    /// Relay port (`smtpPort`, default 25).
    pub port: u16,
    /// Require STARTTLS (`starttls`, default false: a plain local relay).
    pub starttls: bool,
    /// SMTP user (`username`); the password is read from `passwordFile`.
    pub username: Option<String>,
    /// File holding the SMTP password (`passwordFile`).
    pub password_file: Option<PathBuf>,
}

/// `notifications` / `notifications_test`
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recipients {
    /// `admin_email`
    pub admin_emails: Vec<String>,
    /// `SLACK_ALERTS_URL`; a secret, never logged.
    pub slack_url: Option<crate::secret::Secret>,
}

/// `prometheus`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prometheus {
    /// Pushgateway URL with scheme (`host`).
    pub url: String,
    /// `jobname` (default `managed_tokens`).
    pub job: String,
}

/// One problem in the configuration, at a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path, e.g. `experiments.dune.roles.production.account`.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl Problem {
    pub(crate) fn new(key: &str, message: impl Into<String>) -> Self {
        Self {
            key: key.to_string(),
            message: message.into(),
        }
    }
}

/// A configuration that cannot be used: every problem found, with the file.
#[derive(Debug, Clone)]
pub struct ConfigError {
    /// The configuration file.
    pub path: PathBuf,
    /// Every problem, in key order.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "invalid configuration `{}`: {n} problem{}",
            self.path.display(),
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            if p.key.is_empty() {
                write!(f, "\n  - {}", p.message)?;
            } else {
                write!(f, "\n  - `{}`: {}", p.key, p.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads and validates the configuration at `path` (YAML, or JSON for `.json`).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let fail = |message: String| ConfigError {
            path: path.to_path_buf(),
            problems: vec![Problem::new("", message)],
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| fail(format!("cannot read the file: {e}")))?;
        let is_json = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        Self::from_str(&text, is_json, path)
    }

    /// Parses and validates configuration text; `path` is only used in messages.
    pub fn from_str(text: &str, json: bool, path: &Path) -> Result<Self, ConfigError> {
        let error = |problems| ConfigError {
            path: path.to_path_buf(),
            problems,
        };
        let doc: Value = if json {
            serde_json::from_str(text).map_err(|e| error(vec![Problem::new("", e.to_string())]))?
        } else {
            serde_yaml::from_str(text).map_err(|e| error(vec![Problem::new("", e.to_string())]))?
        };
        if !doc.is_mapping() {
            return Err(error(vec![Problem::new(
                "",
                "the top level must be a mapping of keys",
            )]));
        }

        let unknown = keys::unknown_keys(&doc);
        if !unknown.is_empty() {
            return Err(error(unknown));
        }
        let raw: RawConfig = serde_path_to_error::deserialize(doc).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." { String::new() } else { key };
            error(vec![Problem::new(&key, e.into_inner().to_string())])
        })?;
        Self::from_raw(raw, path).map_err(|mut problems| {
            problems.sort_by(|a, b| a.key.cmp(&b.key));
            error(problems)
        })
    }

    /// Applies defaults and validates `raw`; returns every problem found.
    pub fn from_raw(raw: RawConfig, path: &Path) -> Result<Self, Vec<Problem>> {
        let mut problems = Vec::new();
        let p = &mut problems;
        let defaults = raw_defaults(&raw);

        let timeouts = timeouts(raw.timeouts.unwrap_or_default(), p);
        let retries = retries(raw.worker_type.unwrap_or_default(), &timeouts, p);
        let min_token_lifetime =
            duration_or(raw.min_token_lifetime.as_deref(), "minTokenLifetime", 10, p);
        let db_location = PathBuf::from(raw.db_location.as_deref().unwrap_or(DEFAULT_DB_LOCATION));
        let lock_dir = raw.lock_dir.map(PathBuf::from).unwrap_or_else(|| {
            db_location
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("."))
        });
        let concurrency = raw.concurrency.unwrap_or(DEFAULT_CONCURRENCY);
        if concurrency == 0 {
            p.push(Problem::new("concurrency", "must be at least 1"));
        }
        let email = raw.email.and_then(|e| email(e, p));
        let notifications = recipients(raw.notifications, "notifications", p);
        let notifications_test = recipients(raw.notifications_test, "notifications_test", p);
        let prometheus = raw.prometheus.and_then(|prom| {
            let url = prom.host.filter(|h| !h.is_empty())?;
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                p.push(Problem::new(
                    "prometheus.host",
                    "must start with `http://` or `https://`",
                ));
            }
            Some(Prometheus {
                url,
                job: prom.jobname.unwrap_or_else(|| "managed_tokens".into()),
            })
        });

        let mut ignored_keys = Vec::new();
        for (key, present) in [
            ("htgettokenopts", raw.htgettokenopts.is_some()),
            ("logs", raw.logs.is_some()),
            ("loki", raw.loki.is_some()),
            ("tracing", raw.tracing.is_some()),
            ("userPrincipal", raw.user_principal.is_some()),
            ("tokenGetter", raw.token_getter.is_some()),
        ] {
            if present {
                ignored_keys.push(key.to_string());
            }
        }

        let ferry = raw.ferry.and_then(|f| ferry(f, &mut ignored_keys, p));
        let defaults = resolve::Defaults::new(defaults, p);
        let services = match raw.experiments {
            Some(experiments) if !experiments.is_empty() => {
                resolve::services(experiments, &defaults, p)
            }
            _ => {
                p.push(Problem::new("experiments", "no experiments are configured"));
                Vec::new()
            }
        };

        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Self {
            path: path.to_path_buf(),
            services,
            concurrency,
            db_location,
            lock_dir,
            min_token_lifetime,
            error_count_to_send_message: raw.error_count_to_send_message.unwrap_or(0),
            environment_label: raw
                .dev_environment_label
                .filter(|l| !l.is_empty())
                .unwrap_or_else(|| "production".into()),
            timeouts,
            retries,
            storer_isolation: raw.storer_isolation.unwrap_or(true),
            email,
            notifications,
            notifications_test,
            prometheus,
            ferry,
            metrics_textfile: raw.metrics.and_then(|m| m.textfile).map(PathBuf::from),
            ignored_keys,
        })
    }

    /// The service with configuration name `name`.
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }
}

const DEFAULT_DB_LOCATION: &str = "/var/lib/managed-tokens/managed-tokens.db";
const DEFAULT_CONCURRENCY: usize = 16;

/// The top-level values each role falls back to when it has no `*Override`.
fn raw_defaults(raw: &RawConfig) -> resolve::RawDefaults {
    resolve::RawDefaults {
        keytab_path: raw.keytab_path.clone(),
        principal_pattern: raw.kerberos_principal_pattern.clone(),
        collector_host: raw.condor_collector_host.clone(),
        schedd_constraint: raw.condor_schedd_constraint.clone(),
        credd_host: raw.condor_credd_host.clone(),
        vault_server: raw.vault_server.clone(),
        token_store: raw.service_credd_vault_token_path_root.clone(),
        role_file_template: raw.default_role_file_destination_template.clone(),
        ping_options: raw.ping_options.clone(),
        rsync_options: raw.file_copier_options.clone(),
        ssh_options: raw.ssh_options.clone(),
        disable_notifications: raw.disable_notifications.unwrap_or(false),
        destination_prefixes: raw
            .destination_prefixes
            .clone()
            .unwrap_or_else(|| vec!["/tmp/".to_string()]),
    }
}

fn timeouts(raw: raw::RawTimeouts, p: &mut Vec<Problem>) -> Timeouts {
    let t = Timeouts {
        global: duration_or(
            raw.global_timeout.as_deref(),
            "timeouts.globalTimeout",
            300,
            p,
        ),
        kerberos: duration_or(
            raw.kerberos_timeout.as_deref(),
            "timeouts.kerberosTimeout",
            20,
            p,
        ),
        vault_storer: duration_or(
            raw.vault_storer_timeout.as_deref(),
            "timeouts.vaultStorerTimeout",
            60,
            p,
        ),
        ping: duration_or(raw.ping_timeout.as_deref(), "timeouts.pingTimeout", 10, p),
        push: duration_or(raw.push_timeout.as_deref(), "timeouts.pushTimeout", 30, p),
        collector: duration_or(
            raw.collector_timeout.as_deref(),
            "timeouts.collectorTimeout",
            20,
            p,
        ),
        onboarding: duration_or(
            raw.onboarding_timeout.as_deref(),
            "timeouts.onboardingTimeout",
            600,
            p,
        ),
        notification: duration_or(
            raw.notification_timeout.as_deref(),
            "timeouts.notificationTimeout",
            30,
            p,
        ),
        db: duration_or(raw.db_timeout.as_deref(), "timeouts.dbTimeout", 10, p),
        ferry: duration_or(
            raw.ferry_request_timeout.as_deref(),
            "timeouts.ferryRequestTimeout",
            30,
            p,
        ),
    };
    for (key, value) in [
        ("kerberosTimeout", t.kerberos),
        ("vaultStorerTimeout", t.vault_storer),
        ("pingTimeout", t.ping),
        ("pushTimeout", t.push),
        ("collectorTimeout", t.collector),
    ] {
        if value > t.global {
            p.push(Problem::new(
                &format!("timeouts.{key}"),
                format!(
                    "{} exceeds timeouts.globalTimeout ({})",
                    humantime::format_duration(value),
                    humantime::format_duration(t.global)
                ),
            ));
        }
    }
    t
}

fn retries(raw: raw::RawWorkerTypes, t: &Timeouts, p: &mut Vec<Problem>) -> Retries {
    let mut one = |r: Option<RawRetry>, key: &str, limit: Duration, limit_key: &str| {
        let Some(r) = r else { return Retry::default() };
        let path = format!("workerType.{key}");
        let retry = Retry {
            retries: r.num_retries.unwrap_or(0),
            sleep: duration_or(
                r.retry_sleep.as_deref(),
                &format!("{path}.retrySleep"),
                0,
                p,
            ),
        };
        let total = retry.sleep * retry.retries;
        if retry.retries > 0 && total >= limit {
            p.push(Problem::new(
                &path,
                format!(
                    "numRetries × retrySleep = {} does not fit in timeouts.{limit_key} ({}), \
                     which covers every attempt; lower the retries or raise the timeout",
                    humantime::format_duration(total),
                    humantime::format_duration(limit)
                ),
            ));
        }
        retry
    };
    let retries = Retries {
        kerberos: one(
            raw.get_kerberos_tickets,
            "getKerberosTickets",
            t.global,
            "globalTimeout",
        ),
        token: one(
            raw.store_and_get_token,
            "storeAndGetToken",
            t.global,
            "globalTimeout",
        ),
        ping: one(
            raw.ping_aggregator,
            "pingAggregator",
            t.global,
            "globalTimeout",
        ),
        push: one(raw.push_tokens, "pushTokens", t.push, "pushTimeout"),
    };
    let get_token = one(raw.get_token, "getToken", t.global, "globalTimeout");
    let _ = one(
        raw.store_and_get_token_interactive,
        "storeAndGetTokenInteractive",
        t.global,
        "globalTimeout",
    );
    Retries {
        token: if get_token.retries > 0 {
            get_token
        } else {
            retries.token
        },
        ..retries
    }
}

fn email(raw: raw::RawEmail, p: &mut Vec<Problem>) -> Option<Email> {
    let host = raw.smtp_host.filter(|h| !h.is_empty())?;
    let from = raw.from.unwrap_or_default();
    if !from.contains('@') {
        p.push(Problem::new("email.from", "must be an email address"));
    }
    if raw.username.is_some() != raw.password_file.is_some() {
        p.push(Problem::new(
            "email",
            "`username` and `passwordFile` go together",
        ));
    }
    Some(Email {
        from,
        host,
        port: raw.smtp_port.unwrap_or(25),
        starttls: raw.starttls.unwrap_or(false),
        username: raw.username,
        password_file: raw.password_file.map(PathBuf::from),
    })
}

/// FERRY with client-certificate authentication; a section without `host`, `hostCert`
/// and `hostKey` (e.g. one set up for the Go service's JWT mode) is reported and not used.
fn ferry(
    raw: raw::RawFerry,
    ignored: &mut Vec<String>,
    p: &mut Vec<Problem>,
) -> Option<crate::ferry::Ferry> {
    let (Some(host), Some(cert), Some(key)) = (raw.host, raw.host_cert, raw.host_key) else {
        ignored.push("ferry (needs host, hostCert and hostKey)".into());
        return None;
    };
    if !host.starts_with("https://") {
        p.push(Problem::new(
            "ferry.host",
            "must start with `https://` (FERRY authenticates clients by certificate)",
        ));
    }
    let url = match raw.port {
        Some(port) => format!("{}:{port}", host.trim_end_matches('/')),
        None => host,
    };
    Some(crate::ferry::Ferry {
        url,
        ca_path: raw.ca_path.map(PathBuf::from),
        cert: PathBuf::from(cert),
        key: PathBuf::from(key),
    })
}

fn recipients(raw: Option<RawNotifications>, key: &str, p: &mut Vec<Problem>) -> Recipients {
    let Some(raw) = raw else {
        return Recipients::default();
    };
    let admin_emails = raw
        .admin_email
        .map(raw::OneOrMany::into_vec)
        .unwrap_or_default();
    for address in &admin_emails {
        if !address.contains('@') {
            p.push(Problem::new(
                &format!("{key}.admin_email"),
                format!("`{address}` is not an email address"),
            ));
        }
    }
    let slack_url = raw.slack_alerts_url.filter(|u| !u.is_empty());
    if let Some(url) = &slack_url
        && !url.starts_with("https://")
        && !url.starts_with("http://")
    {
        p.push(Problem::new(
            &format!("{key}.SLACK_ALERTS_URL"),
            "must be an http(s) URL",
        ));
    }
    Recipients {
        admin_emails,
        slack_url: slack_url.map(crate::secret::Secret::new),
    }
}

/// Parses a duration such as `60s`, `3d` or `1h30m`; `default_secs` when absent.
pub(crate) fn duration_or(
    value: Option<&str>,
    key: &str,
    default_secs: u64,
    p: &mut Vec<Problem>,
) -> Duration {
    let Some(value) = value else {
        return Duration::from_secs(default_secs);
    };
    match parse_duration(value) {
        Ok(d) => d,
        Err(e) => {
            p.push(Problem::new(
                key,
                format!("`{value}` is not a duration like `60s` or `3d`: {e}"),
            ));
            Duration::from_secs(default_secs)
        }
    }
}

/// Parses a duration as written in the configuration (`60s`, `3d`, `1h30m`, `500ms`).
pub fn parse_duration(value: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(value.trim())
}

#[cfg(test)]
mod tests;
