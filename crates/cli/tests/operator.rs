//! The operator commands against a running mesh, driven as a user drives them: `verify`,
//! `debug` and a live `certs`, the real binary each time, against a control plane, join
//! tokens, proxies and demo apps this file starts itself (the real binary too) from the
//! two-workload config `data/operator/mesh.yaml`.
//!
//! Each mesh test has loopback addresses of its own (127.0.71.x, 127.0.74.x; apps one octet
//! up), never the example mesh's 127.0.1.x, so it runs beside `trustmesh up` and other tests.
//! Every process started here is stopped by PID when its guard drops: SIGTERM, then SIGKILL
//! after 5 s.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a failed test

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{Proc, field, json, run, s, text};

/// `data/operator/mesh.yaml` with the addresses of block `b`: web at 127.0.b.2, api at
/// 127.0.b.3, their apps at 127.0.(b+1).2 and .3.
fn config_text(b: u8) -> String {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/operator/mesh.yaml");
    std::fs::read_to_string(data)
        .unwrap()
        .replace("{{WEB}}", &format!("127.0.{b}.2"))
        .replace("{{API}}", &format!("127.0.{b}.3"))
        .replace("{{WEB_APP}}", &format!("127.0.{}.2", b + 1))
        .replace("{{API_APP}}", &format!("127.0.{}.3", b + 1))
}

/// A running two-workload mesh: control plane, demo apps and proxies, stopped on drop
/// (proxies first).
struct Mesh {
    // Dropped in this order, after `Drop::drop` stopped the proxies: apps, control plane,
    // then the folders they used.
    web: Proc,
    api: Proc,
    _apps: Vec<Proc>,
    _cp: Proc,
    tmp: tempfile::TempDir,
    block: u8,
    config: PathBuf,
    state: PathBuf,
    /// The control plane's admin address.
    admin: String,
}

impl Mesh {
    fn start(block: u8) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let config = tmp.path().join("config");
        let state = tmp.path().join("state");
        std::fs::create_dir_all(&config).unwrap();
        std::fs::write(config.join("mesh.yaml"), config_text(block)).unwrap();
        let cp = Proc::start(
            &[
                "control-plane",
                "--config",
                s(&config),
                "--state",
                s(&state),
                "--listen",
                &format!("127.0.{block}.1"),
                "--grpc-port",
                "0",
                "--admin-port",
                "0",
            ],
            &tmp.path().join("cp.log"),
        );
        let line = cp.ready_line(Duration::from_secs(60));
        let grpc = field(&line, "grpc=").to_owned();
        let admin = field(&line, "admin=").to_owned();
        let mut apps = Vec::new();
        let mut proxies = Vec::new();
        for (name, host) in [("web", 2), ("api", 3)] {
            let app = format!("127.0.{}.{host}:8080", block + 1);
            let p = Proc::start(
                &[
                    "demo-app",
                    "--listen",
                    &app,
                    "--name",
                    &format!("shop/{name}"),
                ],
                &tmp.path().join(format!("app-{name}.log")),
            );
            p.ready_line(Duration::from_secs(30));
            apps.push(p);
            let token = tmp.path().join(format!("{name}.token"));
            let o = run(&[
                "token",
                "create",
                &format!("shop/{name}"),
                "--config",
                s(&config),
                "--state",
                s(&state),
                "--out",
                s(&token),
            ]);
            assert!(o.status.success(), "{}", text(&o.stderr));
            let bundle = state.join(format!("proxies/shop/{name}/bundle.json"));
            let proxy = Proc::start(
                &[
                    "proxy",
                    "--workload",
                    &format!("shop/{name}"),
                    "--control-plane",
                    &grpc,
                    "--bundle",
                    s(&bundle),
                    "--token-file",
                    s(&token),
                ],
                &tmp.path().join(format!("proxy-{name}.log")),
            );
            proxies.push(proxy);
        }
        for p in &proxies {
            let line = p.ready_line(Duration::from_secs(60));
            assert!(line.starts_with("proxy ready "), "{line}");
        }
        let api = proxies.pop().unwrap();
        let web = proxies.pop().unwrap();
        Self {
            tmp,
            block,
            config,
            state,
            admin,
            web,
            api,
            _apps: apps,
            _cp: cp,
        }
    }

    fn ip(&self, host: u8) -> String {
        format!("127.0.{}.{host}", self.block)
    }

    /// `trustmesh ARGS... --config C --state S` (plus the admin address where it applies).
    fn cli(&self, args: &[&str]) -> Output {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--config", s(&self.config), "--state", s(&self.state)]);
        if matches!(args.first(), Some(&"verify" | &"certs")) {
            all.extend(["--control-plane-admin", &self.admin]);
        }
        run(&all)
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        // Proxies before their control plane; the remaining guards drop after this.
        self.web.stop();
        self.api.stop();
    }
}

