//! `/metrics` of the control plane (docs/metrics.md, "Control plane"), in process, as
//! Prometheus scrapes it: cert-manager's certificate gauges for a `Certificate` (issued by a CA
//! Issuer) and for a workload SVID signed over a join token, `proxy_connected` following the
//! config stream, the CA root's expiry, and an exposition that `promtool check metrics`
//! accepts without a word.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use trustmesh_core::TrustDomain;
use trustmesh_core::renewal::{cert_manager_renewal_time, workload_renewal_time};
use trustmesh_pki::CertInfo;

const SECOND: Duration = Duration::from_secs(1);

/// The test mesh without `workloadCertTTL`: workload SVIDs get the default 24 h.
const MESH_DEFAULT_TTL: &str = r#"apiVersion: trustmesh.io/v1alpha1
kind: MeshConfig
metadata: {name: mesh}
spec:
  trustDomain: td.test
  rootNamespace: istio-system
"#;

/// cert-manager's CA bootstrap: a SelfSigned Issuer signs a root, a CA Issuer uses it for
/// `shop-tls` (24 h, renewBefore 8 h). `shop-tls`' issuerRef names neither kind nor group.
const CA_CERTS: &str = r#"apiVersion: cert-manager.io/v1
kind: Issuer
metadata: {name: selfsigned, namespace: shop}
spec: {selfSigned: {}}
---
apiVersion: cert-manager.io/v1
kind: Certificate
metadata: {name: shop-root, namespace: shop}
spec:
  isCA: true
  commonName: shop root CA
  secretName: shop-root
  duration: 2160h
  issuerRef: {name: selfsigned, kind: Issuer, group: cert-manager.io}
---
apiVersion: cert-manager.io/v1
kind: Issuer
metadata: {name: shop-ca, namespace: shop}
spec: {ca: {secretName: shop-root}}
---
apiVersion: cert-manager.io/v1
kind: Certificate
metadata: {name: shop-tls, namespace: shop}
spec:
  secretName: shop-tls
  duration: 24h
  renewBefore: 8h
  uris: [spiffe://td.test/ns/shop/sa/web]
  issuerRef: {name: shop-ca}
"#;

const SHOP_TLS: &str =
    r#"{name="shop-tls",namespace="shop",issuer_name="shop-ca",issuer_kind="",issuer_group=""}"#;
const SHOP_ROOT: &str = r#"{name="shop-root",namespace="shop",issuer_name="selfsigned",issuer_kind="Issuer",issuer_group="cert-manager.io"}"#;
const WEB_SVID: &str = r#"{name="web",namespace="shop",issuer_name="td.test",issuer_kind="MeshCA",issuer_group="trustmesh.io"}"#;

/// `GET /metrics`: status, Content-Type, body.
async fn scrape(addr: SocketAddr) -> (StatusCode, String, String) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/metrics")
        .header(http::header::HOST, "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status();
    let content_type = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        content_type,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

/// The sample lines of an exposition: series (name and labels as written) → value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for l in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = l.rsplit_once(' ').unwrap();
        let previous = out.insert(series.to_owned(), value.parse::<f64>().unwrap());
        assert!(previous.is_none(), "duplicate series {series}");
    }
    out
}

fn value(all: &BTreeMap<String, f64>, series: &str) -> f64 {
    *all.get(series)
        .unwrap_or_else(|| panic!("no sample {series} in {:#?}", all.keys()))
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs() as f64
}

/// `labels` with `condition="<c>"` appended.
fn with_condition(labels: &str, c: &str) -> String {
    format!("{},condition=\"{c}\"}}", labels.trim_end_matches('}'))
}

/// A control plane with the CA-issued Certificate, its Certificates issued.
async fn start_with_certificates() -> (Fixture, trustmesh_control_plane::Running) {
    let fx = Fixture::new();
    fx.edit("mesh.yaml", MESH_DEFAULT_TTL);
    fx.edit("certs.yaml", CA_CERTS);
    let cp = fx.start().await;
    eventually(5 * SECOND, "every Certificate is Ready", || async {
        let v = get_json(&cp, "/v1/certificates").await;
        let all = v["certificates"].as_array().unwrap().clone();
        all.len() == 2 && all.iter().all(|c| c["ready"] == "True")
    })
    .await;
    (fx, cp)
}

