use std::path::Path;

use super::*;
use crate::service::TokenGetter;

/// Shaped like the Go service's shipped sample, with the keys operators actually set.
const GO_SAMPLE: &str = include_str!("../../../../tests/fixtures/go-service-sample.yml");

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_str(
        text,
        false,
        Path::new("/etc/managed-tokens/managedTokens.yml"),
    )
}

fn problems(text: &str) -> Vec<Problem> {
    parse(text).unwrap_err().problems
}

const MINIMAL: &str = "keytabPath: /k\nkerberosPrincipalPattern: '{{.Account}}@R'\n\
    condorCollectorHost: c\nexperiments:\n  e:\n    roles:\n      r: {account: a, destinationNodes: [n]}\n";

#[test]
fn loads_the_go_sample_unchanged() {
    let config = parse(GO_SAMPLE).unwrap();
    let names: Vec<_> = config.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        ["dune-2_production", "dune_analysis", "dune_production"]
    );

    let prod = config.service("dune_production").unwrap();
    assert_eq!(
        prod.principal,
        "dunepro/managedtokens/fifeutilgpvm01.fnal.gov@FNAL.GOV"
    );
    assert_eq!(
        prod.credkey,
        "dunepro/managedtokens/fifeutilgpvm01.fnal.gov"
    );
    assert_eq!(
        prod.keytab,
        Path::new("/opt/managed-tokens/keytabs/dunepro.keytab")
    );
    assert_eq!(
        prod.collectors,
        ["collector1.fnal.gov", "collector2.fnal.gov"]
    );
    assert_eq!(
        prod.schedd_constraint.as_deref(),
        Some(r#"regexp("jobsub", Name)"#)
    );
    assert_eq!(prod.role_file_destination(42), "/tmp/42_dunepro");
    assert_eq!(prod.ssh_options, ["-o", "ConnectTimeout=10"]);
    assert!(prod.notify);

    let ana = config.service("dune_analysis").unwrap();
    assert_eq!(ana.desired_uid, Some(5001));
    assert_eq!(ana.credds, ["credd1.fnal.gov", "credd2.fnal.gov"]);
    assert_eq!(ana.token_getter, TokenGetter::GetToken);
    assert!(!ana.notify);

    let twin = config.service("dune-2_production").unwrap();
    assert_eq!(twin.real_name, "dune_production");
    assert_eq!(twin.experiment, "dune-2");
    assert_eq!(twin.real_experiment, "dune");
    assert_eq!(twin.principal, "dunepro@FNAL.GOV");
    assert_eq!(twin.keytab, Path::new("/opt/keytabs/special.keytab"));
    assert!(twin.emails.is_empty());

    assert_eq!(config.min_token_lifetime, Duration::from_secs(3 * 86400));
    assert_eq!(config.error_count_to_send_message, 3);
    assert_eq!(config.retries.push.retries, 2);
    assert_eq!(config.notifications.admin_emails, ["fife-group@fnal.gov"]);
    assert_eq!(config.notifications_test.admin_emails, ["me@fnal.gov"]);
    assert!(format!("{:?}", config.notifications.slack_url).contains("***"));
    assert_eq!(
        config.ignored_keys,
        [
            "logs",
            "loki",
            "tracing",
            "ferry (needs host, hostCert and hostKey)"
        ]
    );
    assert_eq!(config.ferry, None);
}

#[test]
fn loads_json_rendered_from_jsonnet() {
    let json = r#"{"keytabPath": "/k", "kerberosPrincipalPattern": "{{.Account}}@R",
        "condorCollectorHost": "c", "experiments": {"e": {"emails": [],
        "roles": {"r": {"account": "a", "destinationNodes": ["n"]}}}}}"#;
    let config = Config::from_str(json, true, Path::new("managedTokens.json")).unwrap();
    assert_eq!(config.services[0].name, "e_r");
}

