//! Loads a config folder of Istio, cert-manager and trustmesh YAML into one validated
//! [`Snapshot`].
//!
//! - [`load_dir`]: with a `kustomization.yaml` (or `.yml`, `Kustomization`), exactly its
//!   `resources` (see `kustomize.rs` for what else is honoured); without one, every `*.yaml` /
//!   `*.yml` below the folder, recursively, in name order (dot-entries skipped; a subfolder
//!   with its own kustomization is loaded through it).
//! - [`load_files`]: the given files (and folders, as [`load_dir`]) as one config.
//! - [`load_str`]: one file's text to resources, without validation; never panics (fuzzing).
//!
//! Every error of the whole config is reported, each naming file, line, resource and field
//! ([`LoadError`]); any error means no snapshot. Warnings come with the snapshot
//! ([`LoadOutput`]). A `caCertificates` `spiffeBundleUrl` file that does not exist yet is a
//! warning (the bundle is imported later with `trustmesh bundle`), not an error.
//! What is not here: validation rules (`trustmesh-core`), watching files, Kubernetes.

mod error;
mod kustomize;
mod parse;

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use trustmesh_core::model::Resource;
use trustmesh_core::snapshot::{CaSource, Snapshot, Sourced};
use trustmesh_core::validate::{
    Findings, Origin, ValidationError, ValidationWarning, validate_resource,
};

pub use error::{LoadError, LoadErrors, LoadWarning};

/// A loaded config.
#[derive(Debug, Clone)]
pub struct LoadOutput {
    /// The validated snapshot.
    pub snapshot: Snapshot,
    /// Everything accepted but worth a look.
    pub warnings: Vec<LoadWarning>,
    /// The YAML files read, in load order (kustomizations included).
    pub files: Vec<PathBuf>,
}

/// Loads a config folder.
pub fn load_dir(path: impl AsRef<Path>) -> Result<LoadOutput, LoadErrors> {
    let mut l = Loader::default();
    l.load_dir_root(path.as_ref());
    l.finish()
}

/// Loads files (folders are loaded as by [`load_dir`]) as one config.
pub fn load_files<P: AsRef<Path>>(paths: &[P]) -> Result<LoadOutput, LoadErrors> {
    let mut l = Loader::default();
    for p in paths {
        let p = p.as_ref();
        if p.is_dir() {
            l.load_dir_root(p);
        } else if p
            .file_name()
            .is_some_and(|n| kustomize::KUSTOMIZATION_FILES.iter().any(|k| n == *k))
        {
            l.load_kustomization(p);
        } else {
            l.load_file(p);
        }
    }
    l.finish()
}

/// Parses one file's text (`file_name` is only used in messages) into resources, without
/// validation. Never panics, whatever the input.
pub fn load_str(file_name: &str, text: &str) -> Result<Vec<Sourced<Resource>>, LoadErrors> {
    let (parsed, errors) = parse::parse_file(file_name, text);
    if errors.is_empty() {
        Ok(parsed.into_iter().map(|p| p.resource).collect())
    } else {
        Err(LoadErrors {
            errors,
            warnings: Vec::new(),
        })
    }
}

#[derive(Default)]
struct Loader {
    parsed: Vec<parse::Parsed>,
    errors: Vec<LoadError>,
    warnings: Vec<LoadWarning>,
    files: Vec<PathBuf>,
    /// File texts by display name, to find the line of a field named by validation.
    texts: HashMap<String, String>,
    /// Folders of the kustomizations being loaded (cycle detection).
    stack: Vec<PathBuf>,
}

impl Loader {
    fn load_dir_root(&mut self, dir: &Path) {
        if !dir.is_dir() {
            self.errors.push(LoadError::Io {
                path: dir.to_path_buf(),
                message: if dir.exists() {
                    "not a directory".into()
                } else {
                    "no such file or directory".into()
                },
            });
            return;
        }
        let before = self.files.len();
        match kustomize::find(dir) {
            Some(k) => self.load_kustomization(&k),
            None => self.load_plain_dir(dir),
        }
        if self.files.len() == before && self.errors.is_empty() {
            self.warnings.push(LoadWarning {
                file: Some(dir.display().to_string()),
                line: None,
                resource: None,
                field: None,
                message: "no YAML files found; using an empty config with default mesh settings"
                    .into(),
            });
        }
    }

