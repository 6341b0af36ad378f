//! Validation of names from the configuration before they reach a command line.
//!
//! Accounts, nodes, services and condor hosts become arguments of `kinit`, `ssh`, `rsync`,
//! `ping` and `condor_*`. A node named `-oProxyCommand=…` must be a configuration error,
//! not an option, so every such name is checked against a strict character set here.

use std::fmt;

/// What kind of name is being checked; decides the character set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    /// A UNIX account: letters, digits, `_`, `.`, `-`.
    Account,
    /// An experiment (configuration key or real name): letters, digits, `.`, `-`.
    Experiment,
    /// A role: letters and digits only, as the service name is `<experiment>_<role>`.
    Role,
    /// A destination node: an RFC 1123 host name or an IPv4 address.
    Node,
    /// A collector or credd: a host name with an optional `:port`.
    CondorHost,
    /// A Kerberos principal: `primary[/instance]@REALM`.
    Principal,
}

/// A name that failed validation, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameError {
    /// The offending value.
    pub value: String,
    /// Why it was refused.
    pub reason: &'static str,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` {}", self.value.escape_debug(), self.reason)
    }
}

impl std::error::Error for NameError {}

/// Checks `value` as a name of `kind`.
pub fn validate(kind: NameKind, value: &str) -> Result<(), NameError> {
    let fail = |reason| {
        Err(NameError {
            value: value.to_string(),
            reason,
        })
    };
    if value.is_empty() {
        return fail("is empty");
    }
    if value.starts_with('-') {
        return fail("starts with `-` and would be read as an option");
    }
    if value.len() > 253 {
        return fail("is longer than 253 characters");
    }
    let allowed: fn(char) -> bool = match kind {
        NameKind::Account => |c| c.is_ascii_alphanumeric() || "_.-".contains(c),
        NameKind::Experiment => |c| c.is_ascii_alphanumeric() || ".-".contains(c),
        NameKind::Role => |c| c.is_ascii_alphanumeric(),
        NameKind::Node => |c| c.is_ascii_alphanumeric() || ".-".contains(c),
        NameKind::CondorHost => |c| c.is_ascii_alphanumeric() || ".-_:".contains(c),
        NameKind::Principal => |c| c.is_ascii_alphanumeric() || "._-/@".contains(c),
    };
    if !value.chars().all(allowed) {
        return fail(match kind {
            NameKind::Account => "may contain only letters, digits, `_`, `.` and `-`",
            NameKind::Experiment => "may contain only letters, digits, `.` and `-`",
            NameKind::Role => "may contain only letters and digits",
            NameKind::Node => "is not a valid host name (letters, digits, `.` and `-`)",
            NameKind::CondorHost => "is not a valid host[:port]",
            NameKind::Principal => "is not a valid Kerberos principal",
        });
    }
    if kind == NameKind::Node && value.split('.').any(|label| label.is_empty()) {
        return fail("has an empty label");
    }
    if kind == NameKind::Principal && value.matches('@').count() > 1 {
        return fail("has more than one `@`");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_option_injection() {
        let err = validate(NameKind::Node, "-oProxyCommand=sh").unwrap_err();
        assert!(err.to_string().contains("option"));
        assert!(validate(NameKind::Node, "node;rm").is_err());
        assert!(validate(NameKind::Node, "a..b").is_err());
        assert!(validate(NameKind::Account, "du ne").is_err());
        assert!(validate(NameKind::Role, "pro_duction").is_err());
        assert!(validate(NameKind::Experiment, "dune_x").is_err());
    }

    #[test]
    fn accepts_site_names() {
        validate(NameKind::Node, "dunegpvm01.fnal.gov").unwrap();
        validate(NameKind::Node, "127.0.0.11").unwrap();
        validate(NameKind::Account, "dunepro").unwrap();
        validate(NameKind::Experiment, "dune-2").unwrap();
        validate(NameKind::CondorHost, "127.0.0.1:9618").unwrap();
        validate(
            NameKind::Principal,
            "dunepro/managedtokens/host.fnal.gov@FNAL.GOV",
        )
        .unwrap();
    }
}
