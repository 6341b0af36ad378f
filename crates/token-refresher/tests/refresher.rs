//! token-refresher end to end, against the real-services sandbox (`scripts/sandbox`): a real
//! KDC, OpenBao behind a Kerberos-login front, real htgettoken and condor_vault_storer, and
//! two real credds. Each test starts its own sandbox and asserts on what landed where: the
//! credentials the credds hold, the local store, the tokens' lineage in the vault, the files
//! and processes left behind, and the `--json` summary and exit status.

#![allow(
    clippy::disallowed_methods,
    reason = "the tests run the built binary, curl and kill themselves"
)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use managed_tokens_test_support::{Options, Sandbox};
use serde_json::Value;

/// The binary under test.
const REFRESHER: &str = env!("CARGO_BIN_EXE_token-refresher");

/// A fresh sandbox under cargo's per-package temporary directory.
fn sandbox() -> Sandbox {
    Sandbox::start_with(&Options {
        parent: Some(PathBuf::from(env!("CARGO_TARGET_TMPDIR"))),
        ..Options::default()
    })
}

/// Runs token-refresher against one sandbox, each run with a private `TMPDIR` so that
/// what a run leaves in the temporary directory can be told apart from other tests' runs.
struct Refresher<'a> {
    sb: &'a Sandbox,
    tmp: tempfile::TempDir,
}

impl<'a> Refresher<'a> {
    fn new(sb: &'a Sandbox) -> Self {
        let tmp = tempfile::Builder::new()
            .prefix("mt-refresher-tmp-")
            .tempdir()
            .expect("a private TMPDIR");
        Self { sb, tmp }
    }

    /// The `TMPDIR` of the runs (where the run directory `managed-tokens-*` goes).
    fn tmpdir(&self) -> &Path {
        self.tmp.path()
    }

    /// `token-refresher --allow-root <args>` with the sandbox's environment.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = self.sb.command(REFRESHER);
        cmd.arg("--allow-root")
            .args(args)
            .env("TMPDIR", self.tmp.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Runs to the end.
    fn run(&self, args: &[&str]) -> Run {
        let what = format!("token-refresher {}", args.join(" "));
        let started = Instant::now();
        let child = self
            .command(args)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
        let pid = child.id();
        let out = child
            .wait_with_output()
            .expect("token-refresher is waited for");
        Run::new(what, pid, &out, started.elapsed())
    }

    /// A refresh of every service (or of `services`) with the `--json` summary and no
    /// notifications.
    fn refresh(&self, services: &[&str]) -> Run {
        let mut args = vec!["--json", "--dont-notify"];
        for s in services {
            args.extend(["-s", s]);
        }
        self.run(&args)
    }

    /// What a run with process id `pid` left behind: the storer's staging files in `/tmp`
    /// (their storer IDs are `u<uid>mt<pid>x<n>`) and anything in the private `TMPDIR`.
    fn leftovers(&self, pid: u32) -> Vec<String> {
        let marker = format!("mt{pid}x");
        let mut left: Vec<String> = fs::read_dir("/tmp")
            .expect("/tmp is listed")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("vt_") && n.contains(&marker))
            .map(|n| format!("/tmp/{n}"))
            .collect();
        left.extend(
            fs::read_dir(self.tmp.path())
                .expect("the private TMPDIR is listed")
                .flatten()
                .map(|e| e.path().display().to_string()),
        );
        left
    }

    #[track_caller]
    fn assert_clean(&self, run: &Run) {
        let left = self.leftovers(run.pid);
        assert!(
            left.is_empty(),
            "the run left {left:?} behind\n{}",
            run.describe()
        );
    }
}

/// One finished run.
#[derive(Debug)]
struct Run {
    what: String,
    pid: u32,
    code: Option<i32>,
    stdout: String,
    stderr: String,
    /// The `--json` summary, `Null` when stdout was not JSON.
    summary: Value,
    elapsed: Duration,
}

impl Run {
    fn new(what: String, pid: u32, out: &std::process::Output, elapsed: Duration) -> Self {
        Self {
            what,
            pid,
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            summary: serde_json::from_slice(&out.stdout).unwrap_or(Value::Null),
            elapsed,
        }
    }

