use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant, SystemTime};

use rusqlite::Connection;

use super::*;
use crate::report::{Failure, FailureClass, Outcome, RunReport, Stage, Target};

const WAIT: Duration = Duration::from_secs(10);

fn open(dir: &tempfile::TempDir) -> State {
    State::open(&dir.path().join("state.db"), WAIT).unwrap()
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
}

fn report(binary: Binary, started: SystemTime, outcomes: Vec<Outcome>) -> RunReport {
    let mut report = RunReport::new(binary, false, vec!["dune_production".into()]);
    report.started = started;
    report.outcomes = outcomes;
    report
}

fn push(node: &str, class: Option<FailureClass>) -> Outcome {
    let target = Target::Node(node.into());
    match class {
        None => Outcome::ok("dune_production", target, Stage::Push, Duration::ZERO),
        Some(class) => Outcome::failed(
            "dune_production",
            target,
            Stage::Push,
            Duration::ZERO,
            Failure::new(class, "rsync failed"),
        ),
    }
}

fn store(credd: &str, class: Option<FailureClass>) -> Outcome {
    let target = Target::Credd(credd.into());
    match class {
        None => Outcome::ok("dune_production", target, Stage::Store, Duration::ZERO),
        Some(class) => Outcome::failed(
            "dune_production",
            target,
            Stage::Store,
            Duration::ZERO,
            Failure::new(class, "condor_vault_storer failed"),
        ),
    }
}

fn push_key(node: &str) -> StreakKey {
    StreakKey::Push {
        service: "dune_production".into(),
        node: node.into(),
    }
}

fn auth_key() -> StreakKey {
    StreakKey::Authentication {
        service: "dune_production".into(),
    }
}

#[test]
fn creates_private_file_and_directory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/state.db");
    let state = State::open(&path, WAIT).unwrap();
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(&dir.path().join("a")), 0o700);
    assert_eq!(mode(&dir.path().join("a/b")), 0o700);
    let id: i32 = state
        .conn
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .unwrap();
    let version: i32 = state
        .conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    let journal: String = state
        .conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(
        (id, version, journal.as_str()),
        (0x5da8_2553, schema::VERSION, "wal")
    );
    drop(state);
    // Reopening an up-to-date database changes nothing.
    State::open(&path, WAIT).unwrap();
}

#[test]
fn counts_once_per_run_per_target() {
    let dir = tempfile::tempdir().unwrap();
    let mut state = open(&dir);
    let failing = || {
        vec![
            push("n1", Some(FailureClass::Unreachable)),
            push("n1", Some(FailureClass::RsyncFailed)),
            push("n2", None),
            store("c1", Some(FailureClass::Timeout)),
            store("c2", Some(FailureClass::StorerFailed)),
        ]
    };
    let first = state
        .record_run(&report(Binary::TokenPusher, at(0), failing()))
        .unwrap();
    let n1 = first.change(&push_key("n1")).unwrap();
    assert_eq!((n1.failed, n1.count, n1.previous_count), (true, 1, 0));
    assert_eq!(n1.since, Some(at(0)));
    assert_eq!(first.change(&push_key("n2")).unwrap().count, 0);
    let service = StreakKey::Service {
        service: "dune_production".into(),
        binary: Binary::TokenPusher,
    };
    assert_eq!(first.change(&service).unwrap().count, 1);

    let second = state
        .record_run(&report(Binary::TokenPusher, at(3600), failing()))
        .unwrap();
    let n1 = second.change(&push_key("n1")).unwrap();
    assert_eq!((n1.count, n1.previous_count, n1.since), (2, 1, Some(at(0))));
    assert_eq!(second.change(&service).unwrap().count, 2);
    // Timeouts and storer failures say nothing about Vault's login.
    assert_eq!(second.change(&auth_key()), None);
}

#[test]
fn success_resets_and_reports_recovery_of_notified_streaks() {
    let dir = tempfile::tempdir().unwrap();
    let mut state = open(&dir);
    let fail = vec![
        push("n1", Some(FailureClass::Unreachable)),
        push("n2", Some(FailureClass::Unreachable)),
    ];
    state
        .record_run(&report(Binary::TokenPusher, at(0), fail.clone()))
        .unwrap();
    state
        .record_run(&report(Binary::TokenPusher, at(10), fail))
        .unwrap();
    state.mark_notified(&[push_key("n1")]).unwrap();

    let ok = vec![push("n1", None), push("n2", None)];
    let run = state
        .record_run(&report(Binary::TokenPusher, at(20), ok))
        .unwrap();
    let n1 = run.change(&push_key("n1")).unwrap();
    assert_eq!((n1.failed, n1.count, n1.previous_count), (false, 0, 2));
    assert_eq!(n1.since, Some(at(0)));
    assert!(n1.previously_notified && n1.recovered());
    // Never told about, so no recovery note either.
    assert!(!run.change(&push_key("n2")).unwrap().recovered());

    // A new streak starts from scratch, not notified.
    let run = state
        .record_run(&report(
            Binary::TokenPusher,
            at(30),
            vec![push("n1", Some(FailureClass::Timeout))],
        ))
        .unwrap();
    let n1 = run.change(&push_key("n1")).unwrap();
    assert_eq!(
        (n1.count, n1.since, n1.previously_notified),
        (1, Some(at(30)), false)
    );
}

