//! Notifications end to end: a real SMTP server (aiosmtpd writing a Maildir), a local
//! HTTP listener standing in for Slack, and a real state database.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use managed_tokens_core::config::Config;
use managed_tokens_core::notify::{self, NotifyOptions};
use managed_tokens_core::report::{
    Binary, Failure, FailureClass, Outcome, RunReport, Stage, Target,
};
use managed_tokens_core::state::State;

const ON: NotifyOptions = NotifyOptions {
    enabled: true,
    test: false,
};

/// aiosmtpd with its `Mailbox` handler, which records envelope recipients in `X-RcptTo`.
struct Smtp {
    port: u16,
    maildir: PathBuf,
    child: Option<Child>,
}

impl Smtp {
    fn start(dir: &Path) -> Self {
        let mut smtp = Self {
            port: free_port(),
            maildir: dir.join("maildir"),
            child: None,
        };
        smtp.restart();
        smtp
    }

    #[expect(
        clippy::disallowed_methods,
        reason = "the test's own SMTP server, not a managed child"
    )]
    fn restart(&mut self) {
        let child = std::process::Command::new("/usr/bin/python3")
            .args([
                "-m",
                "aiosmtpd",
                "-n",
                "-l",
                &format!("127.0.0.1:{}", self.port),
            ])
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&self.maildir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3-aiosmtpd is installed (apt-get install python3-aiosmtpd)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "aiosmtpd did not start on port {}",
                self.port
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Every message received so far, oldest first.
    fn mails(&self) -> Vec<Mail> {
        let Ok(entries) = fs::read_dir(self.maildir.join("new")) else {
            return Vec::new();
        };
        let mut mails: Vec<(SystemTime, Mail)> = entries
            .map(|e| e.unwrap().path())
            .map(|p| {
                (
                    fs::metadata(&p).unwrap().modified().unwrap(),
                    Mail::parse(&fs::read_to_string(&p).unwrap()),
                )
            })
            .collect();
        mails.sort_by_key(|(t, _)| *t);
        mails.into_iter().map(|(_, m)| m).collect()
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        self.stop();
    }
}

#[derive(Debug, Clone)]
struct Mail {
    subject: String,
    rcpt_to: Vec<String>,
    body: String,
}

impl Mail {
    fn parse(text: &str) -> Self {
        let text = text.replace("\r\n", "\n");
        let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
        let head = head.replace("\n ", " ").replace("\n\t", " ");
        let header = |name: &str| {
            head.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}: ")))
                .unwrap_or_default()
                .to_string()
        };
        Self {
            subject: header("Subject"),
            rcpt_to: header("X-RcptTo").split(", ").map(String::from).collect(),
            body: body.to_string(),
        }
    }

    fn to_stakeholders(&self) -> bool {
        self.rcpt_to.iter().any(|r| r.starts_with("dune"))
    }
}

/// A one-route HTTP server recording the JSON bodies posted to it.
struct Slack {
    url: String,
    posts: Arc<Mutex<Vec<serde_json::Value>>>,
    status: Arc<Mutex<u16>>,
}

impl Slack {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!(
            "http://127.0.0.1:{}/services/T000/B000/secret",
            listener.local_addr().unwrap().port()
        );
        let posts = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(Mutex::new(200));
        let (p, s) = (Arc::clone(&posts), Arc::clone(&status));
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let _ = answer(stream, &p, *s.lock().unwrap());
            }
        });
        Self { url, posts, status }
    }

    fn texts(&self) -> Vec<String> {
        self.posts
            .lock()
            .unwrap()
            .iter()
            .map(|p| p["text"].as_str().unwrap().to_string())
            .collect()
    }
}

