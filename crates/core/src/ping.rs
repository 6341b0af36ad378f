//! Node reachability: one ICMP echo, or a connection to the node's ssh port.

use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::report::{Failure, FailureClass};
use crate::runner::{Command, Runner};

/// `ping -W <s> -c 1 [pingOptions] <node>`; `-W` and `-c` in the options replace the
/// defaults (the Go service's merge).
pub fn ping_command(node: &str, options: &[String], timeout: Duration) -> Command {
    let has = |flag: &str| {
        options
            .iter()
            .any(|o| o == flag || (o.starts_with(flag) && o.len() > 2 && !o.starts_with("--")))
    };
    let mut cmd = Command::new("ping");
    if !has("-W") {
        cmd = cmd.arg("-W").arg("5");
    }
    if !has("-c") {
        cmd = cmd.arg("-c").arg("1");
    }
    cmd.args(options.iter()).arg(node).timeout(timeout)
}

/// Pings `node`.
pub fn ping(
    runner: &Runner,
    node: &str,
    options: &[String],
    timeout: Duration,
) -> Result<(), Failure> {
    runner
        .run(&ping_command(node, options, timeout))
        .map(|_| ())
        .map_err(|e| {
            Failure::from_cmd(
                FailureClass::Unreachable,
                format!("`{node}` did not answer ping"),
                &e,
            )
        })
}

/// `ssh -G [sshOptions] <node>`: ssh's resolved configuration, without connecting.
pub fn ssh_config_command(node: &str, ssh_options: &[String], timeout: Duration) -> Command {
    Command::new("ssh")
        .arg("-G")
        .args(ssh_options.iter())
        .arg(node)
        .timeout(timeout)
}

/// Checks that the node's ssh port, as ssh itself resolves it, accepts a connection.
pub fn probe_ssh(
    runner: &Runner,
    node: &str,
    ssh_options: &[String],
    timeout: Duration,
) -> Result<(), Failure> {
    let out = runner
        .run(&ssh_config_command(node, ssh_options, timeout))
        .map_err(|e| {
            Failure::from_cmd(
                FailureClass::Setup,
                format!("cannot resolve ssh settings for `{node}`"),
                &e,
            )
        })?;
    let (host, port) = host_and_port(&out.stdout, node);
    let end = Instant::now() + timeout;
    let addrs: Vec<_> = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| {
            Failure::new(
                FailureClass::Unreachable,
                format!("cannot resolve `{host}`: {e}"),
            )
        })?
        .collect();
    let mut last = None;
    for addr in addrs {
        let left = end
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(10));
        match TcpStream::connect_timeout(&addr, left) {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(format!("{addr}: {e}")),
        }
    }
    Err(Failure {
        detail: last,
        ..Failure::new(
            FailureClass::Unreachable,
            format!("ssh port {port} of `{node}` did not accept a connection"),
        )
    })
}

/// `hostname` and `port` from `ssh -G` output.
fn host_and_port(ssh_g: &str, node: &str) -> (String, u16) {
    let mut host = node.to_string();
    let mut port = 22;
    for line in ssh_g.lines() {
        if let Some(h) = line.strip_prefix("hostname ") {
            host = h.trim().to_string();
        } else if let Some(p) = line.strip_prefix("port ") {
            port = p.trim().parse().unwrap_or(22);
        }
    }
    (host, port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_replace_defaults() {
        let argv = ping_command("n", &["-W".into(), "1".into()], Duration::from_secs(5)).argv();
        assert_eq!(argv, ["ping", "-c", "1", "-W", "1", "n"]);
        let argv = ping_command("n", &[], Duration::from_secs(5)).argv();
        assert_eq!(argv, ["ping", "-W", "5", "-c", "1", "n"]);
    }

    #[test]
    fn reads_ssh_g() {
        assert_eq!(
            host_and_port("user x\nhostname 127.0.0.11\nport 2222\n", "n"),
            ("127.0.0.11".into(), 2222)
        );
    }
}
