//! `kustomization.yaml`: which files a folder holds and the few transformations trustmesh
//! applies, so `kubectl apply -k`-style folders load unchanged.
//!
//! Supported (as kustomize does it): `resources` (files, and folders that hold their own
//! kustomization, relative to the kustomization), the deprecated `bases` (same, with a
//! warning), `namespace` (sets `metadata.namespace` on every namespaced resource, overriding
//! what is there, and — kustomize's own quirk since kubernetes-sigs/kustomize#2953 — renames
//! `Namespace` objects), `commonLabels`, `labels[].pairs` and `commonAnnotations` (added to
//! `metadata`; kustomize knows no selector paths of Istio kinds). Anything else (`patches`,
//! `namePrefix`, generators, `components`, remote URLs) is an error, not ignored: ignoring it
//! would load a different config from the one `kubectl apply -k` applies.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;
use trustmesh_core::model::{Kind, Resource};

use crate::error::LoadError;
use crate::parse::{self, Node};

/// File names kustomize looks for, in its order.
pub(crate) const KUSTOMIZATION_FILES: [&str; 3] =
    ["kustomization.yaml", "kustomization.yml", "Kustomization"];

/// The kustomization file in `dir`, if any.
pub(crate) fn find(dir: &Path) -> Option<PathBuf> {
    KUSTOMIZATION_FILES
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
}

/// The fields trustmesh implements.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    metadata: Option<Value>,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    bases: Vec<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    common_labels: BTreeMap<String, String>,
    #[serde(default)]
    labels: Vec<LabelsEntry>,
    #[serde(default)]
    common_annotations: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LabelsEntry {
    #[serde(default)]
    pairs: BTreeMap<String, String>,
    #[serde(default)]
    include_selectors: Option<bool>,
    #[serde(default)]
    include_templates: Option<bool>,
}

const SUPPORTED: &str = "resources, bases, namespace, commonLabels, labels, commonAnnotations";

/// One `resources:` entry, resolved.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// As written.
    pub written: String,
    /// Joined to the kustomization's folder.
    pub path: PathBuf,
    /// Line of the entry in the kustomization file.
    pub line: u32,
}

/// A parsed kustomization.
#[derive(Debug, Clone, Default)]
pub(crate) struct Kustomization {
    /// `resources` then `bases`, in order.
    pub entries: Vec<Entry>,
    /// `namespace`.
    pub namespace: Option<String>,
    /// `commonLabels` and every `labels[].pairs`.
    pub labels: BTreeMap<String, String>,
    /// `commonAnnotations`.
    pub annotations: BTreeMap<String, String>,
}

/// Reads a kustomization. Errors name the file and line; `warnings` get deprecations.
pub(crate) fn parse(
    file: &Path,
    text: &str,
    warnings: &mut Vec<(u32, String)>,
) -> Result<Kustomization, Vec<LoadError>> {
    let name = file.display().to_string();
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let err = |line: u32, message: String| LoadError::Kustomization {
        file: name.clone(),
        line: line.max(1),
        message,
    };
    let tree = match parse::parse_tree(text) {
        Ok(t) => t,
        Err(e) => {
            let line = e
                .location()
                .map_or(1, |l| u32::try_from(l.line()).unwrap_or(1));
            return Err(vec![err(line, parse::message(&e))]);
        }
    };
    if matches!(tree.value, Node::Scalar(None)) {
        return Ok(Kustomization::default());
    }
    let raw: Raw = match parse::typed(text, PhantomData::<Raw>) {
        Ok(r) => r,
        Err(f) => {
            let (path, e) = *f;
            let line = e.location().map_or_else(
                || parse::locate(&tree, &path),
                |l| u32::try_from(l.line()).unwrap_or(1),
            );
            let msg = parse::message(&e);
            let message = match msg
                .strip_prefix("unknown field `")
                .and_then(|r| r.split('`').next())
            {
                Some(field) => format!(
                    "field `{field}` is not supported by trustmesh (supported: {SUPPORTED}); render the folder with `kubectl kustomize` and load the output instead"
                ),
                None => format!("{path}: {msg}"),
            };
            return Err(vec![err(line, message)]);
        }
    };
    let _ = &raw.metadata;
    let mut errors = Vec::new();
    if let Some(api) = &raw.api_version
        && !api.starts_with("kustomize.config.k8s.io/")
    {
        errors.push(err(
            parse::locate(&tree, "apiVersion"),
            format!("apiVersion {api:?} is not kustomize.config.k8s.io/..."),
        ));
    }
    match raw.kind.as_deref() {
        None | Some("Kustomization") => {}
        Some(k) => errors.push(err(
            parse::locate(&tree, "kind"),
            format!("kind {k:?} is not supported by trustmesh (only Kustomization)"),
        )),
    }
    if !raw.bases.is_empty() {
        warnings.push((
            parse::locate(&tree, "bases"),
            "`bases` is deprecated in kustomize; list these under `resources`".to_owned(),
        ));
    }
    let dir = file.parent().unwrap_or(Path::new("."));
    let mut entries = Vec::new();
    for (field, list) in [("resources", &raw.resources), ("bases", &raw.bases)] {
        for (i, written) in list.iter().enumerate() {
            let line = parse::locate(&tree, &format!("{field}[{i}]"));
            if written.contains("://")
                || written.starts_with("github.com/")
                || written.contains("?ref=")
            {
                errors.push(err(line, format!("remote resource {written:?} is not supported by trustmesh: vendor it into the folder")));
                continue;
            }
            entries.push(Entry {
                written: written.clone(),
                path: dir.join(written),
                line,
            });
        }
    }
    if let Some(ns) = &raw.namespace
        && let Err(e) = trustmesh_core::validate::dns1123_label(ns)
    {
        errors.push(err(
            parse::locate(&tree, "namespace"),
            format!("namespace: {e}"),
        ));
    }
    let mut labels = raw.common_labels.clone();
    for l in &raw.labels {
        let _ = (l.include_selectors, l.include_templates);
        labels.extend(l.pairs.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    if errors.is_empty() {
        Ok(Kustomization {
            entries,
            namespace: raw.namespace,
            labels,
            annotations: raw.common_annotations,
        })
    } else {
        Err(errors)
    }
}

/// Applies the kustomization's transformations to the resources it produced.
pub(crate) fn apply(k: &Kustomization, resources: &mut [Resource]) {
    for r in resources {
        let kind = r.kind();
        let meta = r.meta_mut();
        if let Some(ns) = &k.namespace {
            if kind.is_namespaced() {
                meta.namespace = Some(ns.clone());
            } else if kind == Kind::Namespace {
                // kustomize's NamespaceTransformer includes `metadata/name` of Namespace objects
                // (kubernetes-sigs/kustomize#2953; behaviour confirmed in #4979).
                meta.name.clone_from(ns);
            }
        }
        for (key, v) in &k.labels {
            meta.labels.insert(key.clone(), v.clone());
        }
        for (key, v) in &k.annotations {
            meta.annotations.insert(key.clone(), v.clone());
        }
    }
}