#[test]
fn notified_flag_survives_the_streak() {
    let dir = tempfile::tempdir().unwrap();
    let mut state = open(&dir);
    let fail = || vec![push("n1", Some(FailureClass::Unreachable))];
    state
        .record_run(&report(Binary::TokenPusher, at(0), fail()))
        .unwrap();
    state.mark_notified(&[push_key("n1")]).unwrap();
    let run = state
        .record_run(&report(Binary::TokenPusher, at(10), fail()))
        .unwrap();
    assert!(run.change(&push_key("n1")).unwrap().previously_notified);
}

#[test]
fn authentication_streak_ends_only_with_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let mut state = open(&dir);
    let auth = |t| {
        report(
            Binary::TokenRefresher,
            at(t),
            vec![
                store("c1", Some(FailureClass::AuthenticationNeeded)),
                store("c2", Some(FailureClass::AuthenticationNeeded)),
            ],
        )
    };
    let run = state.record_run(&auth(0)).unwrap();
    assert_eq!(run.change(&auth_key()).unwrap().count, 1);
    // A timeout in between neither counts nor resets.
    let run = state
        .record_run(&report(
            Binary::TokenRefresher,
            at(10),
            vec![store("c1", Some(FailureClass::Timeout))],
        ))
        .unwrap();
    assert_eq!(run.change(&auth_key()), None);
    let run = state.record_run(&auth(20)).unwrap();
    assert_eq!(run.change(&auth_key()).unwrap().count, 2);
    // A pusher run does not touch it, nor the refresher's service streak.
    let run = state
        .record_run(&report(Binary::TokenPusher, at(30), vec![push("n1", None)]))
        .unwrap();
    assert_eq!(run.changes.len(), 1);
    let run = state
        .record_run(&report(
            Binary::TokenRefresher,
            at(40),
            vec![store("c1", None), store("c2", None)],
        ))
        .unwrap();
    let change = run.change(&auth_key()).unwrap();
    assert_eq!((change.count, change.previous_count), (0, 2));
}

#[test]
fn streak_key_of_a_failure() {
    let auth = store("c1", Some(FailureClass::AuthenticationNeeded));
    assert_eq!(
        StreakKey::of_failure(&auth, Binary::TokenRefresher),
        auth_key()
    );
    let push = push("n1", Some(FailureClass::Unreachable));
    assert_eq!(
        StreakKey::of_failure(&push, Binary::TokenPusher),
        push_key("n1")
    );
    let mut ping = Outcome::failed(
        "",
        Target::Node("n1".into()),
        Stage::Ping,
        Duration::ZERO,
        Failure::new(FailureClass::Unreachable, "no reply"),
    );
    ping.service = None;
    assert_eq!(
        StreakKey::of_failure(&ping, Binary::PingNodes),
        StreakKey::Ping { node: "n1".into() }
    );
}

#[test]
fn without_history_every_failure_is_a_first() {
    let r = report(
        Binary::TokenPusher,
        at(0),
        vec![
            push("n1", Some(FailureClass::Unreachable)),
            push("n2", None),
        ],
    );
    let run = RecordedRun::without_history(&r);
    assert_eq!(run.change(&push_key("n1")).unwrap().count, 1);
    assert_eq!(run.change(&push_key("n2")).unwrap().count, 0);
}

/// A database as the Go service leaves it: schema version 1, its tables and rows.
fn go_database(path: &Path) {
    let conn = Connection::open(path).unwrap();
    conn.pragma_update(None, "application_id", 0x5da8_2553)
        .unwrap();
    conn.execute_batch(schema::GO_SCHEMA).unwrap();
    conn.execute_batch(
        "INSERT INTO uids VALUES ('dunepro', 5001), ('duneana', 5002);
         INSERT INTO services (name) VALUES ('dune_production');
         INSERT INTO nodes (name) VALUES ('n1'), ('n2');
         INSERT INTO setup_errors VALUES (1, 2);
         INSERT INTO push_errors VALUES (1, 1, 2), (1, 2, 0);",
    )
    .unwrap();
    conn.pragma_update(None, "user_version", 1).unwrap();
}

