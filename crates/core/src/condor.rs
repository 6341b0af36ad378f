//! HTCondor: finding the credds through the collectors, and `condor_vault_storer`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use crate::env::HostEnv;
use crate::names::{self, NameKind};
use crate::report::{Failure, FailureClass, Pattern};
use crate::runner::{Command, Runner};
use crate::service::Service;

/// Where a service's tokens go: the credds and the collector that named them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credds {
    /// The collector that answered (or the first configured one, with a credd override);
    /// exported to the storer as `_condor_COLLECTOR_HOST`.
    pub collector: Option<String>,
    /// The credds, in the order found.
    pub credds: Vec<String>,
}

/// `condor_status -pool <collector> [-constraint <expr>] -schedd -af Name`
pub fn status_command(collector: &str, constraint: Option<&str>, timeout: Duration) -> Command {
    let mut cmd = Command::new("condor_status").arg("-pool").arg(collector);
    if let Some(constraint) = constraint {
        cmd = cmd.arg("-constraint").arg(constraint);
    }
    cmd.arg("-schedd").arg("-af").arg("Name").timeout(timeout)
}

/// Discovers credds once per (collectors, constraint) per run, shared by every service.
#[derive(Debug, Default)]
pub struct Discovery {
    queries: Mutex<HashMap<QueryKey, Arc<QueryCell>>>,
}

/// The answer to one query, computed by the first service that needs it.
type QueryCell = OnceLock<Result<Credds, Failure>>;

/// Collectors and constraint of one query.
type QueryKey = (Vec<String>, Option<String>);

impl Discovery {
    /// The credds of `service`: its override, else the schedds its collectors list.
    pub fn credds(
        &self,
        runner: &Runner,
        service: &Service,
        timeout: Duration,
    ) -> Result<Credds, Failure> {
        if !service.credds.is_empty() {
            return Ok(Credds {
                collector: service.collectors.first().cloned(),
                credds: service.credds.clone(),
            });
        }
        let key = (
            service.collectors.clone(),
            service.schedd_constraint.clone(),
        );
        let cell = {
            let mut queries = self.queries.lock().unwrap_or_else(PoisonError::into_inner);
            Arc::clone(queries.entry(key).or_default())
        };
        cell.get_or_init(|| {
            query(
                runner,
                &service.collectors,
                service.schedd_constraint.as_deref(),
                timeout,
            )
        })
        .clone()
    }
}

/// Tries the collectors in order; the first that answers decides.
fn query(
    runner: &Runner,
    collectors: &[String],
    constraint: Option<&str>,
    timeout: Duration,
) -> Result<Credds, Failure> {
    let mut last = None;
    for collector in collectors {
        match runner.run(&status_command(collector, constraint, timeout)) {
            Ok(out) => {
                let credds = parse_names(&out.stdout);
                if credds.is_empty() {
                    return Err(Failure::new(
                        FailureClass::NoSchedds,
                        format!(
                            "collector `{collector}` lists no schedd{}",
                            constraint
                                .map(|c| format!(" matching `{c}`"))
                                .unwrap_or_default()
                        ),
                    ));
                }
                log::debug!("collector `{collector}` lists credds {credds:?}");
                return Ok(Credds {
                    collector: Some(collector.clone()),
                    credds,
                });
            }
            Err(e) => {
                log::warn!("collector `{collector}` did not answer, trying the next one: {e}");
                last = Some(Failure::from_cmd(
                    FailureClass::CollectorUnreachable,
                    format!("no collector answered (tried {})", collectors.join(", ")),
                    &e,
                ));
            }
        }
    }
    Err(last.unwrap_or_else(|| Failure::new(FailureClass::Setup, "no collector configured")))
}

/// Schedd names from `-af Name` output; names unfit for a command line are dropped.
fn parse_names(stdout: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for name in stdout
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && *l != "undefined")
    {
        match names::validate(NameKind::CondorHost, name) {
            Ok(()) if !names.iter().any(|n| n == name) => names.push(name.to_string()),
            Ok(()) => {}
            Err(e) => log::warn!("ignoring schedd {e}"),
        }
    }
    names
}

