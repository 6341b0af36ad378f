//! Run metrics in the Prometheus text format, for a Pushgateway and a node_exporter
//! textfile.
//!
//! Every metric is a gauge in the `managed_tokens` namespace, named as in the Go service
//! where it had one. Each binary publishes its own group: on the Pushgateway the grouping
//! key is `job/<jobname>[_<devEnvironmentLabel>]/executable/<binary>`, and the textfile
//! gets the binary's name before its extension (see [`textfile_path`]), so a run of one
//! binary never replaces another's metrics. In the textfile every series also carries the
//! `executable` label, which on the Pushgateway comes from the grouping key.
//!
//! Durations and failure counts describe the run that publishes them. Last-success
//! timestamps, last-attempt failure flags and consecutive failures come from the state
//! database when it is open, for every configured service, so a run limited with `-e` or
//! `-s` does not drop the other services' series from the group it replaces.
//!
//! Labels: `service` is the service's real name (what HTCondor and the nodes see, as in
//! the Go service) and `config_name` its configuration name, which differs under
//! `experimentOverride` and keeps such twins apart.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use log::{debug, warn};

use crate::config::{Config, Prometheus};
use crate::report::{Binary, RunReport, Stage, Target};
use crate::service::TokenGetter;
use crate::state::{State, StatusReport};

/// The `Content-Type` of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// Publishes the metrics of `report` where the configuration asks: the Pushgateway
/// (`prometheus.host`) and the node_exporter textfile (`metrics.textfile`).
///
/// Never fails the run: a Pushgateway that does not answer within 5 seconds, or a
/// textfile that cannot be written, is logged at `warn` and otherwise ignored.
pub fn publish(config: &Config, report: &RunReport, state: Option<&State>) {
    if config.prometheus.is_none() && config.metrics_textfile.is_none() {
        return;
    }
    let names: Vec<String> = config.services.iter().map(|s| s.name.clone()).collect();
    let status = state.and_then(|state| match state.status(&names, SystemTime::now()) {
        Ok(status) => Some(status),
        Err(e) => {
            warn!("metrics: the state database cannot be read, publishing this run only: {e:#}");
            None
        }
    });
    let metrics = Metrics::collect(config, report, status.as_ref());

    if let Some(prometheus) = &config.prometheus {
        let url = push_url(prometheus, &config.environment_label, report.binary);
        match push(&url, &metrics.render(&[])) {
            Ok(()) => debug!(
                "pushed {} metric series to `{}`",
                metrics.len(),
                redact(&url)
            ),
            Err(e) => warn!("{e:#}"),
        }
    }
    if let Some(configured) = &config.metrics_textfile {
        let path = textfile_path(configured, report.binary);
        let body = metrics.render(&[("executable", report.binary.name())]);
        match write_textfile(&path, &body) {
            Ok(()) => debug!(
                "wrote {} metric series to `{}`",
                metrics.len(),
                path.display()
            ),
            Err(e) => warn!("{e:#}"),
        }
    }
}

/// The textfile a binary writes for the configured `metrics.textfile`: the binary's name
/// joined with `_` before the extension, so the three binaries keep separate files in
/// node_exporter's directory. `/var/lib/node_exporter/managed_tokens.prom` becomes
/// `/var/lib/node_exporter/managed_tokens_token-pusher.prom` for token-pusher; a name
/// without extension gets the suffix at its end.
pub fn textfile_path(configured: &Path, binary: Binary) -> PathBuf {
    let stem = configured
        .file_stem()
        .map(|s| s.to_string_lossy())
        .unwrap_or_default();
    let name = match configured.extension() {
        Some(ext) => format!("{stem}_{binary}.{}", ext.to_string_lossy()),
        None => format!("{stem}_{binary}"),
    };
    configured.with_file_name(name)
}

/// How long a push may take, connection included.
const PUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// The Pushgateway URL of the binary's group.
fn push_url(prometheus: &Prometheus, environment_label: &str, binary: Binary) -> String {
    let mut job = prometheus.job.clone();
    if environment_label != "production" {
        job = format!("{job}_{environment_label}");
    }
    format!(
        "{}/metrics/job{}/executable{}",
        prometheus.url.trim_end_matches('/'),
        path_value(&job),
        path_value(binary.name())
    )
}

