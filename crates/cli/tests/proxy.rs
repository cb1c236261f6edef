//! `trustmesh proxy` and `trustmesh demo-app` driven as a user (or `up`) drives them: the real
//! binary for the control plane, a join token, the demo app and the proxy, on loopback
//! addresses of their own; curl as the mesh client. Every process started here is stopped
//! (SIGTERM, then SIGKILL by PID) when the test ends.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a failed test

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, SystemTime};

use serde_json::Value;
use trustmesh_core::{SpiffeId, TrustDomain};
use trustmesh_pki::CaStore;

mod common;
use common::{Proc, field, run, s, text};

/// One plain HTTP/1.1 request: status and body.
fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        tcp,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).unwrap();
    let raw = text(&raw);
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    (
        head.split(' ').nth(1).unwrap().parse().unwrap(),
        body.to_owned(),
    )
}

/// A free port number on `ip` (bound and released).
fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn demo_app_answers_with_its_name_and_the_request_and_stops_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port("127.0.82.2");
    let listen = format!("127.0.82.2:{port}");
    let mut app = Proc::start(
        &["demo-app", "--listen", &listen, "--name", "shop/web"],
        &tmp.path().join("app.log"),
    );
    let line = app.ready_line(Duration::from_secs(20));
    assert_eq!(
        line,
        format!("demo-app ready name=shop/web listen={listen}")
    );
    let addr: SocketAddr = listen.parse().unwrap();
    let (code, body) = http(addr, "GET", "/healthz");
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    let (code, body) = http(addr, "POST", "/orders/7?x=1");
    assert_eq!(code, 200);
    assert_eq!(
        body,
        "app: shop/web\nmethod: POST\npath: /orders/7?x=1\nx-forwarded-client-cert: -\nbody-bytes: 0\n"
    );
    assert!(app.terminate(Duration::from_secs(10)).success());
}

