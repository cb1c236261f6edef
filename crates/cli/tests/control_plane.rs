//! `trustmesh control-plane` and `trustmesh token create` driven as a user drives them: the
//! real binary, real ports (0 = ephemeral) on loopback, the admin API over plain HTTP/1.1,
//! SIGTERM to stop. Every process started here is killed by PID when the test ends.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a failed test

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{bin, run, s, text};

const CONFIG: &str = r#"apiVersion: trustmesh.io/v1alpha1
kind: MeshConfig
metadata: {name: mesh}
spec: {trustDomain: td.test, rootNamespace: istio-system, workloadCertTTL: 1h}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: web, namespace: shop}
spec: {address: 127.0.1.2, serviceAccount: web, labels: {app: web}, ports: {http: 8080}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
"#;

/// A child process that is stopped (SIGKILL, by PID) if the test ends without stopping it.
struct Guard(Option<Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Sends SIGTERM to the child and waits up to `within` for it to exit.
fn terminate(g: &mut Guard, within: Duration) -> std::process::ExitStatus {
    let child = g.0.as_mut().unwrap();
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + within;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            g.0 = None;
            return st;
        }
        assert!(
            Instant::now() < deadline,
            "no exit within {within:?} of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One HTTP/1.1 request: status and body.
fn http(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        tcp,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).unwrap();
    let raw = text(&raw);
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

fn addr_after(line: &str, key: &str) -> SocketAddr {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
        .parse()
        .unwrap()
}

#[test]
fn token_create_writes_a_hashed_one_time_token_and_the_bootstrap_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    let (config, state) = (tmp.path().join("config"), tmp.path().join("state"));
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(config.join("mesh.yaml"), CONFIG).unwrap();

    let o = run(&[
        "token",
        "create",
        "shop/web",
        "--config",
        s(&config),
        "--state",
        s(&state),
        "-o",
        "json",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let token = v["token"].as_str().unwrap();
    assert_eq!(token.len(), 43);
    assert_eq!(v["identity"], "spiffe://td.test/ns/shop/sa/web");
    let record = Path::new(v["tokenRecord"].as_str().unwrap());
    assert!(record.starts_with(state.join("tokens")));
    let stored = std::fs::read_to_string(record).unwrap();
    assert!(!stored.contains(token), "only the hash names the record");
    assert_eq!(
        std::fs::metadata(record).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let bundle: Value = serde_json::from_str(
        &std::fs::read_to_string(state.join("proxies/shop/web/bundle.json")).unwrap(),
    )
    .unwrap();
    assert!(
        bundle["td.test"]["keys"]
            .as_array()
            .is_some_and(|k| !k.is_empty()),
        "{bundle}"
    );

    // Plain output is the token alone; --out writes it to a private file instead.
    let o = run(&[
        "token",
        "create",
        "shop/web",
        "--config",
        s(&config),
        "--state",
        s(&state),
        "--ttl",
        "10m",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout).trim().len(), 43);
    let out = state.join("proxies/shop/web/token");
    let o = run(&[
        "token",
        "create",
        "shop/web",
        "--config",
        s(&config),
        "--state",
        s(&state),
        "--out",
        s(&out),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("written to"),
        "{}",
        text(&o.stdout)
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap().trim().len(), 43);
    assert_eq!(
        std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // A workload the config does not have: a one-line refusal.
    let o = run(&[
        "token",
        "create",
        "shop/ghost",
        "--config",
        s(&config),
        "--state",
        s(&state),
    ]);
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("shop/ghost"), "{err}");
    let o = run(&[
        "token",
        "create",
        "shop/web",
        "--config",
        s(&config),
        "--state",
        s(&state),
        "--ttl",
        "soon",
    ]);
    assert!(!o.status.success());
}

#[test]
fn the_control_plane_binary_serves_until_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let (config, state) = (tmp.path().join("config"), tmp.path().join("state"));
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(config.join("mesh.yaml"), CONFIG).unwrap();

    let child = bin()
        .args([
            "control-plane",
            "--config",
            s(&config),
            "--state",
            s(&state),
            "--grpc-port",
            "0",
            "--admin-port",
            "0",
            "--log-level",
            "warn",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut g = Guard(Some(child));
    let stdout = g.0.as_mut().unwrap().stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("no ready line");
    assert!(line.starts_with("control plane ready "), "{line:?}");
    assert!(
        line.contains("identity=spiffe://td.test/ns/istio-system/sa/trustmesh-control-plane"),
        "{line:?}"
    );
    let admin = addr_after(&line, "admin=");
    let grpc = addr_after(&line, "grpc=");
    assert!(admin.ip().is_loopback() && grpc.ip().is_loopback());
    assert_ne!(grpc.port(), 0);

    assert_eq!(http(admin, "GET", "/healthz", None).0, 200);
    let (code, _) = http(admin, "GET", "/v1/status", None);
    assert_eq!(code, 401);
    let token = std::fs::read_to_string(state.join("admin.token")).unwrap();
    assert_eq!(
        std::fs::metadata(state.join("admin.token"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let (code, body) = http(admin, "GET", "/v1/status", Some(token.trim()));
    assert_eq!(code, 200, "{body}");
    let status: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["grpcAddress"], grpc.to_string());
    assert_eq!(status["lastReload"]["result"], "accepted");
    assert!(state.join("ca/td.test/ca.crt").exists());

    let st = terminate(&mut g, Duration::from_secs(10));
    assert!(st.success(), "{st:?}");
}

#[test]
fn the_control_plane_binary_refuses_an_invalid_config_naming_file_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let (config, state) = (tmp.path().join("config"), tmp.path().join("state"));
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("mesh.yaml"),
        CONFIG.replace("mode: STRICT", "mode: STRIKT"),
    )
    .unwrap();
    let child = bin()
        .args([
            "control-plane",
            "--config",
            s(&config),
            "--state",
            s(&state),
            "--grpc-port",
            "0",
            "--admin-port",
            "0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut g = Guard(Some(child));
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = g.0.as_mut().unwrap().try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "still running with an invalid config"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = g.0.take().unwrap().wait_with_output().unwrap();
    assert!(!status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("mesh.yaml") && err.contains("spec.mtls.mode"),
        "{err}"
    );
    assert!(
        text(&out.stdout).is_empty(),
        "not ready: {}",
        text(&out.stdout)
    );
}