/// `/<value>`, or `@base64/<encoded>` for a value that cannot be a plain path segment, as
/// the Pushgateway's URL scheme allows.
fn path_value(value: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    if !value.is_empty() && value.chars().all(plain) {
        format!("/{value}")
    } else if value.is_empty() {
        // The Pushgateway's spelling of an empty label value.
        "@base64/=".to_string()
    } else {
        format!("@base64/{}", base64url(value.as_bytes()))
    }
}

/// Unpadded URL-safe base64 (RFC 4648 §5).
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

/// PUTs `body` to `url`, replacing the group's previous metrics.
fn push(url: &str, body: &str) -> anyhow::Result<()> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(PUSH_TIMEOUT))
        .build()
        .into();
    agent
        .put(url)
        .header("Content-Type", CONTENT_TYPE)
        .send(body)
        .map(drop)
        .with_context(|| {
            format!(
                "failed to push the metrics to the Pushgateway `{}`",
                redact(url)
            )
        })
}

/// `url` without the password of any `user:password@` part, for messages.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}{}", &rest[authority_end..])
        }
        None => url.to_string(),
    }
}

/// Replaces `path` with `body` atomically: a temporary file in the same directory,
/// mode 0644 (node_exporter runs as another user), synced, then renamed over it.
fn write_textfile(path: &Path, body: &str) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let fail = || format!("failed to write the metrics textfile `{}`", path.display());
    let mut file = tempfile::Builder::new()
        .prefix(".managed_tokens-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .with_context(fail)?;
    file.write_all(body.as_bytes()).with_context(fail)?;
    file.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))
        .with_context(fail)?;
    file.as_file().sync_all().with_context(fail)?;
    file.persist(path).map_err(|e| e.error).with_context(fail)?;
    Ok(())
}

/// A metric family: name (without namespace) and help text.
struct Family {
    name: &'static str,
    help: &'static str,
}

const LAST_RUN: Family = Family {
    name: "last_run_timestamp",
    help: "Start of the binary's last run, in seconds since the epoch.",
};
const RUN_EXIT: Family = Family {
    name: "run_exit_status",
    help: "Exit status of the last run: 0 ok, 1 fatal, 2 usage, 3 some targets failed.",
};
const STAGE_DURATION: Family = Family {
    name: "stage_duration_seconds",
    help: "Longest time one target spent in the stage in the last run; stage=\"run\" is the whole run.",
};
const KINIT_DURATION: Family = Family {
    name: "kinit_duration_seconds",
    help: "Time to obtain the service's Kerberos ticket in the last run.",
};
const FAILED_KINIT: Family = Family {
    name: "failed_kinit_count",
    help: "Failed Kerberos ticket requests for the service in the last run.",
};
const STORE_DURATION: Family = Family {
    name: "token_store_duration_seconds",
    help: "Time condor_vault_storer took for the service and credd in the last run.",
};
const FAILED_STORE: Family = Family {
    name: "failed_vault_token_store_count",
    help: "1 when the last vault token store for the service into the credd failed.",
};
const LAST_STORE: Family = Family {
    name: "last_token_store_timestamp",
    help: "Last successful vault token store for the service into the credd, seconds since the epoch.",
};
const GET_DURATION: Family = Family {
    name: "token_get_duration_seconds",
    help: "Time htgettoken took for the getToken service in the last run.",
};
const FAILED_GET: Family = Family {
    name: "failed_vault_token_get_count",
    help: "Failed vault token requests with htgettoken for the service in the last run.",
};
const LAST_GET: Family = Family {
    name: "last_token_get_timestamp",
    help: "Last vault token obtained with htgettoken for the getToken service, seconds since the epoch.",
};
const PING_DURATION: Family = Family {
    name: "ping_duration_seconds",
    help: "Time to check the node in the last run.",
};
const FAILED_PING: Family = Family {
    name: "failed_ping_count",
    help: "1 when the last check of the node failed.",
};
const PUSH_DURATION: Family = Family {
    name: "token_push_duration_seconds",
    help: "Time to push the service's tokens to the node in the last run.",
};
const FAILED_PUSH: Family = Family {
    name: "failed_token_push_count",
    help: "1 when the last push of the service's tokens to the node failed.",
};
const LAST_PUSH: Family = Family {
    name: "last_token_push_timestamp",
    help: "Last successful push of the service's tokens to the node, seconds since the epoch.",
};
const FAILED_SERVICES_PUSH: Family = Family {
    name: "failed_services_push_count",
    help: "Services with at least one failure in the last token-pusher run.",
};
const PENDING: Family = Family {
    name: "pending_notifications",
    help: "Notifications waiting in the state database for delivery.",
};
const CONSECUTIVE: Family = Family {
    name: "consecutive_failures",
    help: "Consecutive failing runs: check=\"service\" the service's own stages (target \"service\"), \"push\" one node, \"ping\" one node.",
};
const NEEDS_ONBOARDING: Family = Family {
    name: "needs_onboarding",
    help: "1 when Vault asked for an interactive login: run token-refresher --run-onboarding for the service.",
};

