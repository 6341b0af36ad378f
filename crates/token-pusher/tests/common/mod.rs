//! Helpers shared by token-pusher's end-to-end tests: running the binaries against a
//! sandbox with `--json`, configuration copies, and what landed in the local store, on
//! the nodes, in the nodes' sshd logs and in the state database.

#![allow(
    dead_code,
    reason = "each test file of the package uses its own part of these helpers"
)]

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use managed_tokens_test_support::{Mail, Options, Sandbox};
use serde_json::Value;

/// The binary under test.
pub(crate) const PUSHER: &str = env!("CARGO_BIN_EXE_token-pusher");

/// `token-refresher`, built next to token-pusher by `cargo test --workspace`.
pub(crate) fn refresher() -> PathBuf {
    let path = Path::new(PUSHER).with_file_name("token-refresher");
    assert!(
        path.is_file(),
        "{} is missing: these tests need the refresher binary; run `cargo build -p \
         token-refresher` (or `cargo test --workspace`, which builds every binary)",
        path.display()
    );
    path
}

/// `ping-nodes`, built next to token-pusher by `cargo test --workspace`.
pub(crate) fn ping_nodes() -> PathBuf {
    let path = Path::new(PUSHER).with_file_name("ping-nodes");
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build -p ping-nodes` (or `cargo test --workspace`)",
        path.display()
    );
    path
}

/// A fresh sandbox under cargo's per-package temporary directory.
pub(crate) fn sandbox() -> Sandbox {
    Sandbox::start_with(&Options {
        parent: Some(PathBuf::from(env!("CARGO_TARGET_TMPDIR"))),
        ..Options::default()
    })
}

/// One finished run of a binary.
#[derive(Debug)]
pub(crate) struct Run {
    /// What ran, for messages.
    pub(crate) what: String,
    /// The exit status.
    pub(crate) code: Option<i32>,
    /// The `--json` summary (`Null` when stdout was not JSON).
    pub(crate) summary: Value,
    /// The logs.
    pub(crate) stderr: String,
    /// Wall time of the process.
    pub(crate) elapsed: Duration,
}

impl Run {
    /// Every outcome of the summary.
    pub(crate) fn outcomes(&self) -> &[Value] {
        self.summary["outcomes"]
            .as_array()
            .map_or(&[], Vec::as_slice)
    }

    /// The failed outcomes.
    pub(crate) fn failures(&self) -> Vec<&Value> {
        self.outcomes()
            .iter()
            .filter(|o| !o["failure"].is_null())
            .collect()
    }

    /// The outcome of `service` for `node`.
    #[track_caller]
    pub(crate) fn node_outcome(&self, service: &str, node: &str) -> &Value {
        let found: Vec<&Value> = self
            .outcomes()
            .iter()
            .filter(|o| {
                o["service"] == service
                    && o["target"]["kind"] == "node"
                    && o["target"]["name"] == node
            })
            .collect();
        assert_eq!(
            found.len(),
            1,
            "expected one outcome of {service} for node {node}\n{}",
            self.describe()
        );
        found[0]
    }

    /// The failure class of an outcome, `None` when it succeeded.
    pub(crate) fn class(outcome: &Value) -> Option<&str> {
        outcome["failure"]["class"].as_str()
    }

    /// Asserts the exit status, showing the run when it differs.
    #[track_caller]
    pub(crate) fn assert_exit(&self, code: i32) {
        assert_eq!(self.code, Some(code), "{}", self.describe());
        assert_eq!(self.summary["exit"], code, "{}", self.describe());
    }

    /// The run for an assertion message.
    pub(crate) fn describe(&self) -> String {
        let mut s = format!(
            "`{}`: exit {:?} in {:.1}s\n--- stderr\n{}",
            self.what,
            self.code,
            self.elapsed.as_secs_f64(),
            self.stderr.trim_end()
        );
        let summary = serde_json::to_string_pretty(&self.summary).unwrap_or_default();
        let _ = write!(s, "\n--- summary\n{summary}");
        s
    }
}

/// Runs `program` with the sandbox's environment, `--allow-root --json` and `args`.
pub(crate) fn run(sb: &Sandbox, program: impl AsRef<OsStr>, args: &[&str]) -> Run {
    let program = program.as_ref();
    let what = format!(
        "{} {}",
        Path::new(program)
            .file_name()
            .unwrap_or(program)
            .to_string_lossy(),
        args.join(" ")
    );
    let started = Instant::now();
    let out = sb
        .command(program)
        .args(["--allow-root", "--json"])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    finish(what, &out, started.elapsed())
}

/// A [`Run`] from a finished process.
pub(crate) fn finish(what: String, out: &std::process::Output, elapsed: Duration) -> Run {
    Run {
        what,
        code: out.status.code(),
        summary: serde_json::from_slice(&out.stdout).unwrap_or(Value::Null),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed,
    }
}

/// Runs token-refresher for `services` (all when empty), without notifications, and
/// asserts that it stored every token.
#[track_caller]
pub(crate) fn refresh(sb: &Sandbox, services: &[&str]) -> Run {
    let mut args = vec!["--dont-notify"];
    for s in services {
        args.extend(["-s", s]);
    }
    let run = run(sb, refresher(), &args);
    run.assert_exit(0);
    run
}

/// Writes a copy of the sandbox's configuration with textual replacements, each of
/// which must apply, and returns its path.
#[track_caller]
pub(crate) fn config_copy(sb: &Sandbox, name: &str, edits: &[(&str, &str)]) -> PathBuf {
    let original = &sb.info().config;
    let mut text = fs::read_to_string(original)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", original.display()));
    for (from, to) in edits {
        assert!(
            text.contains(from),
            "`{from}` is not in {}:\n{text}",
            original.display()
        );
        text = text.replace(from, to);
    }
    let path = sb.dir().join(name);
    fs::write(&path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    path
}

/// The local store's copies of `real`'s token (one per credd), as the files hold them.
pub(crate) fn store_copies(sb: &Sandbox, real: &str) -> Vec<String> {
    store_files(sb, real)
        .iter()
        .map(|p| fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .collect()
}

/// The local store's files of `real` (`vt_u<uid>-<credd>-<real>`).
pub(crate) fn store_files(sb: &Sandbox, real: &str) -> Vec<PathBuf> {
    let store = &sb.info().store;
    let suffix = format!("-{real}");
    let mut files: Vec<PathBuf> = fs::read_dir(store)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", store.display()))
        .map(|e| e.expect("a store entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(OsStr::to_str)
                .is_some_and(|n| n.starts_with("vt_u") && n.ends_with(&suffix))
        })
        .collect();
    files.sort();
    files
}

/// Asserts that `node` holds what token-pusher sends for `service`, written at or after
/// `since`: `/tmp/vt_u<UID>-<real name>` equal to a store copy, `/tmp/vt_u<UID>` equal to
/// the store copy of a service of that account pushing to the node, and the default-role
/// file, all 0400 and owned by the account.
#[track_caller]
pub(crate) fn assert_pushed(sb: &Sandbox, service: &str, node: &str, since: SystemTime) {
    let svc = sb.service(service);
    let uid = svc.uid;
    let copies = store_copies(sb, &svc.real);
    assert!(!copies.is_empty(), "no store copy of {}", svc.real);
    // Every service of the same account that pushes to this node writes /tmp/vt_u<UID>,
    // and every role of the same experiment and account the same default-role file
    // (dune_production and dune_analysis on 127.0.0.12): the last one written wins.
    let sharing: Vec<_> = sb
        .info()
        .services
        .values()
        .filter(|s| s.uid == uid && s.nodes.iter().any(|n| n == node))
        .collect();
    let tokens: BTreeSet<String> = sharing
        .iter()
        .flat_map(|s| store_copies(sb, &s.real))
        .collect();
    let roles: BTreeSet<String> = sharing
        .iter()
        .filter(|s| s.experiment == svc.experiment)
        .map(|s| format!("{}\n", s.role))
        .collect();
    let role_file = format!("default_role_{}_{uid}", svc.experiment);
    let expected = [
        (format!("vt_u{uid}-{}", svc.real), copies),
        (format!("vt_u{uid}"), tokens.into_iter().collect()),
        (role_file, roles.into_iter().collect()),
    ];
    for (name, allowed) in expected {
        let file = sb.node_file(node, &name).unwrap_or_else(|| {
            panic!(
                "{service}: /tmp/{name} is missing on {node}; the node has {:?}",
                names(sb, node)
            )
        });
        assert_eq!(file.mode, 0o400, "{service}: mode of {name} on {node}");
        assert_eq!(
            file.uid, uid,
            "{service}: {name} on {node} belongs to {} (UID {uid})",
            svc.account
        );
        assert!(
            allowed.contains(&file.text()),
            "{service}: {name} on {node} holds {:?}, not one of {allowed:?}",
            file.text()
        );
        let written = fs::metadata(&file.path)
            .and_then(|m| m.modified())
            .expect("the file's modification time");
        // File times come from the kernel's coarse clock, a few ms behind.
        assert!(
            written + Duration::from_secs(1) >= since,
            "{service}: {name} on {node} was not written by this run"
        );
    }
}

/// The names of the files in `node`'s /tmp.
pub(crate) fn names(sb: &Sandbox, node: &str) -> BTreeSet<String> {
    sb.node_files(node).into_iter().map(|f| f.name).collect()
}

/// The files token-pusher writes on `node` for every service pushing there.
pub(crate) fn expected_names(sb: &Sandbox, node: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for svc in sb.info().services.values() {
        if svc.nodes.iter().any(|n| n == node) {
            names.insert(format!("vt_u{}", svc.uid));
            names.insert(format!("vt_u{}-{}", svc.uid, svc.real));
            names.insert(format!("default_role_{}_{}", svc.experiment, svc.uid));
        }
    }
    names
}

/// How many ssh logins `node`'s sshd has accepted so far (its log).
pub(crate) fn ssh_logins(sb: &Sandbox, node: &str) -> usize {
    let log = sb.dir().join(format!("logs/node-{node}.log"));
    fs::read_to_string(&log)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", log.display()))
        .lines()
        .filter(|l| l.contains("Accepted gssapi-with-mic"))
        .count()
}

/// The pid of `node`'s sshd.
pub(crate) fn sshd_pid(sb: &Sandbox, node: &str) -> u32 {
    let file = sb.dir().join(format!("pids/node-{node}.pid"));
    fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

/// Messages that arrived since the last call, oldest first.
pub(crate) fn new_mails(sb: &Sandbox, seen: &mut BTreeSet<PathBuf>) -> Vec<Mail> {
    sb.mails()
        .into_iter()
        .filter(|m| seen.insert(m.path.clone()))
        .collect()
}

/// The envelope recipients of `mail`, sorted.
pub(crate) fn recipients(mail: &Mail) -> Vec<String> {
    let mut to = mail.rcpt_to();
    to.sort();
    to
}

/// Subjects and recipients of `mails`, for assertion messages.
pub(crate) fn show_mails(mails: &[Mail]) -> String {
    mails
        .iter()
        .map(|m| {
            format!(
                "  {:?} to {:?}",
                m.subject().unwrap_or_default(),
                m.rcpt_to()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs `sqlite3` on the sandbox's state database and returns its output lines.
#[track_caller]
pub(crate) fn sql(sb: &Sandbox, query: &str) -> Vec<String> {
    let out = sb
        .command("sqlite3")
        .arg(&sb.info().db)
        .arg(query)
        .output()
        .expect("sqlite3 runs");
    assert!(
        out.status.success(),
        "sqlite3 {query}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Resumes a stopped process when dropped, so a failing test leaves no hung sshd.
pub(crate) struct Frozen<'a> {
    sb: &'a Sandbox,
    pid: u32,
}

impl<'a> Frozen<'a> {
    pub(crate) fn new(sb: &'a Sandbox, pid: u32) -> Self {
        signal(sb, "-STOP", pid);
        Self { sb, pid }
    }
}

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        signal(self.sb, "-CONT", self.pid);
    }
}

fn signal(sb: &Sandbox, signal: &str, pid: u32) {
    let status = sb
        .command("kill")
        .arg(signal)
        .arg(pid.to_string())
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill {signal} {pid}");
}
