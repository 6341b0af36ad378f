//! Resolution of `experiments.<experiment>.roles.<role>` into [`Service`]s: each
//! `<key>Override` falls back to the top-level `<key>`, as in the Go service.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::Problem;
use super::raw::{RawExperiment, RawRole};
use crate::names::{self, NameKind};
use crate::service::{Service, TokenGetter};
use crate::template::{Field, Template};

/// Top-level values as written.
pub(super) struct RawDefaults {
    pub(super) keytab_path: Option<String>,
    pub(super) principal_pattern: Option<String>,
    pub(super) collector_host: Option<String>,
    pub(super) schedd_constraint: Option<String>,
    pub(super) credd_host: Option<String>,
    pub(super) vault_server: Option<String>,
    pub(super) token_store: Option<String>,
    pub(super) role_file_template: Option<String>,
    pub(super) ping_options: Option<String>,
    pub(super) rsync_options: Option<String>,
    pub(super) ssh_options: Option<String>,
    pub(super) disable_notifications: bool,
    pub(super) destination_prefixes: Vec<String>,
}

/// Top-level values, parsed once and shared by every role.
pub(super) struct Defaults {
    raw: RawDefaults,
}

impl Defaults {
    pub(super) fn new(raw: RawDefaults, p: &mut Vec<Problem>) -> Self {
        for prefix in &raw.destination_prefixes {
            if !prefix.starts_with('/') {
                p.push(Problem::new(
                    "destinationPrefixes",
                    format!("`{prefix}` is not absolute"),
                ));
            }
        }
        Self { raw }
    }
}

const DEFAULT_TOKEN_STORE: &str = "/var/lib/managed-tokens/service-credd-vault-tokens";
const DEFAULT_ROLE_FILE_TEMPLATE: &str = "/tmp/default_role_{{.Experiment}}_{{.DesiredUID}}";

/// Resolves every role of every experiment, sorted by configuration name.
pub(super) fn services(
    experiments: BTreeMap<String, RawExperiment>,
    defaults: &Defaults,
    p: &mut Vec<Problem>,
) -> Vec<Service> {
    let mut services = Vec::new();
    for (key, experiment) in experiments {
        let path = format!("experiments.{key}");
        check_name(NameKind::Experiment, &key, &path, p);
        let real_experiment = experiment
            .experiment_override
            .clone()
            .unwrap_or_else(|| key.clone());
        check_name(
            NameKind::Experiment,
            &real_experiment,
            &format!("{path}.experimentOverride"),
            p,
        );
        let emails = experiment.emails.clone().unwrap_or_default();
        for address in &emails {
            if !address.contains('@') {
                p.push(Problem::new(
                    &format!("{path}.emails"),
                    format!("`{address}` is not an email address"),
                ));
            }
        }
        let roles = experiment.roles.unwrap_or_default();
        if roles.is_empty() {
            p.push(Problem::new(
                &format!("{path}.roles"),
                "no roles are configured",
            ));
        }
        for (role, raw) in roles {
            let ctx = RoleContext {
                path: format!("{path}.roles.{role}"),
                experiment: &key,
                real_experiment: &real_experiment,
                role: &role,
                emails: &emails,
            };
            check_name(NameKind::Role, &role, &ctx.path, p);
            if let Some(service) = resolve_role(&ctx, raw, defaults, p) {
                services.push(service);
            }
        }
    }
    services.sort_by(|a, b| a.name.cmp(&b.name));
    services
}

struct RoleContext<'a> {
    path: String,
    experiment: &'a str,
    real_experiment: &'a str,
    role: &'a str,
    emails: &'a [String],
}