#[test]
fn migrates_the_go_database_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("managed-tokens.db");
    go_database(&path);

    let mut state = State::open(&path, WAIT).unwrap();
    let version: i32 = state
        .conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, schema::VERSION);
    assert_eq!(state.cached_uid("dunepro").unwrap(), Some(5001));
    assert_eq!(state.cached_uid("nobody").unwrap(), None);

    // The Go count carries over as a streak of unknown start.
    let run = state
        .record_run(&report(
            Binary::TokenPusher,
            at(0),
            vec![
                push("n1", Some(FailureClass::Unreachable)),
                push("n2", Some(FailureClass::Unreachable)),
            ],
        ))
        .unwrap();
    let n1 = run.change(&push_key("n1")).unwrap();
    assert_eq!((n1.count, n1.previous_count, n1.since), (3, 2, None));
    assert_eq!(run.change(&push_key("n2")).unwrap().count, 1);

    // The Go tables stay, for a rollback.
    let go_rows: i64 = state
        .conn
        .query_row("SELECT count(*) FROM push_errors", [], |r| r.get(0))
        .unwrap();
    assert_eq!(go_rows, 2);
}

#[test]
fn refuses_foreign_newer_and_broken_files() {
    let dir = tempfile::tempdir().unwrap();

    let foreign = dir.path().join("foreign.db");
    Connection::open(&foreign)
        .unwrap()
        .execute_batch("CREATE TABLE t (x)")
        .unwrap();
    let err = format!("{:#}", State::open(&foreign, WAIT).unwrap_err());
    assert!(
        err.contains("foreign.db") && err.contains("another application"),
        "{err}"
    );

    let other = dir.path().join("other.db");
    let conn = Connection::open(&other).unwrap();
    conn.pragma_update(None, "application_id", 42).unwrap();
    conn.execute_batch("CREATE TABLE t (x)").unwrap();
    drop(conn);
    let err = format!("{:#}", State::open(&other, WAIT).unwrap_err());
    assert!(err.contains("application_id 0x2a"), "{err}");

    let newer = dir.path().join("newer.db");
    let conn = Connection::open(&newer).unwrap();
    conn.pragma_update(None, "application_id", 0x5da8_2553)
        .unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let err = format!("{:#}", State::open(&newer, WAIT).unwrap_err());
    assert!(
        err.contains("newer.db") && err.contains("schema version 99"),
        "{err}"
    );

    let text = dir.path().join("text.db");
    fs::write(
        &text,
        "dbLocation is not a database, it is a text file\n".repeat(100),
    )
    .unwrap();
    let err = format!("{:#}", State::open(&text, WAIT).unwrap_err());
    assert!(
        err.contains("text.db") && err.contains("not a SQLite database"),
        "{err}"
    );
    // Nothing was written into it.
    assert!(
        fs::read_to_string(&text)
            .unwrap()
            .starts_with("dbLocation is not")
    );
}

#[test]
fn a_locked_database_waits_then_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    drop(State::open(&path, WAIT).unwrap());

    let holder = Connection::open(&path).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    let mut state = State::open(&path, Duration::from_millis(300)).unwrap();
    let started = Instant::now();
    let err = state
        .record_run(&report(Binary::TokenPusher, at(0), vec![push("n1", None)]))
        .unwrap_err();
    assert!(started.elapsed() >= Duration::from_millis(300));
    let err = format!("{err:#}");
    assert!(err.contains("state.db") && err.contains("locked"), "{err}");

    holder.execute_batch("COMMIT").unwrap();
    state
        .record_run(&report(Binary::TokenPusher, at(0), vec![push("n1", None)]))
        .unwrap();
}