/// Namespace of every metric.
const NAMESPACE: &str = "managed_tokens";

type Labels = Vec<(&'static str, String)>;

/// The samples of one publication, by family and label set.
#[derive(Default)]
struct Metrics {
    families: BTreeMap<&'static str, (&'static str, BTreeMap<Labels, f64>)>,
}

impl Metrics {
    /// The metrics of `report`, completed from `status` (the state after the run).
    fn collect(config: &Config, report: &RunReport, status: Option<&StatusReport>) -> Self {
        let mut m = Self::default();
        let real = |name: &str| {
            config
                .service(name)
                .map_or(name, |s| s.real_name.as_str())
                .to_string()
        };
        let service = |name: &str| vec![("service", real(name)), ("config_name", name.to_string())];
        let started = unix(report.started);

        m.set(&LAST_RUN, Vec::new(), started);
        m.set(&RUN_EXIT, Vec::new(), f64::from(report.exit().code()));
        m.set(
            &STAGE_DURATION,
            vec![("stage", "run".to_string())],
            seconds(report.duration),
        );
        for o in &report.outcomes {
            let duration = seconds(o.duration);
            let failed = if o.is_ok() { 0.0 } else { 1.0 };
            m.max(
                &STAGE_DURATION,
                vec![("stage", o.stage.name().to_string())],
                duration,
            );
            let name = o.service.as_deref().unwrap_or_default();
            match (o.stage, &o.target) {
                (Stage::Kerberos, _) if !name.is_empty() => {
                    m.set(&KINIT_DURATION, service(name), duration);
                    m.add(&FAILED_KINIT, service(name), failed);
                }
                (Stage::Store, Target::Credd(credd)) if !name.is_empty() => {
                    let labels = with(service(name), "credd", credd);
                    m.set(&STORE_DURATION, labels.clone(), duration);
                    m.add(&FAILED_STORE, labels.clone(), failed);
                    if o.is_ok() {
                        m.set(&LAST_STORE, labels, started);
                    }
                }
                (Stage::GetToken, _) if !name.is_empty() => {
                    m.set(&GET_DURATION, service(name), duration);
                    m.add(&FAILED_GET, service(name), failed);
                    if o.is_ok() {
                        m.set(&LAST_GET, service(name), started);
                    }
                }
                (Stage::Push, Target::Node(node)) if !name.is_empty() => {
                    let labels = with(service(name), "node", node);
                    m.set(&PUSH_DURATION, labels.clone(), duration);
                    m.add(&FAILED_PUSH, labels.clone(), failed);
                    if o.is_ok() {
                        m.set(&LAST_PUSH, labels, started);
                    }
                }
                (Stage::Ping, Target::Node(node)) => {
                    m.set(&PING_DURATION, vec![("node", node.clone())], duration);
                    m.add(&FAILED_PING, vec![("node", node.clone())], failed);
                }
                _ => {}
            }
        }
        if report.binary == Binary::TokenPusher {
            let failed = report
                .services
                .iter()
                .filter(|s| report.service_failed(s))
                .count();
            m.set(&FAILED_SERVICES_PUSH, Vec::new(), failed as f64);
        }
        if let Some(status) = status {
            m.add_state(config, report.binary, status, &service);
        }
        m
    }