fn answer(
    stream: TcpStream,
    posts: &Mutex<Vec<serde_json::Value>>,
    status: u16,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut length = 0;
    let mut line = String::new();
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let lower = line.to_ascii_lowercase();
        if let Some(value) = lower.strip_prefix("content-length:") {
            length = value.trim().parse().unwrap_or(0);
        }
        if line == "\r\n" || line.is_empty() {
            break;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    if status == 200 {
        posts
            .lock()
            .unwrap()
            .push(serde_json::from_slice(&body).expect("the body is strict JSON"));
    }
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
    )
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Setup<'a> {
    dir: &'a Path,
    smtp_port: u16,
    every: u32,
    slack: Option<&'a str>,
    notification_timeout: &'a str,
}

fn config(s: &Setup<'_>) -> Config {
    let slack = s
        .slack
        .map(|u| format!("  SLACK_ALERTS_URL: \"{u}\"\n"))
        .unwrap_or_default();
    let yaml = format!(
        r#"
keytabPath: /k
kerberosPrincipalPattern: "{{{{.Account}}}}@EXAMPLE.COM"
condorCollectorHost: collector.example.com
dbLocation: {db}
errorCountToSendMessage: {every}
timeouts: {{notificationTimeout: {timeout}}}
email: {{from: managed-tokens@example.com, smtpHost: 127.0.0.1, smtpPort: {port}}}
notifications:
  admin_email: [admin@example.com]
{slack}notifications_test:
  admin_email: [tester@example.com]
{test_slack}experiments:
  dune:
    emails: [dune-ops@example.com, dune-boss@example.com]
    roles:
      production: {{account: dunepro, destinationNodes: [n1.example.com, n2.example.com]}}
  nova:
    roles:
      production: {{account: novapro, destinationNodes: [n3.example.com]}}
"#,
        db = s.dir.join("state/managed-tokens.db").display(),
        every = s.every,
        timeout = s.notification_timeout,
        port = s.smtp_port,
        test_slack = slack,
    );
    Config::from_str(&yaml, false, &s.dir.join("managedTokens.yml")).unwrap()
}

fn setup(dir: &Path, smtp: &Smtp, every: u32) -> Config {
    config(&Setup {
        dir,
        smtp_port: smtp.port,
        every,
        slack: None,
        notification_timeout: "20s",
    })
}

/// A configuration with a Slack webhook, stakeholders told every third failing run.
fn with_slack(dir: &Path, smtp: &Smtp, slack: &Slack) -> Config {
    config(&Setup {
        dir,
        smtp_port: smtp.port,
        every: 3,
        slack: Some(&slack.url),
        notification_timeout: "20s",
    })
}

fn open_state(config: &Config) -> State {
    State::open(&config.db_location, config.timeouts.db).unwrap()
}

/// A token-pusher run over both services in which the nodes in `failing` fail.
fn push_run(failing: &[&str]) -> RunReport {
    let mut report = RunReport::new(
        Binary::TokenPusher,
        false,
        vec!["dune_production".into(), "nova_production".into()],
    );
    for (service, node) in [
        ("dune_production", "n1.example.com"),
        ("dune_production", "n2.example.com"),
        ("nova_production", "n3.example.com"),
    ] {
        let target = Target::Node(node.into());
        report.outcomes.push(if failing.contains(&node) {
            let mut failure = Failure::new(
                FailureClass::Unreachable,
                format!("failed to push to `{node}`"),
            );
            failure.detail = Some(format!(
                "ssh: connect to host {node} port 22: No route to host"
            ));
            Outcome::failed(
                service,
                target,
                Stage::Push,
                Duration::from_millis(5),
                failure,
            )
        } else {
            Outcome::ok(service, target, Stage::Push, Duration::from_millis(5))
        });
    }
    report
}

fn finish(config: &Config, report: &mut RunReport, state: &mut State) {
    notify::finish_run(config, report, Some(state), &ON);
}