#[test]
fn proxy_flags_are_checked_before_anything_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let o = run(&[
        "proxy",
        "--workload",
        "shop/web",
        "--bundle",
        s(&tmp.path().join("missing.json")),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(
        err.starts_with("error: reading --bundle ") && err.contains("missing.json"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");

    let bundle = tmp.path().join("bundle.json");
    std::fs::write(&bundle, "{}").unwrap();
    let o = run(&["proxy", "--workload", "web", "--bundle", s(&bundle)]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(
        err.contains("bootstrap bundle") || err.contains("<namespace>/<name>"),
        "{err}"
    );

    // A proxy needs at least one worker thread (clap's usage error: exit 2).
    let o = run(&[
        "proxy",
        "--workload",
        "shop/web",
        "--bundle",
        s(&bundle),
        "--workers",
        "0",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("--workers"), "{}", text(&o.stderr));
}

const TD: &str = "td.test";

fn config(proxy_ip: &str, app_ip: &str, port: u16) -> String {
    format!(
        r#"apiVersion: trustmesh.io/v1alpha1
kind: MeshConfig
metadata: {{name: mesh}}
spec: {{trustDomain: {TD}, rootNamespace: istio-system, workloadCertTTL: 24h}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: web
  namespace: shop
  annotations: {{trustmesh.io/app-address: "{app_ip}"}}
spec: {{address: {proxy_ip}, serviceAccount: web, labels: {{app: web}}, ports: {{http: {port}}}}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: istio-system}}
spec: {{mtls: {{mode: STRICT}}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: gateway-only, namespace: shop}}
spec:
  action: ALLOW
  rules:
  - from: [{{source: {{principals: ["{TD}/ns/shop/sa/gateway"]}}}}]
"#
    )
}

#[test]
fn a_proxy_started_like_up_does_bootstraps_serves_mtls_and_stops_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let (cfg_dir, state) = (tmp.path().join("config"), tmp.path().join("state"));
    std::fs::create_dir_all(&cfg_dir).unwrap();
    let (proxy_ip, app_ip, cp_ip) = ("127.0.83.2", "127.0.84.2", "127.0.83.1");
    let port = free_port(proxy_ip);
    std::fs::write(cfg_dir.join("mesh.yaml"), config(proxy_ip, app_ip, port)).unwrap();

    let mut cp = Proc::start(
        &[
            "control-plane",
            "--config",
            s(&cfg_dir),
            "--state",
            s(&state),
            "--listen",
            cp_ip,
            "--grpc-port",
            "0",
            "--admin-port",
            "0",
        ],
        &tmp.path().join("cp.log"),
    );
    let cp_line = cp.ready_line(Duration::from_secs(30));
    let grpc = field(&cp_line, "grpc=").to_owned();

    let token = tmp.path().join("token");
    let o = run(&[
        "token",
        "create",
        "shop/web",
        "--config",
        s(&cfg_dir),
        "--state",
        s(&state),
        "--out",
        s(&token),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let bundle = state.join("proxies/shop/web/bundle.json");
    assert!(bundle.exists());

    let app_listen = format!("{app_ip}:{port}");
    let mut app = Proc::start(
        &["demo-app", "--listen", &app_listen, "--name", "shop/web"],
        &tmp.path().join("app.log"),
    );
    app.ready_line(Duration::from_secs(20));

    let socket = tmp.path().join("wl.sock");
    let mut proxy = Proc::start(
        &[
            "proxy",
            "--workload",
            "shop/web",
            "--control-plane",
            &grpc,
            "--bundle",
            s(&bundle),
            "--token-file",
            s(&token),
            "--workload-api-socket",
            s(&socket),
            "--admin-port",
            "0",
            "--outbound-port",
            "0",
            "--health-port",
            "0",
            "--metrics-port",
            "0",
        ],
        &tmp.path().join("proxy.log"),
    );
    let line = proxy.ready_line(Duration::from_secs(30));
    assert!(
        line.starts_with("proxy ready workload=shop/web identity=spiffe://td.test/ns/shop/sa/web "),
        "{line}"
    );
    assert_eq!(field(&line, "inbound="), port.to_string());
    let admin: SocketAddr = field(&line, "admin=").parse().unwrap();
    let health: SocketAddr = field(&line, "health=").parse().unwrap();
    assert_eq!(
        admin.ip().to_string(),
        proxy_ip,
        "listens on its WorkloadEntry address"
    );
    assert_eq!(http(admin, "GET", "/ready").0, 200);
    assert_eq!(http(health, "GET", "/healthz/ready").0, 200);
    let (_, certs) = http(admin, "GET", "/certs");
    let certs: Value = serde_json::from_str(&certs).unwrap();
    assert_eq!(certs["spiffeId"], "spiffe://td.test/ns/shop/sa/web");
    assert!(socket.exists());

    // A client certificate for shop/gateway from the mesh's CA; curl as the client.
    let td = TrustDomain::new(TD).unwrap();
    let ca = CaStore::new(&state)
        .load(&td)
        .unwrap()
        .expect("the control plane's CA");
    let gateway = SpiffeId::workload(&td, "shop", "gateway").unwrap();
    let (svid, key) = ca
        .issue_svid(&gateway, Duration::from_secs(3600), SystemTime::now())
        .unwrap();
    let (cert_file, key_file) = (tmp.path().join("gw.pem"), tmp.path().join("gw-key.pem"));
    std::fs::write(&cert_file, &svid.chain_pem).unwrap();
    std::fs::write(&key_file, key.to_pkcs8_pem().unwrap()).unwrap();
    // Pin the proxy's public key (SVIDs carry no host name for curl to check).
    let chain_pem = certs["chainPem"].as_str().unwrap();
    let server_pem = tmp.path().join("server.pem");
    std::fs::write(&server_pem, chain_pem).unwrap();
    let pubkey = Command::new("openssl")
        .args(["x509", "-in", s(&server_pem), "-pubkey", "-noout"])
        .output()
        .unwrap();
    let pin = tmp.path().join("pub.pem");
    std::fs::write(&pin, &pubkey.stdout).unwrap();
    let url = format!("https://{proxy_ip}:{port}/hello");
    let curl = |extra: &[&str]| {
        Command::new("curl")
            .args(["-sS", "-k", "--max-time", "10", "--pinnedpubkey", s(&pin)])
            .args(extra)
            .arg(&url)
            .output()
            .unwrap()
    };
    let o = curl(&["--cert", s(&cert_file), "--key", s(&key_file)]);
    let out = text(&o.stdout);
    assert!(o.status.success(), "{out}{}", text(&o.stderr));
    assert!(
        out.starts_with("app: shop/web\nmethod: GET\npath: /hello\n"),
        "{out}"
    );
    assert!(
        out.contains("x-forwarded-client-cert: By=spiffe://td.test/ns/shop/sa/web;URI=spiffe://td.test/ns/shop/sa/gateway\n"),
        "{out}"
    );
    // Without a certificate: refused in the handshake.
    let o = curl(&[]);
    assert!(!o.status.success());
    assert!(o.stdout.is_empty());
    // Plaintext to the STRICT port: closed without an answer.
    let o = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            &format!("http://{proxy_ip}:{port}/hello"),
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(o.stdout.is_empty(), "{}", text(&o.stdout));

    // SIGTERM: a clean exit, the Workload API socket removed.
    assert!(proxy.terminate(Duration::from_secs(15)).success());
    assert!(!socket.exists());
    assert!(app.terminate(Duration::from_secs(10)).success());
    assert!(cp.terminate(Duration::from_secs(15)).success());
}
