//! The only place that starts child processes.
//!
//! Every child gets an argument vector (never a shell), a closed stdin, captured stdout
//! and stderr, its own process group, and a timeout after which the whole group is
//! killed; environment variables are set on the child only. A [`Runner`] also carries the
//! run's global deadline: past it no child starts, and running ones are cut short. On
//! SIGTERM, [`Runner::cancel`] kills every live process group.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fmt;
use std::io;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use log::{debug, trace, warn};

use crate::report::Failure;
use crate::service::Retry;

/// Variables the product manages; removed from the inherited environment of every child
/// so that only the values set for that child apply.
const MANAGED_VARIABLES: [&str; 7] = [
    "KRB5CCNAME",
    "_condor_CREDD_HOST",
    "_condor_COLLECTOR_HOST",
    "HTGETTOKENOPTS",
    "_condor_SEC_CREDENTIAL_GETTOKEN_OPTS",
    "CONDOR_VAULT_STORER_ID",
    "BEARER_TOKEN_FILE",
];

/// Why children of a cancelled run fail.
const CANCELLED: &str = "the run was cancelled";

/// How long a killed group gets between SIGTERM and SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(2);

/// A command to run: program, arguments, environment and limits.
#[derive(Debug, Clone)]
pub struct Command {
    program: String,
    args: Vec<Word>,
    env: Vec<(String, Word)>,
    timeout: Duration,
    interactive: bool,
    cwd: Option<PathBuf>,
}

#[derive(Debug, Clone)]
struct Word {
    value: OsString,
    secret: bool,
}

impl Command {
    /// A command running `program` with a 60 s timeout.
    pub fn new(program: impl Into<String>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            timeout: Duration::from_secs(60),
            interactive: false,
            cwd: None,
        }
    }

    /// Appends an argument.
    #[must_use]
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(Word {
            value: arg.into(),
            secret: false,
        });
        self
    }

    /// Appends arguments.
    #[must_use]
    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(|a| Word {
            value: a.into(),
            secret: false,
        }));
        self
    }

    /// Sets an environment variable on the child.
    #[must_use]
    pub fn env(mut self, name: &str, value: impl Into<OsString>) -> Self {
        self.env.retain(|(n, _)| n != name);
        self.env.push((
            name.to_string(),
            Word {
                value: value.into(),
                secret: false,
            },
        ));
        self
    }

    /// Sets an environment variable whose value is masked wherever the command is shown.
    #[must_use]
    pub fn secret_env(mut self, name: &str, value: impl Into<OsString>) -> Self {
        self.env.retain(|(n, _)| n != name);
        self.env.push((
            name.to_string(),
            Word {
                value: value.into(),
                secret: true,
            },
        ));
        self
    }

    /// Sets the timeout.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Attaches the terminal (stdin, stdout, stderr) instead of capturing; for the
    /// operator-driven OIDC flow of onboarding only.
    #[must_use]
    pub fn interactive(mut self) -> Self {
        self.interactive = true;
        self
    }

    /// Runs the child in `dir`.
    #[must_use]
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// The program name.
    pub fn program(&self) -> &str {
        &self.program
    }

    /// The arguments, unmasked (for tests and for the runner itself).
    pub fn argv(&self) -> Vec<String> {
        std::iter::once(self.program.clone())
            .chain(
                self.args
                    .iter()
                    .map(|w| w.value.to_string_lossy().into_owned()),
            )
            .collect()
    }

    /// The value set for `name` on the child, if any.
    pub fn env_value(&self, name: &str) -> Option<String> {
        self.env
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, w)| w.value.to_string_lossy().into_owned())
    }

    /// The configured timeout.
    pub fn limit(&self) -> Duration {
        self.timeout
    }

    /// The variables set on the child, with secrets masked, as `NAME=value` words.
    pub fn env_display(&self) -> Vec<String> {
        self.env
            .iter()
            .map(|(n, w)| format!("{n}={}", w.display()))
            .collect()
    }
}

