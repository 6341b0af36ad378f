//! Notifications through the binaries: the real SMTP server of the sandbox receives what
//! token-pusher (and ping-nodes) send about a failing node, to the admins and to the
//! experiment's stakeholders, at the configured cadence, after an SMTP outage, and never
//! with `--dont-notify`; and two binaries ending at the same moment share the state.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{
    PUSHER, config_copy, finish, new_mails, ping_nodes, recipients, refresh, run, sandbox,
    show_mails, sql,
};
use managed_tokens_test_support::{Mail, Sandbox};

const NODE: &str = "127.0.0.13";
const ADMINS: &str = "admins@sandbox.test";

fn nova_stakeholders() -> Vec<String> {
    vec![
        "nova-lead@sandbox.test".to_owned(),
        "nova-ops@sandbox.test".to_owned(),
    ]
}

fn to_admins(mails: &[Mail]) -> Vec<&Mail> {
    mails.iter().filter(|m| recipients(m) == [ADMINS]).collect()
}

fn to_nova(mails: &[Mail]) -> Vec<&Mail> {
    mails
        .iter()
        .filter(|m| recipients(m) == nova_stakeholders())
        .collect()
}

/// A sandbox where nova_production has its token and its node 127.0.0.13 is down.
fn nova_failing() -> Sandbox {
    let sb = sandbox();
    refresh(&sb, &["nova_production"]);
    sb.stop(&format!("node:{NODE}"));
    sb
}

#[test]
fn a_failing_node_is_mailed_to_the_admins_and_the_stakeholders() {
    let sb = nova_failing();

    let quiet = run(&sb, PUSHER, &["--dont-notify", "-s", "nova_production"]);
    quiet.assert_exit(3);
    assert!(
        sb.mails().is_empty(),
        "--dont-notify sent:\n{}",
        show_mails(&sb.mails())
    );

    let push = run(&sb, PUSHER, &["-s", "nova_production"]);
    push.assert_exit(3);
    let mails = sb.mails();
    assert_eq!(
        mails.len(),
        2,
        "one admin and one stakeholder message:\n{}",
        show_mails(&mails)
    );

    let admin = to_admins(&mails);
    assert_eq!(admin.len(), 1, "{}", show_mails(&mails));
    for needle in [NODE, "nova_production", "unreachable"] {
        assert!(
            admin[0].body.contains(needle),
            "the admin message names `{needle}`:\n{}",
            admin[0].body
        );
    }
    let stakeholders = to_nova(&mails);
    assert_eq!(stakeholders.len(), 1, "{}", show_mails(&mails));
    assert!(
        stakeholders[0].body.contains(NODE),
        "the stakeholder message names the node:\n{}",
        stakeholders[0].body
    );
}

#[test]
fn stakeholders_hear_every_third_failing_run_then_about_the_recovery() {
    let sb = nova_failing();
    let config = config_copy(
        &sb,
        "every3.yml",
        &[("errorCountToSendMessage: 1", "errorCountToSendMessage: 3")],
    );
    let config = config.to_str().expect("a UTF-8 path");
    let args = ["-c", config, "-s", "nova_production"];
    let mut seen = BTreeSet::new();

    for n in 1..=6 {
        run(&sb, PUSHER, &args).assert_exit(3);
        let mails = new_mails(&sb, &mut seen);
        assert_eq!(
            to_admins(&mails).len(),
            1,
            "run {n}: the admins hear about every failing run:\n{}",
            show_mails(&mails)
        );
        let expected = usize::from(n % 3 == 0);
        assert_eq!(
            to_nova(&mails).len(),
            expected,
            "run {n}: stakeholders are told at runs 3 and 6 only:\n{}",
            show_mails(&mails)
        );
        assert_eq!(
            mails.len(),
            1 + expected,
            "run {n}:\n{}",
            show_mails(&mails)
        );
    }

    sb.start_component(&format!("node:{NODE}"));
    run(&sb, PUSHER, &args).assert_exit(0);
    let mails = new_mails(&sb, &mut seen);
    assert_eq!(
        mails.len(),
        1,
        "only the recovery note:\n{}",
        show_mails(&mails)
    );
    assert_eq!(recipients(&mails[0]), nova_stakeholders());
    let subject = mails[0].subject().unwrap_or_default();
    assert!(subject.contains("work again"), "a recovery note: {subject}");

    // The success ended the streak: the next failure is the first of a new one.
    sb.stop(&format!("node:{NODE}"));
    run(&sb, PUSHER, &args).assert_exit(3);
    let mails = new_mails(&sb, &mut seen);
    assert_eq!(to_admins(&mails).len(), 1, "{}", show_mails(&mails));
    assert!(
        to_nova(&mails).is_empty(),
        "the count restarted at 1:\n{}",
        show_mails(&mails)
    );
}

