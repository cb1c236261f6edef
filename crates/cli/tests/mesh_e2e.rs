//! The example mesh (`examples/teei`) run the way a user runs it — `trustmesh up` of the real
//! binary, a control plane and a proxy per workload as separate processes on their loopback
//! addresses — and checked from outside with tools nobody here wrote (curl, `openssl`), plus a
//! small load generator: issue 4's "Done means".
//!
//! The mesh binds fixed addresses and ports (127.0.0.1:15012/15014, 127.0.1.x:8080, ...), so
//! the tests take a lock and run one mesh at a time; each starts `up` on a temp copy of the
//! example with a temp state folder and stops it (SIGTERM, then SIGKILL by PID) even when it
//! panics. Timings are printed, never asserted tightly: these are correctness tests.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

#[path = "mesh_e2e/harness.rs"]
mod harness;
#[path = "mesh_e2e/load.rs"]
mod load;
#[path = "mesh_e2e/pki.rs"]
mod pki;

use std::io::{BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use harness::*;
use load::Load;
use pki::{KeyPair, leaf, leaf_dated, mesh_ca, rogue_ca, svid_ext};
use serde_json::Value;

const RBAC_DENIED: &str = "RBAC: access denied";

/// How long a policy change may take to reach the proxies before the test fails. The contract
/// is "within a second" and it is measured and printed; the bound is looser because this
/// machine's two cores are shared with whatever else runs (builds, other tests).
const POLICY_BOUND: Duration = Duration::from_secs(5);

fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

/// curl refused without an HTTP answer: connection closed (52) or reset (56), no status.
fn assert_refused(c: &Curl, what: &str) {
    assert!(
        matches!(c.code, Some(52 | 56)) && c.status.is_none() && c.body.is_empty(),
        "{what}: expected the connection closed without an answer, got {c:?}"
    );
}

fn assert_rbac_denied(r: &Result<Response, String>, what: &str) {
    let r = r.as_ref().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(
        (r.status, r.body.as_str()),
        (403, RBAC_DENIED),
        "{what}: {r:?}"
    );
}

/// The serial of the SVID a proxy serves now.
fn serial(ip: &str) -> String {
    Mesh::proxy_admin(ip, "/certs")["serial"]
        .as_str()
        .unwrap()
        .to_owned()
}

// =============================================================================================
// 1, 2, 7: the example as written — identities, modes, policy, hostile clients, rotate by name.

#[test]
fn example_mesh_enforces_identity_modes_and_policy_against_real_clients() {
    let mut mesh = Mesh::start();
    example_traffic(&mesh);
    direct_client_certificates(&mesh);
    hostile_first_bytes();
    // Unfinished handshakes to orders while the path tricks go to the gateway.
    let slow = std::thread::spawn(slow_handshakes_are_dropped);
    path_tricks_against_the_admin_deny(&mesh);
    let (peak, after, base) = slow.join().expect("slow-handshake thread");
    eprintln!("[hostile] orders proxy fds: {base} before, {peak} with slow clients, {after} after");
    rotate_by_name(&mut mesh);
    assert!(
        mesh.exits().is_empty(),
        "a process died: {:?}",
        mesh.exits()
    );
    mesh.stop();
}

/// Scenario 1: the example's traffic, through the proxies' outbound ports and straight to
/// inbound ports, with curl.
fn example_traffic(mesh: &Mesh) {
    let gw_proxy = format!("http://{GATEWAY}:15001");
    let orders_api = format!("{ORDERS_URL}/api/orders");

    // gateway → orders: mTLS between the proxies, the gateway's identity reaches the app.
    let c = curl(&["-x", &gw_proxy, &orders_api]);
    assert_eq!(c.status, Some(200), "{c:?}");
    assert!(
        c.body
            .starts_with("app: production/orders\nmethod: GET\npath: /api/orders\n"),
        "{c:?}"
    );
    assert!(
        c.body.contains(&format!(
            "x-forwarded-client-cert: By={ORDERS_ID};URI={GATEWAY_ID}\n"
        )),
        "the orders app must see the gateway's SPIFFE ID in XFCC: {c:?}"
    );
    // The destination proxy counted it as a mutual-TLS request from the gateway.
    let metrics = get(addr(ORDERS, 15090), "/metrics", &[]).unwrap().body;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("istio_requests_total{")
                && l.contains("reporter=\"destination\"")
                && l.contains(&format!("source_principal=\"{GATEWAY_ID}\""))
                && l.contains("connection_security_policy=\"mutual_tls\"")
                && l.contains("response_code=\"200\"")),
        "no mutual_tls request from the gateway in orders' metrics:\n{}",
        metrics
            .lines()
            .filter(|l| l.starts_with("istio_requests_total"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // A path no ALLOW rule names: 403 from the orders proxy.
    let c = curl(&["-x", &gw_proxy, &format!("{ORDERS_URL}/admin")]);
    assert_eq!(
        (c.status, c.body.as_str()),
        (Some(403), RBAC_DENIED),
        "{c:?}"
    );

    // Another identity: payments → orders is not allowed.
    let c = curl(&["-x", &format!("http://{PAYMENTS}:15001"), &orders_api]);
    assert_eq!(
        (c.status, c.body.as_str()),
        (Some(403), RBAC_DENIED),
        "{c:?}"
    );

    // Plaintext to orders' STRICT port: closed, no HTTP answer at all.
    let c = curl(&[&format!("http://{ORDERS}:8080/api/orders")]);
    assert_refused(&c, "plaintext to STRICT orders:8080");

    // The gateway's PERMISSIVE port takes plaintext (no client identity) ...
    let c = curl(&[&format!("http://{GATEWAY}:8080/hello")]);
    assert_eq!(c.status, Some(200), "{c:?}");
    assert!(
        c.body.starts_with(
            "app: production/api-gateway\nmethod: GET\npath: /hello\nx-forwarded-client-cert: -\n"
        ),
        "{c:?}"
    );
    // ... and mTLS: orders' proxy calls it, the gateway app sees orders' identity.
    let c = curl(&[
        "-x",
        &format!("http://{ORDERS}:15001"),
        &format!("{GATEWAY_URL}/hello"),
    ]);
    assert_eq!(c.status, Some(200), "{c:?}");
    assert!(
        c.body.contains(&format!(
            "x-forwarded-client-cert: By={GATEWAY_ID};URI={ORDERS_ID}\n"
        )),
        "{c:?}"
    );

    // orders' metrics port 9090 is DISABLE (plaintext only). The example's `allow-nothing`
    // policy has no rule for port 9090, so the plaintext connection is admitted by the mode
    // and then closed by authorization (per connection: a TCP port) — the offline decision
    // says exactly that. (`policy_changes_reach_running_proxies_within_a_second` allows the
    // scrape and gets the app's answer.)
    let o = trustmesh(&[
        "authz",
        "check",
        "--config",
        s(&mesh.config),
        "--namespace",
        "production",
        "--label",
        "app=orders",
        "--label",
        "tier=backend",
        "--port",
        "9090",
        "--plaintext",
        "--tcp",
        "-o",
        "json",
    ]);
    let d: Value = serde_json::from_slice(&o.stdout).expect("authz check JSON");
    assert_eq!(
        (d["mode"].as_str(), d["decision"].as_str()),
        (Some("DISABLE"), Some("deny")),
        "{d}"
    );
    let c = curl(&[&format!("http://{ORDERS}:9090/metrics")]);
    assert_refused(&c, "plaintext to orders:9090 with no ALLOW rule for it");
    // TLS to the DISABLE port: no handshake, no certificate.
    let us = mesh_ca(&mesh.state, "us.cluster.local");
    let o = openssl(
        &[
            "s_client",
            "-connect",
            &format!("{ORDERS}:9090"),
            "-CAfile",
            s(&us.cert),
        ],
        b"",
    );
    let out = text(&o.stdout);
    assert!(
        !o.status.success() && out.contains("no peer certificate available"),
        "TLS to DISABLE orders:9090 must be refused: {out}{}",
        text(&o.stderr)
    );

    // Cross-region: the US gateway calls the EU reporting service, whose certificate comes
    // from the EU CA; reporting's policy names the gateway's US identity.
    let c = curl(&["-x", &gw_proxy, &format!("{REPORTING_URL}/reports")]);
    assert_eq!(c.status, Some(200), "{c:?}");
    assert!(
        c.body.contains(
            "x-forwarded-client-cert: By=spiffe://eu.cluster.local/ns/default/sa/reporting;URI=spiffe://us.cluster.local/ns/production/sa/api-gateway\n"
        ),
        "{c:?}"
    );
    eprintln!("[1] example traffic: ok");
}

/// Scenario 2 and the hostile certificates: curl straight to orders' inbound port with client
/// certificates minted by `openssl` from the mesh's CA (and from CAs it must not trust).
fn direct_client_certificates(mesh: &Mesh) {
    let dir = mesh.dir.join("client-certs");
    std::fs::create_dir_all(&dir).unwrap();
    let us = mesh_ca(&mesh.state, "us.cluster.local");
    let eu = mesh_ca(&mesh.state, "eu.cluster.local");
    let gateway = leaf(&dir, "gateway", &us, &svid_ext(&[GATEWAY_ID]));
    let url = format!("https://{ORDERS}:8080/api/orders");
    // `-k`: an SVID names its workload only by a URI SAN, which curl cannot match against a
    // host name; curl still speaks TLS and sends the client certificate. The server's identity
    // is checked just below with `openssl s_client -verify_return_error` instead.
    let tls = |c: Option<&KeyPair>, extra: &[&str]| {
        let mut args = vec!["-k", "--cacert", s(&us.cert)];
        if let Some(c) = c {
            args.extend(["--cert", s(&c.cert), "--key", s(&c.key)]);
        }
        args.extend(extra);
        args.push(&url);
        curl(&args)
    };

    let ok = tls(Some(&gateway), &[]);
    assert_eq!(ok.status, Some(200), "{ok:?}");
    assert!(
        ok.body.contains(&format!(
            "x-forwarded-client-cert: By={ORDERS_ID};URI={GATEWAY_ID}\n"
        )),
        "{ok:?}"
    );

    // The server: TLS 1.3, a chain that verifies against the US CA, the orders SVID.
    let o = openssl(
        &[
            "s_client",
            "-connect",
            &format!("{ORDERS}:8080"),
            "-verify_return_error",
            "-CAfile",
            s(&us.cert),
            "-cert",
            s(&gateway.cert),
            "-key",
            s(&gateway.key),
        ],
        b"",
    );
    let out = text(&o.stdout);
    assert!(
        o.status.success() && out.contains("Verify return code: 0 (ok)") && out.contains("TLSv1.3"),
        "openssl s_client to orders:8080: {out}{}",
        text(&o.stderr)
    );
    let san = text(&openssl(&["x509", "-noout", "-ext", "subjectAltName"], &o.stdout).stdout);
    assert_eq!(
        san.lines().map(str::trim).collect::<Vec<_>>(),
        [
            "X509v3 Subject Alternative Name:",
            &format!("URI:{ORDERS_ID}")
        ],
        "{san}"
    );

    // An EU identity from the EU CA is verified against the EU bundle, then authorized:
    // orders does not allow it.
    let eu_client = leaf(
        &dir,
        "eu-reporting",
        &eu,
        &svid_ext(&["spiffe://eu.cluster.local/ns/default/sa/reporting"]),
    );
    let c = tls(Some(&eu_client), &[]);
    assert_eq!(
        (c.status, c.body.as_str()),
        (Some(403), RBAC_DENIED),
        "{c:?}"
    );

    // Refused in the handshake: no HTTP answer, curl's error names the TLS alert.
    let rogue = rogue_ca(&dir, "rogue-ca");
    let hostile: Vec<(&str, Option<KeyPair>, Vec<&str>, &str)> = vec![
        (
            "no client certificate",
            None,
            vec![],
            "certificate required",
        ),
        (
            "TLS 1.2",
            Some(gateway.clone()),
            vec!["--tls-max", "1.2"],
            "protocol version",
        ),
        (
            "untrusted CA",
            Some(leaf(&dir, "rogue", &rogue, &svid_ext(&[GATEWAY_ID]))),
            vec![],
            "unknown ca",
        ),
        (
            "trust domain without a bundle",
            Some(leaf(
                &dir,
                "elsewhere",
                &rogue,
                &svid_ext(&["spiffe://elsewhere.example/ns/production/sa/api-gateway"]),
            )),
            vec![],
            "certificate unknown",
        ),
        (
            "US identity signed by the EU CA",
            Some(leaf(&dir, "cross-signed", &eu, &svid_ext(&[GATEWAY_ID]))),
            vec![],
            "unknown ca",
        ),
        (
            "expired",
            Some(leaf_dated(
                &dir,
                "expired",
                &us,
                GATEWAY_ID,
                "20200101000000Z",
                "20200102000000Z",
            )),
            vec![],
            "certificate expired",
        ),
        (
            // TLS has no "not yet valid" alert; `certificate_expired` is what rustls sends.
            "not yet valid",
            Some(leaf_dated(
                &dir,
                "future",
                &us,
                GATEWAY_ID,
                "20990101000000Z",
                "20990102000000Z",
            )),
            vec![],
            "certificate expired",
        ),
        (
            "CA as leaf",
            Some(leaf(
                &dir,
                "ca-leaf",
                &us,
                &format!(
                    "subjectAltName=URI:{GATEWAY_ID}\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,digitalSignature,keyCertSign\n"
                ),
            )),
            vec![],
            "certificate unknown",
        ),
        (
            "two URI SANs",
            Some(leaf(
                &dir,
                "two-sans",
                &us,
                &svid_ext(&[GATEWAY_ID, PAYMENTS_ID]),
            )),
            vec![],
            "certificate unknown",
        ),
    ];
    for (what, cert, extra, alert) in &hostile {
        let c = tls(cert.as_ref(), extra);
        eprintln!("[2] {what}: curl exit {:?}: {}", c.code, c.stderr.trim());
        assert!(
            c.code.is_some_and(|x| x != 0) && c.status.is_none() && c.body.is_empty(),
            "{what}: must be refused in the handshake, got {c:?}"
        );
        assert!(c.stderr.contains(alert), "{what}: {:?}", c.stderr);
    }
    // openssl as a TLS 1.2-only client: refused too.
    let o = openssl(
        &[
            "s_client",
            "-connect",
            &format!("{ORDERS}:8080"),
            "-tls1_2",
            "-cert",
            s(&gateway.cert),
            "-key",
            s(&gateway.key),
        ],
        b"",
    );
    assert!(
        !o.status.success() && text(&o.stderr).contains("protocol version"),
        "{}",
        text(&o.stderr)
    );

    // Nothing else broke.
    let again = tls(Some(&gateway), &[]);
    assert_eq!(again.status, Some(200), "{again:?}");
    eprintln!("[2] client certificates straight to an inbound port: ok");
}

/// Bytes that are not a TLS handshake, to orders' STRICT port: closed, nothing answered.
fn hostile_first_bytes() {
    let cases: [(&str, &[u8]); 4] = [
        ("garbage", b"\x00\x01\x02garbage\r\n\r\n"),
        ("HTTP", b"GET /api/orders HTTP/1.1\r\nHost: orders\r\n\r\n"),
        ("TLS record header, then junk", b"\x16\x03\x01\x00\x05hello"),
        ("truncated record header", b"\x16\x03"),
    ];
    for (what, bytes) in cases {
        let mut tcp = TcpStream::connect(addr(ORDERS, 8080)).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        tcp.write_all(bytes).unwrap();
        let _ = tcp.shutdown(Shutdown::Write);
        let mut got = Vec::new();
        let t = Instant::now();
        let end = tcp.read_to_end(&mut got);
        assert!(
            end.is_ok()
                || end
                    .as_ref()
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
            "{what}: the connection must be closed, got {end:?} after {:?}",
            t.elapsed()
        );
        // At most a TLS alert record (content type 21), never an HTTP answer.
        assert!(got.is_empty() || got[0] == 0x15, "{what}: answered {got:?}");
    }
    // Still serving.
    assert_eq!(
        via(GATEWAY, &format!("{ORDERS_URL}/api/orders"))
            .unwrap()
            .status,
        200
    );
    eprintln!("[hostile] garbage and truncated first bytes: closed");
}

/// Clients that start a handshake and never finish it: dropped after the handshake timeout
/// (10 s, docs/mesh-runtime.md), their file descriptors released. Returns the orders proxy's
/// open file descriptors (peak with the clients, after, before).
fn slow_handshakes_are_dropped() -> (usize, usize, usize) {
    let pid = proxy_pid("production/orders");
    let base = fd_count(pid);
    let t = Instant::now();
    let conns: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut tcp = TcpStream::connect(addr(ORDERS, 8080)).unwrap();
            // A record header announcing 512 bytes of ClientHello, then one byte of it.
            tcp.write_all(b"\x16\x03\x01\x02\x00\x01").unwrap();
            tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            tcp
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let peak = fd_count(pid);
    for mut c in conns {
        let mut buf = Vec::new();
        let r = c.read_to_end(&mut buf);
        assert!(
            r.is_ok()
                || r.as_ref()
                    .is_err_and(|e| e.kind() != std::io::ErrorKind::WouldBlock),
            "a slow client was not dropped within 30 s: {r:?}"
        );
    }
    let dropped = t.elapsed();
    eprintln!(
        "[hostile] 20 unfinished handshakes dropped after {:.1}s",
        dropped.as_secs_f64()
    );
    assert!(
        dropped >= Duration::from_secs(5),
        "dropped suspiciously early: {dropped:?}"
    );
    assert!(dropped < Duration::from_secs(25), "{dropped:?}");
    // 20 slow clients hold 20 fds; `base` may itself have included a connection of the
    // path-trick thread that closed since, hence the same slack of 2 as the release check.
    assert!(
        peak + 2 >= base + 20,
        "the proxy did not accept the slow clients? fds {base} → {peak}"
    );
    // Released: (about) as many as they took; other connections may come and go meanwhile.
    let after = poll(Duration::from_secs(5), Duration::from_millis(100), || {
        let n = fd_count(pid);
        (n + 18 <= peak).then_some(n)
    })
    .unwrap_or_else(|| {
        panic!(
            "orders proxy still holds {} fds ({base} before, {peak} with the slow clients)",
            fd_count(pid)
        )
    });
    (peak, after, base)
}

/// The PID of a workload's proxy, from `/proc` (for a thread that has no `Mesh`).
fn proxy_pid(workload: &str) -> u32 {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            let argv = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let argv: Vec<&[u8]> = argv.split(|b| *b == 0).collect();
            argv.get(1) == Some(&&b"proxy"[..])
                && argv
                    .windows(2)
                    .any(|w| w[0] == b"--workload" && w[1] == workload.as_bytes())
                && argv.iter().any(|a| a.ends_with(b"/bundle.json"))
        })
        .expect("the orders proxy")
}

