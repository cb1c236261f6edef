//! `trustmesh rotate NAME... | --all [-n NS]`: rotate certificates now, like `cmctl renew`.
//! A NAME is a workload (its SVID is renewed by its proxy, without dropping a request) or a
//! cert-manager `Certificate` (re-issued with reason `ManuallyTriggered`), or both when both
//! carry the name. The running control plane does the work; this command asks it.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Args;
use serde_json::{Value, json};

use crate::http::AdminClient;
use crate::output::{emit, render, table};
use crate::{OutputArgs, StateArgs};

/// Flags of `trustmesh rotate`.
#[derive(Debug, Args)]
pub struct RotateArgs {
    /// Workloads or Certificates: `NAME` (in `-n`'s namespace) or `NAMESPACE/NAME`.
    #[arg(conflicts_with = "all", required_unless_present = "all")]
    pub names: Vec<String>,
    /// Every workload and every Certificate.
    #[arg(long)]
    pub all: bool,
    /// Namespace of names given without one.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// The control plane's admin API.
    #[arg(long, default_value = "127.0.0.1:15014")]
    pub control_plane_admin: SocketAddr,
    #[command(flatten)]
    pub state: StateArgs,
    #[command(flatten)]
    pub out: OutputArgs,
}

/// Runs `trustmesh rotate`.
pub fn run(a: RotateArgs) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(rotate(a))
}

fn qualified(ns: &str, name: &str) -> String {
    if name.contains('/') {
        name.to_owned()
    } else {
        format!("{ns}/{name}")
    }
}

async fn rotate(a: RotateArgs) -> Result<ExitCode> {
    let cp = AdminClient::new(a.control_plane_admin, &a.state.state)?;
    let body = if a.all {
        json!({ "all": true })
    } else {
        let workloads: Value = cp.get("/v1/workloads").await?;
        let certs: Value = cp.get("/v1/certificates").await?;
        let has = |list: &Value, key: &str, name: &str| {
            list[key].as_array().is_some_and(|l| {
                l.iter().any(|x| {
                    format!(
                        "{}/{}",
                        x["namespace"].as_str().unwrap_or(""),
                        x["name"].as_str().unwrap_or("")
                    ) == name
                })
            })
        };
        let (mut ws, mut cs, mut unknown) = (Vec::new(), Vec::new(), Vec::new());
        for n in &a.names {
            let q = qualified(&a.namespace, n);
            let w = has(&workloads, "workloads", &q);
            let c = has(&certs, "certificates", &q);
            if w {
                ws.push(q.clone());
            }
            if c {
                cs.push(q.clone());
            }
            if !w && !c {
                unknown.push(q);
            }
        }
        if !unknown.is_empty() {
            bail!(
                "no workload or Certificate named {} in the running mesh",
                unknown.join(", ")
            );
        }
        json!({ "workloads": ws, "certificates": cs })
    };
    let result: Value = cp.post("/v1/rotate", &body).await?;
    let mut failed = false;
    emit(a.out.output, &result, || {
        let mut lines = Vec::new();
        for w in result["workloads"].as_array().into_iter().flatten() {
            lines.push(format!(
                "Manually triggered rotation of workload {} (rotation {})",
                w["workload"].as_str().unwrap_or("?"),
                w["rotation"]
            ));
        }
        let mut t = table(["CERTIFICATE", "ACTION", "REASON", "MESSAGE"]);
        let mut any = false;
        for c in result["certificates"].as_array().into_iter().flatten() {
            any = true;
            t.add_row([
                format!(
                    "{}/{}",
                    c["namespace"].as_str().unwrap_or(""),
                    c["name"].as_str().unwrap_or("")
                ),
                c["action"].as_str().unwrap_or("").to_owned(),
                c["reason"].as_str().unwrap_or("").to_owned(),
                c["message"].as_str().unwrap_or("").to_owned(),
            ]);
        }
        let mut s = lines.join("\n");
        if any {
            if !s.is_empty() {
                s.push_str("\n\n");
            }
            s.push_str(&render(&t));
        }
        s
    })?;
    for c in result["certificates"].as_array().into_iter().flatten() {
        if c["action"] == "failed" {
            failed = true;
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
