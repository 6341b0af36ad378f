//! The resolved plan of one service (`<experiment>_<role>`): everything a stage needs,
//! with the Go service's per-role overrides already applied.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::template::{Field, Fields, Template};

/// How a service obtains its vault token (`tokenGetterOverride`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum TokenGetter {
    /// `condor_vault_storer` into every credd, keeping a local copy per credd (the default).
    StoreAndGetToken,
    /// `htgettoken` directly into the local store; nothing is stored in a credd.
    GetToken,
}

/// Retry policy of a stage (`workerType.<stage>`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retry {
    /// Attempts after the first one (`numRetries`).
    pub retries: u32,
    /// Pause between attempts (`retrySleep`).
    pub sleep: Duration,
}

/// One selected service, resolved from `experiments.<experiment>.roles.<role>`.
#[derive(Debug, Clone)]
pub struct Service {
    /// The configuration name, `<experiment key>_<role>`: routes configuration, state,
    /// notifications and logs.
    pub name: String,
    /// The real name, `<real experiment>_<role>`: what condor, Vault, token file names and
    /// nodes see. Differs from `name` only under `experimentOverride`.
    pub real_name: String,
    /// The experiment's configuration key.
    pub experiment: String,
    /// The real experiment (`experimentOverride`, else the key); the htgettoken issuer.
    pub real_experiment: String,
    /// The role.
    pub role: String,
    /// The UNIX account on the nodes; also names the keytab.
    pub account: String,
    /// The Kerberos principal kinit obtains a ticket for.
    pub principal: String,
    /// The htgettoken credkey: the principal without its realm.
    pub credkey: String,
    /// The keytab (`keytabPathOverride`, else `<keytabPath>/<account>.keytab`).
    pub keytab: PathBuf,
    /// `desiredUIDOverride`: the UID used on the nodes, bypassing every lookup.
    pub desired_uid: Option<u32>,
    /// `vaultServer[Override]` from the configuration, if any.
    pub vault_server: Option<String>,
    /// Collectors queried in order for schedds (`condorCollectorHost[Override]`).
    pub collectors: Vec<String>,
    /// Credds given explicitly (`condorCreddHost[Override]`); skips discovery when set.
    pub credds: Vec<String>,
    /// `condorScheddConstraint[Override]`.
    pub schedd_constraint: Option<String>,
    /// How the token is obtained.
    pub token_getter: TokenGetter,
    /// The local token store (`serviceCreddVaultTokenPathRoot[Override]`).
    pub token_store: PathBuf,
    /// Destination nodes, in configuration order, without duplicates.
    pub nodes: Vec<String>,
    /// Destination of the default-role file on the nodes.
    pub role_file_template: Template,
    /// Extra ssh arguments (`sshOptions[Override]`).
    pub ssh_options: Vec<String>,
    /// Extra ping arguments (`pingOptions[Override]`).
    pub ping_options: Vec<String>,
    /// Extra rsync arguments (`fileCopierOptions[Override]`).
    pub rsync_options: Vec<String>,
    /// Whether failures of this service are notified (`disableNotifications[Override]`).
    pub notify: bool,
    /// The experiment's stakeholders (`experiments.<experiment>.emails`).
    pub emails: Vec<String>,
}

impl Service {
    /// The destination of the default-role file for `uid`.
    pub fn role_file_destination(&self, uid: u32) -> String {
        self.role_file_destination_for(&uid.to_string())
    }

    /// The destination of the default-role file with `uid` as written (for display).
    pub fn role_file_destination_for(&self, uid: &str) -> String {
        self.role_file_template
            .render(&TemplateValues { service: self, uid })
    }
}

/// Template values of a service for a given UID.
pub(crate) struct TemplateValues<'a> {
    pub(crate) service: &'a Service,
    pub(crate) uid: &'a str,
}

impl Fields for TemplateValues<'_> {
    fn field(&self, field: Field) -> String {
        match field {
            Field::Account => self.service.account.clone(),
            Field::DesiredUid => self.uid.to_string(),
            Field::Experiment => self.service.experiment.clone(),
            Field::Role => self.service.role.clone(),
            Field::Service => self.service.name.clone(),
        }
    }
}