/// Path tricks against `deny-admin-from-outside` (a DENY on `/admin*` for callers outside
/// production, plaintext included) at the gateway's PERMISSIVE port, sent raw. Each answer
/// must be the one `trustmesh authz check` (the proxy's own decision code, offline) gives;
/// the ones that are `/admin` after Istio's normalization are refused; and whatever does
/// reach the app is the normalized path, which never starts with `/admin`.
fn path_tricks_against_the_admin_deny(mesh: &Mesh) {
    let must_refuse = [
        "/admin",
        "/admin/",
        "/admin/users",
        "/%61dmin",
        "/adm%69n/x",
        "/x/../admin",
        "/./admin",
        "/%2e/admin",
        "/x/%2e%2e/admin",
        "/x/%2E%2E/admin",
        "/x\\..\\admin",
        "/admin;x",
        "/admin;/x",
        "/admin?x=1",
        "/admin#x",
        "/admin%00",
        "/%00/admin",
    ];
    let others = [
        "//admin",
        "/ADMIN",
        "/Admin",
        "/x%2f..%2fadmin",
        "/admin%2f",
        "/public",
    ];
    for path in must_refuse.iter().chain(others.iter()) {
        let o = trustmesh(&[
            "authz",
            "check",
            "--config",
            s(&mesh.config),
            "--namespace",
            "production",
            "--label",
            "app=api-gateway",
            "--port",
            "8080",
            "--plaintext",
            "--method",
            "GET",
            "--path",
            path,
            "-o",
            "json",
        ]);
        assert!(
            o.status.success(),
            "authz check {path}: {}",
            text(&o.stderr)
        );
        let d: Value = serde_json::from_slice(&o.stdout).unwrap();
        let expected = d["httpStatus"].as_u64().map_or(200, |c| c as u16);
        let live = request(addr(GATEWAY, 8080), "GET", path, &[])
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        let seen = live.field("path").unwrap_or("").to_owned();
        eprintln!(
            "[paths] {path:<18} → {} (offline: {} {expected}{}){}",
            live.status,
            d["decision"].as_str().unwrap_or("?"),
            d["path"]
                .as_str()
                .map(|p| format!(", normalized {p}"))
                .unwrap_or_default(),
            if live.status == 200 {
                format!(", app saw {seen}")
            } else {
                String::new()
            }
        );
        assert_eq!(
            live.status, expected,
            "{path}: live vs offline decision {d}"
        );
        if must_refuse.contains(path) {
            assert!(
                matches!(live.status, 400 | 403),
                "{path} reached the app: {live:?}"
            );
        }
        if live.status == 403 {
            assert_eq!(live.body, RBAC_DENIED, "{path}");
        }
        if live.status == 200 {
            assert_eq!(
                Some(seen.as_str()),
                d["path"].as_str(),
                "{path}: forwarded path"
            );
            assert!(
                !seen.starts_with("/admin"),
                "{path} reached the app as {seen}"
            );
        }
    }
    // The gateway still serves.
    assert_eq!(get(addr(GATEWAY, 8080), "/", &[]).unwrap().status, 200);
    eprintln!("[hostile] path tricks: ok");
}