#[test]
fn ferry_with_a_client_certificate_is_used() {
    let text = format!(
        "{MINIMAL}ferry: {{host: 'https://ferry.example', port: 8445, hostCert: /c.pem, hostKey: /k.pem, caPath: /ca}}\n"
    );
    let ferry = parse(&text).unwrap().ferry.unwrap();
    assert_eq!(ferry.url, "https://ferry.example:8445");
    assert_eq!(ferry.ca_path.as_deref(), Some(Path::new("/ca")));
    let p = problems(&format!("{MINIMAL}ferry: {{hots: x}}\n"));
    assert!(p[0].message.contains("`ferry.host`"), "{p:?}");
}

#[test]
fn defaults_apply() {
    let config = parse(MINIMAL).unwrap();
    assert_eq!(config.timeouts.global, Duration::from_secs(300));
    assert_eq!(config.timeouts.push, Duration::from_secs(30));
    assert_eq!(config.concurrency, 16);
    assert_eq!(config.environment_label, "production");
    let s = &config.services[0];
    assert_eq!(s.role_file_destination(7), "/tmp/default_role_e_7");
    assert_eq!(
        s.token_store,
        Path::new("/var/lib/managed-tokens/service-credd-vault-tokens")
    );
}

#[test]
fn unknown_key_names_file_path_and_suggestion() {
    let err = parse(&MINIMAL.replace("account: a", "acount: a")).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("/etc/managed-tokens/managedTokens.yml"),
        "{text}"
    );
    assert!(text.contains("`experiments.e.roles.r.acount`: unknown key; did you mean `experiments.e.roles.r.account`?"), "{text}");
}

#[test]
fn wrong_types_name_the_key() {
    let p = problems(&MINIMAL.replace("account: a", "account: a, desiredUIDOverride: abc"));
    assert_eq!(
        p[0].key, "experiments.e.roles.r.desiredUIDOverride",
        "{p:?}"
    );
}

#[test]
fn role_needs_account_and_nodes() {
    let p = problems(&MINIMAL.replace(
        "{account: a, destinationNodes: [n]}",
        "{destinationNodes: [n]}",
    ));
    assert!(
        p.iter().any(|p| p.key == "experiments.e.roles.r.account"),
        "{p:?}"
    );
    let p = problems(&MINIMAL.replace(", destinationNodes: [n]", ""));
    assert!(
        p.iter()
            .any(|p| p.key == "experiments.e.roles.r.destinationNodes"),
        "{p:?}"
    );
}

#[test]
fn retries_must_fit_the_push_timeout() {
    let text = format!("{MINIMAL}workerType:\n  pushTokens: {{numRetries: 3, retrySleep: 60s}}\n");
    let p = problems(&text);
    assert_eq!(p[0].key, "workerType.pushTokens");
    assert!(
        p[0].message
            .contains("does not fit in timeouts.pushTimeout"),
        "{p:?}"
    );
}

#[test]
fn stage_timeouts_must_fit_the_global_one() {
    let text = format!("{MINIMAL}timeouts: {{globalTimeout: 30s, pushTimeout: 40s}}\n");
    let p = problems(&text);
    assert_eq!(p[0].key, "timeouts.pushTimeout");
}

#[test]
fn durations_must_parse() {
    let p = problems(&format!("{MINIMAL}minTokenLifetime: soon\n"));
    assert_eq!(p[0].key, "minTokenLifetime");
}

#[test]
fn names_reaching_a_command_line_are_checked() {
    let p = problems(&MINIMAL.replace("[n]", "['-oProxyCommand=sh']"));
    assert!(p[0].message.contains("would be read as an option"), "{p:?}");
    let p = problems(&MINIMAL.replace("account: a", "account: 'a;b'"));
    assert_eq!(p[0].key, "experiments.e.roles.r.account");
    let p = problems(&MINIMAL.replace("condorCollectorHost: c", "condorCollectorHost: '-pool x'"));
    assert!(p[0].key.ends_with("condorCollectorHostOverride"), "{p:?}");
}

