//! `trustmesh enable NAMESPACE --mode STRICT|PERMISSIVE|DISABLE`: write the namespace's
//! PeerAuthentication into the config folder, as `kubectl apply` of a namespace-wide
//! `PeerAuthentication` named `default` would.
//!
//! Where the folder already has the namespace-wide policy that decides the namespace's mode
//! (Istio: the oldest one wins), that document is rewritten in place, keeping the comment
//! lines above it; otherwise a new file `peer-authentication-<ns>.yaml` is added (and listed in
//! the folder's `kustomization.yaml`, if it has one). The folder is loaded again after the
//! write; if it would not load, every file is put back as it was and the command fails, so a
//! running control plane watching the folder never sees a broken config.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::Serialize;
use trustmesh_core::model::security::{MtlsMode, PeerAuthentication};
use trustmesh_core::snapshot::Sourced;
use trustmesh_pki::fsutil::write_atomic;

use crate::OutputArgs;
use crate::output::emit;

/// Flags of `trustmesh enable`.
#[derive(Debug, Args)]
pub struct EnableArgs {
    /// The namespace (the root namespace sets the mesh-wide mode).
    pub namespace: String,
    /// The mode.
    #[arg(long, value_parser = ["STRICT", "PERMISSIVE", "DISABLE"])]
    pub mode: String,
    /// The config folder to write into.
    #[arg(long, env = "TRUSTMESH_CONFIG")]
    pub config: PathBuf,
    #[command(flatten)]
    pub out: OutputArgs,
}

/// What `enable` did.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Change {
    namespace: String,
    scope: &'static str,
    policy: String,
    file: String,
    previous_mode: Option<String>,
    mode: String,
    changed: bool,
}

fn parse_mode(s: &str) -> MtlsMode {
    match s {
        "STRICT" => MtlsMode::Strict,
        "DISABLE" => MtlsMode::Disable,
        _ => MtlsMode::Permissive,
    }
}

/// The namespace-wide policy that decides `ns`'s mode: no selector (or empty `matchLabels`);
/// "oldest wins" among several, ordered exactly as `trustmesh_core::peerauth` orders them (an
/// absent creationTimestamp is oldest, like Go's zero time; then the name).
fn deciding_policy<'a>(
    pas: &'a [Sourced<PeerAuthentication>],
    ns: &str,
) -> Option<&'a Sourced<PeerAuthentication>> {
    pas.iter()
        .filter(|p| p.metadata.namespace_str() == ns)
        .filter(|p| {
            p.spec
                .selector
                .as_ref()
                .is_none_or(|s| s.match_labels.is_empty())
        })
        .min_by_key(|p| (p.metadata.creation_unix_seconds(), p.metadata.name.clone()))
}

/// Line range `[start, end)` (0-based) of the YAML document holding 1-based `line`.
fn document_range(lines: &[&str], line: usize) -> (usize, usize) {
    let at = line.saturating_sub(1).min(lines.len());
    let is_sep = |l: &str| l.starts_with("---");
    let start = (0..at)
        .rev()
        .find(|&i| is_sep(lines[i]))
        .map_or(0, |i| i + 1);
    let end = (at..lines.len())
        .find(|&i| i > start && is_sep(lines[i]))
        .unwrap_or(lines.len());
    (start, end)
}

fn render_policy(pa: &PeerAuthentication) -> Result<String> {
    let text = serde_saphyr::to_string(pa).context("writing the PeerAuthentication as YAML")?;
    Ok(if text.ends_with('\n') {
        text
    } else {
        text + "\n"
    })
}