/// Scenario 7: `trustmesh rotate NAME` and its one-line refusal of unknown names.
fn rotate_by_name(mesh: &mut Mesh) {
    let (orders0, payments0) = (serial(ORDERS), serial(PAYMENTS));
    let t = Instant::now();
    let o = mesh.cli(&["rotate", "production/orders"]);
    let out = text(&o.stdout);
    assert!(o.status.success(), "{out}{}", text(&o.stderr));
    assert!(
        out.contains("Manually triggered rotation of workload production/orders"),
        "{out}"
    );
    poll(Duration::from_secs(10), Duration::from_millis(50), || {
        (serial(ORDERS) != orders0).then_some(())
    })
    .expect("orders' serial did not change after `rotate production/orders`");
    eprintln!(
        "[7] rotate production/orders: new SVID served {} after the command started",
        ms(t.elapsed())
    );
    assert_eq!(
        serial(PAYMENTS),
        payments0,
        "rotating orders rotated payments"
    );

    for args in [
        &["rotate", "production/nope"][..],
        &["rotate", "nope", "-n", "production"][..],
    ] {
        let o = mesh.cli(args);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(o.stdout.is_empty(), "{args:?}: {}", text(&o.stdout));
        assert_eq!(
            err,
            "error: no workload or Certificate named production/nope in the running mesh\n"
        );
    }
}

