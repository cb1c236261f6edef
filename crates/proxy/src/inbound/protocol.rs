//! Which protocol an inbound port speaks: HTTP (authorization per request) or TCP
//! (authorization per connection).
//!
//! docs/mesh-runtime.md: "Port protocol: ServiceEntry port `protocol` for the ServiceEntry
//! selecting the workload with that `targetPort`/number, else Istio's port-name prefix
//! (`http`, `http2`, `grpc` → HTTP; `tcp`, `tls`, others → TCP)." Istio's rule for names is
//! "`name: <protocol>[-<suffix>]`". What is not here: serving either protocol.

use trustmesh_core::model::networking::ServicePort;
use trustmesh_core::snapshot::{Snapshot, Workload};

/// How a port is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 and HTTP/2: authorization per request.
    Http,
    /// Opaque bytes: authorization per connection.
    Tcp,
}

/// Istio protocol words that mean HTTP; every other word, or none, means TCP.
fn word(p: &str) -> Protocol {
    match p.to_ascii_lowercase().as_str() {
        "http" | "http2" | "grpc" | "grpc-web" => Protocol::Http,
        _ => Protocol::Tcp,
    }
}

/// The protocol of a port name: `<protocol>[-<suffix>]`.
pub fn from_port_name(name: &str) -> Protocol {
    let lower = name.to_ascii_lowercase();
    // `grpc-web` holds a dash of its own.
    if lower == "grpc-web" || lower.starts_with("grpc-web-") {
        return Protocol::Http;
    }
    word(lower.split_once('-').map_or(lower.as_str(), |(p, _)| p))
}

/// The workload port a ServiceEntry port reaches: the WorkloadEntry's `ports` entry of the
/// same name ("a map of servicePortName to this endpoint's port"), else `targetPort`, else
/// the service port number.
pub(crate) fn target_port(w: &Workload, sp: &ServicePort) -> Option<u16> {
    if let Some(p) = w.ports.get(&sp.name) {
        return Some(*p);
    }
    u16::try_from(sp.target_port.unwrap_or(sp.number)).ok()
}

/// The protocol of workload port `port` of `w`.
pub fn port_protocol(snapshot: &Snapshot, w: &Workload, port: u16) -> Protocol {
    for se in snapshot.service_entries() {
        if !snapshot
            .service_workloads(se)
            .any(|x| x.namespace == w.namespace && x.name == w.name)
        {
            continue;
        }
        for sp in &se.spec.ports {
            if target_port(w, sp) != Some(port) {
                continue;
            }
            return match &sp.protocol {
                Some(p) => word(p),
                None => from_port_name(&sp.name),
            };
        }
    }
    w.ports
        .iter()
        .find(|(_, p)| **p == port)
        .map_or(Protocol::Tcp, |(name, _)| from_port_name(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use trustmesh_api::ProxyConfig;

    fn snapshot(json: &str) -> Snapshot {
        let cfg = ProxyConfig::from_json(json.as_bytes()).unwrap();
        Snapshot::build(cfg.into_sources()).unwrap().0
    }

    #[test]
    fn port_names_follow_istios_protocol_prefixes() {
        for (name, want) in [
            ("http", Protocol::Http),
            ("http-web", Protocol::Http),
            ("HTTP2", Protocol::Http),
            ("grpc", Protocol::Http),
            ("grpc-web", Protocol::Http),
            ("grpc-web-x", Protocol::Http),
            ("tcp", Protocol::Tcp),
            ("tls-db", Protocol::Tcp),
            ("https", Protocol::Tcp),
            ("mongo", Protocol::Tcp),
            ("web", Protocol::Tcp),
            ("httpx", Protocol::Tcp),
        ] {
            assert_eq!(from_port_name(name), want, "{name}");
        }
    }

    #[test]
    fn a_service_entry_protocol_wins_over_the_port_name() {
        let s = snapshot(
            r#"{"workload":"p/db","resources":[
            {"apiVersion":"networking.istio.io/v1","kind":"WorkloadEntry",
             "metadata":{"name":"db","namespace":"p"},
             "spec":{"address":"127.0.1.9","labels":{"app":"db"},"ports":{"http-admin":9000,"web":9001,"tcp":9002}}},
            {"apiVersion":"networking.istio.io/v1","kind":"ServiceEntry",
             "metadata":{"name":"db","namespace":"p"},
             "spec":{"hosts":["db.p.svc"],"workloadSelector":{"labels":{"app":"db"}},
                     "ports":[{"number":80,"name":"http-admin","protocol":"TCP"},
                              {"number":81,"name":"other","protocol":"HTTP","targetPort":9001}]}}
        ]}"#,
        );
        let w = s.workload("p", "db").unwrap();
        // The ServiceEntry port named like the WorkloadEntry port reaches 9000 and says TCP.
        assert_eq!(port_protocol(&s, w, 9000), Protocol::Tcp);
        // targetPort 9001 with protocol HTTP.
        assert_eq!(port_protocol(&s, w, 9001), Protocol::Http);
        // Not in any ServiceEntry: the WorkloadEntry port name.
        assert_eq!(port_protocol(&s, w, 9002), Protocol::Tcp);
        // Unknown port: TCP.
        assert_eq!(port_protocol(&s, w, 1), Protocol::Tcp);
    }
}