/// One plain HTTP/1.1 GET: status and body.
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
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

/// The row of `workload` (`ns/name`) port `port` in a `verify -o json` report.
fn row<'a>(report: &'a Value, workload: &str, port: u16) -> &'a Value {
    report["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["workload"] == workload && r["port"] == port)
        .unwrap_or_else(|| panic!("no row for {workload}:{port}: {report:#}"))
}

#[test]
fn verify_debug_and_certs_explain_a_healthy_mesh_and_catch_a_mode_drift() {
    let mesh = Mesh::start(71);

    // verify: both workloads valid; on STRICT ports plaintext refused and mTLS accepted, on
    // api's DISABLE metrics port the reverse.
    let o = mesh.cli(&["verify", "shop"]);
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}{}", text(&o.stderr));
    let header = out.lines().next().unwrap();
    for col in [
        "WORKLOAD",
        "PORT",
        "MODE",
        "CERT",
        "PLAINTEXT",
        "MTLS",
        "RESULT",
        "REASON",
    ] {
        assert!(header.contains(col), "{header}");
    }
    assert!(out.contains("all 3 checks passed"), "{out}");
    let v = json(&mesh.cli(&["verify", "shop", "-o", "json"]));
    assert_eq!(v["passed"], true, "{v:#}");
    assert_eq!(
        v["probeIdentity"],
        "spiffe://op.test/ns/istio-system/sa/trustmesh-verify"
    );
    for (w, mtls) in [("shop/web", "ok (HTTP 200)"), ("shop/api", "ok (HTTP 403)")] {
        let r = row(&v, w, 8080);
        assert_eq!(r["mode"], "STRICT", "{r:#}");
        assert_eq!(r["proxyMode"], "STRICT", "{r:#}");
        assert_eq!(r["cert"], "valid", "{r:#}");
        assert_eq!(r["plaintext"], "refused", "{r:#}");
        // api's policy admits only web: the probe identity gets through TLS, then 403.
        assert_eq!(r["mtls"], mtls, "{r:#}");
        assert_eq!(r["passed"], true, "{r:#}");
    }
    let r = row(&v, "shop/api", 9090);
    assert_eq!(r["protocol"], "TCP", "{r:#}");
    assert_eq!(r["mode"], "DISABLE", "{r:#}");
    assert_eq!(r["modePolicy"], "shop/api-metrics", "{r:#}");
    assert_eq!(r["proxyMode"], "DISABLE", "{r:#}");
    // Plaintext passes the mode, then api's ALLOW policy (no rule for it) closes the TCP
    // connection: the mode is proved, the note says why nothing answered.
    assert_eq!(r["plaintext"], "closed by policy", "{r:#}");
    assert_eq!(
        r["notes"][0],
        "plaintext passed the mode check, then the connection was denied by AuthorizationPolicy shop/api-callers: no ALLOW rule matched"
    );
    assert_eq!(r["mtls"], "refused", "{r:#}");
    assert_eq!(r["passed"], true, "{r:#}");
    // Another namespace of the config: nothing to verify, one line, exit 1.
    let o = mesh.cli(&["verify", "elsewhere"]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(
        err.starts_with("error: ") && err.contains("no WorkloadEntry in namespace elsewhere"),
        "{err}"
    );

    // debug, allowed: web → api under /allowed, through web's proxy.
    let o = mesh.cli(&[
        "debug",
        "shop",
        "web",
        "api:8080",
        "--path",
        "/allowed/x",
        "-o",
        "json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let v = json(&o);
    assert_eq!(v["ok"], true, "{v:#}");
    assert_eq!(v["source"]["identity"], "spiffe://op.test/ns/shop/sa/web");
    let cert = &v["source"]["certificate"];
    assert_eq!(cert["verified"], true, "{v:#}");
    assert_eq!(
        cert["chain"][0]["spiffe_id"], "spiffe://op.test/ns/shop/sa/web",
        "{v:#}"
    );
    assert_eq!(v["destination"]["host"], "api.shop.svc.cluster.local");
    assert_eq!(v["destination"]["serviceEntry"], "shop/api");
    assert_eq!(v["destination"]["workload"], "shop/api");
    assert_eq!(v["destination"]["address"], format!("{}:8080", mesh.ip(3)));
    assert_eq!(v["destinationRule"], Value::Null);
    assert_eq!(v["clientTls"]["mode"], "ISTIO_MUTUAL");
    assert_eq!(v["clientTls"]["autoMtls"], true);
    assert_eq!(
        v["clientTls"]["allowedServerIdentities"][0],
        "spiffe://op.test/ns/shop/sa/api"
    );
    assert_eq!(v["destinationMode"]["mode"], "STRICT");
    assert_eq!(v["destinationMode"]["policy"], "shop/api-metrics");
    assert_eq!(v["destinationMode"]["proxyMode"], "STRICT");
    assert_eq!(v["authorization"]["decision"], "allow");
    assert_eq!(v["authorization"]["policy"], "shop/api-callers");
    assert_eq!(v["attempt"]["status"], 200);
    assert_eq!(v["attempt"]["body"], "app: shop/api");
    assert_eq!(v["cause"], Value::Null);

    // debug, denied: the policy that made it is named, in JSON and in the table.
    let o = mesh.cli(&["debug", "shop", "web", "shop/api:8080", "--path", "/secret"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    for part in [
        "SOURCE",
        "spiffe://op.test/ns/shop/sa/web",
        "DESTINATION",
        "api.shop.svc.cluster.local:8080",
        "ISTIO_MUTUAL (auto mTLS)",
        "port 8080 STRICT",
        "AUTHORIZATION",
        "403 RBAC: access denied",
    ] {
        assert!(out.contains(part), "{part:?} missing in:\n{out}");
    }
    let result = out.lines().find(|l| l.starts_with("RESULT")).unwrap();
    assert!(
        result.ends_with(
            " failed: denied by AuthorizationPolicy shop/api-callers: no ALLOW rule matched"
        ),
        "{out}"
    );
    let v = json(&mesh.cli(&[
        "debug", "shop", "web", "api", "--path", "/secret", "-o", "json",
    ]));
    assert_eq!(v["ok"], false);
    assert_eq!(
        v["destination"]["port"], 8080,
        "port-less target: the service's port"
    );
    assert_eq!(v["authorization"]["decision"], "deny");
    assert_eq!(v["authorization"]["allowPolicies"][0], "shop/api-callers");
    assert_eq!(v["attempt"]["status"], 403);
    assert_eq!(
        v["cause"],
        "denied by AuthorizationPolicy shop/api-callers: no ALLOW rule matched"
    );
    // A workload port no ServiceEntry exposes: nothing routes there, nothing is attempted.
    let o = mesh.cli(&["debug", "shop", "web", "shop/api:9090", "-o", "json"]);
    assert_eq!(o.status.code(), Some(1));
    let v = json(&o);
    assert_eq!(v["attempt"]["status"], Value::Null, "{v:#}");
    assert_eq!(
        v["cause"],
        "no ServiceEntry selects shop/api on port 9090: the source proxy has no route to it"
    );
    // The destination side is still explained from the config.
    assert_eq!(v["destinationMode"]["mode"], "DISABLE", "{v:#}");
    // An unknown host: the proxy's own answer is the cause.
    let v = json(&mesh.cli(&["debug", "shop", "web", "nope:80", "-o", "json"]));
    assert_eq!(v["attempt"]["status"], 502, "{v:#}");
    assert!(
        v["cause"]
            .as_str()
            .unwrap()
            .starts_with("unknown host nope"),
        "{v:#}"
    );

    // certs, live: an SVID row per workload (what its proxy serves) and the Certificate.
    let o = mesh.cli(&["certs", "-o", "json"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v = json(&o);
    let rows = v.as_array().unwrap();
    for (name, host) in [("web", 2), ("api", 3)] {
        let r = rows
            .iter()
            .find(|r| r["kind"] == "SVID" && r["name"] == name)
            .unwrap_or_else(|| panic!("no SVID row for {name}: {v:#}"));
        assert_eq!(r["namespace"], "shop");
        assert_eq!(r["status"], "Ready", "{r:#}");
        assert_eq!(r["ready"], "True");
        assert_eq!(r["identity"], format!("spiffe://op.test/ns/shop/sa/{name}"));
        let admin: SocketAddr = format!("{}:15000", mesh.ip(host)).parse().unwrap();
        let (_, served) = http_get(admin, "/certs");
        let served: Value = serde_json::from_str(&served).unwrap();
        assert_eq!(r["serial"], served["serial"], "{r:#}");
        assert_eq!(r["notAfter"], served["notAfter"]);
        assert_eq!(r["renewalTime"], served["renewalTime"]);
        assert_eq!(r["issuer"], "O=trustmesh, CN=op.test root CA", "{r:#}");
    }
    let c = rows
        .iter()
        .find(|r| r["kind"] == "Certificate")
        .unwrap_or_else(|| panic!("no Certificate row: {v:#}"));
    assert_eq!(
        (&c["namespace"], &c["name"]),
        (&"shop".into(), &"web-tls".into())
    );
    let o = mesh.cli(&["certs", "-n", "shop"]);
    let out = text(&o.stdout);
    assert!(
        out.lines().next().unwrap().trim_start().starts_with("KIND"),
        "{out}"
    );
    assert_eq!(
        out.lines()
            .filter(|l| l.trim_start().starts_with("SVID"))
            .count(),
        2,
        "{out}"
    );
    let v = json(&mesh.cli(&["certs", "-n", "elsewhere", "-o", "json"]));
    assert_eq!(v, Value::Array(Vec::new()));

    // Drift: the operator expects STRICT (a copy of the config as it is now), then web's
    // namespace gets a PERMISSIVE PeerAuthentication in the running config.
    let expected = mesh.tmp.path().join("expected");
    std::fs::create_dir_all(&expected).unwrap();
    std::fs::copy(mesh.config.join("mesh.yaml"), expected.join("mesh.yaml")).unwrap();
    std::fs::write(
        mesh.config.join("web-permissive.yaml"),
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: web-edge, namespace: shop}\nspec: {selector: {matchLabels: {app: web}}, mtls: {mode: PERMISSIVE}}\n",
    )
    .unwrap();
    let web_admin: SocketAddr = format!("{}:15000", mesh.ip(2)).parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, dump) = http_get(web_admin, "/config_dump");
        let dump: Value = serde_json::from_str(&dump).unwrap();
        if dump["modes"]["8080"] == "PERMISSIVE" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "web never became PERMISSIVE: {dump:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Against the running config, PERMISSIVE holds: plaintext accepted, mTLS too.
    let v = json(&mesh.cli(&["verify", "shop", "-o", "json"]));
    assert_eq!(v["passed"], true, "{v:#}");
    let r = row(&v, "shop/web", 8080);
    assert_eq!(r["mode"], "PERMISSIVE");
    assert_eq!(r["plaintext"], "accepted (HTTP 200)", "{r:#}");
    // Against what the operator expects, it fails: mode and plaintext, with reasons.
    let o = run(&[
        "verify",
        "shop",
        "--config",
        s(&expected),
        "--state",
        s(&mesh.state),
        "--control-plane-admin",
        &mesh.admin,
        "-o",
        "json",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stdout));
    let err = text(&o.stderr);
    assert!(
        err.starts_with("error: 1 of 3 checks failed (first: shop/web:8080: "),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    let v = json(&o);
    assert_eq!(
        (v["passed"].clone(), v["failed"].clone()),
        (false.into(), 1.into())
    );
    assert!(
        v["notes"][0]
            .as_str()
            .unwrap()
            .contains("the control plane serves"),
        "{v:#}"
    );
    let r = row(&v, "shop/web", 8080);
    assert_eq!(r["passed"], false);
    assert_eq!(r["mode"], "STRICT");
    assert_eq!(r["proxyMode"], "PERMISSIVE");
    let reasons: Vec<&str> = r["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    assert_eq!(
        reasons,
        [
            "mode: the config says STRICT (PeerAuthentication istio-system/default, mesh-wide), the proxy serves PERMISSIVE",
            "plaintext accepted: port 8080 is STRICT (PeerAuthentication istio-system/default, mesh-wide)",
        ],
        "{r:#}"
    );
    assert_eq!(row(&v, "shop/api", 8080)["passed"], true);
    assert_eq!(row(&v, "shop/api", 9090)["passed"], true);
    // The table says the same.
    let o = run(&[
        "verify",
        "shop",
        "--config",
        s(&expected),
        "--state",
        s(&mesh.state),
        "--control-plane-admin",
        &mesh.admin,
    ]);
    let out = text(&o.stdout);
    let web_line = out
        .lines()
        .find(|l| l.trim_start().starts_with("shop/web"))
        .unwrap();
    assert!(web_line.contains("STRICT (proxy: PERMISSIVE)"), "{out}");
    assert!(web_line.contains("FAIL"), "{out}");
    assert!(out.contains("1 of 3 checks FAILED"), "{out}");
}

#[test]
fn a_stopped_proxy_fails_verify_and_debug_says_not_reachable() {
    let mut mesh = Mesh::start(74);
    mesh.api.stop();

    let o = mesh.cli(&["verify", "-o", "json"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stdout));
    let v = json(&o);
    let api = row(&v, "shop/api", 8080);
    assert_eq!(api["passed"], false);
    assert_eq!(api["cert"], "unreachable");
    let reason = api["reasons"][0].as_str().unwrap();
    assert!(
        reason.starts_with(&format!("proxy not reachable at {}:15000 (", mesh.ip(3))),
        "{reason}"
    );
    assert_eq!(row(&v, "shop/web", 8080)["passed"], true, "{v:#}");
    let err = text(&o.stderr);
    assert!(
        err.starts_with("error: 2 of 3 checks failed (first: shop/api:8080: proxy not reachable"),
        "{err}"
    );

    // debug: the request leaves web's proxy and finds nobody at api's address.
    let o = mesh.cli(&[
        "debug",
        "shop",
        "web",
        "api.shop.svc.cluster.local:8080",
        "--path",
        "/allowed",
        "-o",
        "json",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let v = json(&o);
    assert_eq!(v["attempt"]["status"], 503, "{v:#}");
    let cause = v["cause"].as_str().unwrap();
    assert!(
        cause.starts_with(&format!(
            "destination proxy not reachable at {}:15000",
            mesh.ip(3)
        )),
        "{cause}"
    );
    assert!(
        v["destinationMode"]["proxyError"]
            .as_str()
            .unwrap()
            .contains("not reachable"),
        "{v:#}"
    );
    // The config's view is still explained: mode and decision (this request is allowed; the
    // cause is the missing peer, not policy).
    assert_eq!(v["destinationMode"]["mode"], "STRICT");
    assert_eq!(v["authorization"]["decision"], "allow");

    // certs: the stopped proxy's SVID row says so.
    let v = json(&mesh.cli(&["certs", "-n", "shop", "-o", "json"]));
    let svid = |name: &str| {
        v.as_array()
            .unwrap()
            .iter()
            .find(|r| r["kind"] == "SVID" && r["name"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(svid("api")["status"], "Unreachable", "{v:#}");
    assert_eq!(svid("api")["ready"], "False");
    assert_eq!(svid("web")["status"], "Ready", "{v:#}");

    // The source proxy stopped too: debug says which one, and where.
    mesh.web.stop();
    let v = json(&mesh.cli(&["debug", "shop", "web", "api:8080", "-o", "json"]));
    assert_eq!(v["ok"], false);
    assert_eq!(v["attempt"]["status"], Value::Null);
    let cause = v["cause"].as_str().unwrap();
    assert!(
        cause.starts_with(&format!(
            "source proxy not reachable at {}:15001 (",
            mesh.ip(2)
        )),
        "{cause}"
    );
}

#[test]
fn without_a_mesh_the_commands_fail_with_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    // Addresses nobody listens on: this test starts nothing.
    std::fs::write(config.join("mesh.yaml"), config_text(77)).unwrap();
    let state = tmp.path().join("state");

    // verify needs the mesh's CA to mint its probe identity.
    let o = run(&["verify", "--config", s(&config), "--state", s(&state)]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(
        err.starts_with("error: no CA for trust domain op.test in ") && err.contains("--state"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");

    // With a CA but no proxies: every row fails, naming the address.
    let o = run(&["ca", "init", "--config", s(&config), "--state", s(&state)]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = run(&[
        "verify",
        "shop",
        "--config",
        s(&config),
        "--state",
        s(&state),
        "-o",
        "json",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let v = json(&o);
    assert_eq!(v["checked"], 3);
    assert_eq!(v["failed"], 3);
    assert!(
        v["notes"][0]
            .as_str()
            .unwrap()
            .contains("no admin credential"),
        "{v:#}"
    );
    assert!(
        row(&v, "shop/web", 8080)["reasons"][0]
            .as_str()
            .unwrap()
            .starts_with("proxy not reachable at 127.0.77.2:15000 ("),
        "{v:#}"
    );

    // debug: an unknown source, a malformed target.
    let o = run(&["debug", "shop", "ghost", "api:8080", "--config", s(&config)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).starts_with("error: no WorkloadEntry shop/ghost in "),
        "{}",
        text(&o.stderr)
    );
    let o = run(&["debug", "shop", "web", "a/b/c", "--config", s(&config)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("expected host[:port] or NAMESPACE/WORKLOAD[:port]"));

    // certs: offline with --config (the Certificate, not issued yet), an error without.
    let o = run(&[
        "certs",
        "--config",
        s(&config),
        "--state",
        s(&state),
        "-o",
        "json",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v = json(&o);
    assert_eq!(v[0]["kind"], "Certificate", "{v:#}");
    assert_eq!(v[0]["name"], "web-tls");
    assert_eq!(v.as_array().unwrap().len(), 1);
    let o = run(&[
        "certs",
        "--state",
        s(&state),
        "--control-plane-admin",
        "127.0.77.1:1",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(
        err.starts_with("error: no --config given and the control plane is not reachable"),
        "{err}"
    );
}
