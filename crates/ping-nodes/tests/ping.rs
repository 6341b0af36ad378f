//! ping-nodes end to end, against the real-services sandbox: real `ping` of the three
//! loopback nodes (and of an address that cannot answer, inside a private network
//! namespace), and `--probe ssh` against the nodes' real sshd.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use managed_tokens_test_support::{Options, Sandbox};
use serde_json::Value;

const PING_NODES: &str = env!("CARGO_BIN_EXE_ping-nodes");

fn sandbox() -> Sandbox {
    Sandbox::start_with(&Options {
        parent: Some(PathBuf::from(env!("CARGO_TARGET_TMPDIR"))),
        ..Options::default()
    })
}

/// A finished ping-nodes run.
struct Run {
    code: Option<i32>,
    summary: Value,
    stderr: String,
    elapsed: Duration,
}

impl Run {
    fn from(out: &Output, elapsed: Duration) -> Self {
        Self {
            code: out.status.code(),
            summary: serde_json::from_slice(&out.stdout).unwrap_or(Value::Null),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            elapsed,
        }
    }

    fn describe(&self) -> String {
        format!(
            "exit {:?} in {:.1}s\n--- stderr\n{}\n--- summary\n{}",
            self.code,
            self.elapsed.as_secs_f64(),
            self.stderr.trim_end(),
            serde_json::to_string_pretty(&self.summary).unwrap_or_default()
        )
    }

    #[track_caller]
    fn assert_exit(&self, code: i32) {
        assert_eq!(self.code, Some(code), "{}", self.describe());
        assert_eq!(self.summary["exit"], code, "{}", self.describe());
    }

    /// The outcomes by node name; each node must appear once.
    #[track_caller]
    fn by_node(&self) -> BTreeMap<String, &Value> {
        let outcomes = self.summary["outcomes"].as_array().expect("outcomes");
        let mut nodes = BTreeMap::new();
        for o in outcomes {
            assert_eq!(o["target"]["kind"], "node", "{}", self.describe());
            assert_eq!(o["stage"], "ping", "{}", self.describe());
            let name = o["target"]["name"]
                .as_str()
                .expect("a node name")
                .to_owned();
            assert!(
                nodes.insert(name.clone(), o).is_none(),
                "{name} checked twice\n{}",
                self.describe()
            );
        }
        nodes
    }
}

fn run(sb: &Sandbox, args: &[&str]) -> Run {
    let started = Instant::now();
    let out = sb
        .command(PING_NODES)
        .args(["--allow-root", "--json"])
        .args(args)
        .output()
        .expect("ping-nodes runs");
    Run::from(&out, started.elapsed())
}

/// The configured services using each node, sorted, as the sandbox describes them.
fn services_by_node(sb: &Sandbox) -> BTreeMap<String, Vec<String>> {
    let mut nodes: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, svc) in &sb.info().services {
        for node in &svc.nodes {
            nodes.entry(node.clone()).or_default().push(name.clone());
        }
    }
    for services in nodes.values_mut() {
        services.sort();
    }
    nodes
}

fn services_of(outcome: &Value) -> Vec<String> {
    let mut services: Vec<String> = outcome["services"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    services.sort();
    services
}

#[test]
fn every_node_is_checked_once_with_the_services_using_it() {
    let sb = sandbox();

    let ping = run(&sb, &[]);

    ping.assert_exit(0);
    let outcomes = ping.by_node();
    let expected = services_by_node(&sb);
    assert_eq!(
        outcomes.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "one outcome per distinct node\n{}",
        ping.describe()
    );
    for (node, services) in &expected {
        let outcome = outcomes[node];
        assert!(outcome["failure"].is_null(), "{}", ping.describe());
        assert_eq!(&services_of(outcome), services, "services using {node}");
    }
    assert!(sb.mails().is_empty(), "a clean run sends nothing");
}

#[test]
fn a_node_that_does_not_answer_is_named() {
    let sb = sandbox();
    // An address routed to the loopback of a private network namespace: ping gets no
    // reply and waits out its `-W 1`, whatever the machine's own network does (here
    // the TEST-NET address 192.0.2.1 is the default gateway and answers).
    let silent = "192.0.2.99";
    let original = fs::read_to_string(&sb.info().config).expect("the sandbox configuration");
    let from = r#"destinationNodes: ["127.0.0.12", "127.0.0.13"]"#;
    assert!(
        original.contains(from),
        "nova_production's nodes in:\n{original}"
    );
    assert!(original.contains(r#"pingOptions: "-W 1""#));
    let config = sb.dir().join("silent-node.yml");
    fs::write(
        &config,
        original.replace(
            from,
            &format!(r#"destinationNodes: ["127.0.0.12", "127.0.0.13", "{silent}"]"#),
        ),
    )
    .expect("a configuration copy");

    let started = Instant::now();
    // Mail cannot leave the namespace: --dont-notify keeps the test about the check.
    let out = sb
        .command("unshare")
        .args(["--net", "--", "sh", "-c"])
        .arg(r#"ip link set lo up && ip route add 192.0.2.0/24 dev lo && exec "$@""#)
        .arg("sh")
        .arg(PING_NODES)
        .args(["--allow-root", "--json", "--dont-notify", "-c"])
        .arg(&config)
        .output()
        .expect("unshare runs");
    let ping = Run::from(&out, started.elapsed());

    ping.assert_exit(3);
    let outcomes = ping.by_node();
    assert_eq!(outcomes.len(), 4, "{}", ping.describe());
    let failed = outcomes[silent];
    assert_unreachable(&ping, failed, silent);
    assert_eq!(services_of(failed), ["nova_production"]);
    for node in sb.info().nodes.keys() {
        assert!(outcomes[node]["failure"].is_null(), "{}", ping.describe());
    }
    assert!(
        ping.elapsed < Duration::from_secs(8),
        "the silent node held the run {:.1}s with -W 1",
        ping.elapsed.as_secs_f64()
    );
}

#[test]
fn probe_ssh_finds_a_stopped_sshd_that_ping_cannot_see() {
    let sb = sandbox();
    let stopped = "127.0.0.13";
    sb.stop(&format!("node:{stopped}"));

    // The address still answers ICMP: only the ssh probe sees the missing sshd.
    run(&sb, &["--dont-notify"]).assert_exit(0);
    let ping = run(&sb, &["--probe", "ssh"]);

    ping.assert_exit(3);
    let outcomes = ping.by_node();
    let failed = outcomes[stopped];
    assert_unreachable(&ping, failed, stopped);
    assert_eq!(services_of(failed), services_by_node(&sb)[stopped]);
    for node in ["127.0.0.11", "127.0.0.12"] {
        assert!(outcomes[node]["failure"].is_null(), "{}", ping.describe());
    }

    let mails = sb.mails();
    assert_eq!(
        mails.len(),
        1,
        "one admin message, no stakeholder one for a ping"
    );
    assert_eq!(mails[0].rcpt_to(), ["admins@sandbox.test"]);
    assert!(mails[0].body.contains(stopped), "{}", mails[0].body);
}

/// `outcome` failed as unreachable, and its message names `node`.
#[track_caller]
fn assert_unreachable(ping: &Run, outcome: &Value, node: &str) {
    assert_eq!(
        outcome["failure"]["class"],
        "unreachable",
        "{}",
        ping.describe()
    );
    let message = outcome["failure"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(node),
        "the failure names the node\n{}",
        ping.describe()
    );
}