    fn outcomes(&self) -> &[Value] {
        self.summary["outcomes"]
            .as_array()
            .map_or(&[], Vec::as_slice)
    }

    /// The outcomes of `service` at `stage`.
    fn at(&self, service: &str, stage: &str) -> Vec<&Value> {
        self.outcomes()
            .iter()
            .filter(|o| o["service"] == service && o["stage"] == stage)
            .collect()
    }

    /// The store outcome of `service` for `credd`.
    #[track_caller]
    fn store_outcome(&self, service: &str, credd: &str) -> &Value {
        let found: Vec<&Value> = self
            .at(service, "store")
            .into_iter()
            .filter(|o| o["target"]["kind"] == "credd" && o["target"]["name"] == credd)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "expected one store outcome of {service} for credd {credd}\n{}",
            self.describe()
        );
        found[0]
    }

    /// The credds `service` stored into (or tried to), sorted.
    fn store_targets(&self, service: &str) -> Vec<String> {
        let mut credds: Vec<String> = self
            .at(service, "store")
            .iter()
            .map(|o| o["target"]["name"].as_str().unwrap_or("?").to_owned())
            .collect();
        credds.sort();
        credds
    }

    fn class(outcome: &Value) -> Option<&str> {
        outcome["failure"]["class"].as_str()
    }

    #[track_caller]
    fn assert_exit(&self, code: i32) {
        assert_eq!(self.code, Some(code), "{}", self.describe());
        assert_eq!(self.summary["exit"], code, "{}", self.describe());
        assert_eq!(self.summary["schema"], 1, "{}", self.describe());
    }

    fn describe(&self) -> String {
        let mut s = format!(
            "`{}` (pid {}): exit {:?} in {:.1}s\n--- stderr\n{}",
            self.what,
            self.pid,
            self.code,
            self.elapsed.as_secs_f64(),
            self.stderr.trim_end()
        );
        if self.summary.is_null() {
            let _ = write!(s, "\n--- stdout\n{}", self.stdout.trim_end());
        } else {
            let summary = serde_json::to_string_pretty(&self.summary).unwrap_or_default();
            let _ = write!(s, "\n--- summary\n{summary}");
        }
        s
    }
}

/// The UID of this process (the store files are named after it).
fn my_uid() -> u32 {
    let status = fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse().ok())
        .expect("a Uid line")
}

/// One file of the local store, as found.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StoreFile {
    contents: String,
    mode: u32,
    uid: u32,
    inode: u64,
    modified: SystemTime,
}

/// Every file in the local store, by name (empty when the store does not exist).
fn store(sb: &Sandbox) -> BTreeMap<String, StoreFile> {
    let Ok(entries) = fs::read_dir(&sb.info().store) else {
        return BTreeMap::new();
    };
    entries
        .flatten()
        .map(|e| {
            let meta = e.metadata().expect("store file metadata");
            let file = StoreFile {
                contents: fs::read_to_string(e.path()).expect("a readable store file"),
                mode: meta.mode() & 0o7777,
                uid: meta.uid(),
                inode: meta.ino(),
                modified: meta.modified().expect("an mtime"),
            };
            (e.file_name().to_string_lossy().into_owned(), file)
        })
        .collect()
}

/// The store file name of `real` for `credd`: the Go service's layout.
fn store_name(credd: &str, real: &str) -> String {
    format!("vt_u{}-{credd}-{real}", my_uid())
}

/// The credds `service` stores into: its override, else every credd of the pool.
fn credds_of(sb: &Sandbox, service: &str) -> Vec<String> {
    match &sb.service(service).credd_override {
        Some(credd) => vec![credd.clone()],
        None => sb.info().credds.clone(),
    }
}