// =============================================================================================
// 3, 4, 5: rotation, control-plane loss and a broken config file under load.

#[test]
fn rotation_control_plane_loss_and_broken_config_drop_no_request() {
    let mut mesh = Mesh::start();
    let proxies = mesh.proxies();
    assert_eq!(proxies.len(), 4, "{proxies:?}");
    rotation_under_load(&mesh);
    control_plane_killed_under_load(&mut mesh);
    broken_config_under_load(&mesh);
    assert_eq!(mesh.proxies(), proxies, "a proxy was restarted");
    mesh.stop();
}

fn assert_no_failures(stats: &load::Stats, what: &str) {
    assert_eq!(
        stats.failed, 0,
        "{what}: failed requests: {:?}",
        stats.failures
    );
    assert!(stats.ok >= 20, "{what}: the load barely ran: {stats:?}");
}

/// Scenario 3: `rotate --all` twice while requests flow: none fails, every SVID is new.
fn rotation_under_load(mesh: &Mesh) {
    let before: Vec<String> = WORKLOADS.iter().map(|ip| serial(ip)).collect();
    let load = Load::start(2);
    std::thread::sleep(Duration::from_secs(1));
    let mut orders = vec![before[1].clone()];
    for round in 1..=2 {
        let t = Instant::now();
        let o = mesh.cli(&["rotate", "--all"]);
        let out = text(&o.stdout);
        assert!(o.status.success(), "rotate --all: {out}{}", text(&o.stderr));
        for w in [
            "production/api-gateway",
            "production/orders",
            "production/payments",
            "default/reporting",
        ] {
            assert!(
                out.contains(&format!("Manually triggered rotation of workload {w}")),
                "{out}"
            );
        }
        let last = orders.last().unwrap().clone();
        let new = poll(Duration::from_secs(10), Duration::from_millis(50), || {
            Some(serial(ORDERS)).filter(|s| *s != last)
        })
        .unwrap_or_else(|| panic!("round {round}: orders kept serial {last}"));
        eprintln!(
            "[3] rotate --all #{round}: orders serves a new SVID {} after the command started",
            ms(t.elapsed())
        );
        orders.push(new);
        std::thread::sleep(Duration::from_secs(2));
    }
    let stats = load.finish();
    assert_no_failures(&stats, "rotation under load");
    for (ip, old) in WORKLOADS.iter().zip(&before) {
        assert_ne!(&serial(ip), old, "{ip} still serves its first SVID");
    }
    eprintln!(
        "[3] rotation under load: 0 failed of {}; orders serials {orders:?}",
        stats.ok
    );
}

