//! `load_dir` on 10,000 generated resources (goal: under 1 s).
//!
//! Run: `cargo bench -p trustmesh-config --bench load`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};

/// Writes `n` resources (a realistic mix: per service a WorkloadEntry, a ServiceEntry, an
/// AuthorizationPolicy, a DestinationRule and a Certificate; plus Namespaces, one
/// PeerAuthentication per namespace, the issuers and a MeshConfig) into 20 files under `dir`.
fn generate(dir: &Path, n: usize) -> usize {
    const NAMESPACES: usize = 20;
    let mut files = vec![String::new(); NAMESPACES];
    let mut count = 0;
    let mut head = String::from(
        "apiVersion: trustmesh.io/v1alpha1\nkind: MeshConfig\nmetadata: {name: mesh}\nspec: {trustDomain: us.cluster.local}\n---\n\
         apiVersion: cert-manager.io/v1\nkind: ClusterIssuer\nmetadata: {name: selfsigned}\nspec: {selfSigned: {}}\n",
    );
    count += 2;
    for ns in 0..NAMESPACES {
        write!(
            head,
            "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: ns{ns}\n  labels: {{istio-injection: enabled}}\n\
             ---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: default, namespace: ns{ns}}}\nspec: {{mtls: {{mode: STRICT}}}}\n"
        )
        .unwrap();
        count += 2;
    }
    let mut i = 0usize;
    while count + 5 <= n {
        let ns = i % NAMESPACES;
        let (b, c) = ((i / 250) % 250, i % 250 + 2);
        let f = &mut files[ns];
        write!(
            f,
            r#"---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: svc{i}, namespace: ns{ns}}}
spec:
  address: 127.1.{b}.{c}
  serviceAccount: svc{i}
  labels: {{app: svc{i}, version: v1}}
  ports: {{http: 8080}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: svc{i}, namespace: ns{ns}}}
spec:
  hosts: [svc{i}.ns{ns}.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  workloadSelector: {{labels: {{app: svc{i}}}}}
  ports:
  - {{number: 8080, name: http, protocol: HTTP}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: svc{i}, namespace: ns{ns}}}
spec:
  selector: {{matchLabels: {{app: svc{i}}}}}
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["us.cluster.local/ns/ns{ns}/sa/svc{}"]
    to:
    - operation:
        methods: ["GET", "POST"]
        paths: ["/api/*"]
        ports: ["8080"]
    when:
    - key: request.headers[x-tenant]
      values: ["teei"]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: svc{i}, namespace: ns{ns}}}
spec:
  host: svc{i}.ns{ns}.svc.cluster.local
  trafficPolicy:
    connectionPool:
      tcp: {{maxConnections: 100, connectTimeout: 5s}}
      http: {{http2MaxRequests: 1000, maxRequestsPerConnection: 2}}
    tls: {{mode: ISTIO_MUTUAL}}
---
apiVersion: cert-manager.io/v1
kind: Certificate
metadata: {{name: svc{i}, namespace: ns{ns}}}
spec:
  secretName: svc{i}-tls
  duration: 24h
  renewBefore: 12h
  uris: [spiffe://us.cluster.local/ns/ns{ns}/sa/svc{i}]
  usages: [server auth, client auth, digital signature]
  privateKey: {{algorithm: ECDSA, size: 256}}
  issuerRef: {{name: selfsigned, kind: ClusterIssuer}}
"#,
            i.saturating_sub(NAMESPACES)
        )
        .unwrap();
        count += 5;
        i += 1;
    }
    // Top up to exactly `n` with more namespaces.
    for k in 0..n.saturating_sub(count) {
        write!(
            head,
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: extra{k}}}\n"
        )
        .unwrap();
        count += 1;
    }
    fs::write(dir.join("00-mesh.yaml"), head).unwrap();
    for (ns, text) in files.iter().enumerate() {
        fs::write(dir.join(format!("ns{ns:02}.yaml")), text).unwrap();
    }
    count
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let n = generate(dir.path(), 10_000);
    let out = trustmesh_config::load_dir(dir.path())
        .unwrap_or_else(|e| panic!("generated config is invalid:\n{e}"));
    assert_eq!(out.snapshot.len(), n);
    let mut g = c.benchmark_group("load_dir");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.bench_function(format!("{n} resources"), |b| {
        b.iter(|| trustmesh_config::load_dir(dir.path()).unwrap());
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