/// The vault server of `service`: `-a` in `_condor_SEC_CREDENTIAL_GETTOKEN_OPTS`, else the
/// configuration, else `condor_config_val SEC_CREDENTIAL_GETTOKEN_OPTS` (queried once).
pub fn vault_server(
    runner: &Runner,
    host: &HostEnv,
    service: &Service,
    from_condor: &OnceLock<Option<String>>,
    timeout: Duration,
) -> Result<String, Failure> {
    if let Some(server) = host.gettoken_options.as_deref().and_then(server_option) {
        return Ok(server);
    }
    if let Some(server) = &service.vault_server {
        return Ok(server.clone());
    }
    from_condor
        .get_or_init(|| {
            let cmd = Command::new("condor_config_val")
                .arg("SEC_CREDENTIAL_GETTOKEN_OPTS")
                .timeout(timeout);
            runner
                .run(&cmd)
                .ok()
                .and_then(|out| server_option(&out.stdout))
        })
        .clone()
        .ok_or_else(|| {
            Failure::new(
                FailureClass::Setup,
                "no vault server: set `vaultServer` (or `vaultServerOverride`), or `-a` in \
                 SEC_CREDENTIAL_GETTOKEN_OPTS",
            )
        })
}

/// The value of `-a`/`--vaultserver` in htgettoken options.
fn server_option(options: &str) -> Option<String> {
    let words = shlex::split(options)?;
    let mut iter = words.iter();
    while let Some(word) = iter.next() {
        if word == "-a" || word == "--vaultserver" {
            return iter.next().cloned();
        }
        if let Some(v) = word.strip_prefix("--vaultserver=") {
            return Some(v.to_string());
        }
    }
    None
}

/// `HTGETTOKENOPTS` for a service: the operator's value completed with the minimum token
/// lifetime (in seconds, the unit htgettoken parses) and the credkey, each only if missing.
pub fn htgettoken_options(host: &HostEnv, service: &Service, min_lifetime: Duration) -> String {
    let mut options = host.htgettoken_options.clone().unwrap_or_default();
    if !options.contains("--vaulttokenminttl") {
        options.push_str(&format!(" --vaulttokenminttl={}s", min_lifetime.as_secs()));
    }
    if !options.contains("--credkey") {
        options.push_str(&format!(" --credkey={}", service.credkey));
    }
    options.trim().to_string()
}

/// `_condor_SEC_CREDENTIAL_GETTOKEN_OPTS`: the operator's value with `-a <vault>` unless
/// it names a server already.
pub fn gettoken_options(host: &HostEnv, vault: &str) -> String {
    match host.gettoken_options.as_deref() {
        Some(opts) if server_option(opts).is_some() => opts.to_string(),
        Some(opts) => format!("{opts} -a {vault}"),
        None => format!("-a {vault}"),
    }
}

/// Everything one `condor_vault_storer` call needs.
#[derive(Debug, Clone)]
pub struct StorerCall<'a> {
    /// The service.
    pub service: &'a Service,
    /// The credd (`_condor_CREDD_HOST`).
    pub credd: &'a str,
    /// The collector (`_condor_COLLECTOR_HOST`).
    pub collector: Option<&'a str>,
    /// The vault server.
    pub vault: &'a str,
    /// `KRB5CCNAME`.
    pub ccache: String,
    /// `CONDOR_VAULT_STORER_ID`, or `None` for storers that predate it.
    pub id: Option<&'a str>,
    /// A private `XDG_RUNTIME_DIR` for bearer tokens.
    pub runtime_dir: &'a Path,
    /// Pass `-v`.
    pub verbose: bool,
}

/// `condor_vault_storer [-v] <real name>` with its environment.
pub fn storer_command(
    call: &StorerCall<'_>,
    host: &HostEnv,
    min_lifetime: Duration,
    timeout: Duration,
) -> Command {
    let mut cmd = Command::new("condor_vault_storer");
    if call.verbose {
        cmd = cmd.arg("-v");
    }
    cmd = cmd
        .arg(&call.service.real_name)
        .env("KRB5CCNAME", &call.ccache)
        .env("_condor_CREDD_HOST", call.credd)
        .env(
            "_condor_SEC_CREDENTIAL_GETTOKEN_OPTS",
            gettoken_options(host, call.vault),
        )
        .env(
            "HTGETTOKENOPTS",
            htgettoken_options(host, call.service, min_lifetime),
        )
        .env("XDG_RUNTIME_DIR", call.runtime_dir)
        .timeout(timeout);
    if let Some(collector) = call.collector {
        cmd = cmd.env("_condor_COLLECTOR_HOST", collector);
    }
    if let Some(id) = call.id {
        cmd = cmd.env("CONDOR_VAULT_STORER_ID", id);
    }
    cmd
}