    /// What the state knows beyond this run, for the targets of `binary`'s stages.
    fn add_state(
        &mut self,
        config: &Config,
        binary: Binary,
        status: &StatusReport,
        service: &dyn Fn(&str) -> Labels,
    ) {
        self.set(&PENDING, Vec::new(), status.pending_notifications as f64);
        match binary {
            Binary::TokenRefresher => {
                for s in &status.services {
                    let labels = with(service(&s.service), "check", "service");
                    let labels = with(labels, "target", "service");
                    self.set(&CONSECUTIVE, labels, f64::from(s.consecutive_failures));
                    let onboarding = if s.needs_onboarding { 1.0 } else { 0.0 };
                    self.set(&NEEDS_ONBOARDING, service(&s.service), onboarding);
                    // Credds of the service's latest store round only: one no longer
                    // discovered keeps its old row in the state for months.
                    let latest = s.credds.iter().map(|c| c.last_attempt).max();
                    for c in s.credds.iter().filter(|c| Some(c.last_attempt) == latest) {
                        let labels = with(service(&s.service), "credd", &c.credd);
                        self.set(&FAILED_STORE, labels.clone(), if c.ok { 0.0 } else { 1.0 });
                        if let Some(success) = c.last_success {
                            self.set(&LAST_STORE, labels, unix(success));
                        }
                    }
                    let get_token = config
                        .service(&s.service)
                        .is_some_and(|s| s.token_getter == TokenGetter::GetToken);
                    if let (true, Some(age)) = (get_token, s.token_age) {
                        let at = status.generated.checked_sub(age).unwrap_or(UNIX_EPOCH);
                        self.set(&LAST_GET, service(&s.service), unix(at));
                    }
                }
            }
            Binary::TokenPusher => {
                for n in &status.nodes {
                    let Some(name) = n.service.as_deref().filter(|_| n.check == "push") else {
                        continue;
                    };
                    if !config
                        .service(name)
                        .is_some_and(|s| s.nodes.contains(&n.node))
                    {
                        continue;
                    }
                    let labels = with(service(name), "node", &n.node);
                    self.set(&FAILED_PUSH, labels.clone(), if n.ok { 0.0 } else { 1.0 });
                    if let Some(success) = n.last_success {
                        self.set(&LAST_PUSH, labels, unix(success));
                    }
                    let labels = with(with(service(name), "check", "push"), "target", &n.node);
                    self.set(&CONSECUTIVE, labels, f64::from(n.consecutive_failures));
                }
            }
            Binary::PingNodes => {
                let nodes: BTreeSet<&String> =
                    config.services.iter().flat_map(|s| &s.nodes).collect();
                for n in status
                    .nodes
                    .iter()
                    .filter(|n| n.check == "ping" && nodes.contains(&n.node))
                {
                    let labels = vec![("node", n.node.clone())];
                    self.set(&FAILED_PING, labels, if n.ok { 0.0 } else { 1.0 });
                    let labels = vec![("check", "ping".to_string()), ("target", n.node.clone())];
                    self.set(&CONSECUTIVE, labels, f64::from(n.consecutive_failures));
                }
            }
        }
    }

    fn samples(&mut self, family: &Family) -> &mut BTreeMap<Labels, f64> {
        &mut self
            .families
            .entry(family.name)
            .or_insert_with(|| (family.help, BTreeMap::new()))
            .1
    }

    fn set(&mut self, family: &Family, labels: Labels, value: f64) {
        self.samples(family).insert(labels, value);
    }

    fn add(&mut self, family: &Family, labels: Labels, value: f64) {
        *self.samples(family).entry(labels).or_insert(0.0) += value;
    }

    fn max(&mut self, family: &Family, labels: Labels, value: f64) {
        let sample = self.samples(family).entry(labels).or_insert(value);
        *sample = sample.max(value);
    }

    /// The number of series.
    fn len(&self) -> usize {
        self.families
            .values()
            .map(|(_, samples)| samples.len())
            .sum()
    }

