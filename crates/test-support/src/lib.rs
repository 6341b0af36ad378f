//! Test fixture for managed-tokens end-to-end tests.
//!
//! [`Sandbox::start`] runs `scripts/sandbox up` in a fresh directory: an MIT
//! Kerberos KDC, OpenBao behind a Kerberos-login front end, three sshd nodes
//! (`127.0.0.11`–`127.0.0.13`) with private `/tmp` directories, an HTCondor
//! pool with two credds, and an SMTP server writing a Maildir — all real
//! software on loopback (see `scripts/sandbox`).  The sandbox is described by
//! `DIR/sandbox.json`, parsed here into [`SandboxInfo`], and taken down with
//! `scripts/sandbox down` when the [`Sandbox`] is dropped (and by the script's
//! watchdog if the test process dies without dropping it).
//!
//! The helpers read what landed where: files on the nodes, messages in the
//! Maildir, credentials in the credds, logins at the vault.
//!
//! The machine must have been provisioned once with
//! `scripts/sandbox provision` (as root); otherwise [`Sandbox::start`]
//! panics saying so.

#![allow(
    clippy::disallowed_methods,
    reason = "the fixture starts the sandbox and its tools itself, outside the product's runner"
)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize;

pub mod ferry;

/// Where `scripts/sandbox provision` caches its software unless
/// `MANAGED_TOKENS_SANDBOX_CACHE` says otherwise.
pub const DEFAULT_CACHE: &str = "/var/cache/managed-tokens-sandbox";

/// Everything `DIR/sandbox.json` describes.
#[derive(Debug, Clone, Deserialize)]
pub struct SandboxInfo {
    /// The sandbox directory.
    pub dir: PathBuf,
    /// The product configuration written for this sandbox (`managedTokens.yml`).
    pub config: PathBuf,
    /// The variables the product and its children need (`DIR/env`), PATH expanded.
    pub env: BTreeMap<String, String>,
    /// `serviceCreddVaultTokenPathRoot` of the configuration.
    pub store: PathBuf,
    /// `dbLocation` of the configuration.
    pub db: PathBuf,
    /// The Maildir the SMTP server writes to.
    pub mail: PathBuf,
    /// The directory of the HTCondor tool wrappers and htgettoken.
    pub bin: PathBuf,
    /// The ssh client configuration for the nodes (`ssh -F`).
    pub ssh_config: PathBuf,
    /// The HTCondor configuration the tools read.
    pub condor_config: PathBuf,
    /// The vault.
    pub vault: VaultInfo,
    /// The KDC.
    pub kdc: KdcInfo,
    /// The collector, `127.0.0.1:<port>`.
    pub collector: String,
    /// The two credds, `127.0.0.1:<port>` each.
    pub credds: Vec<String>,
    /// The SMTP server, `127.0.0.1:<port>`.
    pub smtp: String,
    /// The destination nodes by name (the name is the node's address).
    pub nodes: BTreeMap<String, NodeInfo>,
    /// The configured services by configuration name (`dune_production`, `dune-2_production`, ...).
    pub services: BTreeMap<String, ServiceInfo>,
}

/// The vault: the Kerberos-login front end and OpenBao behind it.
#[derive(Debug, Clone, Deserialize)]
pub struct VaultInfo {
    /// What the product uses as `vaultServer` (the front end).
    pub addr: String,
    /// OpenBao itself.
    pub bao_addr: String,
    /// The CA certificate of both.
    pub ca: PathBuf,
    /// OpenBao's root token.
    pub root_token: String,
    /// One line `<service> <principal>` per successful Kerberos login.
    pub logins: PathBuf,
}

/// The KDC.
#[derive(Debug, Clone, Deserialize)]
pub struct KdcInfo {
    /// `TEST.REALM`.
    pub realm: String,
    /// The Kerberos configuration (`KRB5_CONFIG`).
    pub krb5_config: PathBuf,
    /// `127.0.0.1:<port>`.
    pub address: String,
}

/// One sshd node.
#[derive(Debug, Clone, Deserialize)]
pub struct NodeInfo {
    /// The host directory that is the node's `/tmp`.
    pub tmp: PathBuf,
    /// The node's ssh port.
    pub port: u16,
}