fn resolve_role(
    ctx: &RoleContext<'_>,
    raw: RawRole,
    defaults: &Defaults,
    p: &mut Vec<Problem>,
) -> Option<Service> {
    let d = &defaults.raw;
    let key = |k: &str| format!("{}.{k}", ctx.path);
    let before = p.len();

    let Some(account) = raw.account.clone() else {
        p.push(Problem::new(
            &key("account"),
            "is required: the UNIX account of this role",
        ));
        return None;
    };
    check_name(NameKind::Account, &account, &key("account"), p);
    let nodes = nodes(raw.destination_nodes.clone(), &key("destinationNodes"), p);

    let principal = principal(&raw, d, &account, ctx, p);
    let credkey = principal.split('@').next().unwrap_or_default().to_string();
    let keytab = match (&raw.keytab_path_override, &d.keytab_path) {
        (Some(path), _) => PathBuf::from(path),
        (None, Some(dir)) => PathBuf::from(dir).join(format!("{account}.keytab")),
        (None, None) => {
            p.push(Problem::new(
                &key("keytabPathOverride"),
                "no keytab: set `keytabPath` or this key",
            ));
            PathBuf::new()
        }
    };

    let token_getter = match raw.token_getter_override.as_deref() {
        None | Some("storeAndGetToken") => TokenGetter::StoreAndGetToken,
        Some("getToken") => TokenGetter::GetToken,
        Some(other) => {
            p.push(Problem::new(
                &key("tokenGetterOverride"),
                format!("`{other}` is not `storeAndGetToken` or `getToken`"),
            ));
            TokenGetter::StoreAndGetToken
        }
    };
    let collectors = host_list(
        raw.condor_collector_host_override
            .as_deref()
            .or(d.collector_host.as_deref()),
        &key("condorCollectorHostOverride"),
        p,
    );
    let credds = host_list(
        raw.condor_credd_host_override
            .as_deref()
            .or(d.credd_host.as_deref()),
        &key("condorCreddHostOverride"),
        p,
    );
    if token_getter == TokenGetter::StoreAndGetToken && collectors.is_empty() && credds.is_empty() {
        p.push(Problem::new(
            &ctx.path,
            "no collector and no credd: set `condorCollectorHost` or `condorCreddHost` (or their overrides)",
        ));
    }

    let role_file_template = role_file_template(&raw, d, &key, p);
    let ssh_options = options(
        raw.ssh_options_override
            .as_deref()
            .or(d.ssh_options.as_deref()),
        &key("sshOptionsOverride"),
        true,
        p,
    );
    let ping_options = options(
        raw.ping_options_override
            .as_deref()
            .or(d.ping_options.as_deref()),
        &key("pingOptionsOverride"),
        false,
        p,
    );
    let rsync_options = options(
        raw.file_copier_options_override
            .as_deref()
            .or(d.rsync_options.as_deref()),
        &key("fileCopierOptionsOverride"),
        false,
        p,
    );
    check_rsync_options(&rsync_options, &key("fileCopierOptionsOverride"), p);

    let service = Service {
        name: format!("{}_{}", ctx.experiment, ctx.role),
        real_name: format!("{}_{}", ctx.real_experiment, ctx.role),
        experiment: ctx.experiment.to_string(),
        real_experiment: ctx.real_experiment.to_string(),
        role: ctx.role.to_string(),
        account,
        principal,
        credkey,
        keytab,
        desired_uid: raw.desired_uid_override,
        vault_server: vault_server(
            raw.vault_server_override
                .as_deref()
                .or(d.vault_server.as_deref()),
            &key("vaultServerOverride"),
            p,
        ),
        collectors,
        credds,
        schedd_constraint: raw
            .condor_schedd_constraint_override
            .clone()
            .or_else(|| d.schedd_constraint.clone())
            .filter(|c| !c.trim().is_empty()),
        token_getter,
        token_store: PathBuf::from(
            raw.service_credd_vault_token_path_root_override
                .as_deref()
                .or(d.token_store.as_deref())
                .filter(|s| !s.is_empty())
                .unwrap_or(DEFAULT_TOKEN_STORE),
        ),
        nodes,
        role_file_template,
        ssh_options,
        ping_options,
        rsync_options,
        notify: !raw
            .disable_notifications_override
            .unwrap_or(d.disable_notifications),
        emails: ctx.emails.to_vec(),
    };
    check_destination(&service, &d.destination_prefixes, &key, p);
    (p.len() == before).then_some(service)
}

fn principal(
    raw: &RawRole,
    d: &RawDefaults,
    account: &str,
    ctx: &RoleContext<'_>,
    p: &mut Vec<Problem>,
) -> String {
    let key = |k: &str| format!("{}.{k}", ctx.path);
    let principal = if let Some(principal) = &raw.user_principal_override {
        principal.clone()
    } else {
        let (pattern, pattern_key) = match &raw.kerberos_principal_pattern_override {
            Some(pattern) => (pattern.as_str(), key("kerberosPrincipalPatternOverride")),
            None => match &d.principal_pattern {
                Some(pattern) => (pattern.as_str(), "kerberosPrincipalPattern".to_string()),
                None => {
                    p.push(Problem::new(
                        &key("userPrincipalOverride"),
                        "no principal: set `kerberosPrincipalPattern` or this key",
                    ));
                    return String::new();
                }
            },
        };
        match Template::parse(pattern, &[Field::Account]) {
            Ok(t) => t.render(&AccountOnly(account)),
            Err(e) => {
                p.push(Problem::new(&pattern_key, e.0));
                return String::new();
            }
        }
    };
    // A bad account already produced a problem; its rendered principal would only repeat it.
    if raw.user_principal_override.is_some() || names::validate(NameKind::Account, account).is_ok()
    {
        check_name(
            NameKind::Principal,
            &principal,
            &key("userPrincipalOverride"),
            p,
        );
    }
    principal
}

struct AccountOnly<'a>(&'a str);

impl crate::template::Fields for AccountOnly<'_> {
    fn field(&self, _: Field) -> String {
        self.0.to_string()
    }
}

fn nodes(raw: Option<Vec<String>>, key: &str, p: &mut Vec<Problem>) -> Vec<String> {
    let nodes = raw.unwrap_or_default();
    if nodes.is_empty() {
        p.push(Problem::new(
            key,
            "is required: at least one destination node",
        ));
    }
    let mut unique: Vec<String> = Vec::new();
    for node in nodes {
        check_name(NameKind::Node, &node, key, p);
        if !unique.contains(&node) {
            unique.push(node);
        }
    }
    unique
}