#[test]
fn undelivered_mail_is_sent_exactly_once_by_the_next_run_of_any_binary() {
    let sb = nova_failing();
    sb.stop("smtp");

    run(&sb, PUSHER, &["-s", "nova_production"]).assert_exit(3);
    assert!(sb.mails().is_empty());
    let pending = sql(&sb, "SELECT count(*) FROM pending");
    assert_eq!(
        pending,
        ["2"],
        "the admin and stakeholder messages are kept"
    );

    sb.start_component("smtp");
    // Every node answers ping (the stopped sshd does not matter to ICMP), so this run has
    // nothing to say of its own: what arrives is what the pusher's run kept.
    let ping = run(&sb, ping_nodes(), &[]);
    ping.assert_exit(0);
    let mails = sb.mails();
    assert_eq!(mails.len(), 2, "{}", show_mails(&mails));
    let admin = to_admins(&mails);
    assert_eq!(admin.len(), 1, "{}", show_mails(&mails));
    assert!(
        admin[0]
            .subject()
            .unwrap_or_default()
            .contains("token-pusher"),
        "the pusher's admin message: {}",
        show_mails(&mails)
    );
    assert!(admin[0].body.contains(NODE));
    assert_eq!(to_nova(&mails).len(), 1, "{}", show_mails(&mails));
    assert_eq!(sql(&sb, "SELECT count(*) FROM pending"), ["0"]);

    run(&sb, ping_nodes(), &[]).assert_exit(0);
    assert_eq!(
        sb.mails().len(),
        2,
        "delivered once:\n{}",
        show_mails(&sb.mails())
    );
}

