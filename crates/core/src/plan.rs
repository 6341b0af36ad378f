//! `--dry-run`: the commands each binary would run, with their environment (secrets
//! masked), and the rendered destinations, built by the same functions the real run uses.

use std::io::{self, Write};
use std::path::Path;

use crate::cli::Probe;
use crate::condor::{self, StorerCall};
use crate::config::Config;
use crate::env::HostEnv;
use crate::kerberos::{self, Ccache};
use crate::ping;
use crate::reachability;
use crate::runner::Command;
use crate::service::{Service, TokenGetter};
use crate::transfer::{self, Batch};
use crate::vault;

const RUN_DIR: &str = "<run-dir>";

/// What a run would do.
#[derive(Debug, Clone, Copy)]
pub enum Work {
    /// token-refresher.
    Refresh,
    /// token-pusher.
    Push,
    /// ping-nodes.
    Ping(Probe),
}

/// Prints the plan of `work` for `services`.
pub fn print(
    out: &mut dyn Write,
    work: Work,
    config: &Config,
    host: &HostEnv,
    services: &[Service],
) -> io::Result<()> {
    writeln!(
        out,
        "# dry run: nothing is executed; {RUN_DIR} is a private directory created per run"
    )?;
    match work {
        Work::Refresh => services
            .iter()
            .try_for_each(|s| refresh(out, config, host, s)),
        Work::Push => services.iter().try_for_each(|s| push(out, config, s)),
        Work::Ping(probe) => {
            for plan in reachability::nodes(services) {
                writeln!(
                    out,
                    "\n# node {} (used by {})",
                    plan.node,
                    plan.services.join(", ")
                )?;
                let cmd = match probe {
                    Probe::Icmp => ping::ping_command(
                        plan.node,
                        &plan.service.ping_options,
                        config.timeouts.ping,
                    ),
                    Probe::Ssh => ping::ssh_config_command(
                        plan.node,
                        &plan.service.ssh_options,
                        config.timeouts.ping,
                    ),
                };
                line(out, &cmd)?;
                if probe == Probe::Ssh {
                    writeln!(
                        out,
                        "then a TCP connection to the hostname and port it prints"
                    )?;
                }
            }
            Ok(())
        }
    }
}

fn line(out: &mut dyn Write, cmd: &Command) -> io::Result<()> {
    writeln!(
        out,
        "{cmd}    # timeout {}",
        humantime::format_duration(cmd.limit())
    )
}

fn kinit(out: &mut dyn Write, config: &Config, service: &Service) -> io::Result<Ccache> {
    let ccache = Ccache::for_service(Path::new(RUN_DIR), service);
    line(
        out,
        &kerberos::kinit_command(service, &ccache, config.timeouts.kerberos),
    )?;
    line(
        out,
        &kerberos::klist_command(&ccache, config.timeouts.kerberos),
    )?;
    Ok(ccache)
}

fn refresh(out: &mut dyn Write, config: &Config, host: &HostEnv, s: &Service) -> io::Result<()> {
    writeln!(
        out,
        "\n# service {} (real name {}, account {})",
        s.name, s.real_name, s.account
    )?;
    let ccache = kinit(out, config, s)?;
    let vault = host
        .gettoken_options
        .clone()
        .map(|_| "<from _condor_SEC_CREDENTIAL_GETTOKEN_OPTS>".to_string())
        .or_else(|| s.vault_server.clone())
        .unwrap_or_else(|| "<from condor_config_val SEC_CREDENTIAL_GETTOKEN_OPTS>".into());
    let uid = "<uid>";
    if s.token_getter == TokenGetter::GetToken {
        writeln!(
            out,
            "htgettoken -a {vault} -i {} -r {} --vaulttokenfile {RUN_DIR}/vt-N -o {RUN_DIR}/bt-N",
            s.real_experiment, s.role
        )?;
        writeln!(
            out,
            "then store {}",
            s.token_store
                .join(format!("vt_u{uid}-{}", s.real_name))
                .display()
        )?;
        return Ok(());
    }
    let credds: Vec<String> = if s.credds.is_empty() {
        let collector = s.collectors.first().map_or("<collector>", String::as_str);
        line(
            out,
            &condor::status_command(
                collector,
                s.schedd_constraint.as_deref(),
                config.timeouts.collector,
            ),
        )?;
        if s.collectors.len() > 1 {
            writeln!(
                out,
                "# then, if it does not answer: {}",
                s.collectors[1..].join(", ")
            )?;
        }
        vec!["<each credd listed>".into()]
    } else {
        s.credds.clone()
    };
    for credd in &credds {
        let call = StorerCall {
            service: s,
            credd,
            collector: s.collectors.first().map(String::as_str),
            vault: &vault,
            ccache: ccache.env_value(),
            id: config.storer_isolation.then_some("<unique id>"),
            runtime_dir: Path::new("<run-dir>/xdg-N"),
            verbose: false,
        };
        line(
            out,
            &condor::storer_command(
                &call,
                host,
                config.min_token_lifetime,
                config.timeouts.vault_storer,
            ),
        )?;
        let store = vault::store_path(&s.token_store, 0, Some(credd), &s.real_name);
        writeln!(
            out,
            "then store {}",
            store.display().to_string().replace("vt_u0-", "vt_u<uid>-")
        )?;
    }
    Ok(())
}

fn push(out: &mut dyn Write, config: &Config, s: &Service) -> io::Result<()> {
    writeln!(
        out,
        "\n# service {} (real name {}, account {})",
        s.name, s.real_name, s.account
    )?;
    let uid = s
        .desired_uid
        .map_or_else(|| "<uid>".to_string(), |u| u.to_string());
    writeln!(
        out,
        "# uid: {}",
        match s.desired_uid {
            Some(_) => "desiredUIDOverride".to_string(),
            None if config.ferry.is_some() => format!(
                "state cache, else FERRY, else `getent passwd {}`",
                s.account
            ),
            None => format!("state cache, else `getent passwd {}`", s.account),
        }
    )?;
    let ccache = kinit(out, config, s)?;
    let role_file = s.role_file_destination_for(&uid);
    let batches: Vec<Batch> = crate::push::destinations(s, &uid)
        .into_iter()
        .map(|(dir, files)| Batch {
            dir,
            files: files.into_iter().map(|(name, _)| name.into()).collect(),
        })
        .collect();
    for node in &s.nodes {
        for batch in &batches {
            line(
                out,
                &transfer::rsync_command(s, node, batch, &ccache.env_value(), config.timeouts.push),
            )?;
        }
    }
    writeln!(
        out,
        "# destinations: /tmp/vt_u{uid}, /tmp/vt_u{uid}-{}, {role_file} (mode 0400)",
        s.real_name
    )?;
    Ok(())
}
