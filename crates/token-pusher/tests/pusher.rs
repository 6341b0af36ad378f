//! token-pusher end to end, against the real-services sandbox: tokens stored by the real
//! token-refresher are sent over Kerberos ssh to three real sshd nodes, and a stopped,
//! hung or tokenless part of the site fails alone.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::time::{Duration, SystemTime};

use common::{
    Frozen, PUSHER, Run, assert_pushed, config_copy, expected_names, names, refresh, run, sandbox,
    ssh_logins, sshd_pid, store_files,
};

const STOPPED: &str = "127.0.0.13";

#[test]
fn pushes_every_token_to_every_node_in_one_connection_each() {
    let sb = sandbox();
    refresh(&sb, &[]);
    let nodes: Vec<String> = sb.info().nodes.keys().cloned().collect();
    let before: BTreeMap<&str, usize> = nodes
        .iter()
        .map(|n| (n.as_str(), ssh_logins(&sb, n)))
        .collect();

    let started = SystemTime::now();
    let push = run(&sb, PUSHER, &[]);

    push.assert_exit(0);
    let mut expected_outcomes = 0;
    for (name, svc) in &sb.info().services {
        for node in &svc.nodes {
            let outcome = push.node_outcome(name, node);
            assert_eq!(outcome["stage"], "push", "{}", push.describe());
            assert!(outcome["failure"].is_null(), "{}", push.describe());
            assert_pushed(&sb, name, node, started);
            expected_outcomes += 1;
        }
    }
    assert_eq!(
        push.outcomes().len(),
        expected_outcomes,
        "{}",
        push.describe()
    );
    for node in &nodes {
        assert_eq!(
            names(&sb, node),
            expected_names(&sb, node),
            "exactly the pushed files are on {node}, no staging leftovers"
        );
    }

    // One rsync, so one ssh login, per (service, destination directory) per node; every
    // file of the sandbox's services goes to /tmp.
    let mut per_node = Vec::new();
    for node in &nodes {
        let logins = ssh_logins(&sb, node) - before[node.as_str()];
        let services = sb
            .info()
            .services
            .values()
            .filter(|s| s.nodes.contains(node))
            .count();
        assert_eq!(logins, services, "ssh logins on {node} in one push run");
        per_node.push(format!("{node}: {logins}"));
    }
    println!(
        "token-pusher: {} pushes in {:.2}s wall time (summary says {}s); ssh connections per \
         node in the run: {}",
        expected_outcomes,
        push.elapsed.as_secs_f64(),
        push.summary["duration"],
        per_node.join(", ")
    );
}

#[test]
fn a_stopped_node_fails_alone() {
    let sb = sandbox();
    refresh(&sb, &[]);
    sb.stop(&format!("node:{STOPPED}"));

    let started = SystemTime::now();
    let push = run(&sb, PUSHER, &[]);

    push.assert_exit(3);
    for (name, svc) in &sb.info().services {
        for node in &svc.nodes {
            let outcome = push.node_outcome(name, node);
            if node == STOPPED {
                assert_eq!(
                    Run::class(outcome),
                    Some("unreachable"),
                    "{}",
                    push.describe()
                );
                let failure = &outcome["failure"];
                let text = format!("{} {}", failure["message"], failure["detail"]);
                assert!(text.contains(STOPPED), "the failure names the node: {text}");
                // The sandbox retries once after 2 s, but not a node known to be down.
                let waited = outcome["duration"].as_f64().expect("a duration");
                assert!(waited < 2.0, "an unreachable node was retried ({waited}s)");
            } else {
                assert!(outcome["failure"].is_null(), "{}", push.describe());
                assert_pushed(&sb, name, node, started);
            }
        }
    }
    assert!(names(&sb, STOPPED).is_empty(), "nothing reached {STOPPED}");
    assert_eq!(
        push.failures().len(),
        2,
        "only nova_production and dune-2_production push to {STOPPED}: {}",
        push.describe()
    );
}

#[test]
fn a_hung_node_is_given_up_at_push_timeout() {
    let sb = sandbox();
    refresh(&sb, &["nova_production"]);
    let config = config_copy(
        &sb,
        "hang.yml",
        &[
            ("pushTimeout: 30s", "pushTimeout: 5s"),
            (
                "numRetries: 1, retrySleep: 2s",
                "numRetries: 0, retrySleep: 0s",
            ),
        ],
    );
    let config = config.to_str().expect("a UTF-8 path");

    // The stopped sshd's socket still accepts connections (the kernel completes them),
    // but nothing ever answers: ssh waits for the server's banner.
    let frozen = Frozen::new(&sb, sshd_pid(&sb, STOPPED));
    let push = run(&sb, PUSHER, &["-c", config, "-s", "nova_production"]);
    drop(frozen);

    push.assert_exit(3);
    let hung = push.node_outcome("nova_production", STOPPED);
    assert_eq!(Run::class(hung), Some("timeout"), "{}", push.describe());
    let waited = hung["duration"].as_f64().expect("a duration");
    assert!(
        (3.0..=7.0).contains(&waited),
        "given up after {waited}s, not at the 5s pushTimeout"
    );
    assert!(
        push.elapsed < Duration::from_secs(12),
        "the run took {:.1}s with a 5s pushTimeout (default is 30s)",
        push.elapsed.as_secs_f64()
    );
    assert!(push.node_outcome("nova_production", "127.0.0.12")["failure"].is_null());

    // Resumed, the node takes the token again.
    let again = run(&sb, PUSHER, &["-c", config, "-s", "nova_production"]);
    again.assert_exit(0);
    assert_pushed(
        &sb,
        "nova_production",
        STOPPED,
        SystemTime::now() - again.elapsed,
    );
}