#[test]
fn admin_mail_names_the_failing_node() {
    let dir = tempfile::tempdir().unwrap();
    let smtp = Smtp::start(dir.path());
    let config = setup(dir.path(), &smtp, 3);
    let mut state = open_state(&config);

    let mut report = push_run(&["n1.example.com"]);
    finish(&config, &mut report, &mut state);

    assert!(report.run_errors.is_empty(), "{:?}", report.run_errors);
    let mails = smtp.mails();
    assert_eq!(mails.len(), 1, "{mails:#?}");
    let admin = &mails[0];
    assert_eq!(admin.rcpt_to, ["admin@example.com"]);
    assert_eq!(
        admin.subject,
        "[managed-tokens production] token-pusher: 1 failure in 1 of 2 services"
    );
    assert!(
        admin
            .body
            .contains("node `n1.example.com` (push): unreachable"),
        "{}",
        admin.body
    );
    assert!(
        admin
            .body
            .contains("stderr: ssh: connect to host n1.example.com port 22: No route to host")
    );
    assert!(
        admin
            .body
            .contains("what to do: check the node: `ssh dunepro@n1.example.com`")
    );
    assert!(!admin.body.contains("n2.example.com"));

    // A clean run sends nothing.
    finish(&config, &mut push_run(&[]), &mut state);
    assert_eq!(smtp.mails().len(), 1);
}

#[test]
fn stakeholders_get_mail_at_threshold_one() {
    let dir = tempfile::tempdir().unwrap();
    let smtp = Smtp::start(dir.path());
    let config = setup(dir.path(), &smtp, 1);
    let mut state = open_state(&config);

    finish(
        &config,
        &mut push_run(&["n1.example.com", "n3.example.com"]),
        &mut state,
    );

    let mails = smtp.mails();
    assert_eq!(mails.len(), 2, "{mails:#?}");
    let stakeholder = mails.iter().find(|m| m.to_stakeholders()).unwrap();
    assert_eq!(
        stakeholder.rcpt_to,
        ["dune-boss@example.com", "dune-ops@example.com"]
    );
    assert_eq!(
        stakeholder.subject,
        "[managed-tokens production] dune: managed vault tokens are failing (1 problem)"
    );
    assert!(
        stakeholder
            .body
            .contains("node n1.example.com: the token could not be copied")
    );
    assert!(
        stakeholder
            .body
            .contains("check that n1.example.com is up and reachable")
    );
    // nova has no stakeholder addresses: only its admins hear of n3.
    assert!(!stakeholder.body.contains("n3.example.com"));
    let admin = mails.iter().find(|m| !m.to_stakeholders()).unwrap();
    assert!(admin.body.contains("n3.example.com"));
}

#[test]
fn threshold_three_mails_stakeholders_every_third_failing_run() {
    let dir = tempfile::tempdir().unwrap();
    let smtp = Smtp::start(dir.path());
    let config = setup(dir.path(), &smtp, 3);
    let mut state = open_state(&config);

    let mut stakeholder_runs = Vec::new();
    for run in 1..=7 {
        let before = smtp.mails().iter().filter(|m| m.to_stakeholders()).count();
        finish(&config, &mut push_run(&["n1.example.com"]), &mut state);
        let after = smtp.mails().iter().filter(|m| m.to_stakeholders()).count();
        if after > before {
            stakeholder_runs.push(run);
        }
    }
    assert_eq!(stakeholder_runs, [3, 6]);
    // The admins hear of every failing run.
    assert_eq!(
        smtp.mails().iter().filter(|m| !m.to_stakeholders()).count(),
        7
    );
    let sixth = smtp
        .mails()
        .into_iter()
        .filter(Mail::to_stakeholders)
        .nth(1)
        .unwrap();
    assert!(
        sixth.body.contains("6 failed runs in a row"),
        "{}",
        sixth.body
    );
}

