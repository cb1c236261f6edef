//! `trustmesh check DIR`: load, validate and analyze a config folder, like `istioctl analyze`.
//! Errors and warnings name file, line, resource and field; exit 1 on errors.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use serde::Serialize;
use trustmesh_config::{LoadError, LoadWarning, load_dir};

use crate::OutputArgs;
use crate::output::{Format, emit, render, table};

/// Flags of `trustmesh check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The config folder (a kustomization folder or a folder of YAML files).
    pub dir: PathBuf,
    #[command(flatten)]
    pub out: OutputArgs,
}

/// One finding, as printed.
#[derive(Debug, Serialize)]
struct Finding {
    level: &'static str,
    file: Option<String>,
    line: Option<u32>,
    resource: Option<String>,
    field: Option<String>,
    message: String,
}

/// The report `-o json|yaml` prints.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    dir: String,
    valid: bool,
    errors: usize,
    warnings: usize,
    findings: Vec<Finding>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trust_domain: Option<String>,
    files: usize,
    resources: BTreeMap<String, usize>,
}

fn from_warning(w: &LoadWarning) -> Finding {
    Finding {
        level: "warning",
        file: w.file.clone(),
        line: w.line,
        resource: w.resource.clone(),
        field: w.field.clone(),
        message: w.message.clone(),
    }
}

fn from_error(e: &LoadError) -> Finding {
    let (resource, field, message) = match e {
        LoadError::Schema {
            resource,
            field,
            message,
            ..
        }
        | LoadError::Invalid {
            resource,
            field,
            message,
            ..
        } => (Some(resource.clone()), Some(field.clone()), message.clone()),
        LoadError::Type { name, error, .. } => (name.clone(), None, error.to_string()),
        LoadError::Syntax {
            column, message, ..
        } => (None, None, format!("column {column}: {message}")),
        LoadError::Io { message, .. } => (None, None, message.clone()),
        // The kustomization errors tell their whole story in Display, after `file:line: `.
        LoadError::Kustomization { file, line, .. }
        | LoadError::MissingResource { file, line, .. } => {
            let text = e.to_string();
            let prefix = format!("{file}:{line}: ");
            (
                None,
                None,
                text.strip_prefix(&prefix).unwrap_or(&text).to_owned(),
            )
        }
    };
    Finding {
        level: "error",
        file: Some(e.file()),
        line: e.line(),
        resource,
        field,
        message,
    }
}

/// Runs `trustmesh check`.
pub fn run(args: CheckArgs) -> Result<ExitCode> {
    let dir = args.dir.display().to_string();
    let report = match load_dir(&args.dir) {
        Ok(out) => {
            let snap = &out.snapshot;
            let mut resources = BTreeMap::new();
            let counts = [
                ("MeshConfig", usize::from(snap.mesh_config().is_some())),
                ("Namespace", snap.namespaces().len()),
                ("PeerAuthentication", snap.peer_authentications().len()),
                ("AuthorizationPolicy", snap.authorization_policies().len()),
                ("DestinationRule", snap.destination_rules().len()),
                ("WorkloadEntry", snap.workload_entries().len()),
                ("ServiceEntry", snap.service_entries().len()),
                ("Certificate", snap.certificates().len()),
                ("Issuer", snap.issuers().len()),
                ("ClusterIssuer", snap.cluster_issuers().len()),
            ];
            for (k, n) in counts {
                if n > 0 {
                    resources.insert(k.to_owned(), n);
                }
            }
            let findings: Vec<Finding> = out.warnings.iter().map(from_warning).collect();
            Report {
                dir,
                valid: true,
                errors: 0,
                warnings: findings.len(),
                findings,
                trust_domain: Some(snap.mesh().trust_domain.to_string()),
                files: out.files.len(),
                resources,
            }
        }
        Err(errs) => {
            let mut findings: Vec<Finding> = errs.errors.iter().map(from_error).collect();
            findings.extend(errs.warnings.iter().map(from_warning));
            Report {
                dir,
                valid: false,
                errors: errs.errors.len(),
                warnings: errs.warnings.len(),
                findings,
                trust_domain: None,
                files: 0,
                resources: BTreeMap::new(),
            }
        }
    };
    emit(args.out.output, &report, || render_report(&report))?;
    if args.out.output != Format::Table && !report.valid {
        // The JSON/YAML already says why; the exit code says it to scripts.
        return Ok(ExitCode::FAILURE);
    }
    Ok(if report.valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn render_report(r: &Report) -> String {
    let mut s = String::new();
    if !r.findings.is_empty() {
        let mut t = table(["LEVEL", "LOCATION", "RESOURCE", "FIELD", "MESSAGE"]);
        for f in &r.findings {
            let loc = match (&f.file, f.line) {
                (Some(file), Some(line)) => format!("{file}:{line}"),
                (Some(file), None) => file.clone(),
                _ => String::new(),
            };
            t.add_row([
                f.level.to_uppercase(),
                loc,
                f.resource.clone().unwrap_or_default(),
                f.field.clone().unwrap_or_default(),
                f.message.clone(),
            ]);
        }
        s.push_str(&render(&t));
        s.push_str("\n\n");
    }
    if r.valid {
        let kinds: Vec<String> = r
            .resources
            .iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect();
        s.push_str(&format!(
            "✔ {}: {} resources in {} files, trust domain {}: {}\n",
            r.dir,
            r.resources.values().sum::<usize>(),
            r.files,
            r.trust_domain.as_deref().unwrap_or("-"),
            kinds.join(", ")
        ));
        if r.warnings > 0 {
            s.push_str(&format!("{} warning(s)\n", r.warnings));
        }
    } else {
        s.push_str(&format!(
            "✘ {}: {} error(s), {} warning(s); the config is rejected as a whole\n",
            r.dir, r.errors, r.warnings
        ));
    }
    s
}
