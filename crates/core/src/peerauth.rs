//! PeerAuthentication resolution (digest §2): the effective mTLS mode of a workload's port
//! and which policy decided it.
//!
//! Resolution follows Istio's `ComposePeerAuthentication` (istio/istio
//! `pilot/pkg/security/authn/policy_applier.go`). It is done once per workload per snapshot
//! ([`resolve`]), after which [`WorkloadMtls::for_port`] is a map lookup. What is not here:
//! detecting TLS on a connection, and what happens after the mode is known
//! ([`crate::authz::evaluate_with_mode`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use crate::model::PeerAuthentication;
use crate::model::security::MtlsMode;

/// The scope that set a mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Scope {
    /// Nothing applied: Istio's PERMISSIVE default.
    Default,
    /// A selector-less policy in the root namespace.
    Mesh,
    /// A selector-less policy in the workload's namespace.
    Namespace,
    /// A policy selecting the workload.
    Workload,
    /// A `portLevelMtls` entry of the workload policy.
    WorkloadPort,
}

/// An effective mode and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ModeDecision {
    /// DISABLE, PERMISSIVE or STRICT; never UNSET.
    pub mode: MtlsMode,
    /// `ns/name` of the PeerAuthentication that set it; `None` for the default.
    #[serde(serialize_with = "arc_serde::opt")]
    pub policy: Option<Arc<str>>,
    /// The scope of that policy.
    pub scope: Scope,
}

impl ModeDecision {
    fn default_permissive() -> Self {
        Self {
            mode: MtlsMode::Permissive,
            policy: None,
            scope: Scope::Default,
        }
    }
}

/// A workload's resolved modes: one for the workload and one per `portLevelMtls` port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadMtls {
    /// The mode for every port without a port-level entry.
    pub workload: ModeDecision,
    /// Per workload (target) port.
    pub ports: BTreeMap<u16, ModeDecision>,
}

impl Default for WorkloadMtls {
    fn default() -> Self {
        Self {
            workload: ModeDecision::default_permissive(),
            ports: BTreeMap::new(),
        }
    }
}

impl WorkloadMtls {
    /// The mode for workload port `port`: "effective(port) = perPort[port] if present else `mode`".
    pub fn for_port(&self, port: u16) -> &ModeDecision {
        self.ports.get(&port).unwrap_or(&self.workload)
    }
}

/// Oldest first: `creationTimestamp` (absent sorts first, like Go's zero time), then
/// namespace and name so the choice never depends on input order.
fn older(a: &PeerAuthentication, b: &PeerAuthentication) -> bool {
    let key = |p: &PeerAuthentication| {
        (
            p.metadata.creation_unix_seconds(),
            p.metadata.namespace_str().to_owned(),
            p.metadata.name.clone(),
        )
    };
    key(a) < key(b)
}

fn id(p: &PeerAuthentication) -> Arc<str> {
    Arc::from(format!(
        "{}/{}",
        p.metadata.namespace_str(),
        p.metadata.name
    ))
}

/// Resolves the modes of the workload in `namespace` with `labels` from every
/// PeerAuthentication of the mesh (others' namespaces are skipped).
pub fn resolve<'a>(
    policies: impl IntoIterator<Item = &'a PeerAuthentication>,
    root_namespace: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> WorkloadMtls {
    let mut mesh: Option<&PeerAuthentication> = None;
    let mut ns_level: Option<&PeerAuthentication> = None;
    let mut workload: Option<&PeerAuthentication> = None;
    let pick = |slot: &mut Option<&'a PeerAuthentication>, p: &'a PeerAuthentication| {
        // "Several candidates at one level → oldest `metadata.creationTimestamp` wins".
        if slot.is_none_or(|cur| older(p, cur)) {
            *slot = Some(p);
        }
    };
    for p in policies {
        let pns = p.metadata.namespace_str();
        if pns != root_namespace && pns != namespace {
            continue;
        }
        let selector_labels = p.spec.selector.as_ref().map(|s| &s.match_labels);
        match selector_labels {
            // "Mesh-level: in the root namespace ... with no selector or empty `matchLabels`."
            // "Namespace-level: non-root namespace, no selector / empty `matchLabels`."
            None => pick(
                if pns == root_namespace {
                    &mut mesh
                } else {
                    &mut ns_level
                },
                p,
            ),
            Some(m) if m.is_empty() => {
                pick(
                    if pns == root_namespace {
                        &mut mesh
                    } else {
                        &mut ns_level
                    },
                    p,
                );
            }
            // "Root-namespace policies WITH a selector are ignored".
            Some(_) if pns == root_namespace => {}
            // "Workload-level: non-root namespace, non-empty selector whose labels ⊆ workload labels."
            Some(m) => {
                if crate::model::labels_subset(m, labels) {
                    pick(&mut workload, p);
                }
            }
        }
    }

    // "1. `mode := PERMISSIVE` (default when nothing applies)."
    let mut current = ModeDecision::default_permissive();
    // "2.-4. if <level> policy exists and its mode ≠ UNSET → `mode := <level>.mode`."
    // "`mtls` absent or `mtls: {}` ≡ UNSET. Mesh policy with UNSET ≡ PERMISSIVE."
    for (p, scope) in [
        (mesh, Scope::Mesh),
        (ns_level, Scope::Namespace),
        (workload, Scope::Workload),
    ] {
        if let Some(p) = p
            && p.spec.mode() != MtlsMode::Unset
        {
            current = ModeDecision {
                mode: p.spec.mode(),
                policy: Some(id(p)),
                scope,
            };
        }
    }

    // "5. if workload policy has `portLevelMtls`: for each port, UNSET → current `mode`, else
    // that mode." Keys are workload ports; only workload-level policies carry them.
    let mut ports = BTreeMap::new();
    if let Some(p) = workload {
        for (port, m) in &p.spec.port_level_mtls {
            let Ok(port) = u16::try_from(*port) else {
                continue; // Out of range: validation rejects it; no port can carry it.
            };
            let d = if m.mode == MtlsMode::Unset {
                current.clone()
            } else {
                ModeDecision {
                    mode: m.mode,
                    policy: Some(id(p)),
                    scope: Scope::WorkloadPort,
                }
            };
            ports.insert(port, d);
        }
    }
    WorkloadMtls {
        workload: current,
        ports,
    }
}

/// Serializing `Arc<str>` without serde's `rc` feature (not enabled for this workspace).
pub(crate) mod arc_serde {
    use std::sync::Arc;

    use serde::{Serialize, Serializer};

    pub(crate) fn opt<S: Serializer>(v: &Option<Arc<str>>, s: S) -> Result<S::Ok, S::Error> {
        v.as_deref().serialize(s)
    }

    pub(crate) fn one<S: Serializer>(v: &Arc<str>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(v)
    }

    pub(crate) fn seq<S: Serializer>(v: &[Arc<str>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|x| &**x))
    }
}