/// The store files a full successful run leaves: one per (real service name, credd).
fn expected_store(sb: &Sandbox) -> Vec<String> {
    let mut names: Vec<String> = sb
        .info()
        .services
        .iter()
        .flat_map(|(name, svc)| {
            credds_of(sb, name)
                .into_iter()
                .map(|credd| store_name(&credd, &svc.real))
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Empties the local store.
fn clear_store(sb: &Sandbox) {
    for name in store(sb).keys() {
        fs::remove_file(sb.info().store.join(name)).expect("a store file is removed");
    }
}

/// A vault API call through curl with the sandbox's CA: the HTTP status and the JSON body
/// (`Null` when there is none).
fn vault(
    sb: &Sandbox,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let vault = &sb.info().vault;
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "-X", method, "--cacert"])
        .arg(&vault.ca)
        .args(["-H", &format!("X-Vault-Token: {token}")])
        .args(["-w", "\n%{http_code}"]);
    if let Some(body) = body {
        cmd.args([
            "-H",
            "Content-Type: application/json",
            "-d",
            &body.to_string(),
        ]);
    }
    let out = cmd
        .arg(format!("{}/v1/{path}", vault.bao_addr))
        .stdin(Stdio::null())
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl {method} {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (json, code) = text
        .trim_end()
        .rsplit_once('\n')
        .unwrap_or(("", text.trim()));
    let code = code
        .parse()
        .unwrap_or_else(|_| panic!("no HTTP status in {text:?}"));
    (code, serde_json::from_str(json).unwrap_or(Value::Null))
}

/// Whether `token` is a live token of the vault.
fn token_is_valid(sb: &Sandbox, token: &str) -> bool {
    match vault(sb, "GET", "auth/token/lookup-self", token, None) {
        (200, _) => true,
        (403, _) => false,
        (code, body) => panic!("lookup-self answered {code}: {body}"),
    }
}

/// Revokes every token the Kerberos front minted for `service` (`meta.service`), with the
/// tokens derived from them; returns how many logins it revoked.
fn revoke_logins_of(sb: &Sandbox, service: &str) -> usize {
    let root = sb.info().vault.root_token.clone();
    let (code, list) = vault(sb, "GET", "auth/token/accessors?list=true", &root, None);
    assert_eq!(code, 200, "listing accessors: {list}");
    let mut revoked = 0;
    for accessor in list["data"]["keys"].as_array().expect("accessor keys") {
        let body = serde_json::json!({ "accessor": accessor });
        let (code, found) = vault(sb, "POST", "auth/token/lookup-accessor", &root, Some(&body));
        if code != 200 || found["data"]["meta"]["service"] != service {
            continue;
        }
        let (code, reply) = vault(sb, "POST", "auth/token/revoke-accessor", &root, Some(&body));
        assert_eq!(code, 204, "revoking a login of {service}: {reply}");
        revoked += 1;
    }
    revoked
}

/// Processes whose environment mentions `marker` (a run's private directory reaches every
/// child through KRB5CCNAME, XDG_RUNTIME_DIR and TMPDIR), with their command lines.
fn processes_mentioning(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").expect("/proc is listed").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(environ) = fs::read(entry.path().join("environ")) else {
            continue;
        };
        if String::from_utf8_lossy(&environ).contains(marker) {
            let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
            found.push(format!(
                "{name}: {}",
                String::from_utf8_lossy(&cmdline).replace('\0', " ")
            ));
        }
    }
    found
}