/// Scenario 4: the control plane SIGKILLed under load: no request fails, `up` starts it
/// again, the proxies reconnect and take its orders (a rotation) without being restarted.
fn control_plane_killed_under_load(mesh: &mut Mesh) {
    let cp = mesh.control_plane().expect("the control plane process");
    let load = Load::start(2);
    std::thread::sleep(Duration::from_secs(1));
    signal(cp.pid, "KILL");
    let t = Instant::now();
    let healthz = CP_ADMIN.parse().unwrap();
    let back = poll(Duration::from_secs(30), Duration::from_millis(100), || {
        let new = mesh.control_plane().filter(|p| p.pid != cp.pid)?;
        let ok = matches!(get(healthz, "/healthz", &[]), Ok(r) if r.status == 200);
        ok.then_some(new)
    })
    .unwrap_or_else(|| panic!("the control plane did not come back\n{}", mesh.up_output()));
    eprintln!(
        "[4] control plane {} killed; {} answers /healthz after {}",
        cp.pid,
        back.pid,
        ms(t.elapsed())
    );
    let connected = poll(Duration::from_secs(30), Duration::from_millis(200), || {
        (mesh.status()["connectedProxies"] == 4).then_some(())
    });
    assert!(
        connected.is_some(),
        "proxies did not reconnect: {}",
        mesh.status()
    );
    eprintln!("[4] all 4 proxies reconnected after {}", ms(t.elapsed()));
    std::thread::sleep(Duration::from_secs(1));
    let stats = load.finish();
    assert_no_failures(&stats, "control plane killed under load");
    assert!(
        mesh.exits()
            .iter()
            .any(|l| l.starts_with("control-plane exited") && l.contains("SIGKILL")),
        "up's supervisor did not report the kill: {:?}",
        mesh.exits()
    );
    // The reconnected proxies follow the new control plane.
    let before = serial(ORDERS);
    let o = mesh.cli(&["rotate", "production/orders"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    poll(Duration::from_secs(10), Duration::from_millis(50), || {
        (serial(ORDERS) != before).then_some(())
    })
    .expect("orders did not rotate through the restarted control plane");
    eprintln!(
        "[4] control plane restart under load: 0 failed of {}",
        stats.ok
    );
}

/// The control plane's last reload, once it has reported an error naming `file`.
fn wait_rejected(mesh: &Mesh, file: &str) -> (Value, Duration) {
    let t = Instant::now();
    let reload = poll(POLICY_BOUND, Duration::from_millis(50), || {
        let r = mesh.status()["lastReload"].clone();
        let named = r["errors"].as_array().is_some_and(|e| {
            e.iter()
                .any(|e| e["file"].as_str().is_some_and(|f| f.ends_with(file)))
        });
        (r["result"] != "accepted" && named).then_some(r)
    })
    .unwrap_or_else(|| panic!("no reload error naming {file}: {}", mesh.status()));
    (reload, t.elapsed())
}

fn wait_accepted(mesh: &Mesh) {
    poll(POLICY_BOUND, Duration::from_millis(50), || {
        (mesh.status()["lastReload"]["result"] == "accepted").then_some(())
    })
    .unwrap_or_else(|| panic!("the repaired config was not accepted: {}", mesh.status()));
}

/// A rejected config leaves the control plane's snapshot and the proxies' config as they were.
fn assert_unchanged(mesh: &Mesh, version: &Value, orders_version: &Value) {
    assert_eq!(
        &mesh.status()["version"],
        version,
        "a rejected config changed the version"
    );
    assert_eq!(
        &Mesh::proxy_admin(ORDERS, "/config_dump")["version"],
        orders_version,
        "a rejected config reached the proxies"
    );
}

/// Scenario 5: broken config written while requests flow: traffic and enforcement carry on
/// with the last good snapshot, and `/v1/status` names the file.
fn broken_config_under_load(mesh: &Mesh) {
    let kust = mesh.config.join("kustomization.yaml");
    let kust0 = std::fs::read_to_string(&kust).unwrap();
    let policies = mesh.config.join("authorization-policies.yaml");
    let policies0 = std::fs::read_to_string(&policies).unwrap();
    let version = mesh.status()["version"].clone();
    let orders_version = Mesh::proxy_admin(ORDERS, "/config_dump")["version"].clone();
    let load = Load::start(2);
    std::thread::sleep(Duration::from_millis(500));

    // (a) A new file the kustomization lists, which is not YAML.
    write_atomic(
        &mesh.config.join("broken.yaml"),
        "apiVersion: v1\nkind: [\n",
    );
    write_atomic(
        &kust,
        &kust0.replace(
            "  - workloads.yaml\n",
            "  - workloads.yaml\n  - broken.yaml\n",
        ),
    );
    let (r, took) = wait_rejected(mesh, "broken.yaml");
    let e = &r["errors"][0];
    eprintln!(
        "[5] broken.yaml reported after {}: {}",
        ms(took),
        e["message"]
    );
    assert_eq!(e["line"], 2, "{r}");
    let message = e["message"].as_str().unwrap();
    assert!(message.contains("broken.yaml:2"), "{r}");
    assert!(
        !message.contains('\\'),
        "stray escapes in the error text: {message}"
    );
    assert_unchanged(mesh, &version, &orders_version);
    // Enforcement is the last good snapshot's.
    assert_rbac_denied(
        &via(PAYMENTS, &format!("{ORDERS_URL}/api/orders")),
        "payments → orders",
    );
    std::fs::remove_file(mesh.config.join("broken.yaml")).unwrap();
    write_atomic(&kust, &kust0);
    wait_accepted(mesh);

    // (b) An invalid field in the policy file itself.
    write_atomic(
        &policies,
        &policies0.replace("action: DENY", "action: DENYY"),
    );
    let (r, took) = wait_rejected(mesh, "authorization-policies.yaml");
    let e = &r["errors"][0];
    eprintln!(
        "[5] authorization-policies.yaml reported after {}: {}",
        ms(took),
        e["message"]
    );
    assert_eq!(
        e["resource"], "AuthorizationPolicy production/deny-admin-from-outside",
        "{r}"
    );
    assert!(
        e["field"].as_str().is_some_and(|f| f.contains("action")),
        "{r}"
    );
    assert!(e["line"].as_u64().is_some(), "{r}");
    assert_unchanged(mesh, &version, &orders_version);
    // The DENY it tried to break is still enforced.
    assert_rbac_denied(
        &get(addr(GATEWAY, 8080), "/admin", &[]),
        "plaintext /admin at the gateway",
    );
    write_atomic(&policies, &policies0);
    wait_accepted(mesh);

    std::thread::sleep(Duration::from_millis(500));
    let stats = load.finish();
    assert_no_failures(&stats, "broken config under load");
    eprintln!("[5] broken config under load: 0 failed of {}", stats.ok);
}

// =============================================================================================
// 6: policy changes on the running mesh.

/// `openssl s_client` holding one TLS connection open: requests on it, one at a time.
struct TlsConn {
    child: Child,
    stdin: Option<ChildStdin>,
    out: BufReader<ChanReader>,
}

/// Bytes from a reader thread, readable with a timeout.
struct ChanReader {
    rx: mpsc::Receiver<Vec<u8>>,
    buf: Vec<u8>,
}

impl Read for ChanReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.buf.is_empty() {
            match self.rx.recv_timeout(Duration::from_secs(10)) {
                Ok(b) => self.buf = b,
                Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(0),
                Err(e) => return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, e)),
            }
        }
        let n = out.len().min(self.buf.len());
        out[..n].copy_from_slice(&self.buf[..n]);
        self.buf.drain(..n);
        Ok(n)
    }
}