/// Patterns in storer and htgettoken output, in the order they decide the class
/// (otherwise [`FailureClass::StorerFailed`]). The storer reports "Authentication needed"
/// whenever its quiet pass fails, so the more specific causes (Vault down, a 403, a slow
/// device flow) are looked for first.
pub const PATTERNS: [Pattern; 8] = [
    (
        &["polling for response took longer than"],
        FailureClass::Timeout,
    ),
    (
        &["failed to establish a new connection"],
        FailureClass::VaultUnreachable,
    ),
    (&["connection refused"], FailureClass::VaultUnreachable),
    (&["max retries exceeded"], FailureClass::VaultUnreachable),
    (
        &["failed to store condor credentials"],
        FailureClass::CreddUnreachable,
    ),
    (
        &["403", "permission denied"],
        FailureClass::PermissionDenied,
    ),
    (
        &["authentication needed for"],
        FailureClass::AuthenticationNeeded,
    ),
    (&["permission denied"], FailureClass::PermissionDenied),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::classify_output;

    fn storer_class(output: &str) -> (FailureClass, Option<String>) {
        classify_output(output, &PATTERNS, FailureClass::StorerFailed)
    }

    #[test]
    fn classifies_storer_output() {
        let (class, line) = storer_class(
            "Looking up vault token failed: Failed to establish a new connection: [Errno 111] Connection refused\n\
             Authentication needed for dune_production\ncondor_vault_storer: htgettoken failed\n",
        );
        assert_eq!(class, FailureClass::VaultUnreachable);
        assert!(line.unwrap().contains("Connection refused"));
        let (class, _) =
            storer_class("Authentication needed for dune_production\nhtgettoken failed\n");
        assert_eq!(class, FailureClass::AuthenticationNeeded);
        let (class, _) =
            storer_class("htgettoken: ... HTTPError: 403 Forbidden: permission denied\n");
        assert_eq!(class, FailureClass::PermissionDenied);
        let (class, _) =
            storer_class("condor_vault_storer: Failed to store condor credentials for x\n");
        assert_eq!(class, FailureClass::CreddUnreachable);
        assert_eq!(
            storer_class("something else\n").0,
            FailureClass::StorerFailed
        );
    }

    #[test]
    fn classifies_recorded_storer_output() {
        let cases = [
            (
                include_str!(
                    "../../../tests/fixtures/tool-output/condor_vault_storer-vault-down.txt"
                ),
                FailureClass::VaultUnreachable,
            ),
            (
                include_str!(
                    "../../../tests/fixtures/tool-output/condor_vault_storer-credd-down.txt"
                ),
                FailureClass::CreddUnreachable,
            ),
            (
                include_str!(
                    "../../../tests/fixtures/tool-output/condor_vault_storer-authentication-needed.txt"
                ),
                FailureClass::AuthenticationNeeded,
            ),
        ];
        for (output, class) in cases {
            let (found, line) = storer_class(output);
            assert_eq!(found, class, "{output}");
            assert!(line.is_some());
        }
        let names = parse_names(include_str!(
            "../../../tests/fixtures/tool-output/condor_status-af-name.txt"
        ));
        assert_eq!(names.len(), 2);
    }

    #[test]
    fn parses_schedd_names() {
        assert_eq!(
            parse_names("a.fnal.gov\n127.0.0.1:9620\n\na.fnal.gov\n-x\n"),
            ["a.fnal.gov", "127.0.0.1:9620"]
        );
    }

    #[test]
    fn finds_the_vault_server_option() {
        assert_eq!(
            server_option("-a htvault.fnal.gov --nooidc").as_deref(),
            Some("htvault.fnal.gov")
        );
        assert_eq!(
            server_option("--vaultserver=https://v:8200").as_deref(),
            Some("https://v:8200")
        );
        assert_eq!(server_option("--cafile x"), None);
    }

    #[test]
    fn completes_operator_options() {
        let mut service_host = HostEnv::default();
        let config = crate::config::Config::from_str(
            "keytabPath: /k\nkerberosPrincipalPattern: '{{.Account}}/mt@R'\ncondorCollectorHost: c\n\
             experiments:\n  e:\n    roles:\n      r: {account: a, destinationNodes: [n]}\n",
            false,
            Path::new("x.yml"),
        )
        .unwrap();
        let s = &config.services[0];
        let day = Duration::from_secs(86400);
        assert_eq!(
            htgettoken_options(&service_host, s, day),
            "--vaulttokenminttl=86400s --credkey=a/mt"
        );
        service_host.htgettoken_options = Some("--cafile=/ca.pem --credkey=x".into());
        assert_eq!(
            htgettoken_options(&service_host, s, day),
            "--cafile=/ca.pem --credkey=x --vaulttokenminttl=86400s"
        );
        assert_eq!(gettoken_options(&service_host, "https://v"), "-a https://v");
    }
}
