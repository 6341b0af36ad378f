//! rsync over Kerberos ssh to the destination nodes.

use std::path::PathBuf;
use std::time::Duration;

use crate::report::{FailureClass, Pattern};
use crate::runner::Command;
use crate::service::Service;

/// ssh options set unless the configuration's `sshOptions` sets the same key. ssh takes
/// the first value it reads for an option, so the operator's options go first.
const SSH_DEFAULTS: [(&str, &str); 4] = [
    ("ServerAliveInterval", "30"),
    ("ServerAliveCountMax", "1"),
    ("GSSAPIAuthentication", "yes"),
    ("GSSAPIDelegateCredentials", "no"),
];

/// The ssh command line rsync runs (`-e`): `BatchMode=yes` always, so nothing can prompt,
/// then the operator's options, then the defaults they did not override.
pub fn ssh_command_line(service: &Service, connect_timeout: Duration) -> String {
    let mut words = vec![
        "ssh".to_string(),
        "-o".to_string(),
        "BatchMode=yes".to_string(),
    ];
    let mut given: Vec<String> = Vec::new();
    let mut iter = service.ssh_options.iter().peekable();
    while let Some(word) = iter.next() {
        let option = if word == "-o" {
            iter.peek().map(|v| v.as_str())
        } else {
            word.strip_prefix("-o")
        };
        if let Some(option) = option {
            let key = option
                .split(['=', ' '])
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase();
            if key == "batchmode" {
                log::warn!(
                    "`{}`: ignoring BatchMode in sshOptions; pushes never prompt",
                    service.name
                );
                if word == "-o" {
                    iter.next();
                }
                continue;
            }
            given.push(key);
        }
        words.push(word.clone());
    }
    let connect = connect_timeout.as_secs().clamp(1, 30).to_string();
    let defaults = std::iter::once(("ConnectTimeout", connect.as_str())).chain(SSH_DEFAULTS);
    for (key, value) in defaults {
        if !given.contains(&key.to_ascii_lowercase()) {
            words.push("-o".into());
            words.push(format!("{key}={value}"));
        }
    }
    words.join(" ")
}

/// Files for one destination directory on a node.
#[derive(Debug, Clone)]
pub struct Batch {
    /// The remote directory, absolute.
    pub dir: String,
    /// Local files, already named as they must be at the destination.
    pub files: Vec<PathBuf>,
}

/// `rsync -e "<ssh>" [fileCopierOptions] --perms --chmod=u=r,go= <files> <account>@<node>:<dir>/`
///
/// The permission options come after the operator's so that 0400 holds whatever they say.
/// rsync writes a temporary file next to the destination and renames it, so a node never
/// sees a partial token.
pub fn rsync_command(
    service: &Service,
    node: &str,
    batch: &Batch,
    ccache: &str,
    timeout: Duration,
) -> Command {
    Command::new("rsync")
        .arg("-e")
        .arg(ssh_command_line(service, timeout))
        .args(service.rsync_options.iter())
        .args(["--perms", "--chmod=u=r,go="])
        .args(batch.files.iter())
        .arg(format!(
            "{}@{node}:{}/",
            service.account,
            batch.dir.trim_end_matches('/')
        ))
        .env("KRB5CCNAME", ccache)
        .timeout(timeout)
}

/// Patterns in ssh's and rsync's messages, in the order they decide the class (otherwise
/// [`FailureClass::RsyncFailed`]).
///
/// A node whose sshd accepts the connection but never answers (hung, stopped, overloaded)
/// makes ssh give up at `ConnectTimeout` with "Connection timed out during banner
/// exchange": the host is there, so that is a timeout, not an unreachable node, and it
/// must be matched before the generic "connection timed out" of a failed `connect()`.
pub const PATTERNS: [Pattern; 11] = [
    (&["during banner exchange"], FailureClass::Timeout),
    (&["timeout in data send/receive"], FailureClass::Timeout),
    (&["connection refused"], FailureClass::Unreachable),
    (&["no route to host"], FailureClass::Unreachable),
    (&["connection timed out"], FailureClass::Unreachable),
    (&["operation timed out"], FailureClass::Unreachable),
    (&["could not resolve hostname"], FailureClass::Unreachable),
    (&["name or service not known"], FailureClass::Unreachable),
    (&["network is unreachable"], FailureClass::Unreachable),
    (
        &["permission denied ("],
        FailureClass::AuthenticationRefused,
    ),
    (
        &["host key verification failed"],
        FailureClass::AuthenticationRefused,
    ),
];

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::report::classify_output;

    fn rsync_class(stderr: &str) -> (FailureClass, Option<String>) {
        classify_output(stderr, &PATTERNS, FailureClass::RsyncFailed)
    }
    use crate::config::Config;

    fn service(ssh: &str) -> Service {
        let text = format!(
            "keytabPath: /k\nkerberosPrincipalPattern: '{{{{.Account}}}}@R'\ncondorCollectorHost: c\n\
             sshOptions: '{ssh}'\nexperiments:\n  e:\n    roles:\n      r: {{account: a, destinationNodes: [n]}}\n"
        );
        Config::from_str(&text, false, Path::new("x.yml"))
            .unwrap()
            .services
            .remove(0)
    }

    #[test]
    fn classifies_recorded_rsync_output() {
        let refused =
            include_str!("../../../tests/fixtures/tool-output/rsync-connection-refused.txt");
        let (class, line) = rsync_class(refused);
        assert_eq!(class, FailureClass::Unreachable);
        assert!(line.unwrap().starts_with("ssh: connect to host"));
        let denied =
            include_str!("../../../tests/fixtures/tool-output/rsync-permission-denied.txt");
        let (class, line) = rsync_class(denied);
        assert_eq!(class, FailureClass::AuthenticationRefused);
        assert!(line.unwrap().contains("Permission denied (gssapi"));
    }

    #[test]
    fn operator_options_come_first_and_replace_defaults() {
        let line = ssh_command_line(
            &service("-F /s/ssh_config -o ConnectTimeout=5 -o BatchMode=no"),
            Duration::from_secs(30),
        );
        assert_eq!(
            line,
            "ssh -o BatchMode=yes -F /s/ssh_config -o ConnectTimeout=5 -o ServerAliveInterval=30 \
             -o ServerAliveCountMax=1 -o GSSAPIAuthentication=yes -o GSSAPIDelegateCredentials=no"
        );
    }

    #[test]
    fn a_hung_sshd_is_a_timeout_not_an_unreachable_node() {
        let (class, line) = rsync_class(
            "Connection timed out during banner exchange\r\n\
             rsync: connection unexpectedly closed (0 bytes received so far) [sender]\n",
        );
        assert_eq!(class, FailureClass::Timeout);
        assert_eq!(
            line.as_deref(),
            Some("Connection timed out during banner exchange")
        );
        let (class, _) = rsync_class("ssh: connect to host n port 22: Connection timed out\r\n");
        assert_eq!(class, FailureClass::Unreachable);
    }

    #[test]
    fn permissions_follow_operator_options() {
        let s = service("");
        let batch = Batch {
            dir: "/tmp".into(),
            files: vec!["/s/vt_u5".into(), "/s/vt_u5-e_r".into()],
        };
        let argv = rsync_command(&s, "node1", &batch, "FILE:/c", Duration::from_secs(30)).argv();
        assert_eq!(
            &argv[3..],
            [
                "--perms",
                "--chmod=u=r,go=",
                "/s/vt_u5",
                "/s/vt_u5-e_r",
                "a@node1:/tmp/"
            ]
        );
    }
}
