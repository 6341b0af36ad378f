//! Metrics end to end: a local HTTP listener standing in for the Pushgateway records the
//! PUT, a node_exporter textfile is written next to it, and a real state database
//! supplies the last successes and streaks.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use managed_tokens_core::config::Config;
use managed_tokens_core::metrics::{self, CONTENT_TYPE};
use managed_tokens_core::report::{
    Binary, Failure, FailureClass, Outcome, RunReport, Stage, Target,
};
use managed_tokens_core::state::State;

/// One HTTP request as the listener received it.
#[derive(Debug)]
struct Request {
    method: String,
    path: String,
    headers: BTreeMap<String, String>,
    body: String,
}

/// Accepts one connection on a free port, answers 200 and hands over the request.
fn pushgateway() -> (u16, mpsc::Receiver<Request>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let mut words = line.split_whitespace();
        let method = words.next().unwrap_or_default().to_string();
        let path = words.next().unwrap_or_default().to_string();
        let mut headers = BTreeMap::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').unwrap();
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
        let body = if let Some(length) = headers.get("content-length") {
            let mut body = vec![0; length.parse().unwrap()];
            reader.read_exact(&mut body).unwrap();
            body
        } else {
            chunked(&mut reader)
        };
        let mut stream = stream;
        stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .unwrap();
        let body = String::from_utf8(body).unwrap();
        let _ = tx.send(Request {
            method,
            path,
            headers,
            body,
        });
    });
    (port, rx)
}

fn chunked(reader: &mut impl BufRead) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        reader.read_line(&mut size).unwrap();
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        let mut chunk = vec![0; size + 2];
        reader.read_exact(&mut chunk).unwrap();
        if size == 0 {
            return body;
        }
        body.extend_from_slice(&chunk[..size]);
    }
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn config(dir: &Path, port: u16) -> Config {
    let yaml = format!(
        r#"
keytabPath: /etc/managed-tokens/keytabs
kerberosPrincipalPattern: "{{{{.Account}}}}@EXAMPLE.ORG"
condorCollectorHost: collector.example.org
vaultServer: vault.example.org
dbLocation: {dir}/state.db
devEnvironmentLabel: test
prometheus: {{host: "http://127.0.0.1:{port}", jobname: managed_tokens}}
metrics: {{textfile: {dir}/managed_tokens.prom}}
experiments:
  dune:
    roles:
      production: {{account: dunepro, destinationNodes: [dunegpvm01, dunegpvm02]}}
  dune-global:
    experimentOverride: dune
    roles:
      production: {{account: dunepro, destinationNodes: [dunegpschedd01]}}
  mu2e:
    roles:
      production: {{account: mu2epro, destinationNodes: [mu2egpvm01]}}
      analysis:
        account: mu2eana
        destinationNodes: [mu2egpvm01]
        tokenGetterOverride: getToken
"#,
        dir = dir.display()
    );
    Config::from_str(&yaml, false, Path::new("managedTokens.yml")).unwrap()
}

/// When the reports' runs started: ten minutes ago, to the second, as the state keeps it.
static STARTED_AT: std::sync::LazyLock<u64> = std::sync::LazyLock::new(|| {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 600
});

fn report(binary: Binary, services: &[&str]) -> RunReport {
    let mut report = RunReport::new(
        binary,
        false,
        services.iter().map(|s| s.to_string()).collect(),
    );
    report.started = UNIX_EPOCH + Duration::from_secs(*STARTED_AT);
    report.duration = Duration::from_millis(42_500);
    report
}

fn ok(service: &str, target: Target, stage: Stage, millis: u64) -> Outcome {
    Outcome::ok(service, target, stage, Duration::from_millis(millis))
}

fn failed(
    service: &str,
    target: Target,
    stage: Stage,
    millis: u64,
    class: FailureClass,
) -> Outcome {
    let failure = Failure::new(class, "it broke");
    Outcome::failed(
        service,
        target,
        stage,
        Duration::from_millis(millis),
        failure,
    )
}

fn node(name: &str) -> Target {
    Target::Node(name.to_string())
}

type Labels = BTreeMap<String, String>;

/// Every sample of a text exposition, checking the HELP/TYPE lines on the way.
fn parse(text: &str) -> Vec<(String, Labels, f64)> {
    let mut samples = Vec::new();
    let mut typed = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert_eq!(kind, "gauge", "{line}");
            assert!(
                !typed.contains(&name.to_string()),
                "family {name} declared twice"
            );
            typed.push(name.to_string());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, labels.strip_suffix('}').unwrap()),
            None => (series, ""),
        };
        assert_eq!(
            typed.last().map(String::as_str),
            Some(name),
            "sample outside its family: {line}"
        );
        let labels = labels
            .split(',')
            .filter(|l| !l.is_empty())
            .map(|pair| {
                let (k, v) = pair.split_once('=').unwrap();
                (k.to_string(), v.trim_matches('"').to_string())
            })
            .collect();
        samples.push((name.to_string(), labels, value.parse().unwrap()));
    }
    samples
}

