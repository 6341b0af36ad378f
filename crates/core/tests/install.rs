//! `scripts/install` into a temporary prefix, with the binaries of this build: every file
//! lands where it should, the man pages render, the units point at the prefix, and a
//! second run changes nothing and keeps the operator's configuration.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BINARIES: [&str; 3] = ["token-refresher", "token-pusher", "ping-nodes"];

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// The directory of this build's binaries (`target/debug`), built if needed: the test
/// executable lives in its `deps/`.
#[expect(
    clippy::disallowed_methods,
    reason = "the test drives cargo and the script"
)]
fn built_binaries() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let target_dir = profile_dir.parent().unwrap();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .current_dir(repository())
        .args(["build", "--quiet", "--bins"])
        .args(BINARIES.iter().flat_map(|b| ["-p", b]))
        .arg("--target-dir")
        .arg(target_dir);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        build.arg("--release");
    }
    let status = build.status().unwrap();
    assert!(status.success(), "cargo build of the binaries failed");
    profile_dir
}

#[expect(
    clippy::disallowed_methods,
    reason = "the test drives cargo and the script"
)]
fn install(prefix: &Path, from: &Path) -> Output {
    let output = Command::new("bash")
        .arg(repository().join("scripts/install"))
        .arg("--prefix")
        .arg(prefix)
        .arg("--no-build")
        .arg("--from")
        .arg(from)
        .env_remove("DESTDIR")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "scripts/install failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Every file the script installs, relative to the prefix.
fn expected_files() -> Vec<String> {
    let mut files = Vec::new();
    for bin in BINARIES {
        files.push(format!("bin/{bin}"));
        files.push(format!("share/man/man1/{bin}.1"));
        files.push(format!("share/bash-completion/completions/{bin}"));
        files.push(format!("share/zsh/site-functions/_{bin}"));
        files.push(format!("share/fish/vendor_completions.d/{bin}.fish"));
        files.push(format!("lib/systemd/system/{bin}.service"));
        files.push(format!("lib/systemd/system/{bin}.timer"));
    }
    files.push("lib/systemd/system/managed-tokens-failure@.service".into());
    files.push("lib/sysusers.d/managed-tokens.conf".into());
    files.push("lib/tmpfiles.d/managed-tokens.conf".into());
    files.push("etc/managed-tokens/managedTokens.yml".into());
    files
}

#[expect(clippy::disallowed_methods, reason = "the test runs man and bash")]
fn check_man_page(page: &Path, bin: &str) {
    let text = fs::read_to_string(page).unwrap();
    assert!(
        text.starts_with(".TH") || text.contains("\n.TH "),
        "{} has no .TH",
        page.display()
    );
    let man = Command::new("man")
        .arg("-l")
        .arg(page)
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "80")
        .output();
    match man {
        Ok(out) if out.status.success() => {
            let rendered = String::from_utf8_lossy(&out.stdout);
            assert!(
                rendered.contains("SYNOPSIS"),
                "man -l {}: {rendered}",
                page.display()
            );
            assert!(
                rendered.contains(bin),
                "man -l {}: {rendered}",
                page.display()
            );
        }
        Ok(out) => panic!(
            "man -l {} failed: {}",
            page.display(),
            String::from_utf8_lossy(&out.stderr)
        ),
        // No man on this machine: the .TH check above is all we can do.
        Err(_) => {}
    }
}

#[expect(clippy::disallowed_methods, reason = "the test runs man and bash")]
fn check_completions(prefix: &Path, bin: &str) {
    let bash = prefix.join(format!("share/bash-completion/completions/{bin}"));
    let syntax = Command::new("bash").arg("-n").arg(&bash).status().unwrap();
    assert!(syntax.success(), "{} is not valid bash", bash.display());
    let zsh = fs::read_to_string(prefix.join(format!("share/zsh/site-functions/_{bin}"))).unwrap();
    assert!(zsh.starts_with(&format!("#compdef {bin}")), "{zsh}");
    let fish =
        fs::read_to_string(prefix.join(format!("share/fish/vendor_completions.d/{bin}.fish")))
            .unwrap();
    assert!(fish.contains(&format!("complete -c {bin}")), "{fish}");
}

#[test]
fn installs_everything_into_a_prefix_idempotently() {
    let from = built_binaries();
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("usr");

    let first = String::from_utf8(install(&prefix, &from).stdout).unwrap();
    for file in expected_files() {
        let path = prefix.join(&file);
        assert!(path.is_file(), "{file} was not installed");
        assert!(
            first.contains(&format!("installed  {}", path.display())),
            "{file} not reported:\n{first}"
        );
    }
    for bin in BINARIES {
        let mode = fs::metadata(prefix.join("bin").join(bin))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755, "{bin}");
        check_man_page(&prefix.join(format!("share/man/man1/{bin}.1")), bin);
        check_completions(&prefix, bin);
        let unit =
            fs::read_to_string(prefix.join(format!("lib/systemd/system/{bin}.service"))).unwrap();
        let exec = format!("ExecStart={}/bin/{bin} ", prefix.display());
        assert!(unit.contains(&exec), "{bin}.service does not start {exec}");
        let config = format!(
            "MANAGED_TOKENS_CONFIG={}/etc/managed-tokens/managedTokens.yml",
            prefix.display()
        );
        assert!(
            unit.contains(&config),
            "{bin}.service does not point at {config}"
        );
    }
    let config = prefix.join("etc/managed-tokens/managedTokens.yml");
    assert_eq!(
        fs::metadata(&config).unwrap().permissions().mode() & 0o777,
        0o640
    );

    // The operator edits the configuration; installing again changes nothing.
    let edited = format!(
        "{}\n# edited by the operator\n",
        fs::read_to_string(&config).unwrap()
    );
    fs::write(&config, &edited).unwrap();
    let second = String::from_utf8(install(&prefix, &from).stdout).unwrap();
    assert!(
        !second.contains("installed "),
        "second run installed again:\n{second}"
    );
    assert_eq!(
        second
            .lines()
            .filter(|l| l.starts_with("unchanged "))
            .count(),
        expected_files().len() - 1
    );
    assert!(
        second.contains(&format!("kept       {}", config.display())),
        "{second}"
    );
    assert_eq!(fs::read_to_string(&config).unwrap(), edited);
}