#[test]
fn stores_every_service_in_every_credd_then_reuses_the_tokens() {
    let sb = sandbox();
    let refresher = Refresher::new(&sb);
    let info = sb.info();
    let first = info.credds[0].as_str();
    for credd in &info.credds {
        for svc in info.services.values() {
            assert!(
                !sb.credd_has_credential(credd, &svc.real),
                "credd {credd} starts without {}",
                svc.real
            );
        }
    }

    let run = refresher.refresh(&[]);

    run.assert_exit(0);
    for (name, svc) in &info.services {
        let mut credds = credds_of(&sb, name);
        credds.sort();
        assert_eq!(run.store_targets(name), credds, "{}", run.describe());
        assert_eq!(run.at(name, "kerberos").len(), 1, "{}", run.describe());
        for credd in &credds {
            let outcome = run.store_outcome(name, credd);
            assert!(
                outcome["failure"].is_null(),
                "{name} at {credd}: {}",
                run.describe()
            );
            assert!(
                sb.credd_has_credential(credd, &svc.real),
                "credd {credd} holds {} after the run",
                svc.real
            );
        }
    }
    assert_eq!(run.summary["totals"]["failed"], 0, "{}", run.describe());
    // dune-2_production is dune_production in the first credd only: same file.
    assert_eq!(
        info.services["dune-2_production"].credd_override.as_deref(),
        Some(first)
    );
    let stored = store(&sb);
    assert_eq!(
        stored.keys().cloned().collect::<Vec<_>>(),
        expected_store(&sb),
        "one local copy per (real service, credd), nothing else"
    );
    for (name, file) in &stored {
        assert_eq!(file.mode, 0o600, "{name} is private");
        assert_eq!(file.uid, my_uid(), "{name} belongs to the refresher's user");
        let token = file.contents.trim_end();
        assert!(
            token.starts_with("s.") || token.starts_with("hvs."),
            "{name} holds a vault token"
        );
        assert!(token_is_valid(&sb, token), "{name} holds a live token");
    }
    let logins: BTreeMap<&str, usize> = info
        .services
        .values()
        .map(|svc| (svc.real.as_str(), sb.vault_login_count(&svc.real)))
        .collect();
    for (real, count) in &logins {
        assert!(
            *count > 0,
            "the first run logged in to the vault for {real}"
        );
    }
    refresher.assert_clean(&run);

    let again = refresher.refresh(&[]);

    again.assert_exit(0);
    assert_eq!(
        again.outcomes().len(),
        run.outcomes().len(),
        "{}",
        again.describe()
    );
    for (real, count) in &logins {
        assert_eq!(
            sb.vault_login_count(real),
            *count,
            "the second run reused the stored token of {real}: no new Kerberos login"
        );
    }
    let restored = store(&sb);
    assert_eq!(
        restored.keys().collect::<Vec<_>>(),
        stored.keys().collect::<Vec<_>>()
    );
    for (name, file) in &restored {
        assert_eq!(
            file.contents, stored[name].contents,
            "{name} still holds the same token"
        );
        assert_eq!(file.mode, 0o600, "{name} is private");
    }
    refresher.assert_clean(&again);
    println!(
        "token-refresher: first run {:.1}s, second run {:.1}s",
        run.elapsed.as_secs_f64(),
        again.elapsed.as_secs_f64()
    );
}

#[test]
fn services_of_one_account_stored_in_parallel_keep_their_own_tokens() {
    const SERVICES: [&str; 2] = ["dune_production", "dune_analysis"];
    let sb = sandbox();
    let refresher = Refresher::new(&sb);
    let credds = &sb.info().credds;
    assert_eq!(
        sb.service(SERVICES[0]).account,
        sb.service(SERVICES[1]).account,
        "the two services share an account"
    );

    for round in 1..=3 {
        clear_store(&sb);
        let before: Vec<usize> = SERVICES.iter().map(|s| sb.vault_login_count(s)).collect();

        let run = refresher.refresh(&SERVICES);

        run.assert_exit(0);
        let stored = store(&sb);
        let mut copies: BTreeMap<(&str, &str), String> = BTreeMap::new();
        for (i, service) in SERVICES.iter().enumerate() {
            assert!(
                sb.vault_login_count(service) > before[i],
                "round {round}: an empty store means a fresh login for {service}"
            );
            for credd in credds {
                let name = store_name(credd, service);
                let file = stored
                    .get(&name)
                    .unwrap_or_else(|| panic!("round {round}: no {name}\n{}", run.describe()));
                let token = file.contents.trim_end().to_owned();
                assert!(token_is_valid(&sb, &token), "round {round}: {name} is live");
                copies.insert((service, credd.as_str()), token);
            }
        }
        let mut distinct: Vec<&String> = copies.values().collect();
        distinct.sort();
        distinct.dedup();
        assert_eq!(
            distinct.len(),
            copies.len(),
            "round {round}: every copy is its own token"
        );

        // The local copies are htgettoken's exchanged tokens, children of the token the
        // Kerberos front minted at login (which carries `meta.service`). Revoking a
        // service's logins revokes exactly the copies that descend from them.
        for (i, service) in SERVICES.iter().enumerate() {
            assert!(
                revoke_logins_of(&sb, service) > 0,
                "round {round}: the vault holds logins of {service}"
            );
            for ((owner, credd), token) in &copies {
                let revoked = SERVICES[..=i].contains(owner);
                assert_eq!(
                    token_is_valid(&sb, token),
                    !revoked,
                    "round {round}: {owner}'s copy for credd {credd} must descend from a \
                     login of {owner} (revoked the logins of {:?} so far)",
                    &SERVICES[..=i]
                );
            }
        }
        refresher.assert_clean(&run);
    }
}