/// The value of the one sample of `name` whose labels include `labels`.
#[track_caller]
fn value(samples: &[(String, Labels, f64)], name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<f64> = samples
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| *v)
        .collect();
    assert_eq!(found.len(), 1, "{name} {labels:?}: {found:?}");
    found[0]
}

#[test]
fn pusher_metrics_reach_the_pushgateway_and_the_textfile() {
    let dir = tempfile::tempdir().unwrap();
    let (port, requests) = pushgateway();
    let config = config(dir.path(), port);
    let mut report = report(
        Binary::TokenPusher,
        &[
            "dune-global_production",
            "dune_production",
            "mu2e_production",
        ],
    );
    report.outcomes = vec![
        ok("dune_production", Target::Service, Stage::Kerberos, 500),
        ok("dune_production", node("dunegpvm01"), Stage::Push, 1250),
        failed(
            "dune_production",
            node("dunegpvm02"),
            Stage::Push,
            30_000,
            FailureClass::Unreachable,
        ),
        ok(
            "dune-global_production",
            Target::Service,
            Stage::Kerberos,
            750,
        ),
        ok(
            "dune-global_production",
            node("dunegpschedd01"),
            Stage::Push,
            2000,
        ),
        failed(
            "mu2e_production",
            Target::Service,
            Stage::Kerberos,
            20_000,
            FailureClass::KinitFailed,
        ),
    ];
    let mut state = State::open(&config.db_location, Duration::from_secs(5)).unwrap();
    state.record_run(&report).unwrap();

    metrics::publish(&config, &report, Some(&state));

    let request = requests
        .recv_timeout(Duration::from_secs(10))
        .expect("a push");
    assert_eq!(request.method, "PUT");
    assert_eq!(
        request.path,
        "/metrics/job/managed_tokens_test/executable/token-pusher"
    );
    assert_eq!(request.headers["content-type"], CONTENT_TYPE);
    let pushed = parse(&request.body);
    assert!(
        pushed
            .iter()
            .all(|(_, l, _)| !l.contains_key("executable") && !l.contains_key("job")),
        "grouping labels belong in the URL"
    );

    let textfile = dir.path().join("managed_tokens_token-pusher.prom");
    assert_eq!(
        textfile,
        metrics::textfile_path(
            config.metrics_textfile.as_ref().unwrap(),
            Binary::TokenPusher
        )
    );
    let text = fs::read_to_string(&textfile).unwrap();
    assert_eq!(
        fs::metadata(&textfile).unwrap().permissions().mode() & 0o777,
        0o644
    );
    let written = parse(&text);
    assert!(
        written
            .iter()
            .all(|(_, l, _)| l.get("executable").map(String::as_str) == Some("token-pusher"))
    );
    assert_eq!(pushed.len(), written.len());
    let leftovers: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let started = *STARTED_AT as f64;
    for samples in [&pushed, &written] {
        let dune = [
            ("service", "dune_production"),
            ("config_name", "dune_production"),
        ];
        let twin = [
            ("service", "dune_production"),
            ("config_name", "dune-global_production"),
        ];
        let mu2e = [
            ("service", "mu2e_production"),
            ("config_name", "mu2e_production"),
        ];
        let at = |labels: &[(&'static str, &'static str)], node| {
            let mut labels = labels.to_vec();
            labels.push(("node", node));
            labels
        };
        let v = |name: &str, labels: &[(&str, &str)]| {
            value(samples, &format!("managed_tokens_{name}"), labels)
        };

        assert_eq!(
            v("token_push_duration_seconds", &at(&dune, "dunegpvm01")),
            1.25
        );
        assert_eq!(
            v("token_push_duration_seconds", &at(&dune, "dunegpvm02")),
            30.0
        );
        assert_eq!(
            v("token_push_duration_seconds", &at(&twin, "dunegpschedd01")),
            2.0
        );
        assert_eq!(v("failed_token_push_count", &at(&dune, "dunegpvm01")), 0.0);
        assert_eq!(v("failed_token_push_count", &at(&dune, "dunegpvm02")), 1.0);
        assert_eq!(
            v("failed_token_push_count", &at(&twin, "dunegpschedd01")),
            0.0
        );
        assert_eq!(
            v("last_token_push_timestamp", &at(&dune, "dunegpvm01")),
            started
        );
        assert_eq!(
            v("last_token_push_timestamp", &at(&twin, "dunegpschedd01")),
            started
        );
        let never_pushed = samples.iter().any(|(n, l, _)| {
            n == "managed_tokens_last_token_push_timestamp"
                && l.get("node").is_some_and(|n| n == "dunegpvm02")
        });
        assert!(!never_pushed, "a node never pushed to has no last push");
        let mut streak = at(&dune, "dunegpvm02");
        streak.pop();
        streak.extend([("check", "push"), ("target", "dunegpvm02")]);
        assert_eq!(v("consecutive_failures", &streak), 1.0);

        assert_eq!(v("kinit_duration_seconds", &dune), 0.5);
        assert_eq!(v("kinit_duration_seconds", &twin), 0.75);
        assert_eq!(v("failed_kinit_count", &dune), 0.0);
        assert_eq!(v("failed_kinit_count", &mu2e), 1.0);
        assert_eq!(v("failed_services_push_count", &[]), 2.0);
        assert_eq!(v("run_exit_status", &[]), 3.0);
        assert_eq!(v("last_run_timestamp", &[]), started);
        assert_eq!(v("stage_duration_seconds", &[("stage", "run")]), 42.5);
        assert_eq!(v("stage_duration_seconds", &[("stage", "push")]), 30.0);
        assert_eq!(v("stage_duration_seconds", &[("stage", "kerberos")]), 20.0);
        assert_eq!(v("pending_notifications", &[]), 0.0);
    }
}