#[test]
fn vault_servers_cannot_carry_options() {
    let p = problems(&format!(
        "{MINIMAL}vaultServer: 'https://v:8200 --nokerberos'\n"
    ));
    assert!(p[0].message.contains("not a vault server"), "{p:?}");
    assert!(
        parse(&format!(
            "{MINIMAL}vaultServer: https://htvault.fnal.gov:8200\n"
        ))
        .is_ok()
    );
}

#[test]
fn templates_are_checked() {
    let p = problems(&format!(
        "{MINIMAL}defaultRoleFileDestinationTemplate: /tmp/{{{{.Nope}}}}\n"
    ));
    assert!(
        p[0].message.contains("unknown placeholder `{{.Nope}}`"),
        "{p:?}"
    );
    let p = problems(&format!(
        "{MINIMAL}defaultRoleFileDestinationTemplate: /tmp/../etc/{{{{.Account}}}}\n"
    ));
    assert!(p[0].message.contains("`..`"), "{p:?}");
    let p = problems(&format!(
        "{MINIMAL}defaultRoleFileDestinationTemplate: /etc/{{{{.Account}}}}\n"
    ));
    assert!(
        p[0].message.contains("outside the allowed prefixes"),
        "{p:?}"
    );
    let p = problems(&MINIMAL.replace("{{.Account}}@R", "{{.Role}}@R"));
    assert_eq!(p[0].key, "kerberosPrincipalPattern");
}

#[test]
fn refuses_rsync_options_that_leave_partial_files() {
    let p = problems(&format!("{MINIMAL}fileCopierOptions: --inplace\n"));
    assert!(p[0].message.contains("partial"), "{p:?}");
}

#[test]
fn reports_every_problem_at_once() {
    let text = MINIMAL
        .replace("account: a", "account: 'a b'")
        .replace("[n]", "['-x']");
    let p = problems(&format!("{text}minTokenLifetime: x\n"));
    let keys: Vec<_> = p.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "experiments.e.roles.r.account",
            "experiments.e.roles.r.destinationNodes",
            "minTokenLifetime"
        ],
        "{p:?}"
    );
}

#[test]
fn the_example_configuration_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../etc/managedTokens.yml");
    let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert!(!config.services.is_empty());
}

/// Every key the Go service reads, each role override included.
const EVERY_GO_KEY: &str = include_str!("../../../../tests/fixtures/go-service-every-key.yml");

#[test]
fn every_key_of_the_go_service_loads() {
    let config = parse(EVERY_GO_KEY).unwrap_or_else(|e| panic!("{e}"));
    let s = config.service("dune_production").unwrap();
    assert_eq!(s.principal, "dunepro/x@FNAL.GOV");
    assert_eq!(s.keytab, Path::new("/o.keytab"));
    assert_eq!(s.collectors, ["c3"]);
    assert_eq!(s.credds, ["credd1.fnal.gov"]);
    assert_eq!(s.schedd_constraint.as_deref(), Some(r#"Name == "x""#));
    assert_eq!(s.vault_server.as_deref(), Some("vault2.fnal.gov"));
    assert_eq!(s.token_store, Path::new("/store2"));
    assert_eq!(s.rsync_options, ["--perms"]);
    assert_eq!(s.ping_options, ["-W", "2"]);
    assert_eq!(s.ssh_options, ["-o", "ConnectTimeout=5"]);
    assert_eq!(s.role_file_destination(42), "/tmp/42_dunepro");
    assert_eq!(s.desired_uid, Some(42));
    assert!(!s.notify);
    assert_eq!(config.environment_label, "development");
    assert_eq!(config.retries.token.retries, 1);
    assert!(config.ferry.is_some());
    assert_eq!(
        config.ignored_keys,
        [
            "htgettokenopts",
            "logs",
            "loki",
            "tracing",
            "userPrincipal",
            "tokenGetter"
        ]
    );
}