/// Runs `trustmesh enable`.
pub fn run(a: EnableArgs) -> Result<ExitCode> {
    // Kubernetes namespace names are RFC 1123 labels.
    let valid = !a.namespace.is_empty()
        && a.namespace.len() <= 63
        && a.namespace
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !a.namespace.starts_with('-')
        && !a.namespace.ends_with('-');
    if !valid {
        bail!(
            "{:?} is not a valid namespace name (RFC 1123 label)",
            a.namespace
        );
    }
    let loaded = trustmesh_config::load_dir(&a.config).map_err(|e| {
        anyhow::anyhow!(
            "{} must load before it can be changed (see `trustmesh check`):\n{e}",
            a.config.display()
        )
    })?;
    let snap = &loaded.snapshot;
    let root = snap.mesh().root_namespace.clone();
    let scope = if a.namespace == root {
        "mesh"
    } else {
        "namespace"
    };
    let mode = parse_mode(&a.mode);

    // (file, original text) of everything we write, to put back on failure.
    let mut backups: Vec<(PathBuf, Option<String>)> = Vec::new();
    let change = match deciding_policy(snap.peer_authentications(), &a.namespace) {
        Some(existing) => {
            let origin = existing.origin.clone().with_context(|| {
                format!(
                    "PeerAuthentication {}/{} has no file to edit",
                    a.namespace, existing.metadata.name
                )
            })?;
            let file = PathBuf::from(&origin.file);
            let previous = existing.spec.mode();
            let mut updated = existing.object.clone();
            updated.spec.mtls = Some(trustmesh_core::model::security::MutualTls { mode });
            let changed = previous != mode;
            if changed {
                let text = std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?;
                let lines: Vec<&str> = text.lines().collect();
                let (start, end) = document_range(&lines, origin.line as usize);
                // Keep the comments that introduce the document.
                let comments: Vec<&str> = lines[start..end]
                    .iter()
                    .take_while(|l| l.trim_start().starts_with('#') || l.trim().is_empty())
                    .copied()
                    .collect();
                let mut out: Vec<String> = lines[..start].iter().map(|l| (*l).to_owned()).collect();
                out.extend(comments.iter().map(|l| (*l).to_owned()));
                out.push(render_policy(&updated)?.trim_end().to_owned());
                out.extend(lines[end..].iter().map(|l| (*l).to_owned()));
                let mut new_text = out.join("\n");
                new_text.push('\n');
                backups.push((file.clone(), Some(text)));
                write_atomic(&file, new_text.as_bytes(), 0o644)?;
            }
            Change {
                namespace: a.namespace.clone(),
                scope,
                policy: format!("{}/{}", a.namespace, existing.metadata.name),
                file: file.display().to_string(),
                previous_mode: Some(previous.as_str().to_owned()),
                mode: mode.as_str().to_owned(),
                changed,
            }
        }
        None => {
            let name = format!("peer-authentication-{}.yaml", a.namespace);
            let file = a.config.join(&name);
            if file.exists() {
                bail!(
                    "{} exists but holds no namespace-wide PeerAuthentication for {}; edit it by hand",
                    file.display(),
                    a.namespace
                );
            }
            let pa_yaml = format!(
                "# Written by `trustmesh enable {ns} --mode {mode}`.\n\
                 apiVersion: security.istio.io/v1\n\
                 kind: PeerAuthentication\n\
                 metadata:\n  name: default\n  namespace: {ns}\n\
                 spec:\n  mtls:\n    mode: {mode}\n",
                ns = a.namespace,
                mode = mode.as_str()
            );
            backups.push((file.clone(), None));
            write_atomic(&file, pa_yaml.as_bytes(), 0o644)?;
            if let Some(kust) = kustomization(&a.config) {
                let text = std::fs::read_to_string(&kust)
                    .with_context(|| format!("reading {}", kust.display()))?;
                let new_text = add_resource(&text, &name).with_context(|| {
                    format!("{}: no `resources:` list to add {name} to", kust.display())
                })?;
                backups.push((kust.clone(), Some(text)));
                write_atomic(&kust, new_text.as_bytes(), 0o644)?;
            }
            Change {
                namespace: a.namespace.clone(),
                scope,
                policy: format!("{}/default", a.namespace),
                file: file.display().to_string(),
                previous_mode: None,
                mode: mode.as_str().to_owned(),
                changed: true,
            }
        }
    };

    // The folder must still load, and now resolve to the mode asked for.
    if let Err(e) = trustmesh_config::load_dir(&a.config) {
        restore(&backups);
        bail!("the change would break the config, nothing was written:\n{e}");
    }

    emit(a.out.output, &change, || {
        let from = change.previous_mode.as_deref().unwrap_or("(none)");
        if change.changed {
            format!(
                "PeerAuthentication {} ({}-wide): {} → {} in {}",
                change.policy, change.scope, from, change.mode, change.file
            )
        } else {
            format!(
                "PeerAuthentication {} ({}-wide) is already {} in {}",
                change.policy, change.scope, change.mode, change.file
            )
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

fn restore(backups: &[(PathBuf, Option<String>)]) {
    for (path, original) in backups.iter().rev() {
        let _ = match original {
            Some(text) => write_atomic(path, text.as_bytes(), 0o644).map_err(|e| e.to_string()),
            None => std::fs::remove_file(path).map_err(|e| e.to_string()),
        };
    }
}

fn kustomization(dir: &Path) -> Option<PathBuf> {
    ["kustomization.yaml", "kustomization.yml", "Kustomization"]
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
}

/// Adds `- name` to the top-level `resources:` list of a kustomization, after its last item.
fn add_resource(text: &str, name: &str) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let at = lines.iter().position(|l| l.trim_end() == "resources:")?;
    let mut last = at;
    let mut indent = "  ".to_owned();
    for (i, l) in lines.iter().enumerate().skip(at + 1) {
        let t = l.trim_start();
        if t.starts_with("- ") {
            last = i;
            indent = l[..l.len() - t.len()].to_owned();
        } else if !(t.is_empty() || t.starts_with('#')) {
            break;
        }
    }
    let mut out: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();
    out.insert(last + 1, format!("{indent}- {name}"));
    Some(out.join("\n") + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_range_finds_the_document_around_a_line() {
        let lines = [
            "# a", "kind: A", "---", "# b", "kind: B", "x: 1", "---", "kind: C",
        ];
        assert_eq!(document_range(&lines, 2), (0, 2));
        assert_eq!(document_range(&lines, 5), (3, 6));
        assert_eq!(document_range(&lines, 8), (7, 8));
    }

    #[test]
    fn add_resource_appends_to_the_list() {
        let k = "kind: Kustomization\nresources:\n  - a.yaml\n  - b.yaml\nnamespace: x\n";
        assert_eq!(
            add_resource(k, "c.yaml").unwrap(),
            "kind: Kustomization\nresources:\n  - a.yaml\n  - b.yaml\n  - c.yaml\nnamespace: x\n"
        );
        assert!(add_resource("kind: Kustomization\n", "c.yaml").is_none());
    }
}
