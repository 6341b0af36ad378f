//! The configuration file as written: serde structs mirroring the Go service's keys.
//!
//! Every field is optional here; defaults and cross-field rules are applied once, in
//! [`super::Config::from_raw`]. Key names follow the Go service (`managedTokens.yml`, or
//! the JSON rendered from its jsonnet) byte for byte, so an existing file loads unchanged.

#![expect(
    missing_docs,
    reason = "each field is the key of the same name, documented in etc/managedTokens.yml"
)]

use std::collections::BTreeMap;

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawConfig {
    pub keytab_path: Option<String>,
    pub kerberos_principal_pattern: Option<String>,
    pub condor_collector_host: Option<String>,
    pub condor_schedd_constraint: Option<String>,
    pub condor_credd_host: Option<String>,
    pub vault_server: Option<String>,
    pub service_credd_vault_token_path_root: Option<String>,
    pub db_location: Option<String>,
    pub error_count_to_send_message: Option<u32>,
    pub default_role_file_destination_template: Option<String>,
    pub ping_options: Option<String>,
    pub file_copier_options: Option<String>,
    pub ssh_options: Option<String>,
    pub disable_notifications: Option<bool>,
    pub dev_environment_label: Option<String>,
    pub min_token_lifetime: Option<String>,
    pub timeouts: Option<RawTimeouts>,
    pub worker_type: Option<RawWorkerTypes>,
    pub email: Option<RawEmail>,
    pub notifications: Option<RawNotifications>,
    #[serde(rename = "notifications_test")]
    pub notifications_test: Option<RawNotifications>,
    pub prometheus: Option<RawPrometheus>,
    pub experiments: Option<BTreeMap<String, RawExperiment>>,

    pub ferry: Option<RawFerry>,

    // Keys added by this implementation.
    pub concurrency: Option<usize>,
    pub lock_dir: Option<String>,
    pub metrics: Option<RawMetrics>,
    pub storer_isolation: Option<bool>,
    pub destination_prefixes: Option<Vec<String>>,

    // Keys the Go service reads (or ignores) that this implementation accepts without
    // acting on them. They are reported once at `warn`.
    pub htgettokenopts: Option<serde_yaml::Value>,
    pub logs: Option<serde_yaml::Value>,
    pub loki: Option<serde_yaml::Value>,
    pub tracing: Option<serde_yaml::Value>,
    pub user_principal: Option<serde_yaml::Value>,
    pub token_getter: Option<serde_yaml::Value>,
}

/// `timeouts.*`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawTimeouts {
    pub global_timeout: Option<String>,
    pub kerberos_timeout: Option<String>,
    pub vault_storer_timeout: Option<String>,
    pub ping_timeout: Option<String>,
    pub push_timeout: Option<String>,
    pub ferry_request_timeout: Option<String>,
    pub db_timeout: Option<String>,
    pub collector_timeout: Option<String>,
    pub onboarding_timeout: Option<String>,
    pub notification_timeout: Option<String>,
}

/// `workerType.*`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawWorkerTypes {
    pub get_kerberos_tickets: Option<RawRetry>,
    pub get_token: Option<RawRetry>,
    pub store_and_get_token: Option<RawRetry>,
    /// Listed in the Go service's sample configuration but never read by it.
    pub store_and_get_token_interactive: Option<RawRetry>,
    pub ping_aggregator: Option<RawRetry>,
    pub push_tokens: Option<RawRetry>,
}

/// `workerType.<stage>`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawRetry {
    pub num_retries: Option<u32>,
    pub retry_sleep: Option<String>,
}

/// `email`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawEmail {
    pub from: Option<String>,
    pub smtp_host: Option<String>,
    pub smtp_port: Option<u16>,
    pub starttls: Option<bool>,
    pub username: Option<String>,
    pub password_file: Option<String>,
}

/// `notifications` and `notifications_test`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNotifications {
    #[serde(rename = "SLACK_ALERTS_URL")]
    pub slack_alerts_url: Option<String>,
    pub admin_email: Option<OneOrMany>,
}

/// A string, or a list of strings (the Go service accepts both for `admin_email`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    /// The values, splitting a single string on commas.
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => s
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
            Self::Many(v) => v,
        }
    }
}

/// `ferry`: the identity registry the pusher asks for UIDs. The keys of the Go service's
/// JWT authentication are accepted; only client-certificate authentication is used.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawFerry {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub ca_path: Option<String>,
    pub host_cert: Option<String>,
    pub host_key: Option<String>,
    pub service_experiment: Option<String>,
    pub service_role: Option<String>,
    pub service_kerberos_principal: Option<String>,
    pub service_keytab_path: Option<String>,
    pub vault_server: Option<String>,
}

/// `prometheus`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrometheus {
    pub host: Option<String>,
    pub jobname: Option<String>,
}

/// `metrics` (added by this implementation)
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    pub textfile: Option<String>,
}

/// `experiments.<name>`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawExperiment {
    pub emails: Option<Vec<String>>,
    pub experiment_override: Option<String>,
    pub roles: Option<BTreeMap<String, RawRole>>,
}

/// `experiments.<name>.roles.<role>`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawRole {
    pub account: Option<String>,
    pub destination_nodes: Option<Vec<String>>,
    #[serde(rename = "desiredUIDOverride")]
    pub desired_uid_override: Option<u32>,
    pub keytab_path_override: Option<String>,
    pub user_principal_override: Option<String>,
    pub kerberos_principal_pattern_override: Option<String>,
    pub condor_collector_host_override: Option<String>,
    pub condor_credd_host_override: Option<String>,
    pub condor_schedd_constraint_override: Option<String>,
    pub vault_server_override: Option<String>,
    pub service_credd_vault_token_path_root_override: Option<String>,
    pub file_copier_options_override: Option<String>,
    pub ping_options_override: Option<String>,
    pub ssh_options_override: Option<String>,
    pub default_role_file_destination_template_override: Option<String>,
    pub disable_notifications_override: Option<bool>,
    pub token_getter_override: Option<String>,
}