/// One configured service.
#[derive(Debug, Clone, Deserialize)]
pub struct ServiceInfo {
    /// The real service name (`<experiment or override>_<role>`).
    pub real: String,
    /// The experiment key of the configuration.
    pub experiment: String,
    /// The role.
    pub role: String,
    /// The local account the tokens are pushed as.
    pub account: String,
    /// That account's UID.
    pub uid: u32,
    /// The Kerberos principal.
    pub principal: String,
    /// htgettoken's credkey (the principal without the realm).
    pub credkey: String,
    /// The keytab of the principal.
    pub keytab: PathBuf,
    /// The destination nodes.
    pub nodes: Vec<String>,
    /// The experiment's notification addresses.
    pub emails: Vec<String>,
    /// The role's `condorCreddHostOverride`, if any.
    pub credd_override: Option<String>,
    /// The bearer token the vault hands out for this service.
    pub bearer_token: String,
}

/// How to start a sandbox; [`Sandbox::start`] uses the defaults.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Where the sandbox directory is created; default `CARGO_TARGET_TMPDIR`
    /// when set in the environment, else the system's temporary directory.
    pub parent: Option<PathBuf>,
    /// The provision cache; default `MANAGED_TOKENS_SANDBOX_CACHE`, else
    /// [`DEFAULT_CACHE`].
    pub cache: Option<PathBuf>,
    /// Keep the directory after `down` (also with `MANAGED_TOKENS_SANDBOX_KEEP=1`).
    pub keep: bool,
}

/// A running sandbox; dropping it takes it down and removes its directory.
#[derive(Debug)]
pub struct Sandbox {
    info: SandboxInfo,
    script: PathBuf,
    cache: PathBuf,
    dir: Option<tempfile::TempDir>,
    keep: bool,
}

/// A private Kerberos credential cache; removed on drop.
#[derive(Debug)]
pub struct Ccache {
    dir: tempfile::TempDir,
    /// The principal it holds.
    pub principal: String,
}

impl Ccache {
    /// The value for `KRB5CCNAME`.
    pub fn name(&self) -> String {
        format!("FILE:{}", self.path().display())
    }

    /// The cache file.
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("cc")
    }

    /// The directory holding the cache (0700), free for other private files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// A file found in a node's `/tmp`.
#[derive(Debug, Clone)]
pub struct NodeFile {
    /// The file name.
    pub name: String,
    /// Its path on the host.
    pub path: PathBuf,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Permission bits (`0o400` for a pushed token).
    pub mode: u32,
    /// Contents.
    pub contents: Vec<u8>,
}

impl NodeFile {
    /// The contents as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.contents).into_owned()
    }
}

/// One successful Kerberos login at the vault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultLogin {
    /// The real service name of the login path.
    pub service: String,
    /// The Kerberos principal that logged in.
    pub principal: String,
}

/// A message in the sandbox's Maildir.
#[derive(Debug, Clone)]
pub struct Mail {
    /// The message file.
    pub path: PathBuf,
    /// The whole message as received.
    pub raw: String,
    /// Header fields in order, unfolded, names as sent.
    pub headers: Vec<(String, String)>,
    /// The body, with a base64 or quoted-printable transfer encoding undone.
    pub body: String,
}

impl Mail {
    fn parse(path: PathBuf, raw: String) -> Self {
        let normalised = raw.replace("\r\n", "\n");
        let (head, body) = normalised
            .split_once("\n\n")
            .unwrap_or((normalised.as_str(), ""));
        let mut headers: Vec<(String, String)> = Vec::new();
        for line in head.lines() {
            if line.starts_with([' ', '\t']) {
                if let Some((_, value)) = headers.last_mut() {
                    value.push(' ');
                    value.push_str(line.trim());
                }
            } else if let Some((name, value)) = line.split_once(':') {
                headers.push((name.trim().to_owned(), value.trim().to_owned()));
            }
        }
        let encoding = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("Content-Transfer-Encoding"))
            .map(|(_, v)| v.to_ascii_lowercase());
        let body = match encoding.as_deref() {
            Some("base64") => decode_base64(body).map_or_else(
                || body.to_owned(),
                |b| String::from_utf8_lossy(&b).into_owned(),
            ),
            Some("quoted-printable") => {
                String::from_utf8_lossy(&decode_quoted_printable(body, false)).into_owned()
            }
            _ => body.to_owned(),
        };
        Self {
            path,
            raw,
            headers,
            body,
        }
    }

    /// The first header field of that name (case-insensitive), decoded.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| decode_encoded_words(v))
    }

    /// The decoded subject.
    pub fn subject(&self) -> Option<String> {
        self.header("Subject")
    }

    /// The envelope recipients (the `X-RcptTo` header the SMTP server adds).
    pub fn rcpt_to(&self) -> Vec<String> {
        split_addresses(self.header("X-RcptTo").as_deref().unwrap_or(""))
    }

    /// The envelope sender (`X-MailFrom`).
    pub fn mail_from(&self) -> Option<String> {
        self.header("X-MailFrom")
    }

    /// The `To` header's addresses.
    pub fn to(&self) -> Vec<String> {
        split_addresses(self.header("To").as_deref().unwrap_or(""))
    }
}

