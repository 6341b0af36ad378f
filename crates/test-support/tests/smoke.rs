//! Proves every piece of the sandbox is the real software and reachable the
//! way the product uses it: Kerberos, GSSAPI rsync to a node's private /tmp,
//! the real condor_vault_storer through htgettoken and the vault into a
//! credd, schedd discovery at the collector, SMTP into the Maildir, and
//! stopping and starting components.

#![allow(
    clippy::disallowed_methods,
    reason = "the smoke test runs the real tools directly"
)]

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use managed_tokens_test_support::{Options, Sandbox};

fn show(out: &Output) -> String {
    format!(
        "exit {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Removes the listed host files when the test ends, passed or failed.
struct Cleanup(Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = fs::remove_file(p);
        }
    }
}

#[test]
fn every_component_is_real() {
    let sb = Sandbox::start();
    let info = sb.info();
    let dune = sb.service("dune_production");

    // Kerberos: kinit from the role's keytab, klist shows the principal.
    let cc = sb.kinit("dune_production");
    let klist = sb
        .command("klist")
        .env("KRB5CCNAME", cc.name())
        .output()
        .expect("klist runs");
    assert!(klist.status.success(), "klist: {}", show(&klist));
    assert!(
        String::from_utf8_lossy(&klist.stdout)
            .contains(&format!("Default principal: {}", dune.principal)),
        "klist: {}",
        show(&klist)
    );

    // rsync over GSSAPI ssh into node 127.0.0.11's private /tmp.
    let name = Sandbox::unique("smoke-push-");
    let src = cc.dir().join(&name);
    fs::write(&src, "pushed by the smoke test\n").unwrap();
    let _host_copy = Cleanup(vec![Path::new("/tmp").join(&name)]);
    let rsync = sb
        .command("rsync")
        .arg("-e")
        .arg(format!(
            "ssh -F {} -o BatchMode=yes",
            info.ssh_config.display()
        ))
        .args(["--perms", "--chmod=u=r,go="])
        .arg(&src)
        .arg(format!("{}@127.0.0.11:/tmp/", dune.account))
        .env("KRB5CCNAME", cc.name())
        .output()
        .expect("rsync runs");
    assert!(rsync.status.success(), "rsync: {}", show(&rsync));
    let pushed = sb
        .node_file("127.0.0.11", &name)
        .expect("the pushed file is in the node's /tmp");
    assert_eq!(pushed.uid, dune.uid, "owned by {}", dune.account);
    assert_eq!(pushed.mode, 0o400);
    assert_eq!(pushed.text(), "pushed by the smoke test\n");
    assert!(
        !Path::new("/tmp").join(&name).exists(),
        "the node's /tmp is private, not the host's"
    );
    assert!(
        sb.node_file("127.0.0.12", &name).is_none(),
        "nodes do not share /tmp"
    );

    // The real condor_vault_storer: htgettoken logs in with Kerberos at the
    // vault, and the credential lands in the first credd.
    let credd = &info.credds[0];
    assert!(
        !sb.credd_has_credential(credd, "dune_production"),
        "the credd starts empty"
    );
    let id = Sandbox::unique("smoke");
    let _storer_files = Cleanup(vec![
        PathBuf::from(format!("/tmp/vt_{id}")),
        PathBuf::from(format!("/tmp/vt_{id}-dune_production")),
    ]);
    let xdg = cc.dir().join("xdg");
    fs::create_dir(&xdg).unwrap();
    let logins_before = sb.vault_login_count("dune_production");
    let storer = sb
        .condor_tool("condor_vault_storer", credd)
        .arg("dune_production")
        .env("KRB5CCNAME", cc.name())
        .env(
            "_condor_SEC_CREDENTIAL_GETTOKEN_OPTS",
            format!("-a {}", info.vault.addr),
        )
        .env(
            "HTGETTOKENOPTS",
            format!(
                "{} --vaulttokenminttl=3600s --credkey={}",
                info.env["HTGETTOKENOPTS"], dune.credkey
            ),
        )
        .env("CONDOR_VAULT_STORER_ID", &id)
        .env("XDG_RUNTIME_DIR", &xdg)
        .output()
        .expect("condor_vault_storer runs");
    assert!(
        storer.status.success(),
        "condor_vault_storer: {}",
        show(&storer)
    );
    let token = fs::read_to_string(format!("/tmp/vt_{id}-dune_production"))
        .expect("the storer wrote the vault token");
    assert!(
        token.starts_with("s.") || token.starts_with("hvs."),
        "vault token shape: {token:.8}…"
    );
    assert!(
        sb.credd_has_credential(credd, "dune_production"),
        "the credd holds the credential"
    );
    assert!(
        !sb.credd_has_credential(&info.credds[1], "dune_production"),
        "only the first credd does"
    );
    assert_eq!(
        sb.vault_login_count("dune_production"),
        logins_before + 1,
        "one Kerberos login at the vault"
    );
    let bearer =
        fs::read_to_string(xdg.join(format!("bt_{id}-dune_production"))).expect("the bearer token");
    assert_eq!(
        bearer.trim(),
        dune.bearer_token,
        "the bearer token is the one seeded for the service"
    );

    // Schedd discovery at the collector finds exactly the two credds.
    let mut expected = info.credds.clone();
    expected.sort();
    assert_eq!(sb.discover_credds(), expected);

    // SMTP: a plain dialogue lands in the Maildir with its envelope.
    let subject = Sandbox::unique("smoke mail ");
    send_mail(
        &info.smtp,
        "managed-tokens@sandbox.test",
        &["dune-ops@sandbox.test", "admins@sandbox.test"],
        &subject,
    );
    let mails = sb.mails();
    let mail = mails
        .iter()
        .find(|m| m.subject().as_deref() == Some(subject.as_str()))
        .expect("the mail arrived");
    assert_eq!(
        mail.rcpt_to(),
        vec![
            "dune-ops@sandbox.test".to_owned(),
            "admins@sandbox.test".to_owned()
        ]
    );
    assert_eq!(
        mail.mail_from().as_deref(),
        Some("managed-tokens@sandbox.test")
    );
    assert!(
        mail.body.contains("sent by the smoke test"),
        "body: {}",
        mail.body
    );
}