#[tokio::test]
async fn a_scrape_reports_certificates_svids_connected_proxies_and_the_ca_root() {
    let (fx, cp) = start_with_certificates().await;

    // The web proxy bootstraps with a join token and opens its config stream.
    let (web, bundles) = bootstrap(&fx, &cp, "shop/web", WEB).await;
    let ch = channel(cp.grpc_addr, &bundles, Some(&web)).await.unwrap();
    let mut s = stream(&ch, "shop/web").await.unwrap();
    next_update(&mut s, SECOND).await;

    let (status, content_type, text) = scrape(cp.admin_addr).await;
    let now = SystemTime::now();
    assert_eq!(status, 200);
    assert_eq!(content_type, trustmesh_metrics::CONTENT_TYPE);
    let m = samples(&text);

    // The Certificate: its status is the certificate in the Secret folder.
    let pem = std::fs::read_to_string(fx.state.join("secrets/shop/shop-tls/tls.crt")).unwrap();
    let leaf = CertInfo::parse_pem(&pem).unwrap().remove(0);
    let expiration = value(
        &m,
        &format!("certmanager_certificate_expiration_timestamp_seconds{SHOP_TLS}"),
    );
    assert_eq!(expiration, unix(leaf.not_after));
    assert_eq!(
        value(
            &m,
            &format!("certmanager_certificate_not_after_timestamp_seconds{SHOP_TLS}")
        ),
        unix(leaf.not_after)
    );
    assert_eq!(
        value(
            &m,
            &format!("certmanager_certificate_not_before_timestamp_seconds{SHOP_TLS}")
        ),
        unix(leaf.not_before)
    );
    // cert-manager: renewBefore 8h < lifetime 24h, so renewalTime = notAfter - 8h.
    let renewal = cert_manager_renewal_time(
        leaf.not_before,
        leaf.not_after,
        Some(Duration::from_secs(8 * 3600)),
        None,
    );
    assert_eq!(
        value(
            &m,
            &format!("certmanager_certificate_renewal_timestamp_seconds{SHOP_TLS}")
        ),
        unix(renewal)
    );
    assert_eq!(unix(leaf.not_after) - unix(renewal), 8.0 * 3600.0);
    for (c, want) in [("True", 1.0), ("False", 0.0), ("Unknown", 0.0)] {
        let series = format!(
            "certmanager_certificate_ready_status{}",
            with_condition(SHOP_TLS, c)
        );
        assert_eq!(value(&m, &series), want, "{series}");
    }
    // The admin API and the metrics tell the same.
    let certs = get_json(&cp, "/v1/certificates").await;
    let tls_view = certs["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "shop-tls")
        .unwrap()
        .clone();
    assert_eq!(tls_view["expirationTimestamp"].as_f64(), Some(expiration));
    // The root: labels verbatim from its issuerRef, cert-manager's default renewal (1/3).
    let root_pem =
        std::fs::read_to_string(fx.state.join("secrets/shop/shop-root/tls.crt")).unwrap();
    let root = CertInfo::parse_pem(&root_pem).unwrap().remove(0);
    assert_eq!(
        value(
            &m,
            &format!("certmanager_certificate_expiration_timestamp_seconds{SHOP_ROOT}")
        ),
        unix(root.not_after)
    );
    assert_eq!(
        value(
            &m,
            &format!("certmanager_certificate_renewal_timestamp_seconds{SHOP_ROOT}")
        ),
        unix(cert_manager_renewal_time(
            root.not_before,
            root.not_after,
            None,
            None
        ))
    );

    // The workload SVID, reported as a certificate of the mesh CA.
    let svid = CertInfo::parse(&web.chain[0]).unwrap();
    let svid_expiration = value(
        &m,
        &format!("certmanager_certificate_expiration_timestamp_seconds{WEB_SVID}"),
    );
    assert_eq!(svid_expiration, unix(svid.not_after));
    assert_eq!(
        value(
            &m,
            &format!("certmanager_certificate_not_after_timestamp_seconds{WEB_SVID}")
        ),
        unix(svid.not_after)
    );
    assert_eq!(
        value(
            &m,
            &format!("certmanager_certificate_not_before_timestamp_seconds{WEB_SVID}")
        ),
        unix(svid.not_before)
    );
    assert_eq!(
        value(
            &m,
            &format!("certmanager_certificate_renewal_timestamp_seconds{WEB_SVID}")
        ),
        unix(workload_renewal_time(svid.not_before, svid.not_after, 0.0))
    );
    for (c, want) in [("True", 1.0), ("False", 0.0), ("Unknown", 0.0)] {
        let series = format!(
            "certmanager_certificate_ready_status{}",
            with_condition(WEB_SVID, c)
        );
        assert_eq!(value(&m, &series), want, "{series}");
    }
    // The dashboard's "hours left": 24 h default TTL, just issued.
    let hours_left = (svid_expiration - unix(now)) / 3600.0;
    assert!((23.9..=24.0).contains(&hours_left), "{hours_left} h left");
    let workloads = get_json(&cp, "/v1/workloads").await;
    let row = workloads["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "web")
        .unwrap()
        .clone();
    assert_eq!(
        row["lastIssued"]["notAfterUnix"].as_f64(),
        Some(svid_expiration)
    );
    assert_eq!(
        row["lastIssued"]["notBefore"],
        trustmesh_pki::svid::format_rfc3339(svid.not_before)
    );
    // db never got an SVID: no certificate series for it.
    assert!(
        !m.keys()
            .any(|k| k.starts_with("certmanager_") && k.contains(r#"name="db""#)),
        "{text}"
    );

    // Connected proxies: web holds a stream, db does not.
    let web_connected =
        r#"trustmesh_control_plane_proxy_connected{workload="web",namespace="shop"}"#;
    let db_connected = r#"trustmesh_control_plane_proxy_connected{workload="db",namespace="shop"}"#;
    assert_eq!(value(&m, web_connected), 1.0);
    assert_eq!(value(&m, db_connected), 0.0);
    assert_eq!(value(&m, "trustmesh_control_plane_connected_proxies"), 1.0);
    assert_eq!(
        value(
            &m,
            r#"trustmesh_control_plane_svids_signed_total{method="join_token"}"#
        ),
        1.0
    );

    // The CA root of the trust domain, as in the bundles the proxy was given.
    let td = TrustDomain::new("td.test").unwrap();
    let ca_root = CertInfo::parse(&bundles.roots(&td)[0]).unwrap();
    assert_eq!(
        value(
            &m,
            r#"trustmesh_ca_expiration_timestamp_seconds{trust_domain="td.test"}"#
        ),
        unix(ca_root.not_after)
    );
    assert!(m.contains_key("process_cpu_seconds_total"), "{text}");
    assert!(m.contains_key("process_resident_memory_bytes"), "{text}");

    // The proxy goes away: its stream closes and the gauge drops to 0.
    drop(s);
    drop(ch);
    eventually(5 * SECOND, "web is no longer connected", || async {
        let m = samples(&scrape(cp.admin_addr).await.2);
        value(&m, web_connected) == 0.0
            && value(&m, "trustmesh_control_plane_connected_proxies") == 0.0
    })
    .await;

    // web leaves the config: its SVID and its proxy leave the metrics, as a deleted
    // Certificate leaves cert-manager's.
    let db_only = WORKLOADS.split("---").nth(1).unwrap().to_owned();
    fx.edit("workloads.yaml", &db_only);
    eventually(5 * SECOND, "web is gone from the metrics", || async {
        let text = scrape(cp.admin_addr).await.2;
        !text.contains(WEB_SVID) && !text.contains(r#"workload="web""#)
    })
    .await;
    let m = samples(&scrape(cp.admin_addr).await.2);
    assert_eq!(value(&m, db_connected), 0.0);
    cp.shutdown().await;
}

/// The row of `workload` (`ns/name`) in `GET /v1/workloads`.
async fn workload_row(cp: &trustmesh_control_plane::Running, workload: &str) -> serde_json::Value {
    let (ns, name) = workload.split_once('/').unwrap();
    get_json(cp, "/v1/workloads").await["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["namespace"] == ns && w["name"] == name)
        .unwrap_or_else(|| panic!("{workload} not in /v1/workloads"))
        .clone()
}

/// The SVIDs signed before a restart stay in `/metrics` and `/v1/workloads` (kept in
/// `state/control-plane.json`), so the expiry alert covers a workload before its proxy
/// renews.
#[tokio::test]
async fn a_restart_keeps_the_svids_signed_before_it_in_metrics_and_workloads() {
    let fx = Fixture::new();
    let cp = fx.start().await;
    let (web, _) = bootstrap(&fx, &cp, "shop/web", WEB).await;
    let svid = CertInfo::parse(&web.chain[0]).unwrap();
    let certificate_series: Vec<String> = ["expiration", "not_after", "not_before", "renewal"]
        .iter()
        .map(|g| format!("certmanager_certificate_{g}_timestamp_seconds{WEB_SVID}"))
        .chain(["True", "False", "Unknown"].iter().map(|c| {
            format!(
                "certmanager_certificate_ready_status{}",
                with_condition(WEB_SVID, c)
            )
        }))
        .collect();
    let expiration = &certificate_series[0];

    let before = samples(&scrape(cp.admin_addr).await.2);
    assert_eq!(value(&before, expiration), unix(svid.not_after));
    let row_before = workload_row(&cp, "shop/web").await;
    assert_eq!(row_before["lastIssued"]["serial"], svid.serial_hex);
    cp.shutdown().await;

    // A new control plane on the same state folder; nobody signs anything.
    let cp = fx.start().await;
    let (_, _, text) = scrape(cp.admin_addr).await;
    let after = samples(&text);
    assert_eq!(value(&after, expiration), unix(svid.not_after), "{text}");
    for series in &certificate_series {
        assert_eq!(value(&after, series), value(&before, series), "{series}");
    }
    let ready = format!(
        "certmanager_certificate_ready_status{}",
        with_condition(WEB_SVID, "True")
    );
    assert_eq!(value(&after, &ready), 1.0, "not expired: Ready");
    assert!(
        !after
            .iter()
            .any(|(k, v)| k.starts_with("trustmesh_control_plane_svids_signed_total") && *v > 0.0),
        "the new process signed nothing: {text}"
    );
    // db never got an SVID, before or after.
    assert!(
        !after
            .keys()
            .any(|k| k.starts_with("certmanager_") && k.contains(r#"name="db""#)),
        "{text}"
    );
    let row_after = workload_row(&cp, "shop/web").await;
    assert_eq!(row_after["lastIssued"]["serial"], svid.serial_hex);
    assert_eq!(row_after["lastIssued"], row_before["lastIssued"]);
    assert_eq!(
        workload_row(&cp, "shop/db").await["lastIssued"],
        serde_json::Value::Null
    );
    cp.shutdown().await;
}

#[tokio::test]
async fn metrics_is_get_only() {
    let fx = Fixture::new();
    let cp = fx.start().await;
    let (status, _) = http(cp.admin_addr, "POST", "/metrics", None, None).await;
    assert_eq!(status, 405);
    cp.shutdown().await;
}

/// The exposition passes `promtool check metrics` with no output at all: docs/metrics.md
/// grants the control plane no lint exception.
#[tokio::test]
async fn promtool_check_metrics_accepts_the_exposition() {
    const PROMTOOL: &str = "/usr/bin/promtool";
    assert!(
        std::path::Path::new(PROMTOOL).exists(),
        "{PROMTOOL} not found: install the Debian package `prometheus` (apt-get install prometheus)"
    );
    let (fx, cp) = start_with_certificates().await;
    let (web, bundles) = bootstrap(&fx, &cp, "shop/web", WEB).await;
    let ch = channel(cp.grpc_addr, &bundles, Some(&web)).await.unwrap();
    let mut s = stream(&ch, "shop/web").await.unwrap();
    next_update(&mut s, SECOND).await;
    let (_, _, text) = scrape(cp.admin_addr).await;
    assert!(text.contains(WEB_SVID) && text.contains(SHOP_TLS), "{text}");
    drop(s);
    cp.shutdown().await;

    let mut child = Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {}\n{said}\nexposition:\n{text}",
        out.status
    );
}
