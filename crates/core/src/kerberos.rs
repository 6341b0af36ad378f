//! kinit from a keytab into a private credential cache, and the klist check of its
//! principal.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::report::{Failure, FailureClass};
use crate::runner::{Command, Runner};
use crate::service::{Retry, Service};

/// A credential cache holding the service's ticket; children reach it via `KRB5CCNAME`.
#[derive(Debug, Clone)]
pub struct Ccache {
    path: PathBuf,
}

impl Ccache {
    /// The cache for `service` inside the run's private directory.
    pub fn for_service(dir: &Path, service: &Service) -> Self {
        Self {
            path: dir.join(format!("krb5cc_{}", service.name)),
        }
    }

    /// The value of `KRB5CCNAME`.
    pub fn env_value(&self) -> String {
        format!("FILE:{}", self.path.display())
    }
}

/// `kinit -k -t <keytab> <principal>` into `ccache`.
pub fn kinit_command(service: &Service, ccache: &Ccache, timeout: Duration) -> Command {
    Command::new("kinit")
        .arg("-k")
        .arg("-t")
        .arg(&service.keytab)
        .arg(&service.principal)
        .env("KRB5CCNAME", ccache.env_value())
        .timeout(timeout)
}

/// `klist` of `ccache`.
pub fn klist_command(ccache: &Ccache, timeout: Duration) -> Command {
    Command::new("klist")
        .env("KRB5CCNAME", ccache.env_value())
        .timeout(timeout)
}

/// Obtains a ticket for `service` and checks its principal; `timeout` covers kinit and
/// klist together, for every attempt.
pub fn obtain(
    runner: &Runner,
    service: &Service,
    ccache: &Ccache,
    timeout: Duration,
    retry: Retry,
) -> Result<(), Failure> {
    if !service.keytab.is_file() {
        return Err(Failure::new(
            FailureClass::KinitFailed,
            format!(
                "keytab `{}` does not exist or is not a file",
                service.keytab.display()
            ),
        ));
    }
    let end = Instant::now() + timeout;
    runner.retry(
        retry,
        &format!("kinit for `{}`", service.name),
        None,
        |f| f.class == FailureClass::KinitFailed,
        || attempt_once(runner, service, ccache, end),
    )
}

fn attempt_once(
    runner: &Runner,
    service: &Service,
    ccache: &Ccache,
    end: Instant,
) -> Result<(), Failure> {
    let remaining = || {
        end.saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    let what = format!("kinit as `{}`", service.principal);
    runner
        .run(&kinit_command(service, ccache, remaining()))
        .map_err(|e| Failure::from_cmd(FailureClass::KinitFailed, &what, &e))?;
    let out = runner
        .run(&klist_command(ccache, remaining()))
        .map_err(|e| Failure::from_cmd(FailureClass::KinitFailed, "klist after kinit", &e))?;
    match default_principal(&out.stdout) {
        Some(p) if p == service.principal => Ok(()),
        Some(p) => Err(Failure::new(
            FailureClass::PrincipalMismatch,
            format!(
                "the ticket is for `{p}`, the configuration expects `{}`",
                service.principal
            ),
        )),
        None => Err(Failure::new(
            FailureClass::KinitFailed,
            "klist shows no default principal",
        )),
    }
}

/// The `Default principal:` of klist output.
pub fn default_principal(klist: &str) -> Option<&str> {
    klist
        .lines()
        .find_map(|l| l.trim().strip_prefix("Default principal:"))
        .map(str::trim)
        .filter(|p| !p.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_recorded_klist() {
        let out = include_str!("../../../tests/fixtures/tool-output/klist.txt");
        assert_eq!(
            default_principal(out),
            Some("mtdune/managedtokens@TEST.REALM")
        );
    }

    #[test]
    fn parses_klist() {
        let out = "Ticket cache: FILE:/tmp/x\nDefault principal: mtdune/managedtokens@TEST.REALM\n\n\
                   Valid starting     Expires            Service principal\n";
        assert_eq!(
            default_principal(out),
            Some("mtdune/managedtokens@TEST.REALM")
        );
        assert_eq!(default_principal("klist: No credentials cache found"), None);
    }
}