    /// Every `*.yaml`/`*.yml` below `dir` in name order; subfolders with a kustomization go
    /// through it.
    fn load_plain_dir(&mut self, dir: &Path) {
        let canonical = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        if self.stack.contains(&canonical) {
            return; // A symlink loop.
        }
        self.stack.push(canonical);
        let mut entries: Vec<PathBuf> = match fs::read_dir(dir) {
            Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
            Err(e) => {
                self.errors.push(LoadError::Io {
                    path: dir.to_path_buf(),
                    message: e.to_string(),
                });
                self.stack.pop();
                return;
            }
        };
        entries.sort();
        for p in entries {
            let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            if p.is_dir() {
                match kustomize::find(&p) {
                    Some(k) => self.load_kustomization(&k),
                    None => self.load_plain_dir(&p),
                }
            } else if (name.ends_with(".yaml") || name.ends_with(".yml"))
                && !kustomize::KUSTOMIZATION_FILES.contains(&name)
            {
                self.load_file(&p);
            }
        }
        self.stack.pop();
    }

    fn read(&mut self, path: &Path) -> Option<String> {
        match fs::read(path) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(s) => Some(s),
                Err(_) => {
                    self.errors.push(LoadError::Io {
                        path: path.to_path_buf(),
                        message: "not UTF-8 text".into(),
                    });
                    None
                }
            },
            Err(e) => {
                self.errors.push(LoadError::Io {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                });
                None
            }
        }
    }

    /// Parses one YAML file; returns how many resources it added.
    fn load_file(&mut self, path: &Path) -> usize {
        let Some(text) = self.read(path) else {
            return 0;
        };
        let name = path.display().to_string();
        self.files.push(path.to_path_buf());
        let (parsed, errors) = parse::parse_file(&name, &text);
        let n = parsed.len();
        self.parsed.extend(parsed);
        self.errors.extend(errors);
        self.texts.insert(name, text);
        n
    }

    fn load_kustomization(&mut self, file: &Path) {
        let dir = file.parent().unwrap_or(Path::new(".")).to_path_buf();
        let canonical = dir.canonicalize().unwrap_or_else(|_| dir.clone());
        let name = file.display().to_string();
        if self.stack.contains(&canonical) {
            self.errors.push(LoadError::Kustomization {
                file: name,
                line: 1,
                message: format!("cycle: {} is already being loaded", dir.display()),
            });
            return;
        }
        let Some(text) = self.read(file) else { return };
        self.files.push(file.to_path_buf());
        let mut warns = Vec::new();
        let k = match kustomize::parse(file, &text, &mut warns) {
            Ok(k) => k,
            Err(errs) => {
                self.errors.extend(errs);
                return;
            }
        };
        for (line, message) in warns {
            self.warnings.push(LoadWarning {
                file: Some(name.clone()),
                line: Some(line),
                resource: None,
                field: None,
                message,
            });
        }
        self.stack.push(canonical);
        let start = self.parsed.len();
        let mut seen = BTreeSet::new();
        for entry in &k.entries {
            if !seen.insert(entry.path.clone()) {
                self.errors.push(LoadError::Kustomization {
                    file: name.clone(),
                    line: entry.line,
                    message: format!("resource {:?} is listed twice", entry.written),
                });
                continue;
            }
            if entry.path.is_file() {
                self.load_file(&entry.path);
            } else if entry.path.is_dir() {
                // kustomize: a folder resource must hold a kustomization.
                match kustomize::find(&entry.path) {
                    Some(sub) => self.load_kustomization(&sub),
                    None => self.errors.push(LoadError::Kustomization {
                        file: name.clone(),
                        line: entry.line,
                        message: format!(
                            "folder {:?} has no kustomization.yaml (kustomize requires one in every folder listed under resources)",
                            entry.written
                        ),
                    }),
                }
            } else {
                self.errors.push(LoadError::MissingResource {
                    file: name.clone(),
                    line: entry.line,
                    entry: entry.written.clone(),
                    resolved: entry.path.clone(),
                });
            }
        }
        self.stack.pop();
        for p in &mut self.parsed[start..] {
            kustomize::apply(&k, std::slice::from_mut(&mut p.resource.object));
        }
    }

    /// The line of `field` in the resource read at `origin`.
    fn field_line(
        &self,
        index: &HashMap<Origin, usize>,
        origin: Option<&Origin>,
        field: &str,
    ) -> (String, u32) {
        let Some(o) = origin else {
            return ("<config>".to_owned(), 0);
        };
        let line = index
            .get(o)
            .and_then(|&i| self.parsed.get(i))
            .and_then(|p| {
                let text = self.texts.get(&o.file)?.get(p.doc.range.clone())?;
                let tree = parse::parse_tree(text).ok()?;
                let path = if p.prefix.is_empty() {
                    field.to_owned()
                } else {
                    format!("{}.{field}", p.prefix)
                };
                let rel = parse::locate(&tree, &path);
                Some(p.doc.base_line.saturating_add(rel.saturating_sub(1)))
            })
            .unwrap_or(o.line);
        (o.file.clone(), line)
    }

    fn invalid(&self, index: &HashMap<Origin, usize>, e: &ValidationError) -> LoadError {
        let (file, line) = self.field_line(index, e.origin.as_ref(), &e.field);
        LoadError::Invalid {
            file,
            line,
            resource: e.kind_ns_name.clone(),
            field: e.field.clone(),
            message: e.message.clone(),
        }
    }

    fn warning(&self, index: &HashMap<Origin, usize>, w: &ValidationWarning) -> LoadWarning {
        let (file, line) = self.field_line(index, w.origin.as_ref(), &w.field);
        LoadWarning {
            file: w.origin.as_ref().map(|_| file),
            line: w.origin.as_ref().map(|_| line),
            resource: Some(w.kind_ns_name.clone()),
            field: Some(w.field.clone()),
            message: w.message.clone(),
        }
    }

    fn finish(mut self) -> Result<LoadOutput, LoadErrors> {
        let index: HashMap<Origin, usize> = self
            .parsed
            .iter()
            .enumerate()
            .filter_map(|(i, p)| Some((p.resource.origin.clone()?, i)))
            .collect();
        if !self.errors.is_empty() {
            let resources: Vec<Sourced<Resource>> =
                self.parsed.iter().map(|p| p.resource.clone()).collect();
            // Something did not parse: cross-resource rules would report its absence as
            // noise, so only check each resource that did parse on its own.
            let mut findings = Findings::default();
            for r in &resources {
                let mut one = validate_resource(&with_default_namespace(&r.object));
                for e in &mut one.errors {
                    e.origin.clone_from(&r.origin);
                }
                findings.errors.extend(one.errors);
            }
            let extra: Vec<LoadError> = findings
                .errors
                .iter()
                .map(|e| self.invalid(&index, e))
                .collect();
            self.errors.extend(extra);
            return Err(self.into_errors());
        }
        // The snapshot takes the resources; the spans stay for locating fields.
        let resources: Vec<Sourced<Resource>> = self
            .parsed
            .iter_mut()
            .map(|p| Sourced {
                origin: p.resource.origin.clone(),
                object: std::mem::replace(&mut p.resource.object, placeholder()),
            })
            .collect();
        match Snapshot::build(resources) {
            Ok((snapshot, warnings)) => {
                let mut out: Vec<LoadWarning> = std::mem::take(&mut self.warnings);
                out.extend(warnings.iter().map(|w| self.warning(&index, w)));
                out.extend(missing_bundles(&snapshot, &self, &index));
                Ok(LoadOutput {
                    snapshot,
                    warnings: out,
                    files: self.files,
                })
            }
            Err(findings) => {
                let errs: Vec<LoadError> = findings
                    .errors
                    .iter()
                    .map(|e| self.invalid(&index, e))
                    .collect();
                let warns: Vec<LoadWarning> = findings
                    .warnings
                    .iter()
                    .map(|w| self.warning(&index, w))
                    .collect();
                self.errors.extend(errs);
                self.warnings.extend(warns);
                Err(self.into_errors())
            }
        }
    }

    fn into_errors(self) -> LoadErrors {
        LoadErrors {
            errors: self.errors,
            warnings: self.warnings,
        }
    }
}

