//! The trust bundles the control plane hands out (in `SignResponse`, `ProxyUpdate` and the
//! bootstrap file `state/proxies/<ns>/<name>/bundle.json`), and the CAs behind them.
//!
//! The set is: the root of every CA in the state folder (`state/ca/<td>/`), plus the MeshConfig
//! `caCertificates` — inline PEM, and SPIFFE bundle files read if they exist (the loader
//! already warned about missing ones). Istio's `CertificateData.trustDomains`: "Optional.
//! Specify the list of trust domains to which this trustAnchor data belongs. If set, they are
//! used for these trust domains only; otherwise, they apply to all trust domains." — so an
//! entry without trust domains is added to every trust domain the mesh knows.
//! What does not live here: verification (`trustmesh_pki::verify`), CA storage (`CaStore`).

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, DirBuilder};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use trustmesh_api::mesh::Certificates;
use trustmesh_core::TrustDomain;
use trustmesh_core::snapshot::{CaSource, Snapshot};
use trustmesh_pki::fsutil;
use trustmesh_pki::{Ca, CaStore, TrustBundle, TrustBundleSet};

use crate::error::{ConfigIssue, ControlPlaneError};

/// The CA of each trust domain the control plane signs for.
pub type Cas = BTreeMap<TrustDomain, Arc<Ca>>;

/// The trust domains the snapshot needs a CA for: the mesh's and each network's.
pub fn signing_trust_domains(snapshot: &Snapshot) -> Vec<TrustDomain> {
    let mesh = snapshot.mesh();
    let mut tds: Vec<TrustDomain> = std::iter::once(mesh.trust_domain.clone())
        .chain(mesh.networks.values().cloned())
        .collect();
    tds.sort();
    tds.dedup();
    tds
}

/// Loads (or creates) the CA of every trust domain `snapshot` needs, keeping those of
/// `existing` as they are. A CA file that exists but is unusable is an issue naming it.
pub fn load_cas(
    snapshot: &Snapshot,
    store: &CaStore,
    existing: &Cas,
    now: SystemTime,
) -> Result<Cas, Vec<ConfigIssue>> {
    let mut cas = Cas::new();
    let mut issues = Vec::new();
    for td in signing_trust_domains(snapshot) {
        if let Some(ca) = existing.get(&td) {
            cas.insert(td, ca.clone());
            continue;
        }
        match store.load_or_create(&td, now) {
            Ok(ca) => {
                cas.insert(td, Arc::new(ca));
            }
            Err(e) => issues.push(ConfigIssue::file(
                store.dir_for(&td),
                format!("CA of trust domain {td}: {e}"),
            )),
        }
    }
    if issues.is_empty() {
        Ok(cas)
    } else {
        Err(issues)
    }
}