#[test]
fn without_the_kdc_every_service_fails_at_kinit() {
    let sb = sandbox();
    let refresher = Refresher::new(&sb);
    sb.stop("kdc");

    let run = refresher.refresh(&[]);

    run.assert_exit(3);
    for name in sb.info().services.keys() {
        let outcomes = run.at(name, "kerberos");
        assert_eq!(outcomes.len(), 1, "{name}: {}", run.describe());
        assert_eq!(
            Run::class(outcomes[0]),
            Some("kinit-failed"),
            "{}",
            run.describe()
        );
        assert!(run.at(name, "store").is_empty(), "{name} stored nothing");
    }
    assert_eq!(
        run.summary["totals"]["failed_services"],
        sb.info().services.len(),
        "{}",
        run.describe()
    );
    assert!(sb.vault_logins().is_empty(), "nothing reached the vault");
    assert!(store(&sb).is_empty(), "nothing was stored");
    refresher.assert_clean(&run);
}

#[test]
fn without_the_vault_each_credd_fails_and_the_store_is_untouched() {
    let sb = sandbox();
    let refresher = Refresher::new(&sb);
    let good = refresher.refresh(&[]);
    good.assert_exit(0);
    let before = store(&sb);
    assert_eq!(
        before.keys().cloned().collect::<Vec<_>>(),
        expected_store(&sb),
        "{}",
        good.describe()
    );
    sb.stop("vault");

    let run = refresher.refresh(&[]);

    // Good copies stay as they are: same bytes, same file (not replaced), same mtime.
    run.assert_exit(3);
    assert_every_store_fails(&sb, &run, "vault-unreachable");
    assert_eq!(
        store(&sb),
        before,
        "the good copies were neither rewritten nor replaced"
    );
    refresher.assert_clean(&run);

    // An empty store: the storer must log in, and cannot.
    clear_store(&sb);
    let run = refresher.refresh(&[]);

    run.assert_exit(3);
    assert_every_store_fails(&sb, &run, "vault-unreachable");
    assert!(store(&sb).is_empty(), "a failed storer call wrote nothing");
    refresher.assert_clean(&run);
}

