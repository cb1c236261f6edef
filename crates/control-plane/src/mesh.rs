//! A config load as one unit: the folder into a [`Snapshot`], the CAs it needs, and the trust
//! bundles — all of it or nothing, so a reload that fails anywhere leaves the running state
//! untouched (DESIGN: "an invalid file leaves the running snapshot untouched"). And
//! [`proxy_config`]: the part of a snapshot one proxy receives.
//! What does not live here: when to reload (`watch`), publishing to proxies (`state`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use trustmesh_api::ProxyConfig;
use trustmesh_core::model::Resource;
use trustmesh_core::snapshot::{Snapshot, Workload};
use trustmesh_pki::{CaStore, TrustBundleSet};

use crate::bundles::{self, Cas};
use crate::error::ConfigIssue;

/// A config that loaded, with its CAs and bundles.
#[derive(Debug, Clone)]
pub(crate) struct Loaded {
    /// The validated snapshot.
    pub snapshot: Arc<Snapshot>,
    /// The CA of every trust domain it signs for.
    pub cas: Cas,
    /// The bundles to hand out.
    pub bundles: Arc<TrustBundleSet>,
    /// The files read (the watcher also watches their folders).
    pub files: Vec<PathBuf>,
    /// Accepted but worth a look, one line each.
    pub warnings: Vec<String>,
}

/// Loads `config_dir`, then the CAs (reusing `existing`) and bundles from `state_dir`.
pub(crate) fn load(
    config_dir: &Path,
    state_dir: &Path,
    existing: &Cas,
    now: SystemTime,
) -> Result<Loaded, Vec<ConfigIssue>> {
    let out = trustmesh_config::load_dir(config_dir)
        .map_err(|e| e.errors.iter().map(ConfigIssue::from).collect::<Vec<_>>())?;
    let store = CaStore::new(state_dir);
    let cas = bundles::load_cas(&out.snapshot, &store, existing, now)?;
    let set = bundles::mesh_bundles(&out.snapshot, &store, &cas, state_dir)?;
    Ok(Loaded {
        snapshot: Arc::new(out.snapshot),
        cas,
        bundles: Arc::new(set),
        files: out.files,
        warnings: out.warnings.iter().map(ToString::to_string).collect(),
    })
}

/// What the proxy of `workload` receives (docs/mesh-runtime.md, "Config stream"): the
/// MeshConfig, all Namespaces and PeerAuthentications (outbound auto mTLS needs the
/// destination's mode), the AuthorizationPolicies of the root namespace and of the workload's
/// namespace, and all DestinationRules, WorkloadEntries and ServiceEntries (outbound needs
/// them). cert-manager resources stay with the control plane.
pub(crate) fn proxy_config(snapshot: &Snapshot, workload: &Workload) -> ProxyConfig {
    let root = snapshot.mesh().root_namespace.as_str();
    let ns = workload.namespace.as_str();
    let relevant = |meta_ns: &str| meta_ns == root || meta_ns == ns;
    let mut resources: Vec<Resource> = Vec::new();
    if let Some(mc) = snapshot.mesh_config() {
        resources.push(Resource::MeshConfig(mc.object.clone()));
    }
    resources.extend(
        snapshot
            .namespaces()
            .iter()
            .map(|n| Resource::Namespace(n.object.clone())),
    );
    resources.extend(
        snapshot
            .peer_authentications()
            .iter()
            .map(|p| Resource::PeerAuthentication(p.object.clone())),
    );
    resources.extend(
        snapshot
            .authorization_policies()
            .iter()
            .filter(|p| relevant(p.metadata.namespace_str()))
            .map(|p| Resource::AuthorizationPolicy(p.object.clone())),
    );
    resources.extend(
        snapshot
            .destination_rules()
            .iter()
            .map(|d| Resource::DestinationRule(d.object.clone())),
    );
    resources.extend(
        snapshot
            .workload_entries()
            .iter()
            .map(|w| Resource::WorkloadEntry(w.object.clone())),
    );
    resources.extend(
        snapshot
            .service_entries()
            .iter()
            .map(|s| Resource::ServiceEntry(s.object.clone())),
    );
    ProxyConfig {
        workload: format!("{}/{}", workload.namespace, workload.name),
        resources,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trustmesh_core::model::Kind;

    const CONFIG: &str = r#"
apiVersion: trustmesh.io/v1alpha1
kind: MeshConfig
metadata: {name: mesh}
spec: {trustDomain: td.test, rootNamespace: mesh-root}
---
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio-injection: enabled}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: mesh-root}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: other}
spec: {mtls: {mode: PERMISSIVE}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-web, namespace: shop}
spec: {action: ALLOW, rules: [{from: [{source: {principals: ["td.test/ns/shop/sa/web"]}}]}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all, namespace: other}
spec: {}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: db, namespace: other}
spec: {host: db.other.svc.cluster.local, trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: web, namespace: shop}
spec: {address: 127.0.1.2, serviceAccount: web, labels: {app: web}, ports: {http: 8080}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: db, namespace: other}
spec: {address: 127.0.1.3, serviceAccount: db, labels: {app: db}, ports: {tcp: 5432}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: other}
spec:
  hosts: [db.other.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  workloadSelector: {labels: {app: db}}
  ports: [{number: 5432, name: tcp, protocol: TCP}]
---
apiVersion: cert-manager.io/v1
kind: Issuer
metadata: {name: selfsigned, namespace: shop}
spec: {selfSigned: {}}
"#;

    #[test]
    fn a_proxy_gets_its_namespace_and_root_policies_and_all_routing_resources() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("mesh.yaml"), CONFIG).unwrap();
        let snap = trustmesh_config::load_dir(dir.path()).unwrap().snapshot;
        let web = snap.workload("shop", "web").unwrap();
        let cfg = proxy_config(&snap, web);
        assert_eq!(cfg.workload, "shop/web");
        let names: Vec<String> = cfg
            .resources
            .iter()
            .map(|r| {
                format!(
                    "{:?} {}/{}",
                    r.kind(),
                    r.meta().namespace.as_deref().unwrap_or(""),
                    r.meta().name
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                "MeshConfig /mesh",
                "Namespace /shop",
                "PeerAuthentication mesh-root/default",
                "PeerAuthentication other/default",
                "AuthorizationPolicy shop/allow-web",
                "DestinationRule other/db",
                "WorkloadEntry other/db",
                "WorkloadEntry shop/web",
                "ServiceEntry other/db",
            ]
        );
        assert!(cfg.resources.iter().all(|r| r.kind() != Kind::Issuer));
        // What the proxy does with it: the same validation, the same snapshot contents.
        let back = ProxyConfig::from_json(&cfg.to_json().unwrap()).unwrap();
        assert_eq!(back, cfg);
        let (rebuilt, _) = Snapshot::build(back.into_sources()).unwrap();
        assert_eq!(
            rebuilt.workload("shop", "web").unwrap().identity,
            web.identity
        );
        assert_eq!(rebuilt.authorization_policies().len(), 1);
    }
}