fn split_addresses(list: &str) -> Vec<String> {
    list.split(',')
        .map(|a| {
            let a = a.trim();
            match (a.find('<'), a.rfind('>')) {
                (Some(l), Some(r)) if l < r => a[l + 1..r].to_owned(),
                _ => a.to_owned(),
            }
        })
        .filter(|a| !a.is_empty())
        .collect()
}

fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            b'=' => break,
            b' ' | b'\t' | b'\r' | b'\n' => continue,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((acc >> bits) & 0xff).ok()?);
        }
    }
    Some(out)
}

fn decode_quoted_printable(text: &str, underscore_is_space: bool) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'=' if bytes.get(i + 1) == Some(&b'\n') => i += 2,
            b'=' if bytes.get(i + 1) == Some(&b'\r') && bytes.get(i + 2) == Some(&b'\n') => i += 3,
            b'=' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'=');
                        i += 1;
                    }
                }
            }
            b'_' if underscore_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// Decode RFC 2047 encoded words (`=?utf-8?B?...?=`, `=?utf-8?Q?...?=`).
fn decode_encoded_words(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    let mut last_was_word = false;
    while let Some(start) = rest.find("=?") {
        let (before, from) = rest.split_at(start);
        let decoded = from[2..].split_once('?').and_then(|(_charset, r)| {
            let (enc, r) = r.split_once('?')?;
            let (text, after) = r.split_once("?=")?;
            let bytes = match enc {
                "B" | "b" => decode_base64(text)?,
                "Q" | "q" => decode_quoted_printable(text, true),
                _ => return None,
            };
            Some((String::from_utf8_lossy(&bytes).into_owned(), after))
        });
        if let Some((text, after)) = decoded {
            // Whitespace between two encoded words is not part of the text.
            if !(last_was_word && before.trim().is_empty()) {
                out.push_str(before);
            }
            out.push_str(&text);
            rest = after;
            last_was_word = true;
        } else {
            out.push_str(before);
            out.push_str("=?");
            rest = &from[2..];
            last_was_word = false;
        }
    }
    out.push_str(rest);
    out
}

fn unique_suffix() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{}x{nanos:x}", std::process::id())
}

fn describe(out: &Output) -> String {
    let mut s = format!("exit {}", out.status);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !stdout.trim().is_empty() {
        let _ = write!(s, "\n--- stdout\n{}", stdout.trim_end());
    }
    if !stderr.trim().is_empty() {
        let _ = write!(s, "\n--- stderr\n{}", stderr.trim_end());
    }
    s
}