/// Every service logged in to Kerberos and failed with `class` for each of its credds.
#[track_caller]
fn assert_every_store_fails(sb: &Sandbox, run: &Run, class: &str) {
    for name in sb.info().services.keys() {
        let kerberos = run.at(name, "kerberos");
        assert!(
            kerberos.len() == 1 && kerberos[0]["failure"].is_null(),
            "{}",
            run.describe()
        );
        let credds = credds_of(sb, name);
        for credd in &credds {
            let outcome = run.store_outcome(name, credd);
            assert_eq!(
                Run::class(outcome),
                Some(class),
                "{name} at {credd}: {}",
                run.describe()
            );
            let failure = &outcome["failure"];
            assert!(
                failure["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains(credd.as_str()),
                "the failure names credd {credd}: {failure}"
            );
            assert!(
                failure["detail"].as_str().is_some_and(|d| !d.is_empty()),
                "the failure carries the decisive line: {failure}"
            );
        }
        assert_eq!(
            run.at(name, "store").len(),
            credds.len(),
            "{}",
            run.describe()
        );
    }
}

#[test]
fn a_stopped_credd_fails_alone() {
    let sb = sandbox();
    let refresher = Refresher::new(&sb);
    let info = sb.info();
    let stopped = info.credds.last().expect("two credds").clone();
    let alive = info.credds[0].clone();
    sb.stop("credd");

    let run = refresher.refresh(&[]);

    run.assert_exit(3);
    let stored = store(&sb);
    for (name, svc) in &info.services {
        if svc.credd_override.is_none() {
            let outcome = run.store_outcome(name, &stopped);
            assert_eq!(
                Run::class(outcome),
                Some("credd-unreachable"),
                "{name} at the stopped credd: {}",
                run.describe()
            );
            assert!(
                !stored.contains_key(&store_name(&stopped, &svc.real)),
                "no local copy of {} for the stopped credd",
                svc.real
            );
        }
        let outcome = run.store_outcome(name, &alive);
        assert!(
            outcome["failure"].is_null(),
            "{name} at {alive}: {}",
            run.describe()
        );
        assert!(
            sb.credd_has_credential(&alive, &svc.real),
            "{alive} holds {}",
            svc.real
        );
        assert!(
            stored.contains_key(&store_name(&alive, &svc.real)),
            "{}",
            run.describe()
        );
    }
    assert_eq!(
        run.summary["totals"]["failed"],
        info.services
            .values()
            .filter(|s| s.credd_override.is_none())
            .count(),
        "only the stopped credd's outcomes failed: {}",
        run.describe()
    );
    refresher.assert_clean(&run);
}

#[test]
fn runs_leave_no_staging_files_and_dry_runs_run_nothing() {
    let sb = sandbox();
    let refresher = Refresher::new(&sb);
    let info = sb.info();

    let dry = refresher.run(&["--dry-run"]);

    assert_eq!(dry.code, Some(0), "{}", dry.describe());
    let line = dry
        .stdout
        .lines()
        .find(|l| l.contains("condor_vault_storer dune_production"))
        .unwrap_or_else(|| panic!("no storer call for dune_production\n{}", dry.describe()));
    assert!(line.contains("_condor_CREDD_HOST="), "{line}");
    assert!(
        line.contains("HTGETTOKENOPTS=") && line.contains("--credkey="),
        "{line}"
    );
    assert!(
        !dry.stdout.contains("***"),
        "nothing secret to mask:\n{}",
        dry.stdout
    );
    for svc in info.services.values() {
        assert!(
            dry.stdout
                .contains(&format!("kinit -k -t {}", svc.keytab.display())),
            "the plan shows kinit from {}:\n{}",
            svc.keytab.display(),
            dry.stdout
        );
    }
    assert!(sb.vault_logins().is_empty(), "a dry run logs in nowhere");
    assert!(store(&sb).is_empty(), "a dry run stores nothing");
    for credd in &info.credds {
        assert!(
            !sb.credd_has_credential(credd, "dune_production"),
            "a dry run stores nothing"
        );
    }
    refresher.assert_clean(&dry);

    let ok = refresher.refresh(&[]);
    ok.assert_exit(0);
    refresher.assert_clean(&ok);

    // Failing storer calls (after the staging was prepared) clean up as well.
    sb.stop("credd");
    let failed = refresher.refresh(&[]);
    failed.assert_exit(3);
    refresher.assert_clean(&failed);
    let staged = store(&sb);
    assert!(
        staged.keys().all(|n| n.starts_with("vt_u")),
        "no temporary file in the store: {:?}",
        staged.keys()
    );
}

#[test]
fn command_line_and_configuration_errors() {
    let sb = sandbox();
    let refresher = Refresher::new(&sb);
    let names: Vec<&str> = sb.info().services.keys().map(String::as_str).collect();

    let list = refresher.run(&["--list-services"]);
    assert_eq!(list.code, Some(0), "{}", list.describe());
    let mut firsts: Vec<&str> = list
        .stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    firsts.sort_unstable();
    assert_eq!(firsts, names, "one line per configured service, name first");

    let unknown = refresher.run(&["-s", "nope"]);
    assert_eq!(unknown.code, Some(2), "{}", unknown.describe());
    assert!(unknown.stderr.contains("`nope`"), "{}", unknown.describe());
    assert!(
        names.iter().all(|n| unknown.stderr.contains(n)),
        "an unknown name far from every service lists them: {}",
        unknown.describe()
    );
    let typo = refresher.run(&["-s", "dune_prodution"]);
    assert_eq!(typo.code, Some(2), "{}", typo.describe());
    assert!(
        typo.stderr.contains("did you mean `dune_production`"),
        "{}",
        typo.describe()
    );

    let check = refresher.run(&["check-config"]);
    assert_eq!(check.code, Some(0), "{}", check.describe());
    assert!(
        check.stdout.contains("4 services; ok"),
        "{}",
        check.describe()
    );

    let config = fs::read_to_string(&sb.info().config).expect("the sandbox configuration");
    let broken = config.replace("condorCreddHostOverride:", "condorCreddHostOveride:");
    assert_ne!(
        broken, config,
        "the configuration has a credd override to misspell"
    );
    let path = sb.dir().join("typo.yml");
    fs::write(&path, broken).expect("the misspelt configuration is written");
    let path = path.to_string_lossy().into_owned();
    for args in [
        vec!["-c", &path, "check-config"],
        vec!["-c", &path, "--json"],
    ] {
        let bad = refresher.run(&args);
        assert_eq!(bad.code, Some(2), "{}", bad.describe());
        assert!(
            bad.stderr.contains(
                "`experiments.dune-2.roles.production.condorCreddHostOveride`: unknown key; \
                 did you mean `experiments.dune-2.roles.production.condorCreddHostOverride`?"
            ),
            "{}",
            bad.describe()
        );
    }
    assert!(sb.vault_logins().is_empty(), "none of these ran anything");
}

#[test]
fn sigterm_stops_the_run_and_its_children() {
    let sb = sandbox();
    let refresher = Refresher::new(&sb);
    let marker = refresher.tmpdir().to_string_lossy().into_owned();

    let started = Instant::now();
    let mut child = refresher
        .command(&["--json", "--dont-notify"])
        .spawn()
        .expect("token-refresher starts");
    let pid = child.id();
    // Shortly after the start, once storer calls are under way (on a loaded machine they
    // may take longer than 300 ms to get there).
    std::thread::sleep(Duration::from_millis(300));
    let mut running = processes_mentioning(&marker);
    while !running.iter().any(|p| p.contains("condor_vault_storer"))
        && started.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(50));
        running = processes_mentioning(&marker);
    }
    let kill = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(kill.success(), "kill -TERM {pid}");
    let signalled = Instant::now();
    let mut exited = None;
    while signalled.elapsed() < Duration::from_secs(10) {
        if child.try_wait().expect("try_wait").is_some() {
            exited = Some(signalled.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let Some(exited) = exited else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("token-refresher did not exit within 10s of SIGTERM");
    };
    let out = child.wait_with_output().expect("the output is read");
    let run = Run::new(
        "token-refresher (SIGTERM)".into(),
        pid,
        &out,
        started.elapsed(),
    );

    assert!(
        exited < Duration::from_secs(5),
        "exited {:.1}s after SIGTERM\n{}",
        exited.as_secs_f64(),
        run.describe()
    );
    run.assert_exit(3);
    assert!(
        running.iter().any(|p| p.contains("condor_vault_storer")),
        "storer calls were running when the signal came: {running:?}"
    );
    let mut left = processes_mentioning(&marker);
    let grace = Instant::now();
    while !left.is_empty() && grace.elapsed() < Duration::from_secs(1) {
        std::thread::sleep(Duration::from_millis(100));
        left = processes_mentioning(&marker);
    }
    assert!(left.is_empty(), "children of the run outlived it: {left:?}");
    refresher.assert_clean(&run);

    let failures: Vec<&Value> = run
        .outcomes()
        .iter()
        .filter(|o| !o["failure"].is_null())
        .collect();
    assert!(!failures.is_empty(), "{}", run.describe());
    for failure in &failures {
        assert_eq!(Run::class(failure), Some("cancelled"), "{}", run.describe());
    }
    assert!(
        run.outcomes()
            .iter()
            .all(|o| o["stage"] != "store" || !o["failure"].is_null()),
        "no storer call finished before the signal: {}",
        run.describe()
    );
    assert!(store(&sb).is_empty(), "a cancelled run stores nothing");
    println!(
        "token-refresher: exited {:.2}s after SIGTERM",
        exited.as_secs_f64()
    );
}

#[test]
fn onboarding_runs_on_a_terminal_pushes_and_notifies_nobody() {
    let sb = sandbox();
    // A node of the service is down, so the push fails: still no notification.
    sb.stop("node:127.0.0.13");
    // `script` gives the refresher a pseudo-terminal, as an operator's shell would.
    let line =
        format!("{REFRESHER} --allow-root --run-onboarding -s nova_production --push-tokens");
    let out = sb
        .command("script")
        .args(["-qec", &line, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .expect("script runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(3),
        "the push to the stopped node fails:\n{text}"
    );
    assert!(!text.contains("without a terminal"), "{text}");
    assert!(text.contains("notifications are off"), "{text}");
    for credd in credds_of(&sb, "nova_production") {
        assert!(
            sb.credd_has_credential(&credd, "nova_production"),
            "stored in {credd}"
        );
    }
    let uid = sb.service("nova_production").uid;
    let pushed = sb.node_file("127.0.0.12", &format!("vt_u{uid}-nova_production"));
    assert!(pushed.is_some(), "the token reached the live node:\n{text}");
    assert!(sb.mails().is_empty(), "onboarding notifies nobody");

    // Onboarding is for one service at a time.
    let refresher = Refresher::new(&sb);
    for args in [
        &["--run-onboarding"][..],
        &["--run-onboarding", "-e", "dune"],
    ] {
        let out = refresher
            .command(args)
            .output()
            .expect("the refresher runs");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("exactly one service"));
    }
}

#[test]
fn get_token_services_use_htgettoken_directly() {
    let sb = sandbox();
    let config = fs::read_to_string(&sb.info().config).expect("the sandbox configuration");
    let direct = config.replace(
        "production: {account: mtnova,",
        "production: {account: mtnova, tokenGetterOverride: getToken,",
    );
    assert_ne!(direct, config, "nova's role is there to change");
    let path = sb.dir().join("get-token.yml");
    fs::write(&path, direct).expect("the configuration is written");
    let path = path.to_string_lossy().into_owned();
    let refresher = Refresher::new(&sb);

    let first = refresher.run(&[
        "-c",
        &path,
        "-s",
        "nova_production",
        "--dont-notify",
        "--json",
    ]);
    first.assert_exit(0);
    assert_eq!(
        first.at("nova_production", "get-token").len(),
        1,
        "{}",
        first.describe()
    );
    assert!(
        first.at("nova_production", "store").is_empty(),
        "{}",
        first.describe()
    );
    let files = store(&sb);
    let name = format!("vt_u{}-nova_production", my_uid());
    let copy = files
        .get(&name)
        .unwrap_or_else(|| panic!("{name} in {:?}", files.keys()));
    assert_eq!(copy.mode, 0o600);
    assert!(copy.contents.starts_with("s.") || copy.contents.starts_with("hvs."));
    assert_eq!(
        files.len(),
        1,
        "nothing stored per credd: {:?}",
        files.keys()
    );
    for credd in &sb.info().credds {
        assert!(
            !sb.credd_has_credential(credd, "nova_production"),
            "nothing stored in {credd}"
        );
    }

    let logins = sb.vault_login_count("nova_production");
    let second = refresher.run(&[
        "-c",
        &path,
        "-s",
        "nova_production",
        "--dont-notify",
        "--json",
    ]);
    second.assert_exit(0);
    assert_eq!(
        sb.vault_login_count("nova_production"),
        logins,
        "the stored token is reused"
    );
    refresher.assert_clean(&second);
}