#[test]
fn a_service_without_a_local_token_is_reported_and_the_others_are_pushed() {
    let sb = sandbox();
    refresh(&sb, &[]);
    let removed = store_files(&sb, "nova_production");
    assert!(
        !removed.is_empty(),
        "the refresher stored nova_production's token"
    );
    for file in &removed {
        fs::remove_file(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    }

    let started = SystemTime::now();
    let push = run(&sb, PUSHER, &[]);

    push.assert_exit(3);
    let failures = push.failures();
    assert_eq!(failures.len(), 1, "{}", push.describe());
    let failure = failures[0];
    assert_eq!(failure["service"], "nova_production");
    assert_eq!(failure["target"]["kind"], "service");
    assert_eq!(failure["stage"], "setup");
    assert_eq!(Run::class(failure), Some("no-token"), "{}", push.describe());
    for (name, svc) in &sb.info().services {
        if name == "nova_production" {
            continue;
        }
        for node in &svc.nodes {
            assert!(
                push.node_outcome(name, node)["failure"].is_null(),
                "{}",
                push.describe()
            );
            assert_pushed(&sb, name, node, started);
        }
    }
    let uid = sb.service("nova_production").uid;
    for node in &sb.service("nova_production").nodes {
        assert!(
            names(&sb, node)
                .iter()
                .all(|n| !n.ends_with(&format!("_{uid}")) && !n.starts_with(&format!("vt_u{uid}"))),
            "nothing of nova_production on {node}: {:?}",
            names(&sb, node)
        );
    }
}

#[test]
fn dry_runs_show_every_command_and_status_covers_every_service() {
    let sb = sandbox();
    let services = [
        "dune-2_production",
        "dune_analysis",
        "dune_production",
        "nova_production",
    ];

    // The pusher's plan: one rsync per (service, node, destination directory), nothing run.
    let plan = sb
        .command(PUSHER)
        .args(["--allow-root", "--dry-run"])
        .output()
        .expect("the pusher runs");
    assert_eq!(plan.status.code(), Some(0));
    let plan = String::from_utf8_lossy(&plan.stdout);
    for service in services {
        let info = sb.service(service);
        for node in &info.nodes {
            let rsync = plan
                .lines()
                .filter(|l| {
                    l.contains(" rsync ") && l.contains(&format!("{}@{node}:/tmp/", info.account))
                })
                .filter(|l| l.contains(&format!("vt_u<uid>-{}", info.real)))
                .count();
            assert_eq!(rsync, 1, "{service} to {node}:\n{plan}");
        }
    }
    for node in sb.info().nodes.keys() {
        assert!(names(&sb, node).is_empty(), "a dry run wrote to {node}");
    }

    // ping-nodes plans one ping per distinct node.
    let ping = sb
        .command(common::ping_nodes())
        .args(["--allow-root", "--dry-run"])
        .output()
        .expect("ping-nodes runs");
    let ping = String::from_utf8_lossy(&ping.stdout);
    for node in sb.info().nodes.keys() {
        let pings = ping
            .lines()
            .filter(|l| l.starts_with("ping ") && l.contains(&format!(" {node} ")))
            .count();
        assert_eq!(pings, 1, "{node}:\n{ping}");
    }

    // After real runs, the run summary and `status --json` cover every service.
    refresh(&sb, &[]);
    let push = run(&sb, PUSHER, &[]);
    push.assert_exit(0);
    let covered: BTreeMap<&str, usize> = push.summary["services"]
        .as_array()
        .expect("a list of services")
        .iter()
        .map(|s| (s.as_str().expect("a name"), 0))
        .collect();
    assert_eq!(covered.keys().copied().collect::<Vec<_>>(), services);
    assert_eq!(push.summary["schema"], 1);
    assert_eq!(push.summary["totals"]["failed"], 0);

    let status = sb
        .command(PUSHER)
        .args(["--allow-root", "status", "--json"])
        .output()
        .expect("status runs");
    assert_eq!(
        status.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let status: serde_json::Value =
        serde_json::from_slice(&status.stdout).expect("status --json is JSON");
    assert_eq!(status["schema"], 1);
    let listed: Vec<&str> = status["services"]
        .as_array()
        .expect("services")
        .iter()
        .map(|s| s["service"].as_str().expect("a name"))
        .collect();
    assert_eq!(listed, services, "{status:#}");
    for s in status["services"].as_array().expect("services") {
        assert!(!s["last_push"].is_null(), "a push was recorded: {s}");
        assert!(!s["last_refresh"].is_null(), "a refresh was recorded: {s}");
    }
}

#[test]
fn uids_come_from_ferry_where_configured_and_are_cached() {
    let sb = sandbox();
    refresh(&sb, &["nova_production"]);
    let ferry = managed_tokens_test_support::ferry::FerryStandIn::start(&[("mtnova", 5555)]);
    let section = format!(
        "ferry: {{host: '{}', caPath: '{}', hostCert: '{}', hostKey: '{}'}}\n",
        ferry.url,
        ferry.ca_path().display(),
        ferry.cert().display(),
        ferry.key().display()
    );
    let config = config_copy(
        &sb,
        "ferry.yml",
        &[(
            "errorCountToSendMessage: 1",
            &format!("errorCountToSendMessage: 1\n{section}"),
        )],
    );
    let config = config.to_str().expect("a UTF-8 path");

    let push = run(&sb, PUSHER, &["-c", config, "-s", "nova_production"]);
    push.assert_exit(0);
    for node in &sb.service("nova_production").nodes {
        let files = names(&sb, node);
        assert!(
            files.contains("vt_u5555") && files.contains("vt_u5555-nova_production"),
            "{node}: {files:?}"
        );
    }
    assert_eq!(ferry.requests(), ["mtnova"]);

    // The answer is cached: FERRY is not asked again, even when it is gone.
    let url = ferry.url.clone();
    drop(ferry);
    let again = run(&sb, PUSHER, &["-c", config, "-s", "nova_production"]);
    again.assert_exit(0);
    assert!(
        !again.stderr.contains(&url),
        "FERRY was asked again: {}",
        again.stderr
    );
    let passwd_uid = sb.service("nova_production").uid;
    for node in &sb.service("nova_production").nodes {
        let files = names(&sb, node);
        assert!(
            !files.contains(&format!("vt_u{passwd_uid}")),
            "{node} got the passwd UID: {files:?}"
        );
    }

    // A day later FERRY is asked again, and its new answer wins.
    let renumbered = managed_tokens_test_support::ferry::FerryStandIn::start(&[("mtnova", 6666)]);
    let section = format!(
        "ferry: {{host: '{}', caPath: '{}', hostCert: '{}', hostKey: '{}'}}\n",
        renumbered.url,
        renumbered.ca_path().display(),
        renumbered.cert().display(),
        renumbered.key().display()
    );
    let edit = format!("errorCountToSendMessage: 1\n{section}");
    let config = config_copy(&sb, "ferry2.yml", &[("errorCountToSendMessage: 1", &edit)]);
    let config = config.to_str().expect("a UTF-8 path");
    common::sql(
        &sb,
        "UPDATE uid_refreshed SET refreshed = 0 WHERE username = 'mtnova'",
    );
    run(&sb, PUSHER, &["-c", config, "-s", "nova_production"]).assert_exit(0);
    assert_eq!(renumbered.requests(), ["mtnova"]);
    for node in &sb.service("nova_production").nodes {
        assert!(
            names(&sb, node).contains("vt_u6666-nova_production"),
            "{node}"
        );
    }

    // A stale UID whose FERRY is down is still used, with a warning.
    drop(renumbered);
    common::sql(
        &sb,
        "UPDATE uid_refreshed SET refreshed = 0 WHERE username = 'mtnova'",
    );
    let stale = run(&sb, PUSHER, &["-c", config, "-s", "nova_production"]);
    stale.assert_exit(0);
    assert!(
        stale.stderr.contains("FERRY"),
        "the failed refresh is reported: {}",
        stale.stderr
    );
    for node in &sb.service("nova_production").nodes {
        assert!(
            names(&sb, node).contains("vt_u6666"),
            "{node} keeps the cached UID"
        );
    }
}

#[test]
fn tokens_are_0400_whatever_the_rsync_options_say() {
    let sb = sandbox();
    refresh(&sb, &["nova_production"]);
    let config = config_copy(
        &sb,
        "chmod.yml",
        &[(
            "errorCountToSendMessage: 1",
            "errorCountToSendMessage: 1\nfileCopierOptions: \"--chmod=ugo+rw --no-perms\"",
        )],
    );
    let config = config.to_str().expect("a UTF-8 path");
    let started = SystemTime::now();
    run(&sb, PUSHER, &["-c", config, "-s", "nova_production"]).assert_exit(0);
    for node in &sb.service("nova_production").nodes {
        assert_pushed(&sb, "nova_production", node, started);
    }
}