#[test]
fn recovery_note_follows_a_notified_streak() {
    let dir = tempfile::tempdir().unwrap();
    let smtp = Smtp::start(dir.path());
    let config = setup(dir.path(), &smtp, 2);
    let mut state = open_state(&config);

    finish(&config, &mut push_run(&["n1.example.com"]), &mut state);
    finish(&config, &mut push_run(&["n1.example.com"]), &mut state);
    finish(&config, &mut push_run(&[]), &mut state);
    finish(&config, &mut push_run(&[]), &mut state);

    let stakeholder: Vec<Mail> = smtp
        .mails()
        .into_iter()
        .filter(Mail::to_stakeholders)
        .collect();
    assert_eq!(stakeholder.len(), 2, "{stakeholder:#?}");
    assert!(
        stakeholder[0]
            .subject
            .ends_with("dune: managed vault tokens are failing (1 problem)")
    );
    let note = &stakeholder[1];
    assert_eq!(
        note.subject,
        "[managed-tokens production] dune: managed vault tokens work again"
    );
    assert_eq!(
        note.rcpt_to,
        ["dune-boss@example.com", "dune-ops@example.com"]
    );
    assert!(
        note.body
            .contains("node n1.example.com: tokens are copied again"),
        "{}",
        note.body
    );
    assert!(note.body.contains("after 2 failed runs"));

    // A streak that never reached the threshold ends silently.
    finish(&config, &mut push_run(&["n2.example.com"]), &mut state);
    finish(&config, &mut push_run(&[]), &mut state);
    assert_eq!(
        smtp.mails()
            .into_iter()
            .filter(Mail::to_stakeholders)
            .count(),
        2
    );
}

#[test]
fn undelivered_mail_is_kept_and_delivered_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut smtp = Smtp::start(dir.path());
    let config = setup(dir.path(), &smtp, 1);
    let mut state = open_state(&config);
    smtp.stop();

    let mut report = push_run(&["n1.example.com"]);
    finish(&config, &mut report, &mut state);
    assert_eq!(report.run_errors.len(), 1, "{:?}", report.run_errors);
    let error = &report.run_errors[0];
    assert!(
        error.contains("email delivery failed") && error.contains("2 notifications kept"),
        "{error}"
    );
    assert_eq!(state.pending_count().unwrap(), 2);
    assert!(smtp.mails().is_empty());

    // Two binaries finish at the same time once the relay is back: each kept message
    // goes out once.
    smtp.restart();
    let runs: Vec<_> = [Binary::TokenRefresher, Binary::PingNodes]
        .into_iter()
        .map(|binary| {
            let config = config.clone();
            thread::spawn(move || {
                let mut state = open_state(&config);
                let mut report = RunReport::new(binary, false, vec!["dune_production".into()]);
                finish(&config, &mut report, &mut state);
                report.run_errors
            })
        })
        .collect();
    for run in runs {
        assert_eq!(run.join().unwrap(), Vec::<String>::new());
    }
    let mails = smtp.mails();
    assert_eq!(mails.len(), 2, "{mails:#?}");
    assert_eq!(mails.iter().filter(|m| m.to_stakeholders()).count(), 1);
    assert_eq!(state.pending_count().unwrap(), 0);

    finish(
        &config,
        &mut RunReport::new(Binary::TokenPusher, false, Vec::new()),
        &mut state,
    );
    assert_eq!(smtp.mails().len(), 2);
}

#[test]
fn a_silent_relay_costs_no_more_than_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    // Accepts connections and never says a word.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let config = config(&Setup {
        dir: dir.path(),
        smtp_port: port,
        every: 1,
        slack: None,
        notification_timeout: "3s",
    });
    let mut state = open_state(&config);

    let started = Instant::now();
    let mut report = push_run(&["n1.example.com"]);
    finish(&config, &mut report, &mut state);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(state.pending_count().unwrap(), 2, "{:?}", report.run_errors);
    drop(silent);
}

#[test]
fn without_state_mail_is_still_sent() {
    let dir = tempfile::tempdir().unwrap();
    let smtp = Smtp::start(dir.path());
    let config = setup(dir.path(), &smtp, 1);

    let mut report = push_run(&["n1.example.com"]);
    report
        .run_errors
        .push("state database unavailable: disk full".into());
    notify::finish_run(&config, &mut report, None, &ON);

    let mails = smtp.mails();
    assert_eq!(mails.len(), 2, "{mails:#?}");
    let admin = mails.iter().find(|m| !m.to_stakeholders()).unwrap();
    assert!(
        admin
            .subject
            .ends_with("1 failure in 1 of 2 services, 1 run error")
    );
    assert!(admin.body.contains("state database unavailable: disk full"));
}