/// What stays behind in `Loader::parsed` once the snapshot owns the resources.
fn placeholder() -> Resource {
    Resource::Namespace(Default::default())
}

/// For stand-alone validation: the namespace kubectl would use.
fn with_default_namespace(r: &Resource) -> Resource {
    let mut r = r.clone();
    if r.kind().is_namespaced() && r.meta().namespace.as_deref().is_none_or(str::is_empty) {
        r.meta_mut().namespace = Some(trustmesh_core::snapshot::DEFAULT_NAMESPACE.to_owned());
    }
    r
}

/// "caCertificates pointing at a bundle file that doesn't exist yet": a warning, since the
/// bundle of a foreign trust domain is imported after the config is written.
fn missing_bundles(
    snap: &Snapshot,
    l: &Loader,
    index: &HashMap<Origin, usize>,
) -> Vec<LoadWarning> {
    let Some(mc) = snap.mesh_config() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    // In a valid config every entry resolved, so indices line up.
    for (i, ca) in mc.spec.ca_certificates.iter().enumerate() {
        let Some(CaSource::BundleFile(path)) =
            snap.mesh().ca_certificates.get(i).map(|c| &c.source)
        else {
            continue;
        };
        if !path.exists() {
            let field = format!("spec.caCertificates[{i}].spiffeBundleUrl");
            let (file, line) = l.field_line(index, mc.origin.as_ref(), &field);
            let tds = if ca.trust_domains.is_empty() {
                "any trust domain".to_owned()
            } else {
                ca.trust_domains.join(", ")
            };
            out.push(LoadWarning {
                file: Some(file),
                line: Some(line),
                resource: Some(format!("MeshConfig {}", mc.metadata.name)),
                field: Some(field),
                message: format!("trust bundle {} not found (not yet imported?); no extra roots for {tds} until it exists", path.display()),
            });
        }
    }
    out
}