impl Word {
    fn display(&self) -> String {
        if self.secret {
            return "***".to_string();
        }
        let s = self.value.to_string_lossy();
        shlex::try_quote(&s)
            .map(|q| q.into_owned())
            .unwrap_or_else(|_| s.escape_debug().to_string())
    }
}

/// Renders the command as a shell would read it, environment first, secrets masked.
impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, value) in &self.env {
            write!(f, "{name}={} ", value.display())?;
        }
        f.write_str(&self.program)?;
        for arg in &self.args {
            write!(f, " {}", arg.display())?;
        }
        Ok(())
    }
}

/// What a finished child produced.
#[derive(Debug, Clone)]
pub struct Output {
    /// Exit code, or `None` when killed by a signal.
    pub code: Option<i32>,
    /// Captured stdout (empty when interactive).
    pub stdout: String,
    /// Captured stderr (empty when interactive).
    pub stderr: String,
    /// Wall time.
    pub duration: Duration,
}

impl Output {
    /// Whether the child exited with status 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// A child that could not run to a successful end.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    /// The program could not be started (missing, not executable, ...).
    #[error("could not start `{command}`: {source}")]
    Spawn {
        /// The rendered command.
        command: String,
        /// Why.
        source: io::Error,
    },
    /// The child exited with a non-zero status or was killed by a signal.
    #[error("`{command}` {status}{}", section(&output.stderr, &output.stdout))]
    Failed {
        /// The rendered command.
        command: String,
        /// "exited with status N" or "was killed by signal N".
        status: String,
        /// What it printed.
        output: Output,
    },
    /// The child outlived its timeout and its process group was killed.
    #[error("`{command}` timed out after {}{}", humantime::format_duration(*limit), section(stderr, ""))]
    TimedOut {
        /// The rendered command.
        command: String,
        /// The limit that expired.
        limit: Duration,
        /// Whether the limit was the run's global deadline rather than the stage timeout.
        global: bool,
        /// What it printed on stderr before it was killed.
        stderr: String,
    },
    /// The run was cancelled (global deadline passed or SIGTERM) before the child started,
    /// or the child failed after a SIGTERM cancelled the run.
    #[error("`{command}` not started: {reason}")]
    Cancelled {
        /// The rendered command.
        command: String,
        /// Why the run was cancelled.
        reason: &'static str,
    },
}

impl CmdError {
    /// What the child wrote on stderr, if it ran.
    pub fn stderr(&self) -> &str {
        match self {
            Self::Failed { output, .. } => &output.stderr,
            Self::TimedOut { stderr, .. } => stderr,
            Self::Spawn { .. } | Self::Cancelled { .. } => "",
        }
    }

    /// What the child wrote on stdout, if it ran to its end.
    pub fn stdout(&self) -> &str {
        match self {
            Self::Failed { output, .. } => &output.stdout,
            _ => "",
        }
    }

    /// The child's exit code, when it exited on its own.
    pub fn code(&self) -> Option<i32> {
        match self {
            Self::Failed { output, .. } => output.code,
            _ => None,
        }
    }
}

fn section(stderr: &str, stdout: &str) -> String {
    let mut s = String::new();
    if !stderr.trim().is_empty() {
        s.push_str("\n--- stderr\n");
        s.push_str(stderr.trim_end());
    }
    if !stdout.trim().is_empty() {
        s.push_str("\n--- stdout\n");
        s.push_str(stdout.trim_end());
    }
    s
}

/// Starts children within the run's deadline, and kills them all on cancellation.
#[derive(Debug, Clone)]
pub struct Runner {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    deadline: Instant,
    cancelled: AtomicBool,
    live: Mutex<HashSet<i32>>,
}

impl Runner {
    /// A runner whose children must all finish by `deadline`.
    pub fn new(deadline: Instant) -> Self {
        Self {
            inner: Arc::new(Inner {
                deadline,
                cancelled: AtomicBool::new(false),
                live: Mutex::new(HashSet::new()),
            }),
        }
    }