/// The vault server travels inside `_condor_SEC_CREDENTIAL_GETTOKEN_OPTS`, which the
/// storer splits on spaces: anything but a plain URL or host could smuggle options in.
fn vault_server(value: Option<&str>, key: &str, p: &mut Vec<Problem>) -> Option<String> {
    let value = value.map(str::trim).filter(|v| !v.is_empty())?;
    let allowed = |c: char| c.is_ascii_alphanumeric() || ".-_:/[]".contains(c);
    if value.starts_with('-') || !value.chars().all(allowed) {
        p.push(Problem::new(
            key,
            format!(
                "`{}` is not a vault server URL or host name",
                value.escape_debug()
            ),
        ));
    }
    Some(value.to_string())
}

fn host_list(value: Option<&str>, key: &str, p: &mut Vec<Problem>) -> Vec<String> {
    let hosts: Vec<String> = value
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(String::from)
        .collect();
    for host in &hosts {
        check_name(NameKind::CondorHost, host, key, p);
    }
    hosts
}

fn role_file_template(
    raw: &RawRole,
    d: &RawDefaults,
    key: &dyn Fn(&str) -> String,
    p: &mut Vec<Problem>,
) -> Template {
    let (source, source_key) = match (
        &raw.default_role_file_destination_template_override,
        &d.role_file_template,
    ) {
        (Some(t), _) => (
            t.as_str(),
            key("defaultRoleFileDestinationTemplateOverride"),
        ),
        (None, Some(t)) => (t.as_str(), "defaultRoleFileDestinationTemplate".to_string()),
        (None, None) => (
            DEFAULT_ROLE_FILE_TEMPLATE,
            "defaultRoleFileDestinationTemplate".to_string(),
        ),
    };
    let all = [
        Field::Account,
        Field::DesiredUid,
        Field::Experiment,
        Field::Role,
        Field::Service,
    ];
    Template::parse(source, &all).unwrap_or_else(|e| {
        p.push(Problem::new(&source_key, e.0));
        Template::parse(DEFAULT_ROLE_FILE_TEMPLATE, &all).expect("the built-in template is valid")
    })
}

/// The default-role file must land under an allowed prefix, as an absolute path with no
/// `..`, whatever the UID turns out to be.
fn check_destination(
    service: &Service,
    prefixes: &[String],
    key: &dyn Fn(&str) -> String,
    p: &mut Vec<Problem>,
) {
    let rendered = service.role_file_destination(0);
    let problem = if !rendered.starts_with('/') {
        Some("renders a relative path".to_string())
    } else if rendered.split('/').any(|c| c == ".." || c == ".") {
        Some("renders a path with `.` or `..`".to_string())
    } else if rendered.ends_with('/') {
        Some("renders a directory, not a file".to_string())
    } else if rendered
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || c == ':')
    {
        Some("renders a path with whitespace, `:` or control characters".to_string())
    } else if !prefixes
        .iter()
        .any(|prefix| rendered.starts_with(prefix.as_str()))
    {
        Some(format!(
            "renders `{rendered}`, outside the allowed prefixes {prefixes:?} (destinationPrefixes)"
        ))
    } else {
        None
    };
    if let Some(problem) = problem {
        p.push(Problem::new(
            &key("defaultRoleFileDestinationTemplateOverride"),
            format!("`{}` {problem}", service.role_file_template.source()),
        ));
    }
}

/// Splits an options string like a shell would; `for_ssh` also refuses what rsync's `-e`
/// parser could not carry as one word.
fn options(value: Option<&str>, key: &str, for_ssh: bool, p: &mut Vec<Problem>) -> Vec<String> {
    let Some(value) = value else {
        return Vec::new();
    };
    let Some(words) = shlex::split(value) else {
        p.push(Problem::new(
            key,
            format!("`{value}` has unbalanced quotes"),
        ));
        return Vec::new();
    };
    for word in &words {
        if word.chars().any(char::is_control) {
            p.push(Problem::new(
                key,
                format!("`{}` contains control characters", word.escape_debug()),
            ));
        }
        if for_ssh
            && word
                .chars()
                .any(|c| c.is_whitespace() || c == '\'' || c == '"')
        {
            p.push(Problem::new(
                key,
                format!("`{word}`: ssh options may not contain spaces or quotes"),
            ));
        }
    }
    words
}

/// Options that would let a partial or writable token appear at the destination.
fn check_rsync_options(words: &[String], key: &str, p: &mut Vec<Problem>) {
    const REFUSED: [&str; 7] = [
        "--inplace",
        "--partial",
        "--partial-dir",
        "--append",
        "--temp-dir",
        "-T",
        "-P",
    ];
    for word in words {
        let name = word.split('=').next().unwrap_or(word);
        if REFUSED.contains(&name) || word.starts_with("--append") {
            p.push(Problem::new(
                key,
                format!("`{word}` could leave a partial token at the destination; remove it"),
            ));
        }
    }
}

fn check_name(kind: NameKind, value: &str, key: &str, p: &mut Vec<Problem>) {
    if let Err(e) = names::validate(kind, value) {
        p.push(Problem::new(key, e.to_string()));
    }
}
