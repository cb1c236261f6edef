//! What loading can report: [`LoadError`] (the config is rejected; all of them are collected
//! in [`LoadErrors`]) and [`LoadWarning`] (accepted). Every one displays on one line as
//! `file:line: Kind ns/name: field: message`, leaving out the parts it does not have.

use std::fmt;
use std::path::PathBuf;

use trustmesh_core::model::TypeError;

/// One reason a config was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    /// A file or folder could not be read (missing, unreadable, not UTF-8).
    #[error("{}: {message}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error or what was wrong with the bytes.
        message: String,
    },
    /// The YAML does not parse (unclosed bracket, bad indentation, duplicate key, ...).
    #[error("{file}:{line}:{column}: {message}")]
    Syntax {
        /// The file.
        file: String,
        /// 1-based line.
        line: u32,
        /// 1-based column.
        column: u32,
        /// The parser's message.
        message: String,
    },
    /// The document's `apiVersion`/`kind` is not one trustmesh reads.
    #[error("{file}:{line}: {}{error}", name.as_ref().map(|n| format!("{n}: ")).unwrap_or_default())]
    Type {
        /// The file.
        file: String,
        /// Line of the document (its `kind:` key when found).
        line: u32,
        /// `metadata.name`, when the document has one.
        name: Option<String>,
        /// Which part is unknown, naming both apiVersion and kind.
        error: TypeError,
    },
    /// The document does not match its kind's schema (unknown field, wrong type, bad enum
    /// value, bad duration).
    #[error("{file}:{line}: {resource}: {field}: {message}")]
    Schema {
        /// The file.
        file: String,
        /// Line of the offending field.
        line: u32,
        /// `Kind ns/name`.
        resource: String,
        /// Field path, e.g. `spec.rules[0].from[0].source.principalz`.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// A validation rule is violated (Istio/cert-manager admission or cross-resource).
    #[error("{file}:{line}: {resource}: {field}: {message}")]
    Invalid {
        /// The file.
        file: String,
        /// Line of the offending field (or of the resource).
        line: u32,
        /// `Kind ns/name`.
        resource: String,
        /// Field path.
        field: String,
        /// The rule's message.
        message: String,
    },
    /// A kustomization is malformed or uses a field trustmesh does not implement.
    #[error("{file}:{line}: kustomization: {message}")]
    Kustomization {
        /// The kustomization file.
        file: String,
        /// Line of the offending entry (1 when unknown).
        line: u32,
        /// What is wrong.
        message: String,
    },
    /// A kustomization `resources:` entry does not exist.
    #[error("{file}:{line}: kustomization: resource {entry:?} not found ({})", resolved.display())]
    MissingResource {
        /// The kustomization file.
        file: String,
        /// Line of the entry.
        line: u32,
        /// The entry as written.
        entry: String,
        /// The path it resolved to.
        resolved: PathBuf,
    },
}

impl LoadError {
    /// The file the error is about (`Io`: the path).
    pub fn file(&self) -> String {
        match self {
            LoadError::Io { path, .. } => path.display().to_string(),
            LoadError::Syntax { file, .. }
            | LoadError::Type { file, .. }
            | LoadError::Schema { file, .. }
            | LoadError::Invalid { file, .. }
            | LoadError::Kustomization { file, .. }
            | LoadError::MissingResource { file, .. } => file.clone(),
        }
    }

    /// The 1-based line, when there is one.
    pub fn line(&self) -> Option<u32> {
        match self {
            LoadError::Io { .. } => None,
            LoadError::Syntax { line, .. }
            | LoadError::Type { line, .. }
            | LoadError::Schema { line, .. }
            | LoadError::Invalid { line, .. }
            | LoadError::Kustomization { line, .. }
            | LoadError::MissingResource { line, .. } => Some(*line),
        }
    }
}

/// Every error of a load (never empty), plus the warnings found on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadErrors {
    /// The errors, in file order.
    pub errors: Vec<LoadError>,
    /// Warnings found before loading stopped.
    pub warnings: Vec<LoadWarning>,
}

impl fmt::Display for LoadErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadErrors {}

/// Something accepted but worth telling the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadWarning {
    /// The file, when the warning concerns one.
    pub file: Option<String>,
    /// 1-based line, when known.
    pub line: Option<u32>,
    /// `Kind ns/name`, when the warning concerns a resource.
    pub resource: Option<String>,
    /// Field path, when the warning concerns a field.
    pub field: Option<String>,
    /// What to look at.
    pub message: String,
}

impl fmt::Display for LoadWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.line) {
            (Some(file), Some(line)) => write!(f, "{file}:{line}: ")?,
            (Some(file), None) => write!(f, "{file}: ")?,
            _ => {}
        }
        if let Some(r) = &self.resource {
            write!(f, "{r}: ")?;
        }
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}
