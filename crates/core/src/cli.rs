//! Command-line interface of the three binaries, defined once so that `--help`, the man
//! pages and the shell completions agree.

use std::path::PathBuf;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

use crate::config::DEFAULT_PATH;

/// `--version`: the package version and the git revision it was built from.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("MANAGED_TOKENS_GIT_REVISION"),
    ")"
);

const EXIT_STATUSES: &str = "Exit status: 0 all succeeded; 1 fatal error; 2 usage or \
configuration error; 3 finished, but some services or nodes failed (already reported); \
75 another run holds the lock.";

/// Options every binary takes.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// Configuration file (YAML, or JSON rendered from jsonnet).
    #[arg(
        short,
        long,
        global = true,
        env = "MANAGED_TOKENS_CONFIG",
        default_value = DEFAULT_PATH,
        visible_alias = "configfile",
        value_name = "FILE"
    )]
    pub config: PathBuf,

    /// Only the roles of this experiment (configuration key); repeatable.
    #[arg(
        short = 'e',
        long = "experiment",
        global = true,
        value_name = "EXPERIMENT"
    )]
    pub experiments: Vec<String>,

    /// Only this service, `<experiment>_<role>` (configuration name); repeatable.
    #[arg(short = 's', long = "service", global = true, value_name = "SERVICE")]
    pub services: Vec<String>,

    /// Print the selected services, one per line (configuration name first), and exit.
    #[arg(long)]
    pub list_services: bool,

    /// Test run: real work, but notifications go to the `notifications_test` recipients.
    #[arg(short, long)]
    pub test: bool,

    /// Print the commands that would run (secrets masked) and run nothing.
    #[arg(short = 'n', long)]
    pub dry_run: bool,

    /// Send no notification at all, whatever the configuration says.
    #[arg(long, visible_alias = "disable-notifications")]
    pub dont_notify: bool,

    /// More log output (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Less log output (-q warnings and errors, -qq errors only).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "verbose")]
    pub quiet: u8,

    /// Print a machine-readable summary (JSON) on stdout; logs stay on stderr.
    #[arg(long, global = true)]
    pub json: bool,

    /// Run even as root (files written would then belong to root).
    #[arg(long, global = true)]
    pub allow_root: bool,
}

impl CommonArgs {
    /// `-v` count minus `-q` count.
    pub fn verbosity(&self) -> i8 {
        i8::try_from(i16::from(self.verbose) - i16::from(self.quiet)).unwrap_or(0)
    }
}

/// Subcommands every binary has.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Validate the configuration and the environment (keytabs, tools on PATH); exit 0 or 2.
    CheckConfig,
    /// Show, from the state database, the last successes and current failures.
    Status,
    /// Email the admins that a systemd unit failed (used by the OnFailure= template).
    #[command(hide = true)]
    NotifyUnitFailure {
        /// The unit that failed.
        unit: String,
    },
    /// Write a man page or a shell completion script to stdout (used at packaging time).
    #[command(hide = true)]
    Generate {
        /// What to generate.
        what: Generated,
    },
}

/// Outputs of `generate`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Generated {
    /// A roff man page.
    Man,
    /// bash completions.
    Bash,
    /// zsh completions.
    Zsh,
    /// fish completions.
    Fish,
}

/// `token-refresher`
#[derive(Debug, Parser)]
#[command(
    name = "token-refresher",
    version = VERSION,
    about = "Obtain vault tokens for every service and store them in every HTCondor credd",
    long_about = "For every selected service: kinit from the keytab, find the credds through \
the collectors, run condor_vault_storer for every credd in parallel (each call isolated), and \
keep a local copy of the vault token per credd.",
    after_help = EXIT_STATUSES
)]
pub struct RefresherCli {
    /// Options shared by the three binaries.
    #[command(flatten)]
    pub common: CommonArgs,

    /// Onboard one service (-s): run the storer on this terminal so the operator can finish
    /// the OIDC device flow. Implies --dont-notify.
    #[arg(short = 'r', long)]
    pub run_onboarding: bool,

    /// With --run-onboarding: push the new token to the service's nodes afterwards.
    #[arg(short = 'p', long, requires = "run_onboarding")]
    pub push_tokens: bool,

    /// Subcommand.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// `token-pusher`
#[derive(Debug, Parser)]
#[command(
    name = "token-pusher",
    version = VERSION,
    about = "Copy every service's vault token to its destination nodes over Kerberos ssh",
    long_about = "For every selected service: find the UID and the newest local vault token, \
kinit from the keytab, and rsync /tmp/vt_u<UID>, /tmp/vt_u<UID>-<service> and the default-role \
file to every destination node in one call per node, mode 0400.",
    after_help = EXIT_STATUSES
)]
pub struct PusherCli {
    /// Options shared by the three binaries.
    #[command(flatten)]
    pub common: CommonArgs,

    /// Subcommand.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// How `ping-nodes` checks a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Probe {
    /// One ICMP echo with `ping`.
    Icmp,
    /// A TCP connection to the node's ssh port (ICMP is often filtered).
    Ssh,
}

/// `ping-nodes`
#[derive(Debug, Parser)]
#[command(
    name = "ping-nodes",
    version = VERSION,
    about = "Check that every destination node is reachable",
    long_about = "Checks every distinct destination node of the selected services once, in \
parallel, with ping (default) or a connection to its ssh port.",
    after_help = EXIT_STATUSES
)]
pub struct PingCli {
    /// Options shared by the three binaries.
    #[command(flatten)]
    pub common: CommonArgs,

    /// How to check the nodes.
    #[arg(long, value_enum, default_value_t = Probe::Icmp)]
    pub probe: Probe,

    /// Subcommand.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Writes a man page or completion script for the CLI `C` to `out`.
pub fn generate<C: CommandFactory>(
    what: Generated,
    out: &mut dyn std::io::Write,
) -> std::io::Result<()> {
    let mut cmd = C::command();
    let name = cmd.get_name().to_string();
    match what {
        Generated::Man => clap_mangen::Man::new(cmd).render(out),
        Generated::Bash => {
            clap_complete::generate(clap_complete::Shell::Bash, &mut cmd, name, out);
            Ok(())
        }
        Generated::Zsh => {
            clap_complete::generate(clap_complete::Shell::Zsh, &mut cmd, name, out);
            Ok(())
        }
        Generated::Fish => {
            clap_complete::generate(clap_complete::Shell::Fish, &mut cmd, name, out);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definitions_are_consistent() {
        RefresherCli::command().debug_assert();
        PusherCli::command().debug_assert();
        PingCli::command().debug_assert();
    }

    #[test]
    fn allow_root_is_accepted_after_subcommands() {
        let cli =
            PusherCli::try_parse_from(["token-pusher", "check-config", "--allow-root"]).unwrap();
        assert!(cli.common.allow_root);
        let cli =
            RefresherCli::try_parse_from(["token-refresher", "-s", "a_b", "-s", "c_d", "-vv"])
                .unwrap();
        assert_eq!(cli.common.services, ["a_b", "c_d"]);
        assert_eq!(cli.common.verbosity(), 2);
        assert!(RefresherCli::try_parse_from(["token-refresher", "-p"]).is_err());
        let cli =
            PingCli::try_parse_from(["ping-nodes", "--disable-notifications", "--probe", "ssh"])
                .unwrap();
        assert!(cli.common.dont_notify);
        assert_eq!(cli.probe, Probe::Ssh);
    }
}