#[test]
fn disabled_notifications_still_record_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let smtp = Smtp::start(dir.path());
    let config = setup(dir.path(), &smtp, 2);
    let mut state = open_state(&config);
    let off = NotifyOptions {
        enabled: false,
        test: false,
    };

    notify::finish_run(
        &config,
        &mut push_run(&["n1.example.com"]),
        Some(&mut state),
        &off,
    );
    assert!(smtp.mails().is_empty());
    // The streak went on counting: the next failing run is the second.
    finish(&config, &mut push_run(&["n1.example.com"]), &mut state);
    assert_eq!(
        smtp.mails().iter().filter(|m| m.to_stakeholders()).count(),
        1
    );
}

#[test]
fn slack_gets_strict_json_and_test_runs_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let smtp = Smtp::start(dir.path());
    let slack = Slack::start();
    let config = with_slack(dir.path(), &smtp, &slack);
    let mut state = open_state(&config);

    let mut report = push_run(&["n1.example.com"]);
    if let Some(failure) = report.outcomes[0].failure.as_mut() {
        failure.message = "quote \" backslash \\ tab \t done".into();
    }
    finish(&config, &mut report, &mut state);
    let texts = slack.texts();
    assert_eq!(texts.len(), 1);
    assert!(
        texts[0]
            .starts_with("[managed-tokens production] token-pusher: 1 failure in 1 of 2 services")
    );
    assert!(
        texts[0].contains("dune_production node `n1.example.com`: unreachable"),
        "{}",
        texts[0]
    );

    let mut test_run = push_run(&[]);
    test_run.test = true;
    notify::finish_run(
        &config,
        &mut test_run,
        Some(&mut state),
        &NotifyOptions {
            enabled: true,
            test: true,
        },
    );
    assert!(slack.texts()[1].ends_with("token-pusher: test run completed successfully"));
    assert!(test_run.run_errors.is_empty(), "{:?}", test_run.run_errors);
}

#[test]
fn slack_outage_keeps_the_post_without_leaking_the_url() {
    let dir = tempfile::tempdir().unwrap();
    let smtp = Smtp::start(dir.path());
    let slack = Slack::start();
    let config = with_slack(dir.path(), &smtp, &slack);
    let mut state = open_state(&config);

    *slack.status.lock().unwrap() = 503;
    let mut report = push_run(&["n1.example.com"]);
    finish(&config, &mut report, &mut state);
    assert_eq!(state.pending_count().unwrap(), 1);
    let errors = report.run_errors.join("\n");
    assert!(
        errors.contains("Slack delivery failed") && !errors.contains("secret"),
        "{errors}"
    );

    *slack.status.lock().unwrap() = 200;
    finish(&config, &mut push_run(&[]), &mut state);
    assert_eq!(slack.texts().len(), 1);
    assert_eq!(state.pending_count().unwrap(), 0);
}

#[test]
fn unit_failure_alert_reaches_the_admins() {
    let dir = tempfile::tempdir().unwrap();
    let smtp = Smtp::start(dir.path());
    let config = setup(dir.path(), &smtp, 3);
    let mut state = open_state(&config);

    let journal =
        "token-pusher[42]: pushing\ntoken-pusher[42]: leaked hvs.CAESIJ1234567890abcdefgh\n";
    notify::notify_unit_failure(&config, "token-pusher.service", journal, Some(&mut state));

    let mails = smtp.mails();
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0].rcpt_to, ["admin@example.com"]);
    assert_eq!(
        mails[0].subject,
        "[managed-tokens production] systemd unit token-pusher.service failed"
    );
    assert!(mails[0].body.contains("token-pusher[42]: leaked ***"));
    assert!(!mails[0].body.contains("hvs."));
}