    /// The run's deadline.
    pub fn deadline(&self) -> Instant {
        self.inner.deadline
    }

    /// Whether the run has been cancelled or is past its deadline.
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancelled.load(Ordering::SeqCst) || Instant::now() >= self.inner.deadline
    }

    /// Stops the run: no child starts any more and every live process group is killed.
    pub fn cancel(&self) {
        self.inner.cancelled.store(true, Ordering::SeqCst);
        let groups: Vec<i32> = self.live().iter().copied().collect();
        for group in groups {
            signal_group(group, rustix::process::Signal::TERM);
        }
    }

    /// Sleeps for `duration`, or less if the run is cancelled meanwhile.
    pub fn sleep(&self, duration: Duration) {
        let end = Instant::now() + duration;
        while !self.is_cancelled() {
            let now = Instant::now();
            if now >= end {
                break;
            }
            std::thread::sleep((end - now).min(Duration::from_millis(100)));
        }
    }

    /// Runs `attempt`, and again after `policy.sleep` while it fails with a failure that
    /// `retryable` accepts, attempts are left, the run goes on and, with an `end`, the
    /// next attempt would start before it. `what` names the work in the log.
    pub fn retry<T>(
        &self,
        policy: Retry,
        what: &str,
        end: Option<Instant>,
        retryable: impl Fn(&Failure) -> bool,
        mut attempt: impl FnMut() -> Result<T, Failure>,
    ) -> Result<T, Failure> {
        let mut done = 0;
        loop {
            match attempt() {
                Err(f)
                    if done < policy.retries
                        && retryable(&f)
                        && !self.is_cancelled()
                        && end.is_none_or(|end| Instant::now() + policy.sleep < end) =>
                {
                    done += 1;
                    warn!("{what} failed, retrying ({done}/{}): {f}", policy.retries);
                    self.sleep(policy.sleep);
                }
                result => return result,
            }
        }
    }

    /// Runs `cmd` and fails unless it exits with status 0.
    pub fn run(&self, cmd: &Command) -> Result<Output, CmdError> {
        let output = self.run_unchecked(cmd)?;
        if output.success() {
            return Ok(output);
        }
        let status = match output.code {
            Some(code) => format!("exited with status {code}"),
            None => "was killed by a signal".to_string(),
        };
        Err(CmdError::Failed {
            command: cmd.to_string(),
            status,
            output,
        })
    }

    /// Runs `cmd` and returns its output whatever its exit status.
    pub fn run_unchecked(&self, cmd: &Command) -> Result<Output, CmdError> {
        let rendered = cmd.to_string();
        let (limit, global) = self.limit(cmd, &rendered)?;
        debug!("running {rendered}");
        let started = Instant::now();
        let (raw, killed) = self
            .supervise(cmd, limit)
            .map_err(|source| CmdError::Spawn {
                command: rendered.clone(),
                source,
            })?;
        let duration = started.elapsed();

        // `cancel` signals every live group itself, so a child usually dies of it before
        // `wait` sees the flag; its failure is the cancellation, not its own.
        if self.inner.cancelled.load(Ordering::SeqCst) && (killed || !raw.status.success()) {
            return Err(CmdError::Cancelled {
                command: rendered,
                reason: CANCELLED,
            });
        }
        let output = Output {
            code: raw.status.code(),
            stdout: String::from_utf8_lossy(&raw.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&raw.stderr).into_owned(),
            duration,
        };
        if killed {
            // What it printed before it was killed often says why it hung.
            return Err(CmdError::TimedOut {
                command: rendered,
                limit,
                global,
                stderr: output.stderr,
            });
        }
        let status = raw.status.code().map_or_else(
            || format!("signal {:?}", raw.status.signal()),
            |c| format!("status {c}"),
        );
        debug!(
            "`{}` finished with {status} in {:.2}s",
            cmd.program,
            duration.as_secs_f64()
        );
        // Child output can carry tokens; it is scrubbed even at trace level.
        trace!(
            "`{}` stdout: {:?}",
            cmd.program,
            crate::secret::scrub(&output.stdout)
        );
        trace!(
            "`{}` stderr: {:?}",
            cmd.program,
            crate::secret::scrub(&output.stderr)
        );
        Ok(output)
    }

    /// How long `cmd` may run: its timeout, clipped to the run's deadline (`true` when
    /// clipped); an error when the run is cancelled or past its deadline.
    fn limit(&self, cmd: &Command, rendered: &str) -> Result<(Duration, bool), CmdError> {
        let refuse = |reason| {
            Err(CmdError::Cancelled {
                command: rendered.to_string(),
                reason,
            })
        };
        if self.inner.cancelled.load(Ordering::SeqCst) {
            return refuse(CANCELLED);
        }
        let now = Instant::now();
        if now >= self.inner.deadline {
            return refuse("the run's global timeout has passed");
        }
        if now + cmd.timeout > self.inner.deadline {
            Ok((self.inner.deadline - now, true))
        } else {
            Ok((cmd.timeout, false))
        }
    }

    /// Starts `cmd` and waits for it, killing its process group at `limit` or on
    /// cancellation; returns what it produced and whether it had to be killed.
    fn supervise(
        &self,
        cmd: &Command,
        limit: Duration,
    ) -> io::Result<(std::process::Output, bool)> {
        let handle = spawn(cmd)?;
        let group = handle
            .pids()
            .first()
            .and_then(|&pid| i32::try_from(pid).ok());
        if let Some(group) = group.filter(|_| !cmd.interactive) {
            self.live().insert(group);
        }
        let waited = self.wait(&handle, group, limit, cmd.interactive);
        if let Some(group) = group {
            self.live().remove(&group);
        }
        waited
    }

    /// Waits for the child, killing it at `limit` or on cancellation.
    fn wait(
        &self,
        handle: &duct::Handle,
        group: Option<i32>,
        limit: Duration,
        interactive: bool,
    ) -> io::Result<(std::process::Output, bool)> {
        let end = Instant::now() + limit;
        loop {
            let step = end
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(50));
            if let Some(out) = handle.wait_timeout(step)? {
                return Ok((out.clone(), false));
            }
            if Instant::now() >= end || self.inner.cancelled.load(Ordering::SeqCst) {
                break;
            }
        }
        match group {
            Some(group) if !interactive => {
                signal_group(group, rustix::process::Signal::TERM);
                if handle.wait_timeout(KILL_GRACE)?.is_none() {
                    signal_group(group, rustix::process::Signal::KILL);
                }
            }
            _ => handle.kill()?,
        }
        // Every member of the group is gone, so the captured pipes close and this returns.
        Ok((handle.wait()?.clone(), true))
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashSet<i32>> {
        self.inner
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[expect(
    clippy::disallowed_methods,
    reason = "this module is the one place children start"
)]
fn spawn(cmd: &Command) -> io::Result<duct::Handle> {
    let args: Vec<OsString> = cmd.args.iter().map(|w| w.value.clone()).collect();
    let mut expr = duct::cmd(&cmd.program, args).unchecked();
    for name in MANAGED_VARIABLES {
        if !cmd.env.iter().any(|(n, _)| n == name) {
            expr = expr.env_remove(name);
        }
    }
    for (name, value) in &cmd.env {
        expr = expr.env(name, &value.value);
    }
    if let Some(dir) = &cmd.cwd {
        expr = expr.dir(dir);
    }
    if !cmd.interactive {
        // A group of its own lets a timeout kill grandchildren too (ssh under rsync,
        // htgettoken under condor_vault_storer), which would otherwise hold the pipes open.
        expr = expr
            .stdin_null()
            .stdout_capture()
            .stderr_capture()
            .before_spawn(|c| {
                c.process_group(0);
                Ok(())
            });
    }
    expr.start()
}

fn signal_group(group: i32, signal: rustix::process::Signal) {
    let Some(pid) = rustix::process::Pid::from_raw(group) else {
        return;
    };
    if let Err(e) = rustix::process::kill_process_group(pid, signal)
        && e != rustix::io::Errno::SRCH
    {
        warn!("failed to signal process group {group}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runner() -> Runner {
        Runner::new(Instant::now() + Duration::from_secs(60))
    }

    #[test]
    fn captures_output_and_status() {
        let out = runner()
            .run(&Command::new("sh").args(["-c", "echo out; echo err >&2"]))
            .unwrap();
        assert_eq!(out.stdout, "out\n");
        assert_eq!(out.stderr, "err\n");
        let err = runner()
            .run(&Command::new("sh").args(["-c", "echo boom >&2; exit 3"]))
            .unwrap_err();
        assert_eq!(err.code(), Some(3));
        assert!(
            err.to_string()
                .contains("exited with status 3\n--- stderr\nboom"),
            "{err}"
        );
    }

    #[test]
    fn sets_environment_on_the_child_only() {
        let cmd = Command::new("sh")
            .args(["-c", "echo $KRB5CCNAME"])
            .env("KRB5CCNAME", "FILE:/x");
        assert_eq!(runner().run(&cmd).unwrap().stdout, "FILE:/x\n");
        assert!(std::env::var_os("KRB5CCNAME").is_none_or(|v| v != "FILE:/x"));
    }

    #[test]
    fn timeout_kills_the_whole_group() {
        let marker = tempfile::NamedTempFile::new().unwrap();
        let script = format!(
            "(sleep 3; echo alive > {}) & sleep 30",
            marker.path().display()
        );
        let started = Instant::now();
        let err = runner()
            .run(
                &Command::new("sh")
                    .args(["-c", &script])
                    .timeout(Duration::from_millis(300)),
            )
            .unwrap_err();
        assert!(
            matches!(err, CmdError::TimedOut { global: false, .. }),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(3));
        std::thread::sleep(Duration::from_millis(3500));
        assert_eq!(
            std::fs::read_to_string(marker.path()).unwrap(),
            "",
            "grandchild survived"
        );
    }

    #[test]
    fn a_timed_out_child_keeps_what_it_printed() {
        let cmd = Command::new("sh")
            .args(["-c", "echo waiting for the banner >&2; sleep 30"])
            .timeout(Duration::from_millis(300));
        let err = runner().run(&cmd).unwrap_err();
        assert!(matches!(err, CmdError::TimedOut { .. }), "{err}");
        assert_eq!(err.stderr(), "waiting for the banner\n");
    }

    #[test]
    fn deadline_clips_and_then_refuses() {
        let runner = Runner::new(Instant::now() + Duration::from_millis(300));
        let err = runner
            .run(
                &Command::new("sleep")
                    .arg("5")
                    .timeout(Duration::from_secs(10)),
            )
            .unwrap_err();
        assert!(
            matches!(err, CmdError::TimedOut { global: true, .. }),
            "{err}"
        );
        let err = runner.run(&Command::new("true")).unwrap_err();
        assert!(matches!(err, CmdError::Cancelled { .. }), "{err}");
    }

    #[test]
    fn cancel_kills_running_children_and_reports_it() {
        let runner = runner();
        let canceller = runner.clone();
        let started = Instant::now();
        let handle = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            canceller.cancel();
        });
        let err = runner.run(&Command::new("sleep").arg("30")).unwrap_err();
        handle.join().unwrap();
        assert!(matches!(err, CmdError::Cancelled { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn masks_secrets_when_displayed() {
        let cmd = Command::new("x")
            .secret_env("TOKEN", "hvs.secret")
            .env("A", "b c")
            .arg("it's");
        let shown = cmd.to_string();
        assert_eq!(shown, "TOKEN=*** A='b c' x \"it's\"");
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let err = runner()
            .run(&Command::new("/nonexistent/tool"))
            .unwrap_err();
        assert!(matches!(err, CmdError::Spawn { .. }), "{err}");
    }
}
