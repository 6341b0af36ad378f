//! UIDs of the role accounts from the local passwd database (NSS, so LDAP too).

use std::time::Duration;

use crate::runner::{Command, Runner};

/// `getent passwd <account>`
pub fn getent_command(account: &str, timeout: Duration) -> Command {
    Command::new("getent")
        .arg("passwd")
        .arg(account)
        .timeout(timeout)
}

/// The UID of `account`, `Ok(None)` if the passwd database does not know it.
pub fn lookup_uid(
    runner: &Runner,
    account: &str,
    timeout: Duration,
) -> anyhow::Result<Option<u32>> {
    let out = runner.run_unchecked(&getent_command(account, timeout))?;
    // getent exits 2 when the key is not found.
    if out.code == Some(2) {
        return Ok(None);
    }
    if !out.success() {
        anyhow::bail!(
            "`getent passwd {account}` exited with {:?}: {}",
            out.code,
            out.stderr.trim()
        );
    }
    Ok(parse_uid(&out.stdout, account))
}

fn parse_uid(line: &str, account: &str) -> Option<u32> {
    let mut fields = line.trim().split(':');
    (fields.next()? == account).then_some(())?;
    fields.nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_passwd_lines() {
        assert_eq!(
            parse_uid("dunepro:x:5001:5001::/home/dunepro:/bin/bash\n", "dunepro"),
            Some(5001)
        );
        assert_eq!(parse_uid("other:x:1:1::/:/bin/sh", "dunepro"), None);
    }
}