/// The bundle set to hand out: every CA root of the state folder plus `caCertificates`.
pub fn mesh_bundles(
    snapshot: &Snapshot,
    store: &CaStore,
    cas: &Cas,
    state_dir: &Path,
) -> Result<TrustBundleSet, Vec<ConfigIssue>> {
    let mut set = TrustBundleSet::new();
    let mut issues = Vec::new();
    for (td, ca) in cas {
        if let Err(e) = set.add_root(td, ca.root_der().clone()) {
            issues.push(ConfigIssue::file(store.cert_path(td), e));
        }
    }
    // CAs of the state folder the config does not name (any more): peers issued by them are
    // still in the mesh until their certificates expire.
    for td in state_trust_domains(state_dir) {
        if cas.contains_key(&td) {
            continue;
        }
        match store.load(&td) {
            Ok(Some(ca)) => {
                if let Err(e) = set.add_root(&td, ca.root_der().clone()) {
                    issues.push(ConfigIssue::file(store.cert_path(&td), e));
                }
            }
            Ok(None) => {}
            Err(e) => issues.push(ConfigIssue::file(store.dir_for(&td), e)),
        }
    }
    let mesh = snapshot.mesh();
    let mut all: Vec<TrustDomain> = mesh.known_trust_domains().into_iter().cloned().collect();
    all.extend(set.trust_domains().cloned());
    all.sort();
    all.dedup();
    for entry in &mesh.ca_certificates {
        let targets = if entry.trust_domains.is_empty() {
            &all
        } else {
            &entry.trust_domains
        };
        match &entry.source {
            CaSource::Pem(pem) => match TrustBundle::from_pem(pem) {
                Ok(bundle) => add_to(&mut set, targets, &bundle),
                Err(e) => issues.push(mesh_config_issue(
                    snapshot,
                    format!("caCertificates pem: {e}"),
                )),
            },
            // A bundle set names its own trust domains. Without `trustDomains` on the entry,
            // it may not add roots to a trust domain this control plane runs a CA for: a
            // partner's (or a tampered) file must never widen who can be *us*.
            CaSource::BundleFile(path) => match read_bundle_file(
                path,
                targets,
                if entry.trust_domains.is_empty() {
                    Some(cas)
                } else {
                    None
                },
            ) {
                Ok(Some(found)) => set.merge(&found),
                Ok(None) => {}
                Err(issue) => issues.push(issue),
            },
        }
    }
    if issues.is_empty() {
        Ok(set)
    } else {
        Err(issues)
    }
}

fn add_to(set: &mut TrustBundleSet, tds: &[TrustDomain], bundle: &TrustBundle) {
    let mut one = TrustBundleSet::new();
    for td in tds {
        one.insert(td.clone(), bundle.clone());
    }
    set.merge(&one);
}

fn mesh_config_issue(snapshot: &Snapshot, message: String) -> ConfigIssue {
    let file = snapshot
        .mesh_config()
        .and_then(|m| m.origin.as_ref())
        .map(|o| o.file.clone())
        .unwrap_or_default();
    ConfigIssue::file(file, message)
}

/// Reads a `spiffeBundleUrl` file: a bare SPIFFE bundle (JWKS) or PEM roots for `targets`,
/// or a bundle set `{"<td>": <bundle>}`: the `targets` of it when the entry names trust
/// domains (`own` is `None`), else every trust domain it names except those in `own`. `None`
/// if the file does not exist (yet).
fn read_bundle_file(
    path: &Path,
    targets: &[TrustDomain],
    own: Option<&Cas>,
) -> Result<Option<TrustBundleSet>, ConfigIssue> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ConfigIssue::file(path, e)),
    };
    if !text.trim_start().starts_with('{') {
        let bundle = TrustBundle::from_pem(&text)
            .map_err(|e| ConfigIssue::file(path, format!("not PEM roots: {e}")))?;
        let mut set = TrustBundleSet::new();
        add_to(&mut set, targets, &bundle);
        return Ok(Some(set));
    }
    if let Ok(bundle) = TrustBundle::from_spiffe_json(&text) {
        let mut set = TrustBundleSet::new();
        add_to(&mut set, targets, &bundle);
        return Ok(Some(set));
    }
    let whole = TrustBundleSet::from_json(&text).map_err(|e| {
        ConfigIssue::file(
            path,
            format!("neither a SPIFFE bundle nor a bundle set: {e}"),
        )
    })?;
    let mut set = TrustBundleSet::new();
    for (td, bundle) in whole.iter() {
        // Named on the entry: exactly those. Not named: every trust domain the set itself
        // names, except our own.
        let take = match own {
            Some(cas) => !cas.contains_key(td),
            None => targets.contains(td),
        };
        if take {
            set.insert(td.clone(), bundle.clone());
        }
    }
    Ok(Some(set))
}

/// Trust domains with a folder under `state/ca/` (hidden staging folders skipped).
fn state_trust_domains(state_dir: &Path) -> Vec<TrustDomain> {
    let Ok(entries) = fs::read_dir(state_dir.join("ca")) else {
        return Vec::new();
    };
    let mut tds: Vec<TrustDomain> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            if name.starts_with('.') {
                return None;
            }
            TrustDomain::new(&name).ok()
        })
        .collect();
    tds.sort();
    tds
}