#[test]
fn two_binaries_writing_the_state_together_both_record_their_run() {
    let sb = sandbox();
    refresh(&sb, &["dune_analysis"]);
    // The first round also races to create the database.
    let db = sb.info().db.clone();
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(PathBuf::from(format!("{}{suffix}", db.display())));
    }

    // ping-nodes takes a few tens of milliseconds: started with token-pusher and run
    // again and again until the pusher ends, one of its runs opens, records and reads
    // the state while the pusher writes its own run.
    let mut pings_per_round = Vec::new();
    for round in 0..3 {
        let round_start = unix_now();
        let started = Instant::now();
        let mut pusher = sb
            .command(PUSHER)
            .args(["--allow-root", "--json", "-s", "dune_analysis"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("token-pusher starts");
        let mut pings = 0;
        loop {
            let ping = run(&sb, ping_nodes(), &[]);
            ping.assert_exit(0);
            assert_no_run_errors(&ping, round);
            pings += 1;
            if pusher.try_wait().expect("token-pusher's status").is_some() {
                break;
            }
        }
        let out = pusher.wait_with_output().expect("token-pusher ends");
        let push = finish("token-pusher".into(), &out, started.elapsed());
        push.assert_exit(0);
        assert_no_run_errors(&push, round);
        pings_per_round.push(pings);

        let pushed = sql(
            &sb,
            "SELECT at FROM outcomes WHERE stage = 'push' AND service = 'dune_analysis'",
        );
        let pinged = sql(&sb, "SELECT at FROM outcomes WHERE stage = 'ping'");
        assert_eq!(pushed.len(), 1, "round {round}");
        assert_eq!(pinged.len(), 3, "round {round}: one row per node");
        let rows: Vec<u64> = pushed
            .iter()
            .chain(&pinged)
            .map(|at| at.parse().expect("a unix time"))
            .collect();
        assert!(
            rows.iter().all(|&at| at >= round_start),
            "round {round}: a row of an earlier round was not replaced: {rows:?}"
        );
        // Rows carry the second their run started: the next round starts in a later one.
        let last = rows.into_iter().max().unwrap_or(round_start);
        while unix_now() <= last {
            thread::sleep(Duration::from_millis(50));
        }
    }
    println!("ping-nodes runs during each token-pusher run: {pings_per_round:?}");
}

#[track_caller]
fn assert_no_run_errors(run: &common::Run, round: usize) {
    assert_eq!(
        run.summary["run_errors"],
        serde_json::json!([]),
        "round {round}: {}",
        run.describe()
    );
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

#[test]
fn a_run_cut_by_the_global_timeout_still_records_and_alerts() {
    let sb = sandbox();
    refresh(&sb, &["nova_production"]);
    let config = config_copy(
        &sb,
        "deadline.yml",
        &[
            (
                "timeouts: {globalTimeout: 300s, kerberosTimeout: 20s, vaultStorerTimeout: 60s, pingTimeout: 10s, pushTimeout: 30s}",
                "timeouts: {globalTimeout: 4s, kerberosTimeout: 4s, vaultStorerTimeout: 4s, pingTimeout: 4s, pushTimeout: 4s, collectorTimeout: 4s, notificationTimeout: 10s}",
            ),
            (
                "numRetries: 1, retrySleep: 2s",
                "numRetries: 0, retrySleep: 0s",
            ),
        ],
    );
    let config = config.to_str().expect("a UTF-8 path");

    // A frozen sshd accepts the connection and never answers: the push outlives the run.
    let frozen = common::Frozen::new(&sb, common::sshd_pid(&sb, NODE));
    let push = run(&sb, PUSHER, &["-c", config, "-s", "nova_production"]);
    drop(frozen);

    push.assert_exit(3);
    assert!(
        push.elapsed < Duration::from_secs(12),
        "the run took {:.1}s with a 4s global timeout",
        push.elapsed.as_secs_f64()
    );
    let hung = push.node_outcome("nova_production", NODE);
    assert!(
        matches!(common::Run::class(hung), Some("cancelled" | "timeout")),
        "{}",
        push.describe()
    );
    let admin = to_admins(&sb.mails()).len();
    assert_eq!(
        admin,
        1,
        "the admins hear about the cut run:\n{}",
        show_mails(&sb.mails())
    );
    let recorded = sql(
        &sb,
        &format!(
            "SELECT ok FROM outcomes WHERE service = 'nova_production' AND stage = 'push' \
             AND target_name = '{NODE}'"
        ),
    );
    assert_eq!(recorded, ["0"], "the state records the failed push");
}

#[test]
fn disable_notifications_override_silences_one_service() {
    let sb = nova_failing();
    let silenced = config_copy(
        &sb,
        "silenced.yml",
        &[(
            "account: mtnova,",
            "account: mtnova, disableNotificationsOverride: true,",
        )],
    );
    let silenced = silenced.to_str().expect("a UTF-8 path");
    run(&sb, PUSHER, &["-c", silenced, "-s", "nova_production"]).assert_exit(3);
    assert!(
        sb.mails().is_empty(),
        "the override silences nova:\n{}",
        show_mails(&sb.mails())
    );

    // The role's override beats the global switch the other way round too.
    let only_nova = config_copy(
        &sb,
        "only-nova.yml",
        &[
            (
                "account: mtnova,",
                "account: mtnova, disableNotificationsOverride: false,",
            ),
            (
                "errorCountToSendMessage: 1",
                "errorCountToSendMessage: 1\ndisableNotifications: true",
            ),
        ],
    );
    let only_nova = only_nova.to_str().expect("a UTF-8 path");
    run(&sb, PUSHER, &["-c", only_nova, "-s", "nova_production"]).assert_exit(3);
    let mails = sb.mails();
    assert_eq!(to_admins(&mails).len(), 1, "{}", show_mails(&mails));
    assert_eq!(to_nova(&mails).len(), 1, "{}", show_mails(&mails));
}
