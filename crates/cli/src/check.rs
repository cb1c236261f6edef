//! `trustmesh check DIR`: load, validate and analyze a config folder, like `istioctl analyze`.
//! Errors and warnings name file, line, resource and field; exit 1 on errors.
//!
//! A config that loads is analyzed ([`trustmesh_core::analyze`]); load errors are reported
//! as `TM0000` (the config is rejected and not analyzed), validation warnings as `TM0001`
//! unless an analyzer finding restates them, in which case only the finding is shown (with
//! the warning's more precise line). Exit 1 iff there is an error-level finding; warnings
//! and info do not fail. The codes are documented in `docs/analyzer.md`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use serde::Serialize;
use trustmesh_config::{LoadError, LoadWarning, load_dir};
use trustmesh_core::analyze::{self, Code, Severity};

use crate::OutputArgs;
use crate::output::{emit, render, table};

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
    code: &'static str,
    file: Option<String>,
    line: Option<u32>,
    resource: Option<String>,
    field: Option<String>,
    message: String,
    /// One line: what to change (analyzer findings; `null` for load errors and warnings).
    fix: Option<String>,
}

/// The report `-o json|yaml` prints.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    dir: String,
    /// The config loaded and validated (it may still have error-level findings).
    valid: bool,
    errors: usize,
    warnings: usize,
    infos: usize,
    findings: Vec<Finding>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trust_domain: Option<String>,
    files: usize,
    resources: BTreeMap<String, usize>,
}

impl Report {
    fn count(&mut self) {
        let n = |level: Severity| {
            self.findings
                .iter()
                .filter(|f| f.level == level.as_str())
                .count()
        };
        (self.errors, self.warnings, self.infos) =
            (n(Severity::Error), n(Severity::Warning), n(Severity::Info));
    }
}

fn from_warning(w: &LoadWarning) -> Finding {
    Finding {
        level: Severity::Warning.as_str(),
        code: Code::ValidationWarning.as_str(),
        file: w.file.clone(),
        line: w.line,
        resource: w.resource.clone(),
        field: w.field.clone(),
        message: w.message.clone(),
        fix: None,
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
        level: Severity::Error.as_str(),
        code: Code::ConfigRejected.as_str(),
        file: Some(e.file()),
        line: e.line(),
        resource,
        field,
        message,
        fix: None,
    }
}

/// The analyzer's findings merged with the load warnings: a warning an analyzer finding
/// restates is folded into it (the finding takes the warning's line when that is in the
/// same file, since it points at the field rather than the document); the rest stay as
/// `TM0001`. Sorted by file, line, code; entries without a file last.
fn merge(found: &[analyze::Finding], warnings: &[LoadWarning]) -> Vec<Finding> {
    let mut out: Vec<Finding> = found
        .iter()
        .map(|f| Finding {
            level: f.severity.as_str(),
            code: f.code.as_str(),
            file: f.origin.as_ref().map(|o| o.file.clone()),
            line: f.origin.as_ref().map(|o| o.line),
            resource: Some(f.resource.clone()),
            field: f.field.clone(),
            message: f.message.clone(),
            fix: Some(f.fix.clone()),
        })
        .collect();
    // The first line of a folded warning's field, per finding.
    let mut field_line: Vec<Option<u32>> = vec![None; out.len()];
    let mut kept = Vec::new();
    for w in warnings {
        let resource = w.resource.as_deref().unwrap_or_default();
        let mut folded = false;
        for (i, f) in found.iter().enumerate() {
            if !f.supersedes(resource, w.field.as_deref(), &w.message) {
                continue;
            }
            folded = true;
            if out[i].file == w.file
                && let Some(line) = w.line
            {
                field_line[i] = Some(field_line[i].map_or(line, |l| l.min(line)));
            }
        }
        if !folded {
            kept.push(from_warning(w));
        }
    }
    for (shown, line) in out.iter_mut().zip(field_line) {
        if line.is_some() {
            shown.line = line;
        }
    }
    out.extend(kept);
    out.sort_by(|a, b| {
        (a.file.is_none(), &a.file, a.line, a.code).cmp(&(
            b.file.is_none(),
            &b.file,
            b.line,
            b.code,
        ))
    });
    out
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
            let found = analyze::analyze(snap);
            let mut report = Report {
                dir,
                valid: true,
                errors: 0,
                warnings: 0,
                infos: 0,
                findings: merge(&found, &out.warnings),
                trust_domain: Some(snap.mesh().trust_domain.to_string()),
                files: out.files.len(),
                resources,
            };
            report.count();
            report
        }
        Err(errs) => {
            let mut findings: Vec<Finding> = errs.errors.iter().map(from_error).collect();
            findings.extend(errs.warnings.iter().map(from_warning));
            let mut report = Report {
                dir,
                valid: false,
                errors: 0,
                warnings: 0,
                infos: 0,
                findings,
                trust_domain: None,
                files: 0,
                resources: BTreeMap::new(),
            };
            report.count();
            report
        }
    };
    emit(args.out.output, &report, || render_report(&report))?;
    // The report already says why; the exit code says it to scripts.
    Ok(if report.errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn render_report(r: &Report) -> String {
    let mut s = String::new();
    if !r.findings.is_empty() {
        let mut t = table(["LEVEL", "CODE", "LOCATION", "RESOURCE", "MESSAGE", "FIX"]);
        for f in &r.findings {
            let loc = match (&f.file, f.line) {
                (Some(file), Some(line)) => format!("{file}:{line}"),
                (Some(file), None) => file.clone(),
                _ => String::new(),
            };
            let message = match &f.field {
                Some(field) => format!("{field}: {}", f.message),
                None => f.message.clone(),
            };
            t.add_row([
                f.level.to_uppercase(),
                f.code.to_owned(),
                loc,
                f.resource.clone().unwrap_or_default(),
                message,
                f.fix.clone().unwrap_or_default(),
            ]);
        }
        s.push_str(&render(&t));
        s.push_str("\n\n");
    }
    let counts = format!(
        "{} error(s), {} warning(s), {} info",
        r.errors, r.warnings, r.infos
    );
    if r.valid {
        let kinds: Vec<String> = r
            .resources
            .iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect();
        let mark = if r.errors == 0 { '✔' } else { '✘' };
        s.push_str(&format!(
            "{mark} {}: {} resources in {} files, trust domain {}: {}\n",
            r.dir,
            r.resources.values().sum::<usize>(),
            r.files,
            r.trust_domain.as_deref().unwrap_or("-"),
            kinds.join(", ")
        ));
        if r.errors > 0 {
            s.push_str(&format!(
                "{counts}: the config loads, but the analyzer found errors\n"
            ));
        } else {
            s.push_str(&format!("{counts}\n"));
        }
    } else {
        s.push_str(&format!(
            "✘ {}: {} error(s), {} warning(s); the config is rejected as a whole\n",
            r.dir, r.errors, r.warnings
        ));
    }
    s
}
