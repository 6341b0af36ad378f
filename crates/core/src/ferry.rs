//! FERRY, Fermilab's identity registry: the UID of a role account, where the site
//! configures it (`ferry.host`, `ferry.port`, `ferry.hostCert`, `ferry.hostKey`,
//! `ferry.caPath`). The pusher asks it when the state has no UID cached for an account, and
//! caches the answer.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;
use ureq::tls::{Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig};

/// How to reach FERRY: its URL and this host's TLS client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ferry {
    /// `https://host:port`.
    pub url: String,
    /// Directory of `*.pem` CA certificates (`caPath`); the system roots when unset.
    pub ca_path: Option<PathBuf>,
    /// This host's certificate (`hostCert`).
    pub cert: PathBuf,
    /// Its private key (`hostKey`).
    pub key: PathBuf,
}

#[derive(Debug, Deserialize)]
struct Reply {
    ferry_status: String,
    #[serde(default)]
    ferry_error: Vec<String>,
    ferry_output: Option<Output>,
}

#[derive(Debug, Deserialize)]
struct Output {
    uid: u32,
}

/// The UID FERRY has for `account`; `Ok(None)` when FERRY does not know the account.
pub fn lookup_uid(ferry: &Ferry, account: &str, timeout: Duration) -> anyhow::Result<Option<u32>> {
    let agent = agent(ferry, timeout)
        .with_context(|| format!("cannot set up the FERRY client for `{}`", ferry.url))?;
    // Accounts are validated names (letters, digits, `_.-`), safe in a query string.
    let url = format!(
        "{}/getUserInfo?username={account}",
        ferry.url.trim_end_matches('/')
    );
    let body = agent
        .get(&url)
        .call()
        .and_then(|mut r| r.body_mut().read_to_string())
        .with_context(|| format!("FERRY request for `{account}` to `{}` failed", ferry.url))?;
    parse(&body, account)
}

fn parse(body: &str, account: &str) -> anyhow::Result<Option<u32>> {
    let reply: Reply = serde_json::from_str(body)
        .with_context(|| format!("FERRY's answer for `{account}` is not the expected JSON"))?;
    match (reply.ferry_status.as_str(), reply.ferry_output) {
        ("success", Some(output)) => Ok(Some(output.uid)),
        ("success", None) => bail!("FERRY's answer for `{account}` has no `ferry_output`"),
        _ if reply
            .ferry_error
            .iter()
            .any(|e| e.to_ascii_lowercase().contains("does not exist")) =>
        {
            Ok(None)
        }
        (status, _) => bail!(
            "FERRY answered `{status}` for `{account}`: {}",
            reply.ferry_error.join("; ")
        ),
    }
}

fn agent(ferry: &Ferry, timeout: Duration) -> anyhow::Result<ureq::Agent> {
    let cert_pem = read(&ferry.cert)?;
    let chain: Vec<Certificate<'static>> = ureq::tls::parse_pem(&cert_pem)
        .filter_map(|item| match item {
            Ok(PemItem::Certificate(c)) => Some(Ok(c)),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        })
        .collect::<Result<_, _>>()
        .with_context(|| format!("`{}` is not a PEM certificate", ferry.cert.display()))?;
    if chain.is_empty() {
        bail!("`{}` holds no certificate", ferry.cert.display());
    }
    let key = PrivateKey::from_pem(&read(&ferry.key)?)
        .with_context(|| format!("`{}` is not a PEM private key", ferry.key.display()))?;
    let roots = match &ferry.ca_path {
        Some(dir) => RootCerts::Specific(Arc::new(ca_certificates(dir)?)),
        None => RootCerts::PlatformVerifier,
    };
    let tls = TlsConfig::builder()
        .client_cert(Some(ClientCert::new_with_certs(&chain, key)))
        .root_certs(roots)
        .build();
    let config = ureq::Agent::config_builder()
        .tls_config(tls)
        .timeout_global(Some(timeout))
        .build();
    Ok(ureq::Agent::new_with_config(config))
}

/// Every certificate of the `*.pem` files in `dir`, as the Go service loaded them.
fn ca_certificates(dir: &Path) -> anyhow::Result<Vec<Certificate<'static>>> {
    let mut certs = Vec::new();
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("failed to list `{}`", dir.display()))?;
    for entry in entries {
        let path = entry
            .with_context(|| format!("failed to list `{}`", dir.display()))?
            .path();
        if path.extension().is_none_or(|e| e != "pem") {
            continue;
        }
        for item in ureq::tls::parse_pem(&read(&path)?) {
            if let PemItem::Certificate(c) =
                item.with_context(|| format!("bad PEM in `{}`", path.display()))?
            {
                certs.push(c);
            }
        }
    }
    if certs.is_empty() {
        bail!("no CA certificate in `{}/*.pem`", dir.display());
    }
    Ok(certs)
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("failed to read `{}`", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ferry_answers() {
        let ok = r#"{"ferry_status":"success","ferry_error":[],"ferry_output":{"uid":50123,"username":"dunepro"}}"#;
        assert_eq!(parse(ok, "dunepro").unwrap(), Some(50123));
        let missing = r#"{"ferry_status":"failure","ferry_error":["User nobody does not exist."],"ferry_output":null}"#;
        assert_eq!(parse(missing, "nobody").unwrap(), None);
        let broken = r#"{"ferry_status":"failure","ferry_error":["database down"]}"#;
        assert!(
            parse(broken, "x")
                .unwrap_err()
                .to_string()
                .contains("database down")
        );
        assert!(parse("<html>", "x").is_err());
    }
}
