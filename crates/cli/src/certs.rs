//! `trustmesh reconcile` and `trustmesh certs`: the cert-manager side of the mesh — issue
//! what the config's `Certificate`s ask for, and show them like
//! `kubectl get certificates -o wide` with the renewal time and identity added.
//!
//! `certs` is live when the control plane answers (its admin credential is in `--state` and
//! `GET /v1/workloads` succeeds): every workload's SVID, read from its proxy's `/certs`
//! (status `Ready`, `Expired`, `Pending` before the first certificate, `Unreachable`), and
//! the cert-manager Certificates from `GET /v1/certificates`. Otherwise it reads the
//! Certificates of `--config` from the state folder, as cert-manager's status would show them.
//! Each row carries a `kind`: `SVID` or `Certificate`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::{Value, json};
use trustmesh_config::LoadOutput;
use trustmesh_pki::CaStore;
use trustmesh_pki::controller::{self, Action, Force};

use crate::http::AdminClient;
use crate::output::{emit, render, table};
use crate::probe::{AdminAnswer, ProxyCerts, chain_info, proxy_admin};
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
    /// The config folder whose `Certificate`s to show when the control plane does not answer.
    #[arg(long, env = "TRUSTMESH_CONFIG")]
    pub config: Option<PathBuf>,
    /// The control plane's admin API.
    #[arg(long, default_value = "127.0.0.1:15014")]
    pub control_plane_admin: SocketAddr,
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
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let live = rt.block_on(live_rows(&a));
    let mut rows = match (live, &a.config) {
        (Ok(rows), _) => rows,
        (Err(e), Some(config)) => {
            // A credential means a mesh ran with this state folder: say why it is not live.
            if a.state.state.join("admin.token").exists() {
                eprintln!(
                    "note: the control plane is not reachable ({}): showing the Certificates of {} only",
                    e.root_cause(),
                    config.display()
                );
            }
            offline_rows(
                &ConfigArgs {
                    config: config.clone(),
                },
                &a.state.state,
            )?
        }
        (Err(e), None) => bail!("no --config given and the control plane is not reachable: {e:#}"),
    };
    if let Some(ns) = &a.namespace {
        rows.retain(|v| v["namespace"].as_str() == Some(ns.as_str()));
    }
    emit(a.out.output, &rows, || {
        let mut t = table([
            "KIND",
            "NAMESPACE",
            "NAME",
            "READY",
            "SECRET",
            "ISSUER",
            "IDENTITY",
            "SERIAL",
            "NOT AFTER",
            "RENEWAL",
            "STATUS",
        ]);
        let f = |v: &Value, k: &str| v[k].as_str().unwrap_or("-").to_owned();
        for v in &rows {
            let status = if v["kind"] == "SVID" {
                match v["message"].as_str() {
                    Some(m) if !m.is_empty() => format!("{}: {m}", f(v, "status")),
                    _ => f(v, "status"),
                }
            } else {
                f(v, "message")
            };
            t.add_row([
                f(v, "kind"),
                f(v, "namespace"),
                f(v, "name"),
                f(v, "ready"),
                f(v, "secretName"),
                f(v, "issuer"),
                f(v, "identity"),
                f(v, "serial"),
                f(v, "notAfter"),
                f(v, "renewalTime"),
                status,
            ]);
        }
        render(&t)
    })?;
    Ok(ExitCode::SUCCESS)
}

/// The config's Certificates as the state folder holds them, each with `kind: Certificate`.
fn offline_rows(config: &ConfigArgs, state: &std::path::Path) -> Result<Vec<Value>> {
    let loaded = load(config)?;
    let views = controller::status(&loaded.snapshot, state, SystemTime::now());
    views
        .iter()
        .map(|v| {
            let mut row = serde_json::to_value(v)?;
            row["kind"] = json!("Certificate");
            Ok(row)
        })
        .collect()
}

/// Every workload's SVID and every Certificate, from the running mesh.
async fn live_rows(a: &CertsArgs) -> Result<Vec<Value>> {
    let cp = AdminClient::new(a.control_plane_admin, &a.state.state)?;
    let workloads: Value = cp.get("/v1/workloads").await?;
    let mut rows = Vec::new();
    for w in workloads["workloads"].as_array().into_iter().flatten() {
        let ns = w["namespace"].as_str().unwrap_or("");
        if a.namespace.as_deref().is_some_and(|want| want != ns) {
            continue;
        }
        rows.push(svid_row(w).await);
    }
    let certs: Value = cp
        .get("/v1/certificates")
        .await
        .context("reading the Certificates")?;
    for c in certs["certificates"].as_array().into_iter().flatten() {
        let mut row = c.clone();
        row["kind"] = json!("Certificate");
        rows.push(row);
    }
    Ok(rows)
}

/// One workload's SVID as its proxy reports it.
async fn svid_row(w: &Value) -> Value {
    let mut row = json!({
        "kind": "SVID",
        "namespace": w["namespace"],
        "name": w["name"],
        "address": w["address"],
        "identity": w["identity"],
        "ready": "False",
        "secretName": null,
    });
    let Some(ip) = w["address"].as_str().and_then(|a| a.parse::<IpAddr>().ok()) else {
        row["status"] = json!("Unreachable");
        row["message"] = json!("the control plane reports no address");
        return row;
    };
    match proxy_admin::<ProxyCerts>(ip, "/certs").await {
        AdminAnswer::Unreachable(e) => {
            row["status"] = json!("Unreachable");
            row["message"] = json!(format!(
                "proxy admin {ip}:{} ({e})",
                trustmesh_api::PROXY_ADMIN_PORT
            ));
        }
        AdminAnswer::NotReady(e) => {
            row["status"] = json!("Pending");
            row["message"] = json!(e);
        }
        AdminAnswer::Ok(c) => {
            let chain = chain_info(&c);
            let leaf = chain.first();
            let now = SystemTime::now();
            let valid = leaf.is_some_and(|l| l.is_valid_at(now));
            let unix = |t: SystemTime| t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).ok();
            row["identity"] = json!(c.spiffe_id);
            row["serial"] = json!(c.serial);
            row["issuer"] = json!(leaf.map(|l| l.issuer.clone()));
            row["notBefore"] = json!(c.not_before);
            row["notAfter"] = json!(c.not_after);
            row["renewalTime"] = json!(c.renewal_time);
            row["expirationTimestamp"] = json!(leaf.and_then(|l| unix(l.not_after)));
            row["ready"] = json!(if valid { "True" } else { "False" });
            row["status"] = json!(if valid { "Ready" } else { "Expired" });
            row["message"] = json!(if valid {
                String::new()
            } else {
                format!("not valid now (not after {})", c.not_after)
            });
        }
    }
    row
}