impl Sandbox {
    /// The `scripts/sandbox` of this repository (or `MANAGED_TOKENS_SANDBOX_SCRIPT`).
    pub fn script() -> PathBuf {
        std::env::var_os("MANAGED_TOKENS_SANDBOX_SCRIPT").map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/sandbox"),
            PathBuf::from,
        )
    }

    /// Start a sandbox in a fresh directory with the default [`Options`].
    ///
    /// # Panics
    /// When the machine is not provisioned (run `scripts/sandbox provision`)
    /// or the sandbox does not come up; the message carries the script's output.
    pub fn start() -> Self {
        Self::start_with(&Options::default())
    }

    /// Start a sandbox with explicit [`Options`].
    ///
    /// # Panics
    /// As [`Sandbox::start`].
    pub fn start_with(options: &Options) -> Self {
        let script = Self::script();
        assert!(
            script.is_file(),
            "sandbox script {} is missing",
            script.display()
        );
        let cache = options
            .cache
            .clone()
            .or_else(|| std::env::var_os("MANAGED_TOKENS_SANDBOX_CACHE").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE));
        let needed = [
            cache.join("bin/bao"),
            cache.join("vault-template/init.json"),
            cache.join("venv/bin/htgettoken"),
            cache.join("trixie/usr/sbin/condor_master"),
        ];
        let missing: Vec<String> = needed
            .iter()
            .filter(|p| !p.exists())
            .map(|p| p.display().to_string())
            .collect();
        assert!(
            missing.is_empty(),
            "the real-services sandbox is not provisioned on this machine (missing: {}); \
             run `scripts/sandbox provision` as root once, then rerun the tests",
            missing.join(", ")
        );

        let parent = options
            .parent
            .clone()
            .or_else(|| std::env::var_os("CARGO_TARGET_TMPDIR").map(PathBuf::from))
            .unwrap_or_else(std::env::temp_dir);
        fs::create_dir_all(&parent)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", parent.display()));
        let dir = tempfile::Builder::new()
            .prefix("mt-sandbox-")
            .tempdir_in(&parent)
            .unwrap_or_else(|e| {
                panic!(
                    "cannot create a sandbox directory in {}: {e}",
                    parent.display()
                )
            });

        let out = Command::new(&script)
            .arg("up")
            .arg(dir.path())
            .env("MANAGED_TOKENS_SANDBOX_CACHE", &cache)
            .env(
                "MANAGED_TOKENS_SANDBOX_OWNER",
                std::process::id().to_string(),
            )
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        if !out.status.success() {
            // `up` takes down whatever it started when it fails.
            let _ = Command::new(&script)
                .arg("down")
                .arg(dir.path())
                .stdin(Stdio::null())
                .output();
            panic!(
                "`{} up {}` failed: {}",
                script.display(),
                dir.path().display(),
                describe(&out)
            );
        }
        let json = dir.path().join("sandbox.json");
        let text = fs::read_to_string(&json)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", json.display()));
        let info: SandboxInfo = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("cannot parse {}: {e}", json.display()));
        let keep = options.keep
            || std::env::var_os("MANAGED_TOKENS_SANDBOX_KEEP").is_some_and(|v| v == "1");
        Self {
            info,
            script,
            cache,
            dir: Some(dir),
            keep,
        }
    }

    /// The parsed `sandbox.json`.
    pub fn info(&self) -> &SandboxInfo {
        &self.info
    }

    /// The sandbox directory.
    pub fn dir(&self) -> &Path {
        &self.info.dir
    }

    /// A configured service by configuration name.
    ///
    /// # Panics
    /// When there is no such service.
    pub fn service(&self, name: &str) -> &ServiceInfo {
        self.info.services.get(name).unwrap_or_else(|| {
            panic!(
                "no service {name} in the sandbox (have: {:?})",
                self.info.services.keys().collect::<Vec<_>>()
            )
        })
    }

    fn run_script(&self, args: &[&str]) -> Output {
        let out = Command::new(&self.script)
            .args(args)
            .env("MANAGED_TOKENS_SANDBOX_CACHE", &self.cache)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.script.display()));
        assert!(
            out.status.success(),
            "`scripts/sandbox {}` failed: {}",
            args.join(" "),
            describe(&out)
        );
        out
    }

    /// Stop one component: `kdc`, `vault`, `smtp`, `credd` (the last credd),
    /// `credd:<address>` or `node:<name>`.
    ///
    /// # Panics
    /// When the script fails.
    pub fn stop(&self, component: &str) {
        let dir = self.dir().to_string_lossy().into_owned();
        self.run_script(&["stop", &dir, component]);
    }

    /// Start a stopped component again, on the same port with the same state.
    ///
    /// # Panics
    /// When the script fails.
    pub fn start_component(&self, component: &str) {
        let dir = self.dir().to_string_lossy().into_owned();
        self.run_script(&["start", &dir, component]);
    }

    /// The environment of `DIR/env` as pairs.
    pub fn env(&self) -> &BTreeMap<String, String> {
        &self.info.env
    }

    /// A command for `program` (a product binary or a tool) with the
    /// sandbox's environment applied and stdin closed.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.envs(&self.info.env).stdin(Stdio::null());
        cmd
    }

    /// `kinit` a service's principal from its keytab into a private cache.
    ///
    /// # Panics
    /// When kinit fails.
    pub fn kinit(&self, service: &str) -> Ccache {
        let svc = self.service(service);
        let dir = tempfile::Builder::new()
            .prefix("mt-ccache-")
            .tempdir()
            .expect("a temporary directory for a ccache");
        let cc = Ccache {
            dir,
            principal: svc.principal.clone(),
        };
        let out = self
            .command("kinit")
            .args(["-k", "-t"])
            .arg(&svc.keytab)
            .arg(&svc.principal)
            .env("KRB5CCNAME", cc.name())
            .output()
            .expect("kinit runs");
        assert!(
            out.status.success(),
            "kinit of {} failed: {}",
            svc.principal,
            describe(&out)
        );
        cc
    }

    /// Run `ssh` to a node as `account` with the given credential cache.
    pub fn ssh(&self, ccache: &Ccache, account: &str, node: &str, remote: &str) -> Output {
        self.command("ssh")
            .arg("-F")
            .arg(&self.info.ssh_config)
            .args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=10"])
            .arg(format!("{account}@{node}"))
            .arg(remote)
            .env("KRB5CCNAME", ccache.name())
            .output()
            .expect("ssh runs")
    }

    /// The host directory that is `node`'s `/tmp`.
    ///
    /// # Panics
    /// When there is no such node.
    pub fn node_tmp(&self, node: &str) -> &Path {
        &self
            .info
            .nodes
            .get(node)
            .unwrap_or_else(|| {
                panic!(
                    "no node {node} (have: {:?})",
                    self.info.nodes.keys().collect::<Vec<_>>()
                )
            })
            .tmp
    }

    /// The regular files in `node`'s `/tmp`, by name.
    ///
    /// # Panics
    /// When the directory cannot be read.
    pub fn node_files(&self, node: &str) -> Vec<NodeFile> {
        let tmp = self.node_tmp(node);
        let mut files = Vec::new();
        for entry in
            fs::read_dir(tmp).unwrap_or_else(|e| panic!("cannot list {}: {e}", tmp.display()))
        {
            let entry = entry.expect("a directory entry");
            let meta = entry.metadata().expect("file metadata");
            if !meta.is_file() {
                continue;
            }
            files.push(NodeFile {
                name: entry.file_name().to_string_lossy().into_owned(),
                path: entry.path(),
                uid: meta.uid(),
                gid: meta.gid(),
                mode: meta.mode() & 0o7777,
                contents: fs::read(entry.path()).unwrap_or_default(),
            });
        }
        files.sort_by(|a, b| a.name.cmp(&b.name));
        files
    }

    /// One file in `node`'s `/tmp`.
    pub fn node_file(&self, node: &str, name: &str) -> Option<NodeFile> {
        self.node_files(node).into_iter().find(|f| f.name == name)
    }

    /// The messages the SMTP server received, oldest first.
    ///
    /// # Panics
    /// When the Maildir cannot be read.
    pub fn mails(&self) -> Vec<Mail> {
        let mut paths = Vec::new();
        for sub in ["new", "cur"] {
            let dir = self.info.mail.join(sub);
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries {
                let path = entry.expect("a Maildir entry").path();
                if path.is_file() {
                    paths.push(path);
                }
            }
        }
        // Maildir names start with the delivery time in seconds, then a
        // sequence; sort by modification time, then name.
        let mut keyed: Vec<_> = paths
            .into_iter()
            .map(|p| {
                (
                    fs::metadata(&p)
                        .and_then(|m| m.modified())
                        .unwrap_or(UNIX_EPOCH),
                    p,
                )
            })
            .collect();
        keyed.sort();
        keyed
            .into_iter()
            .map(|(_, p)| {
                let raw =
                    fs::read(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()));
                Mail::parse(p, String::from_utf8_lossy(&raw).into_owned())
            })
            .collect()
    }

    /// A command for an HTCondor tool (through the sandbox's wrappers)
    /// talking to `credd`.
    pub fn condor_tool(&self, tool: &str, credd: &str) -> Command {
        let mut cmd = self.command(self.info.bin.join(tool));
        cmd.env("_condor_CREDD_HOST", credd);
        cmd
    }

    /// `condor_store_cred query-oauth -s <service>` against `credd`.
    pub fn credd_query(&self, credd: &str, service: &str) -> Output {
        self.condor_tool("condor_store_cred", credd)
            .args(["query-oauth", "-s", service])
            .output()
            .expect("condor_store_cred runs")
    }

    /// Whether `credd` holds a credential for `service` (query-oauth rc 0).
    ///
    /// # Panics
    /// On any answer other than "stored" (rc 0) or "not stored" (rc 1).
    pub fn credd_has_credential(&self, credd: &str, service: &str) -> bool {
        let out = self.credd_query(credd, service);
        match out.status.code() {
            Some(0) => true,
            Some(1) => false,
            _ => panic!(
                "query-oauth -s {service} at {credd} failed: {}",
                describe(&out)
            ),
        }
    }

    /// The credds the product discovers: `condor_status -schedd` with the
    /// configured constraint.
    ///
    /// # Panics
    /// When condor_status fails.
    pub fn discover_credds(&self) -> Vec<String> {
        let out = self
            .command(self.info.bin.join("condor_status"))
            .args([
                "-pool",
                &self.info.collector,
                "-constraint",
                "ManagedTokensSandbox =?= true",
                "-schedd",
                "-af",
                "Name",
            ])
            .output()
            .expect("condor_status runs");
        assert!(
            out.status.success(),
            "condor_status failed: {}",
            describe(&out)
        );
        let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect();
        names.sort();
        names
    }

    /// Every successful Kerberos login at the vault so far.
    pub fn vault_logins(&self) -> Vec<VaultLogin> {
        fs::read_to_string(&self.info.vault.logins)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(s, p)| VaultLogin {
                service: s.to_owned(),
                principal: p.trim().to_owned(),
            })
            .collect()
    }

    /// How many Kerberos logins the vault saw for `service` (a real name).
    pub fn vault_login_count(&self, service: &str) -> usize {
        self.vault_logins()
            .iter()
            .filter(|l| l.service == service)
            .count()
    }

    /// A name no other test of this process uses (for storer ids, files).
    pub fn unique(prefix: &str) -> String {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        format!(
            "{prefix}{}n{}",
            unique_suffix(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        )
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let out = Command::new(&self.script)
            .arg("down")
            .arg(&self.info.dir)
            .env("MANAGED_TOKENS_SANDBOX_CACHE", &self.cache)
            .stdin(Stdio::null())
            .output();
        let failed = match &out {
            Ok(o) if o.status.success() => None,
            Ok(o) => Some(describe(o)),
            Err(e) => Some(e.to_string()),
        };
        // Kept when asked, or when `down` failed and something may still use
        // it; otherwise dropping the TempDir removes it.
        if let Some(dir) = self.dir.take()
            && (self.keep || failed.is_some())
        {
            let _kept = dir.keep();
        }
        if let Some(why) = failed {
            #[allow(
                clippy::print_stderr,
                reason = "a failed teardown must be visible; Drop cannot return it"
            )]
            {
                eprintln!(
                    "managed-tokens-test-support: `down {}` failed: {why}",
                    self.info.dir.display()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_maildir_message() {
        let raw = "From: a@x\r\nTo: Ops <ops@x>, b@x\r\nSubject: =?utf-8?B?aMOpbGxv?= world\r\n\
                   Content-Transfer-Encoding: quoted-printable\r\nX-RcptTo: ops@x,\r\n \
                   c@x\r\n\r\nline one=\r\n continued =3D ok\r\n";
        let mail = Mail::parse(PathBuf::from("m"), raw.to_owned());
        assert_eq!(mail.subject().as_deref(), Some("héllo world"));
        assert_eq!(mail.rcpt_to(), vec!["ops@x".to_owned(), "c@x".to_owned()]);
        assert_eq!(mail.to(), vec!["ops@x".to_owned(), "b@x".to_owned()]);
        assert_eq!(mail.body, "line one continued = ok\n");
    }

    #[test]
    fn decodes_base64() {
        assert_eq!(decode_base64("aGVsbG8=").as_deref(), Some(&b"hello"[..]));
        assert_eq!(decode_base64("aGVs\nbG8").as_deref(), Some(&b"hello"[..]));
    }
}
