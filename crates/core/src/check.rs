//! `check-config`: the configuration (already valid once loaded) checked against this
//! machine: keytabs, token store, and the external tools each binary runs.

use std::ffi::OsStr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::report::Binary;
use crate::service::{Service, TokenGetter};

/// One problem found on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvironmentProblem {
    /// What it concerns (a service, a file, a tool).
    pub subject: String,
    /// What is wrong.
    pub message: String,
}

/// Checks what `binary` needs for `services`; `path` is the `PATH` to search tools in.
pub fn environment(
    binary: Binary,
    services: &[Service],
    path: Option<&OsStr>,
) -> Vec<EnvironmentProblem> {
    let mut problems = Vec::new();
    let mut push =
        |subject: String, message: String| problems.push(EnvironmentProblem { subject, message });

    for tool in tools(binary, services) {
        if find_in_path(tool, path).is_none() {
            push(format!("tool `{tool}`"), "not found on PATH".into());
        }
    }
    if binary != Binary::PingNodes {
        for service in services {
            if let Some(message) = keytab_problem(&service.keytab) {
                push(format!("service `{}`", service.name), message);
            }
        }
        let mut stores: Vec<&Path> = services.iter().map(|s| s.token_store.as_path()).collect();
        stores.sort();
        stores.dedup();
        for store in stores {
            if let Ok(meta) = std::fs::metadata(store)
                && meta.permissions().mode() & 0o077 != 0
            {
                push(
                    format!("token store `{}`", store.display()),
                    format!(
                        "mode {:o} lets group or others in; use 0700",
                        meta.permissions().mode() & 0o777
                    ),
                );
            }
        }
    }
    problems
}

/// Pairs of services that write the same default-role file on the same node (same account
/// and a template without `{{.Role}}` or `{{.Service}}`): the last push wins, so the file
/// names either role. Reported as warnings; the Go service behaved the same way.
pub fn role_file_overlaps(services: &[Service]) -> Vec<String> {
    let mut seen: std::collections::BTreeMap<(String, String), &str> =
        std::collections::BTreeMap::new();
    let mut warnings = Vec::new();
    for service in services {
        // The account stands for the UID, which is only known at run time.
        let path = service.role_file_destination_for(&format!("<uid of {}>", service.account));
        for node in &service.nodes {
            match seen.get(&(node.clone(), path.clone())) {
                Some(other) if *other != service.name => warnings.push(format!(
                    "`{other}` and `{}` both write `{path}` on `{node}`; it will name whichever role was pushed last (add {{{{.Role}}}} to defaultRoleFileDestinationTemplate)",
                    service.name
                )),
                _ => {
                    seen.insert((node.clone(), path.clone()), &service.name);
                }
            }
        }
    }
    warnings
}

/// The external tools `binary` runs for `services`.
pub fn tools(binary: Binary, services: &[Service]) -> Vec<&'static str> {
    match binary {
        Binary::TokenRefresher => {
            let mut tools = vec!["kinit", "klist", "htgettoken"];
            if services
                .iter()
                .any(|s| s.token_getter == TokenGetter::StoreAndGetToken)
            {
                tools.extend(["condor_vault_storer", "condor_store_cred"]);
                if services.iter().any(|s| s.credds.is_empty()) {
                    tools.push("condor_status");
                }
            }
            tools
        }
        Binary::TokenPusher => vec!["kinit", "klist", "rsync", "ssh", "getent"],
        Binary::PingNodes => vec!["ping", "ssh"],
    }
}

fn keytab_problem(keytab: &Path) -> Option<String> {
    let meta = match std::fs::metadata(keytab) {
        Ok(m) => m,
        Err(e) => return Some(format!("keytab `{}`: {e}", keytab.display())),
    };
    if !meta.is_file() {
        return Some(format!("keytab `{}` is not a file", keytab.display()));
    }
    if meta.mode() & 0o077 != 0 {
        return Some(format!(
            "keytab `{}` has mode {:o}: it must not be readable by group or others (chmod 600)",
            keytab.display(),
            meta.mode() & 0o777
        ));
    }
    None
}

/// The first executable named `tool` in `path`.
pub fn find_in_path(tool: &str, path: Option<&OsStr>) -> Option<std::path::PathBuf> {
    std::env::split_paths(path?)
        .map(|dir| dir.join(tool))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_services_sharing_a_role_file() {
        let text = concat!(
            "keytabPath: /k\nkerberosPrincipalPattern: '{{.Account}}@R'\ncondorCollectorHost: c\n",
            "experiments:\n  e:\n    roles:\n",
            "      a: {account: x, destinationNodes: [n1, n2]}\n",
            "      b: {account: x, destinationNodes: [n2]}\n",
            "      c: {account: y, destinationNodes: [n2]}\n",
        );
        let config = crate::config::Config::from_str(text, false, Path::new("x.yml")).unwrap();
        let warnings = role_file_overlaps(&config.services);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("`e_a` and `e_b`") && warnings[0].contains("`n2`"),
            "{warnings:?}"
        );
    }

    #[test]
    fn finds_tools_and_flags_loose_keytabs() {
        assert!(find_in_path("sh", Some(OsStr::new("/nonexistent:/bin:/usr/bin"))).is_some());
        assert!(find_in_path("no-such-tool-x", Some(OsStr::new("/bin"))).is_none());
        let dir = tempfile::tempdir().unwrap();
        let keytab = dir.path().join("a.keytab");
        std::fs::write(&keytab, b"x").unwrap();
        std::fs::set_permissions(&keytab, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(keytab_problem(&keytab).unwrap().contains("chmod 600"));
        std::fs::set_permissions(&keytab, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(keytab_problem(&keytab), None);
    }
}
