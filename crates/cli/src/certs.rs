//! `trustmesh reconcile` and `trustmesh certs`: the cert-manager side of the mesh — issue
//! what the config's `Certificate`s ask for, and show them like
//! `kubectl get certificates -o wide` with the renewal time and identity added.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Result;
use clap::Args;
use trustmesh_config::LoadOutput;
use trustmesh_pki::CaStore;
use trustmesh_pki::controller::{self, Action, Force};

use crate::output::{emit, render, table};
use crate::{OutputArgs, StateArgs};

/// The config folder flag shared by the certificate commands.
#[derive(Debug, Clone, Args)]
pub struct ConfigArgs {
    /// The config folder whose `Certificate`s to issue and show.
    #[arg(long, env = "TRUSTMESH_CONFIG")]
    pub config: PathBuf,
}

/// Flags of `trustmesh reconcile`.
#[derive(Debug, Args)]
pub struct ReconcileArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    #[command(flatten)]
    pub state: StateArgs,
    #[command(flatten)]
    pub out: OutputArgs,
}

/// Flags of `trustmesh certs`.
#[derive(Debug, Args)]
pub struct CertsArgs {
    /// Only this namespace.
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    #[command(flatten)]
    pub config: ConfigArgs,
    #[command(flatten)]
    pub state: StateArgs,
    #[command(flatten)]
    pub out: OutputArgs,
}

pub(crate) fn load(config: &ConfigArgs) -> Result<LoadOutput> {
    trustmesh_config::load_dir(&config.config).map_err(|e| {
        anyhow::anyhow!(
            "{} is not a valid config (see `trustmesh check`):\n{e}",
            config.config.display()
        )
    })
}

/// Runs `trustmesh reconcile`: makes sure every trust domain of the config has its CA, then
/// runs one cert-manager controller pass. Exit 1 if any Certificate failed.
pub fn reconcile(a: ReconcileArgs) -> Result<ExitCode> {
    let loaded = load(&a.config)?;
    let now = SystemTime::now();
    let store = CaStore::new(&a.state.state);
    for td in crate::ca::config_trust_domains(&a.config.config)? {
        store.load_or_create(&td, now)?;
    }
    let outcomes = controller::reconcile(&loaded.snapshot, &a.state.state, now, &Force::None);
    let failed = outcomes.iter().any(|o| o.action == Action::Failed);
    emit(a.out.output, &outcomes, || {
        let mut t = table(["NAMESPACE", "NAME", "ACTION", "REASON", "MESSAGE"]);
        for o in &outcomes {
            let action = match o.action {
                Action::Issued => "issued",
                Action::UpToDate => "up to date",
                Action::Failed => "failed",
                Action::BackingOff => "backing off",
            };
            t.add_row([
                o.namespace.clone(),
                o.name.clone(),
                action.to_owned(),
                o.reason.clone(),
                o.message.clone(),
            ]);
        }
        render(&t)
    })?;
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Runs `trustmesh certs`.
pub fn run(a: CertsArgs) -> Result<ExitCode> {
    let loaded = load(&a.config)?;
    let mut views = controller::status(&loaded.snapshot, &a.state.state, SystemTime::now());
    if let Some(ns) = &a.namespace {
        views.retain(|v| &v.namespace == ns);
    }
    emit(a.out.output, &views, || {
        let mut t = table([
            "NAMESPACE",
            "NAME",
            "READY",
            "SECRET",
            "ISSUER",
            "IDENTITY",
            "NOT AFTER",
            "RENEWAL",
            "STATUS",
        ]);
        for v in &views {
            t.add_row([
                v.namespace.clone(),
                v.name.clone(),
                v.ready.clone(),
                v.secret_name.clone(),
                v.issuer.clone(),
                v.identity.clone(),
                v.not_after.clone().unwrap_or_else(|| "-".into()),
                v.renewal_time.clone().unwrap_or_else(|| "-".into()),
                v.message.clone(),
            ]);
        }
        render(&t)
    })?;
    Ok(ExitCode::SUCCESS)
}