#[test]
fn refresher_metrics_survive_a_pushgateway_that_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), closed_port());
    let credd = |c: &str| Target::Credd(c.to_string());
    let mut earlier = report(
        Binary::TokenRefresher,
        &["dune_production", "mu2e_analysis"],
    );
    earlier.started -= Duration::from_secs(3600);
    earlier.outcomes = vec![
        ok("dune_production", credd("credd1"), Stage::Store, 3000),
        ok("dune_production", credd("credd2"), Stage::Store, 3000),
        ok("dune_production", credd("retired"), Stage::Store, 3000),
    ];
    let mut now = report(
        Binary::TokenRefresher,
        &["dune_production", "mu2e_analysis"],
    );
    now.outcomes = vec![
        ok("dune_production", Target::Service, Stage::Kerberos, 250),
        ok("dune_production", credd("credd1"), Stage::Store, 4500),
        failed(
            "dune_production",
            credd("credd2"),
            Stage::Store,
            60_000,
            FailureClass::Timeout,
        ),
        ok("mu2e_analysis", Target::Service, Stage::Kerberos, 300),
        ok("mu2e_analysis", Target::Service, Stage::GetToken, 1500),
    ];
    let mut state = State::open(&config.db_location, Duration::from_secs(5)).unwrap();
    state.record_run(&earlier).unwrap();
    state.record_run(&now).unwrap();

    metrics::publish(&config, &now, Some(&state));

    let text = fs::read_to_string(dir.path().join("managed_tokens_token-refresher.prom")).unwrap();
    let samples = parse(&text);
    let v = |name: &str, labels: &[(&str, &str)]| {
        value(&samples, &format!("managed_tokens_{name}"), labels)
    };
    let dune = |credd| {
        [
            ("service", "dune_production"),
            ("config_name", "dune_production"),
            ("credd", credd),
        ]
    };
    let mu2e = [
        ("service", "mu2e_analysis"),
        ("config_name", "mu2e_analysis"),
    ];
    let started = *STARTED_AT as f64;

    assert_eq!(v("token_store_duration_seconds", &dune("credd1")), 4.5);
    assert_eq!(v("token_store_duration_seconds", &dune("credd2")), 60.0);
    assert_eq!(v("failed_vault_token_store_count", &dune("credd1")), 0.0);
    assert_eq!(v("failed_vault_token_store_count", &dune("credd2")), 1.0);
    assert_eq!(v("last_token_store_timestamp", &dune("credd1")), started);
    assert_eq!(
        v("last_token_store_timestamp", &dune("credd2")),
        started - 3600.0
    );
    assert!(
        !text.contains("retired"),
        "a credd missing from the latest store round is not published"
    );
    assert_eq!(v("token_get_duration_seconds", &mu2e), 1.5);
    assert_eq!(v("failed_vault_token_get_count", &mu2e), 0.0);
    assert_eq!(v("last_token_get_timestamp", &mu2e), started);
    assert_eq!(v("needs_onboarding", &mu2e), 0.0);
    let streak = [
        ("config_name", "dune_production"),
        ("check", "service"),
        ("target", "service"),
    ];
    assert_eq!(v("consecutive_failures", &streak), 1.0);
    assert_eq!(v("run_exit_status", &[]), 3.0);
    // Services outside the run are still covered by the state.
    assert_eq!(
        v("needs_onboarding", &[("config_name", "mu2e_production")]),
        0.0
    );
    assert!(
        !text.contains("failed_services_push_count"),
        "a pusher metric"
    );

    // The textfile is replaced as a whole by the next run.
    now.outcomes.truncate(2);
    metrics::publish(&config, &now, None);
    let text = fs::read_to_string(dir.path().join("managed_tokens_token-refresher.prom")).unwrap();
    assert!(
        !text.contains("credd2") && !text.contains("mu2e_analysis"),
        "{text}"
    );
}