impl TlsConn {
    fn open(to: &str, client: &KeyPair, ca: &Path) -> TlsConn {
        let mut child = Command::new("openssl")
            .args([
                "s_client",
                "-quiet",
                "-connect",
                to,
                "-verify_return_error",
                "-CAfile",
            ])
            .arg(ca)
            .arg("-cert")
            .arg(&client.cert)
            .arg("-key")
            .arg(&client.key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_client");
        let mut stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut b = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut b) {
                if n == 0 || tx.send(b[..n].to_vec()).is_err() {
                    return;
                }
            }
        });
        TlsConn {
            stdin: child.stdin.take(),
            child,
            out: BufReader::new(ChanReader {
                rx,
                buf: Vec::new(),
            }),
        }
    }

    fn get(&mut self, path: &str) -> Response {
        let stdin = self.stdin.as_mut().unwrap();
        write!(stdin, "GET {path} HTTP/1.1\r\nHost: orders\r\n\r\n").unwrap();
        stdin.flush().unwrap();
        read_response(&mut self.out).expect("a response on the open TLS connection")
    }
}

impl Drop for TlsConn {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` every 20 ms until it holds, up to [`POLICY_BOUND`]; how long it took.
fn time_until(what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    poll(POLICY_BOUND, Duration::from_millis(20), || {
        f().then_some(())
    })
    .unwrap_or_else(|| panic!("{what}: not within {POLICY_BOUND:?}"));
    let took = t.elapsed();
    eprintln!("[6] {what}: after {}", ms(took));
    took
}

#[test]
fn policy_changes_reach_running_proxies_within_a_second() {
    let mut mesh = Mesh::start();
    let proxies = mesh.proxies();
    let orders_api = format!("{ORDERS_URL}/api/orders");
    let payments_to_orders = || via(PAYMENTS, &orders_api).map(|r| r.status).unwrap_or(0);
    let mut took = Vec::new();

    // A client with payments' identity keeps one TLS connection to orders open throughout.
    let dir = mesh.dir.join("client-certs");
    std::fs::create_dir_all(&dir).unwrap();
    let us = mesh_ca(&mesh.state, "us.cluster.local");
    let payments = leaf(&dir, "payments", &us, &svid_ext(&[PAYMENTS_ID]));
    let mut conn = TlsConn::open(&format!("{ORDERS}:8080"), &payments, &us.cert);
    let r = conn.get("/api/orders");
    assert_eq!((r.status, r.body.as_str()), (403, RBAC_DENIED), "{r:?}");
    assert_eq!(payments_to_orders(), 403);

    // (a) Allow payments → orders in the policy file.
    let policies = mesh.config.join("authorization-policies.yaml");
    let policies0 = std::fs::read_to_string(&policies).unwrap();
    let gateway_only = r#"principals: ["us.cluster.local/ns/production/sa/api-gateway"]
      to:
        - operation:
            ports: ["8080"]
            methods: ["GET", "POST"]"#;
    assert!(
        policies0.contains(gateway_only),
        "the example's gateway-to-orders changed"
    );
    let with_payments = policies0.replace(
        gateway_only,
        &gateway_only.replace(
            r#"sa/api-gateway"]"#,
            r#"sa/api-gateway", "us.cluster.local/ns/production/sa/payments"]"#,
        ),
    );
    write_atomic(&policies, &with_payments);
    took.push(time_until("payments → orders allowed", || {
        payments_to_orders() == 200
    }));
    let r = conn.get("/api/orders");
    assert_eq!(
        r.status, 200,
        "the open connection still sees the old policy: {r:?}"
    );
    assert!(
        r.body.contains(&format!(
            "x-forwarded-client-cert: By={ORDERS_ID};URI={PAYMENTS_ID}\n"
        )),
        "{r:?}"
    );

    // (b) And taken back.
    write_atomic(&policies, &policies0);
    took.push(time_until("payments → orders denied again", || {
        payments_to_orders() == 403
    }));
    let r = conn.get("/api/orders");
    assert_eq!((r.status, r.body.as_str()), (403, RBAC_DENIED), "{r:?}");
    drop(conn);

    // (c) A new policy file: Prometheus may scrape the backends' DISABLE port 9090 in
    // plaintext — which then reaches the app, while TLS there stays refused.
    let scrape = mesh.config.join("allow-metrics-scrape.yaml");
    write_atomic(&scrape, include_str!("data/mesh/allow-metrics-scrape.yaml"));
    let kust = mesh.config.join("kustomization.yaml");
    let kust0 = std::fs::read_to_string(&kust).unwrap();
    write_atomic(
        &kust,
        &kust0.replace(
            "  - workloads.yaml\n",
            "  - workloads.yaml\n  - allow-metrics-scrape.yaml\n",
        ),
    );
    took.push(time_until(
        "plaintext scrape of orders:9090 allowed",
        || get(addr(ORDERS, 9090), "/metrics", &[]).is_ok_and(|r| r.status == 200),
    ));
    let c = curl(&[&format!("http://{ORDERS}:9090/metrics")]);
    assert_eq!(c.status, Some(200), "{c:?}");
    assert!(
        c.body.starts_with(
            "app: production/orders\nmethod: GET\npath: /metrics\nx-forwarded-client-cert: -\n"
        ),
        "{c:?}"
    );
    let o = openssl(
        &[
            "s_client",
            "-connect",
            &format!("{ORDERS}:9090"),
            "-CAfile",
            s(&us.cert),
        ],
        b"",
    );
    assert!(
        !o.status.success() && text(&o.stdout).contains("no peer certificate available"),
        "TLS to DISABLE orders:9090: {}",
        text(&o.stdout)
    );

    // (d) `trustmesh enable`: the default namespace (reporting) goes PERMISSIVE — a plaintext
    // caller now gets an HTTP answer (reporting's policy denies it) instead of a closed
    // connection — and back to STRICT.
    let reports = format!("http://{REPORTING}:8080/reports");
    assert_refused(&curl(&[&reports]), "plaintext to STRICT reporting:8080");
    let o = trustmesh(&[
        "enable",
        "default",
        "--mode",
        "PERMISSIVE",
        "--config",
        s(&mesh.config),
    ]);
    let out = text(&o.stdout);
    assert!(o.status.success(), "{out}{}", text(&o.stderr));
    assert!(
        out.starts_with(
            "PeerAuthentication default/default (namespace-wide): (none) → PERMISSIVE in "
        ),
        "{out}"
    );
    took.push(time_until(
        "reporting PERMISSIVE: plaintext answered",
        || get(addr(REPORTING, 8080), "/reports", &[]).is_ok_and(|r| r.status == 403),
    ));
    let c = curl(&[&reports]);
    assert_eq!(
        (c.status, c.body.as_str()),
        (Some(403), RBAC_DENIED),
        "{c:?}"
    );
    assert_eq!(
        Mesh::proxy_admin(REPORTING, "/config_dump")["modes"]["8080"],
        "PERMISSIVE"
    );
    // A PERMISSIVE namespace takes both: mesh traffic still arrives over mTLS.
    let r = via(GATEWAY, &format!("{REPORTING_URL}/reports")).unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains(&format!(";URI={GATEWAY_ID}\n")), "{r:?}");
    let o = trustmesh(&[
        "enable",
        "default",
        "--mode",
        "STRICT",
        "--config",
        s(&mesh.config),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    took.push(time_until(
        "reporting STRICT again: plaintext closed",
        || get(addr(REPORTING, 8080), "/reports", &[]).is_err(),
    ));
    assert_refused(&curl(&[&reports]), "plaintext to STRICT reporting:8080");
    // Mesh traffic to reporting carried on throughout.
    assert_eq!(
        via(GATEWAY, &format!("{REPORTING_URL}/reports"))
            .unwrap()
            .status,
        200
    );

    // No restarts: the same proxy processes, none exited.
    assert_eq!(mesh.proxies(), proxies, "a proxy was restarted");
    assert!(mesh.exits().is_empty(), "{:?}", mesh.exits());
    eprintln!(
        "[6] policy changes took {} (slowest {})",
        took.iter().map(|d| ms(*d)).collect::<Vec<_>>().join(", "),
        ms(*took.iter().max().unwrap())
    );
    mesh.stop();
}

// =============================================================================================
// Stopping: SIGTERM (what Ctrl-C and service managers send) stops everything, also while `up`
// is busy with a proxy that hangs.

#[test]
fn up_stops_everything_on_sigterm_even_while_a_proxy_hangs() {
    let mut mesh = Mesh::start();
    let (_, orders) = mesh
        .proxies()
        .into_iter()
        .find(|(w, _)| w == "production/orders")
        .expect("the orders proxy");
    // A hung proxy: its admin port still accepts connections but never answers, so each
    // refresh of `up`'s live view waits on it.
    signal(orders, "STOP");
    std::thread::sleep(Duration::from_secs(3));
    // `up` must still take the signal, stop the others and kill the hung one (it cannot
    // handle SIGTERM while stopped) after its grace period.
    mesh.stop_within(Duration::from_secs(20));
}
