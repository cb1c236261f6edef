//! Clients nobody here wrote against an inbound port: curl (OpenSSL) with and without a
//! client certificate, over HTTP/1.1 and HTTP/2, and with TLS 1.2 forced; openssl s_client
//! for the negotiated protocol and chain verification.
//!
//! SVIDs carry no DNS or IP SAN, so curl cannot check the host name; it pins the proxy's
//! public key instead (`--pinnedpubkey`, which curl checks even with `-k`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure with its location

mod mesh_support;

use std::path::{Path, PathBuf};
use std::process::Output;

use mesh_support::*;
use serde_json::json;
use trustmesh_proxy::state::Identity;

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// Writes `id`'s chain and key as `<name>.pem` / `<name>-key.pem`.
fn write_identity(dir: &Path, name: &str, id: &Identity) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}-key.pem"));
    let chain: String = id.chain.iter().map(|c| pem("CERTIFICATE", c)).collect();
    std::fs::write(&cert, chain).unwrap();
    std::fs::write(&key, id.key.to_pkcs8_pem().unwrap()).unwrap();
    (cert, key)
}

async fn run(program: &str, args: &[&str]) -> Output {
    tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap_or_else(|e| panic!("{program} is needed for this test: {e}"))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test]
async fn curl_with_a_client_certificate_reaches_the_app_and_without_one_fails() {
    let h = Harness::start([127, 0, 70, 2], [127, 0, 71, 2], "http", |_| {
        vec![
            peer_authentication("prod", "STRICT"),
            authorization_policy(
                "prod",
                "allow-gateway",
                json!({"action": "ALLOW", "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/default/sa/gateway"]}}]}]}),
            ),
        ]
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (gw_cert, gw_key) =
        write_identity(dir.path(), "gateway", &h.ca.identity("default", "gateway"));
    let (in_cert, in_key) = write_identity(
        dir.path(),
        "intruder",
        &h.ca.identity("default", "intruder"),
    );
    let (server_cert, _) = write_identity(dir.path(), "server", &h.shared.identity().unwrap());
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, pem("CERTIFICATE", h.ca.ca.root_der())).unwrap();
    // The proxy's public key, extracted by openssl, for curl to pin.
    let pubkey = dir.path().join("server-pub.pem");
    let o = run(
        "openssl",
        &["x509", "-in", s(&server_cert), "-pubkey", "-noout"],
    )
    .await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::write(&pubkey, &o.stdout).unwrap();

    let url = format!("https://{}/hello?x=1", h.addr);
    let pin = format!("{}", pubkey.display());
    let curl = |extra: Vec<String>| {
        let mut args: Vec<String> = vec![
            "-sS".into(),
            "-k".into(),
            "--pinnedpubkey".into(),
            pin.clone(),
            "--max-time".into(),
            "5".into(),
        ];
        args.extend(extra);
        args.push(url.clone());
        async move {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            run("curl", &refs).await
        }
    };

    // HTTP/1.1 and HTTP/2 with the gateway's certificate.
    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let o = curl(vec![
            flag.into(),
            "--cert".into(),
            s(&gw_cert).into(),
            "--key".into(),
            s(&gw_key).into(),
            "-w".into(),
            "\n%{http_code} %{http_version}".into(),
        ])
        .await;
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "{out}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(out.ends_with(&format!("\n200 {version}")), "{out}");
        assert!(out.contains("path: /hello?x=1\n"), "{out}");
        assert!(
            out.contains("x-forwarded-client-cert: By=spiffe://cluster.local/ns/prod/sa/orders;URI=spiffe://cluster.local/ns/default/sa/gateway"),
            "{out}"
        );
    }

    // Another identity: the policy's 403.
    let o = curl(vec![
        "--cert".into(),
        s(&in_cert).into(),
        "--key".into(),
        s(&in_key).into(),
        "-w".into(),
        "\n%{http_code}".into(),
    ])
    .await;
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "RBAC: access denied\n403"
    );

    // No client certificate: the handshake is refused, nothing is served.
    let o = curl(vec![]).await;
    assert!(!o.status.success());
    assert!(
        o.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("certificate required"), "{err}");

    // TLS 1.2 at most: "alert protocol version".
    let o = curl(vec![
        "--tls-max".into(),
        "1.2".into(),
        "--cert".into(),
        s(&gw_cert).into(),
        "--key".into(),
        s(&gw_key).into(),
    ])
    .await;
    assert_eq!(
        o.status.code(),
        Some(35),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("protocol version"));

    // openssl s_client: TLS 1.3, and the chain verifies against the trust domain's root.
    let o = tokio::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &h.addr.to_string(),
            "-CAfile",
            s(&ca),
            "-cert",
            s(&gw_cert),
            "-key",
            s(&gw_key),
            "-brief",
        ])
        .stdin(std::process::Stdio::piped())
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("Protocol version: TLSv1.3"), "{err}");
    assert!(err.contains("Verification: OK"), "{err}");
}