#[test]
fn components_stop_and_start() {
    let sb = Sandbox::start();
    let node = "127.0.0.12";
    let cc = sb.kinit("nova_production");
    let account = &sb.service("nova_production").account;

    let ok = sb.ssh(&cc, account, node, "id -un");
    assert!(ok.status.success(), "ssh before stop: {}", show(&ok));
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), account.as_str());

    sb.stop(&format!("node:{node}"));
    let down = sb.ssh(&cc, account, node, "true");
    assert_eq!(
        down.status.code(),
        Some(255),
        "ssh to a stopped node: {}",
        show(&down)
    );
    assert!(
        sb.ssh(&cc, account, "127.0.0.13", "true").status.success(),
        "other nodes stay up"
    );

    sb.start_component(&format!("node:{node}"));
    let back = sb.ssh(&cc, account, node, "true");
    assert!(back.status.success(), "ssh after start: {}", show(&back));

    // `credd` stops the last credd only; the first one keeps answering.
    let [first, last] = [&sb.info().credds[0], &sb.info().credds[1]];
    sb.stop("credd");
    let q = sb.credd_query(last, "nova_production");
    assert!(
        !q.status.success() && String::from_utf8_lossy(&q.stdout).contains("Operation failed"),
        "a stopped credd cannot answer: {}",
        show(&q)
    );
    assert!(!sb.credd_has_credential(first, "nova_production"));
    sb.start_component("credd");
    assert!(
        !sb.credd_has_credential(last, "nova_production"),
        "the restarted credd answers"
    );
}

#[test]
#[should_panic(expected = "scripts/sandbox provision")]
fn refuses_to_start_unprovisioned() {
    let empty = tempfile::tempdir().unwrap();
    let _ = Sandbox::start_with(&Options {
        cache: Some(empty.path().to_owned()),
        ..Options::default()
    });
}

fn send_mail(server: &str, from: &str, to: &[&str], subject: &str) {
    let stream = TcpStream::connect(server).expect("connect to the SMTP server");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    let expect = |code: &str, reader: &mut BufReader<TcpStream>| loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("an SMTP reply");
        assert!(
            line.starts_with(code),
            "SMTP: expected {code}, got {line:?}"
        );
        if line.as_bytes().get(3) != Some(&b'-') {
            break;
        }
    };
    expect("220", &mut reader);
    let mut say = |cmd: String, code: &str, reader: &mut BufReader<TcpStream>| {
        writer.write_all(cmd.as_bytes()).unwrap();
        expect(code, reader);
    };
    say("EHLO smoke.sandbox.test\r\n".into(), "250", &mut reader);
    say(format!("MAIL FROM:<{from}>\r\n"), "250", &mut reader);
    for rcpt in to {
        say(format!("RCPT TO:<{rcpt}>\r\n"), "250", &mut reader);
    }
    say("DATA\r\n".into(), "354", &mut reader);
    let message = format!(
        "From: {from}\r\nTo: {}\r\nSubject: {subject}\r\n\r\nsent by the smoke test\r\n.\r\n",
        to.join(", ")
    );
    say(message, "250", &mut reader);
    say("QUIT\r\n".into(), "221", &mut reader);
}