/// The bundle set as the protobuf map (trust domain → DER roots).
pub fn to_proto(set: &TrustBundleSet) -> HashMap<String, Certificates> {
    set.iter()
        .map(|(td, b)| {
            (
                td.as_str().to_owned(),
                Certificates {
                    der: b.roots().iter().map(|c| c.as_ref().to_vec()).collect(),
                },
            )
        })
        .collect()
}

/// `state/proxies/<ns>/<name>/bundle.json`: the bootstrap bundle set of one proxy.
pub fn bootstrap_bundle_path(state_dir: &Path, namespace: &str, name: &str) -> PathBuf {
    state_dir
        .join("proxies")
        .join(namespace)
        .join(name)
        .join("bundle.json")
}

/// Writes the bootstrap bundle set of proxy `namespace/name` (atomically, 0644).
pub fn write_bootstrap_bundle(
    state_dir: &Path,
    namespace: &str,
    name: &str,
    set: &TrustBundleSet,
) -> Result<PathBuf, ControlPlaneError> {
    let path = bootstrap_bundle_path(state_dir, namespace, name);
    let dir = path.parent().unwrap_or(state_dir);
    DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|source| ControlPlaneError::State {
            path: dir.to_owned(),
            source,
        })?;
    let json = set.to_json().map_err(|e| ControlPlaneError::CorruptState {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    fsutil::write_atomic(&path, json.as_bytes(), 0o644)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn td(s: &str) -> TrustDomain {
        TrustDomain::new(s).unwrap()
    }

    fn snapshot(mesh_yaml: &str, dir: &Path) -> Snapshot {
        let file = dir.join("mesh.yaml");
        fs::write(&file, mesh_yaml).unwrap();
        trustmesh_config::load_dir(dir).unwrap().snapshot
    }

    #[test]
    fn bundles_hold_every_state_ca_and_the_mesh_config_extra_roots() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = tmp.path().join("cfg");
        let state = tmp.path().join("state");
        fs::create_dir_all(&cfg).unwrap();
        let now = SystemTime::now();
        let store = CaStore::new(&state);
        // A CA left in the state folder by an earlier config.
        let old = store.load_or_create(&td("old.test"), now).unwrap();
        // Foreign roots: one as inline PEM for all trust domains, one as a bundle file.
        let foreign = Ca::generate(&td("foreign.test"), now).unwrap();
        let partner = Ca::generate(&td("partner.test"), now).unwrap();
        let mut file_set = TrustBundleSet::new();
        file_set
            .add_root(&td("partner.test"), partner.root_der().clone())
            .unwrap();
        fs::write(cfg.join("partner.json"), file_set.to_json().unwrap()).unwrap();
        let pem = foreign.root_pem().replace('\n', "\n        ");
        let snap = snapshot(
            &format!(
                "apiVersion: trustmesh.io/v1alpha1\nkind: MeshConfig\nmetadata:\n  name: m\nspec:\n  trustDomain: us.test\n  networks:\n    eu:\n      trustDomain: eu.test\n  caCertificates:\n    - pem: |\n        {pem}\n    - spiffeBundleUrl: partner.json\n      trustDomains: [partner.test]\n    - spiffeBundleUrl: not-yet.json\n      trustDomains: [later.test]\n"
            ),
            &cfg,
        );
        let cas = load_cas(&snap, &store, &Cas::new(), now).unwrap();
        assert_eq!(
            cas.keys().map(|t| t.as_str()).collect::<Vec<_>>(),
            ["eu.test", "us.test"]
        );
        let set = mesh_bundles(&snap, &store, &cas, &state).unwrap();
        let us = &cas[&td("us.test")];
        let eu = &cas[&td("eu.test")];
        assert!(set.roots(&td("us.test")).contains(us.root_der()));
        assert!(set.roots(&td("eu.test")).contains(eu.root_der()));
        assert!(set.roots(&td("old.test")).contains(old.root_der()));
        // Inline PEM without trustDomains: every trust domain.
        for t in [
            "us.test",
            "eu.test",
            "old.test",
            "partner.test",
            "later.test",
        ] {
            assert!(set.roots(&td(t)).contains(foreign.root_der()), "{t}");
        }
        assert!(set.roots(&td("partner.test")).contains(partner.root_der()));
        // A bundle file that does not exist yet adds nothing (the inline PEM still applies).
        assert_eq!(set.roots(&td("later.test")), [foreign.root_der().clone()]);
        // The proto map carries the same roots.
        let proto = to_proto(&set);
        assert!(
            proto["us.test"]
                .der
                .contains(&us.root_der().as_ref().to_vec())
        );
    }

    /// A combined bundle set (what `trustmesh bundle combine` writes) referenced without
    /// `trustDomains` brings the partner's roots, but never roots for a trust domain this
    /// control plane runs a CA for; naming that trust domain on the entry is the opt-in.
    #[test]
    fn a_bundle_set_cannot_add_roots_to_our_own_trust_domain_unless_named() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = tmp.path().join("cfg");
        let state = tmp.path().join("state");
        fs::create_dir_all(&cfg).unwrap();
        let now = SystemTime::now();
        let impostor = Ca::generate(&td("us.test"), now).unwrap();
        let partner = Ca::generate(&td("eu.test"), now).unwrap();
        let mut file_set = TrustBundleSet::new();
        file_set
            .add_root(&td("us.test"), impostor.root_der().clone())
            .unwrap();
        file_set
            .add_root(&td("eu.test"), partner.root_der().clone())
            .unwrap();
        fs::write(cfg.join("combined.json"), file_set.to_json().unwrap()).unwrap();
        let store = CaStore::new(&state);
        let mesh = |extra: &str| {
            format!(
                "apiVersion: trustmesh.io/v1alpha1\nkind: MeshConfig\nmetadata:\n  name: m\nspec:\n  trustDomain: us.test\n  caCertificates:\n    - spiffeBundleUrl: combined.json\n{extra}"
            )
        };
        let snap = snapshot(&mesh(""), &cfg);
        let cas = load_cas(&snap, &store, &Cas::new(), now).unwrap();
        let set = mesh_bundles(&snap, &store, &cas, &state).unwrap();
        assert!(set.roots(&td("eu.test")).contains(partner.root_der()));
        assert!(!set.roots(&td("us.test")).contains(impostor.root_der()));
        assert_eq!(
            set.roots(&td("us.test")),
            [cas[&td("us.test")].root_der().clone()]
        );

        let snap = snapshot(&mesh("      trustDomains: [us.test, eu.test]\n"), &cfg);
        let set = mesh_bundles(&snap, &store, &cas, &state).unwrap();
        assert!(
            set.roots(&td("us.test")).contains(impostor.root_der()),
            "named: opted in"
        );
    }

    #[test]
    fn a_corrupt_bundle_file_is_an_issue_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = tmp.path().join("cfg");
        fs::create_dir_all(&cfg).unwrap();
        fs::write(cfg.join("eu.json"), "{\"eu.test\": 7}").unwrap();
        let snap = snapshot(
            "apiVersion: trustmesh.io/v1alpha1\nkind: MeshConfig\nmetadata:\n  name: m\nspec:\n  caCertificates:\n    - spiffeBundleUrl: eu.json\n      trustDomains: [eu.test]\n",
            &cfg,
        );
        let store = CaStore::new(tmp.path().join("state"));
        let cas = load_cas(&snap, &store, &Cas::new(), SystemTime::now()).unwrap();
        let issues = mesh_bundles(&snap, &store, &cas, &tmp.path().join("state")).unwrap_err();
        assert_eq!(issues.len(), 1);
        assert!(issues[0].file.ends_with("eu.json"), "{issues:?}");
    }
}
