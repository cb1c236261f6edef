//! CA signing and SVID verification throughput.
//!
//! `sign_csr`: one pre-built workload CSR (P-256) → signed X509-SVID, per iteration; CSRs are
//! generated before measuring and used round-robin. `verify_svid`: one full SPIFFE
//! verification (leaf rules, bundle selection, WebPKI path validation) per iteration.
//! `client_verifier_cold` / `client_verifier_cached`: the rustls client-certificate verifier
//! on its first sight of a chain (a fresh verifier each iteration, built outside the
//! measurement: full verification plus hashing and remembering the chain) and on every later
//! sight (the same verifier: a hash and a lookup).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::UnixTime;
use trustmesh_core::{SpiffeId, TrustDomain};
use trustmesh_pki::verify::{Usage, verify_svid};
use trustmesh_pki::{Ca, KeyPair, SpiffeClientVerifier, TrustBundleSet, csr_for};

fn bench(c: &mut Criterion) {
    let td = TrustDomain::new("cluster.local").unwrap();
    let now = SystemTime::now();
    let ca = Ca::generate(&td, now).unwrap();
    let day = Duration::from_secs(24 * 3600);

    let csrs: Vec<(SpiffeId, Vec<u8>)> = (0..256)
        .map(|i| {
            let id = SpiffeId::workload(&td, "bench", &format!("sa-{i}")).unwrap();
            let key = KeyPair::generate().unwrap();
            let csr = csr_for(&id, &key).unwrap();
            (id, csr)
        })
        .collect();

    let mut group = c.benchmark_group("ca");
    group.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    group.bench_function("sign_csr_p256", |b| {
        b.iter(|| {
            let (id, csr) = &csrs[i % csrs.len()];
            i += 1;
            black_box(ca.sign_csr(black_box(csr), id, day, now).unwrap())
        })
    });
    group.finish();

    let mut bundles = TrustBundleSet::new();
    bundles.add_root(&td, ca.root_der().clone()).unwrap();
    let (svid, _) = ca.issue_svid(&csrs[0].0, day, now).unwrap();
    let at = UnixTime::now();
    let mut group = c.benchmark_group("verify");
    group.throughput(Throughput::Elements(1));
    group.bench_function("verify_svid", |b| {
        b.iter(|| {
            black_box(verify_svid(black_box(&svid.chain_der), &bundles, at, Usage::Client).unwrap())
        })
    });
    let bundles = Arc::new(bundles);
    group.bench_function("client_verifier_cold", |b| {
        b.iter_batched(
            || SpiffeClientVerifier::new(bundles.clone()),
            |verifier| {
                verifier
                    .verify_client_cert(black_box(&svid.cert_der), &[], at)
                    .unwrap();
                verifier
            },
            BatchSize::SmallInput,
        )
    });
    let verifier = SpiffeClientVerifier::new(bundles.clone());
    group.bench_function("client_verifier_cached", |b| {
        b.iter(|| {
            verifier
                .verify_client_cert(black_box(&svid.cert_der), &[], at)
                .unwrap()
        })
    });
    assert_eq!(verifier.cache_stats().misses, 1);
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