    /// The text exposition format, with `extra` labels first on every series.
    fn render(&self, extra: &[(&str, &str)]) -> String {
        let mut out = String::new();
        for (name, (help, samples)) in &self.families {
            let name = format!("{NAMESPACE}_{name}");
            let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
            let _ = writeln!(out, "# TYPE {name} gauge");
            for (labels, value) in samples {
                let pairs: Vec<String> = extra
                    .iter()
                    .map(|(k, v)| (*k, *v))
                    .chain(labels.iter().map(|(k, v)| (*k, v.as_str())))
                    .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
                    .collect();
                if pairs.is_empty() {
                    let _ = writeln!(out, "{name} {}", number(*value));
                } else {
                    let _ = writeln!(out, "{name}{{{}}} {}", pairs.join(","), number(*value));
                }
            }
        }
        out
    }
}

fn with(mut labels: Labels, name: &'static str, value: &str) -> Labels {
    labels.push((name, value.to_string()));
    labels
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

fn number(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_string()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else {
        format!("{value}")
    }
}

fn seconds(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

fn unix(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as f64)
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_escaped_labels_and_help_once_per_family() {
        let mut m = Metrics::default();
        m.set(
            &PING_DURATION,
            vec![("node", "a\"b\\c\nd".to_string())],
            0.25,
        );
        m.set(&PING_DURATION, vec![("node", "plain".to_string())], 1.0);
        m.set(&PENDING, Vec::new(), 3.0);
        let text = m.render(&[("executable", "ping-nodes")]);
        assert_eq!(
            text.matches("# HELP managed_tokens_ping_duration_seconds ")
                .count(),
            1
        );
        assert_eq!(
            text.matches("# TYPE managed_tokens_ping_duration_seconds gauge")
                .count(),
            1
        );
        assert!(text.contains(
            r#"managed_tokens_ping_duration_seconds{executable="ping-nodes",node="a\"b\\c\nd"} 0.25"#
        ));
        assert!(
            text.contains(r#"managed_tokens_pending_notifications{executable="ping-nodes"} 3"#)
        );
        assert!(
            m.render(&[])
                .contains("\nmanaged_tokens_pending_notifications 3\n")
        );
        assert_eq!(m.len(), 3);
    }

    #[test]
    fn textfile_names_carry_the_binary() {
        let p = textfile_path(
            Path::new("/var/lib/node_exporter/managed_tokens.prom"),
            Binary::TokenPusher,
        );
        assert_eq!(
            p,
            Path::new("/var/lib/node_exporter/managed_tokens_token-pusher.prom")
        );
        let p = textfile_path(Path::new("metrics"), Binary::PingNodes);
        assert_eq!(p, Path::new("metrics_ping-nodes"));
    }

    #[test]
    fn push_urls_keep_the_binaries_apart() {
        let prometheus = Prometheus {
            url: "http://gw:9091/".into(),
            job: "managed_tokens".into(),
        };
        assert_eq!(
            push_url(&prometheus, "production", Binary::TokenRefresher),
            "http://gw:9091/metrics/job/managed_tokens/executable/token-refresher"
        );
        assert_eq!(
            push_url(&prometheus, "dev", Binary::PingNodes),
            "http://gw:9091/metrics/job/managed_tokens_dev/executable/ping-nodes"
        );
        let odd = Prometheus {
            job: "a/b".into(),
            ..prometheus
        };
        assert_eq!(
            push_url(&odd, "production", Binary::TokenPusher),
            "http://gw:9091/metrics/job@base64/YS9i/executable/token-pusher"
        );
    }

    #[test]
    fn base64url_matches_rfc_4648() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
        ] {
            assert_eq!(base64url(plain.as_bytes()), encoded);
        }
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
    }

    #[test]
    fn redacts_passwords_in_urls() {
        assert_eq!(
            redact("https://u:secret@gw:9091/metrics"),
            "https://u:***@gw:9091/metrics"
        );
        assert_eq!(
            redact("http://gw:9091/metrics/job/a@b"),
            "http://gw:9091/metrics/job/a@b"
        );
    }
}