#[test]
fn two_handles_record_at_the_same_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let runs = 25;
    let threads: Vec<_> = [Binary::TokenPusher, Binary::TokenRefresher]
        .into_iter()
        .map(|binary| {
            let path = path.clone();
            std::thread::spawn(move || {
                // Both also race to create and migrate the new file.
                let mut state = State::open(&path, WAIT).unwrap();
                for i in 0..runs {
                    let outcome = match binary {
                        Binary::TokenPusher => push("n1", Some(FailureClass::Unreachable)),
                        _ => store("c1", Some(FailureClass::AuthenticationNeeded)),
                    };
                    state
                        .record_run(&report(binary, at(i), vec![outcome]))
                        .unwrap();
                    state.store_uid("dunepro", 5001).unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let mut state = State::open(&path, WAIT).unwrap();
    let run = state
        .record_run(&report(
            Binary::TokenPusher,
            at(100),
            vec![push("n1", Some(FailureClass::Unreachable))],
        ))
        .unwrap();
    assert_eq!(run.change(&push_key("n1")).unwrap().count, runs as u32 + 1);
}

#[test]
fn uids_are_cached_and_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let mut state = open(&dir);
    state.store_uid("dunepro", 5001).unwrap();
    state.store_uid("dunepro", 5003).unwrap();
    assert_eq!(state.cached_uid("dunepro").unwrap(), Some(5003));
    // The Go schema keeps UIDs unique: a renamed account takes the UID over.
    state.store_uid("dunepro2", 5003).unwrap();
    assert_eq!(state.cached_uid("dunepro").unwrap(), None);
    assert_eq!(state.cached_uid("dunepro2").unwrap(), Some(5003));
    let age = state
        .uid_refreshed("dunepro2")
        .unwrap()
        .unwrap()
        .elapsed()
        .unwrap();
    assert!(age < Duration::from_secs(60), "cached just now: {age:?}");
    assert_eq!(state.uid_refreshed("nobody").unwrap(), None);
}

fn mail(subject: &str) -> Notification {
    Notification {
        channel: Channel::Email,
        recipients: vec!["a@example.com".into()],
        subject: subject.into(),
        body: "body".into(),
    }
}

#[test]
fn pending_notifications_are_claimed_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = open(&dir);
    let mut b = open(&dir);
    let now = SystemTime::now();
    a.keep_notification(&mail("one"), "relay down", now)
        .unwrap();
    a.keep_notification(&mail("two"), "relay down", now)
        .unwrap();
    assert_eq!(b.pending_count().unwrap(), 2);

    let claimed = a.claim_pending(now).unwrap();
    assert_eq!(claimed.notifications.len(), 2);
    assert_eq!(claimed.notifications[0].notification, mail("one"));
    assert_eq!(claimed.notifications[0].attempts, 1);
    assert!(b.claim_pending(now).unwrap().notifications.is_empty());

    a.finish_pending(claimed.notifications[0].id).unwrap();
    a.release_pending(claimed.notifications[1].id, Some("still down"))
        .unwrap();
    let claimed = b.claim_pending(now).unwrap();
    assert_eq!(claimed.notifications.len(), 1);
    assert_eq!(claimed.notifications[0].attempts, 2);
    // Another process cannot finish a row it does not hold.
    a.finish_pending(claimed.notifications[0].id).unwrap();
    assert_eq!(a.pending_count().unwrap(), 1);

    // A claim held by a run that died is taken over after an hour.
    let later = now + Duration::from_secs(2 * 3600);
    assert_eq!(a.claim_pending(later).unwrap().notifications.len(), 1);
}

#[test]
fn old_pending_notifications_expire() {
    let dir = tempfile::tempdir().unwrap();
    let mut state = open(&dir);
    let old = SystemTime::now() - MAX_AGE - Duration::from_secs(60);
    state
        .keep_notification(&mail("old"), "relay down", old)
        .unwrap();
    state
        .keep_notification(&mail("new"), "relay down", SystemTime::now())
        .unwrap();
    let claimed = state.claim_pending(SystemTime::now()).unwrap();
    assert_eq!(claimed.expired, 1);
    assert_eq!(claimed.notifications.len(), 1);
}

#[test]
fn status_reports_last_successes_and_failing_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let mut state = open(&dir);
    state
        .record_run(&report(
            Binary::TokenRefresher,
            at(0),
            vec![store("c1", None), store("c2", None)],
        ))
        .unwrap();
    state
        .record_run(&report(
            Binary::TokenRefresher,
            at(100),
            vec![store("c1", None), store("c2", Some(FailureClass::Timeout))],
        ))
        .unwrap();
    state
        .record_run(&report(
            Binary::TokenPusher,
            at(200),
            vec![push("n1", None), push("n2", None)],
        ))
        .unwrap();
    for t in [300, 400] {
        state
            .record_run(&report(
                Binary::TokenPusher,
                at(t),
                vec![
                    push("n1", None),
                    push("n2", Some(FailureClass::Unreachable)),
                ],
            ))
            .unwrap();
    }
    state
        .keep_notification(&mail("x"), "down", SystemTime::now())
        .unwrap();

    let status = state.status(&["dune_production".into()], at(1000)).unwrap();
    assert_eq!(status.pending_notifications, 1);
    let service = &status.services[0];
    assert_eq!(service.last_refresh, Some(at(0)));
    assert_eq!(service.last_push, Some(at(200)));
    assert_eq!(service.token_age, Some(Duration::from_secs(900)));
    assert_eq!(service.consecutive_failures, 1);
    assert_eq!(service.credds.len(), 2);
    let n2 = status.nodes.iter().find(|n| n.node == "n2").unwrap();
    assert_eq!((n2.ok, n2.consecutive_failures), (false, 2));
    assert_eq!(
        (n2.last_success, n2.failing_since),
        (Some(at(200)), Some(at(300)))
    );
    assert_eq!(n2.class.as_deref(), Some("unreachable"));

    let json = serde_json::to_value(&status).unwrap();
    assert_eq!(json["services"][0]["token_age_seconds"], 900);
    assert_eq!(json["nodes"][1]["failing_since"], "2027-01-15T08:05:00Z");
}
