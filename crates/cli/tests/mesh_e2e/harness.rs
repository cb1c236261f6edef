//! The running example mesh, as a test holds it: `trustmesh up` on a temp copy of
//! `examples/teei` with a temp state folder, readiness by polling every proxy's `/ready`, the
//! processes `up` started (found under `/proc` by parent PID), and a guard that stops all of
//! them — SIGTERM to `up`, then SIGKILL by PID to whatever is left — even when the test panics.
//! Also: plain HTTP/1.1 over `TcpStream`, and curl and `openssl` as clients.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The workloads of `examples/teei`, by address.
pub const GATEWAY: &str = "127.0.1.2";
pub const ORDERS: &str = "127.0.1.3";
pub const PAYMENTS: &str = "127.0.1.4";
pub const REPORTING: &str = "127.0.1.5";
pub const WORKLOADS: [&str; 4] = [GATEWAY, ORDERS, PAYMENTS, REPORTING];

/// Mesh hosts, as apps address them through their proxy's outbound port.
pub const ORDERS_URL: &str = "http://orders.production.svc.cluster.local:8080";
pub const REPORTING_URL: &str = "http://reporting.default.svc.cluster.local:8080";
pub const GATEWAY_URL: &str = "http://api-gateway.production.svc.cluster.local:8080";

/// The control plane's admin API.
pub const CP_ADMIN: &str = "127.0.0.1:15014";

/// Identities of the example.
pub const GATEWAY_ID: &str = "spiffe://us.cluster.local/ns/production/sa/api-gateway";
pub const ORDERS_ID: &str = "spiffe://us.cluster.local/ns/production/sa/orders";
pub const PAYMENTS_ID: &str = "spiffe://us.cluster.local/ns/production/sa/payments";

/// The mesh binds fixed addresses and ports: one mesh at a time in this test binary.
static ONE_MESH: Mutex<()> = Mutex::new(());

pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_trustmesh"));
    c.env_remove("TRUSTMESH_STATE")
        .env_remove("TRUSTMESH_CONFIG")
        .env_remove("RUST_LOG");
    c
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn addr(ip: &str, port: u16) -> SocketAddr {
    format!("{ip}:{port}").parse().expect("socket address")
}

/// Runs `trustmesh ARGS` to completion.
pub fn trustmesh(args: &[&str]) -> Output {
    bin().args(args).output().expect("run trustmesh")
}

/// Polls `f` every `every` until it returns `Some`, for at most `within`.
pub fn poll<T>(within: Duration, every: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// Writes `path` the way editors and `kubectl` do: a temp file beside it, then a rename.
pub fn write_atomic(path: &Path, contents: &str) {
    let tmp = path.with_extension("e2e-tmp");
    std::fs::write(&tmp, contents).expect("write temp file");
    std::fs::rename(&tmp, path).expect("rename into place");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create config copy");
    for e in std::fs::read_dir(from).expect("read examples/teei") {
        let e = e.expect("dir entry");
        let target = to.join(e.file_name());
        if e.file_type().expect("file type").is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).expect("copy config file");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Processes under /proc.

/// A process as `/proc` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcInfo {
    pub pid: u32,
    pub argv: Vec<String>,
}

impl ProcInfo {
    /// `trustmesh`'s subcommand (`proxy`, `control-plane`, `demo-app`, ...).
    pub fn subcommand(&self) -> &str {
        self.argv.get(1).map_or("", String::as_str)
    }

    /// The value after `flag` in its command line.
    pub fn flag(&self, flag: &str) -> Option<&str> {
        let i = self.argv.iter().position(|a| a == flag)?;
        self.argv.get(i + 1).map(String::as_str)
    }
}

fn argv(pid: u32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(text)
            .collect(),
    )
}

/// (parent PID, state letter) from `/proc/PID/stat`; `comm` may hold spaces and parentheses,
/// so the fields are read after its last `)`.
fn stat(pid: u32) -> Option<(u32, char)> {
    let raw = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &raw[raw.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    Some((ppid, state))
}

/// Alive (not a zombie) and still the same program: PIDs are reused.
pub fn alive(p: &ProcInfo) -> bool {
    stat(p.pid).is_some_and(|(_, st)| st != 'Z') && argv(p.pid).as_ref() == Some(&p.argv)
}

/// Every live descendant of `root`.
pub fn descendants(root: u32) -> Vec<ProcInfo> {
    let mut parents = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if let Some((ppid, st)) = stat(pid)
            && st != 'Z'
        {
            parents.push((pid, ppid));
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for &(pid, ppid) in &parents {
            if ppid == p {
                frontier.push(pid);
                if let Some(argv) = argv(pid) {
                    out.push(ProcInfo { pid, argv });
                }
            }
        }
    }
    out.sort_by_key(|p| p.pid);
    out
}

/// Open file descriptors of a process.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Resident memory of a process, in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

// ---------------------------------------------------------------------------------------------
// The mesh.

/// `trustmesh up` of a temp copy of `examples/teei`; stopped on drop.
pub struct Mesh {
    pub config: PathBuf,
    pub state: PathBuf,
    pub dir: PathBuf,
    up: Option<Child>,
    up_log: PathBuf,
    /// Every process `up` was seen to run; killed by PID on drop if still alive.
    seen: Vec<ProcInfo>,
    started: Instant,
    // Dropped after the processes are stopped (Drop::drop runs first): the folders, then the
    // lock that lets the next mesh start.
    _tmp: tempfile::TempDir,
    _one: MutexGuard<'static, ()>,
}

impl Mesh {
    /// Starts the mesh and waits until every proxy is ready. No Prometheus: that is
    /// `prometheus_e2e`'s subject, here it would only add load.
    pub fn start() -> Mesh {
        Self::start_with(&["--prometheus", "off"])
    }

    /// [`Mesh::start`] with more flags for `up`.
    pub fn start_with(up_args: &[&str]) -> Mesh {
        let one = ONE_MESH.lock().unwrap_or_else(PoisonError::into_inner);
        // Someone else's mesh (a `trustmesh up` by hand, another checkout's tests) may hold the
        // ports for a while: wait for it, boundedly.
        let mut ports = vec![CP_ADMIN.parse().expect("address"), addr("127.0.0.1", 15012)];
        ports.extend(
            WORKLOADS
                .iter()
                .flat_map(|ip| [addr(ip, 15000), addr(ip, 8080)]),
        );
        let taken = || {
            ports
                .iter()
                .find(|a| TcpStream::connect_timeout(a, Duration::from_millis(200)).is_ok())
                .copied()
        };
        if let Some(a) = taken() {
            eprintln!("[mesh] {a} is taken (another mesh on this machine?); waiting up to 3 min");
            let free = poll(Duration::from_secs(180), Duration::from_millis(500), || {
                taken().is_none().then_some(())
            });
            assert!(
                free.is_some(),
                "{a} is still taken: another mesh (`trustmesh up`?) is running on this machine; stop it first"
            );
        }
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().to_owned();
        let config = dir.join("teei");
        let state = dir.join("state");
        copy_dir(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/teei"),
            &config,
        );
        let up_log = dir.join("up.log");
        let log = std::fs::File::create(&up_log).expect("up log");
        let up = bin()
            .args(["up", s(&config), "--state", s(&state), "--plain"])
            .args(up_args)
            // A safety net should this test process itself be killed: `up` stops by itself.
            .args(["--duration", "600"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start trustmesh up");
        let mut mesh = Mesh {
            config,
            state,
            dir,
            up: Some(up),
            up_log,
            seen: Vec::new(),
            started: Instant::now(),
            _tmp: tmp,
            _one: one,
        };
        mesh.wait_ready(Duration::from_secs(60));
        eprintln!(
            "[mesh] up: {} processes ready in {:.1}s",
            mesh.refresh().len(),
            mesh.started.elapsed().as_secs_f64()
        );
        let rss: Vec<String> = mesh
            .proxies()
            .iter()
            .map(|(w, pid)| {
                let mib = rss_kib(*pid).map_or(0.0, |k| k as f64 / 1024.0);
                format!("{w} {mib:.1} MiB")
            })
            .collect();
        eprintln!(
            "[mesh] proxy RSS (debug build, at start): {}",
            rss.join(", ")
        );
        mesh
    }

    fn up_pid(&self) -> u32 {
        self.up.as_ref().expect("up is running").id()
    }

    /// Panics (with `up`'s output) if `up` has exited.
    pub fn assert_up_running(&mut self) {
        if let Some(st) = self
            .up
            .as_mut()
            .and_then(|c| c.try_wait().expect("try_wait"))
        {
            panic!("`trustmesh up` exited: {st}\n{}", self.up_output());
        }
    }

    /// Polls every proxy's `/ready` until 200.
    pub fn wait_ready(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        for ip in WORKLOADS {
            loop {
                self.assert_up_running();
                self.refresh();
                if matches!(get(addr(ip, 15000), "/ready", &[]), Ok(r) if r.status == 200) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "proxy {ip} not ready within {within:?}\n{}",
                    self.up_output()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// The processes `up` runs now (and remembers them for the guard).
    pub fn refresh(&mut self) -> Vec<ProcInfo> {
        let now = descendants(self.up_pid());
        for p in &now {
            if !self.seen.contains(p) {
                self.seen.push(p.clone());
            }
        }
        now
    }

    /// The running control plane of this mesh (its `--state` is ours).
    pub fn control_plane(&mut self) -> Option<ProcInfo> {
        let state = s(&self.state).to_owned();
        self.refresh()
            .into_iter()
            .find(|p| p.subcommand() == "control-plane" && p.flag("--state") == Some(&state))
    }

    /// PID of each proxy, by workload.
    pub fn proxies(&mut self) -> Vec<(String, u32)> {
        let mut v: Vec<(String, u32)> = self
            .refresh()
            .into_iter()
            .filter(|p| p.subcommand() == "proxy")
            .map(|p| (p.flag("--workload").unwrap_or("?").to_owned(), p.pid))
            .collect();
        v.sort();
        v
    }

    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.state.join("admin.token"))
            .expect("state/admin.token")
            .trim()
            .to_owned()
    }

    /// `GET /v1/status` of the control plane's admin API.
    pub fn status(&self) -> Value {
        let token = format!("Bearer {}", self.admin_token());
        let r = get(
            CP_ADMIN.parse().expect("address"),
            "/v1/status",
            &[("Authorization", &token)],
        )
        .expect("GET /v1/status");
        assert_eq!(r.status, 200, "/v1/status: {}", r.body);
        serde_json::from_str(&r.body).expect("/v1/status JSON")
    }

    /// A proxy admin endpoint, as JSON.
    pub fn proxy_admin(ip: &str, path: &str) -> Value {
        let r = get(addr(ip, 15000), path, &[]).expect("proxy admin");
        assert_eq!(r.status, 200, "{ip}:15000{path}: {}", r.body);
        serde_json::from_str(&r.body).expect("proxy admin JSON")
    }

    /// `trustmesh ARGS --state STATE`.
    pub fn cli(&self, args: &[&str]) -> Output {
        bin()
            .args(args)
            .args(["--state", s(&self.state)])
            .output()
            .expect("run trustmesh")
    }

    /// What `up` printed so far (its live view and supervisor lines).
    pub fn up_output(&self) -> String {
        std::fs::read_to_string(&self.up_log).unwrap_or_default()
    }

    /// The supervisor's lines about processes that exited.
    pub fn exits(&self) -> Vec<String> {
        self.up_output()
            .lines()
            .filter(|l| l.contains(" exited ("))
            .map(str::to_owned)
            .collect()
    }

    /// Stops the mesh the way a user does (SIGTERM to `up`) and asserts that `up` exits
    /// cleanly and leaves no process of its own behind.
    pub fn stop(self) {
        self.stop_within(Duration::from_secs(30));
    }

    /// [`Mesh::stop`], with `up` given `within` to exit after SIGTERM before it is killed.
    pub fn stop_within(mut self, within: Duration) {
        self.refresh();
        let t = Instant::now();
        let status = self.terminate_up(within);
        let left: Vec<_> = self.seen.iter().filter(|p| alive(p)).cloned().collect();
        eprintln!(
            "[mesh] stopped in {:.1}s ({} processes seen in all), mesh ran {:.1}s",
            t.elapsed().as_secs_f64(),
            self.seen.len(),
            self.started.elapsed().as_secs_f64()
        );
        assert!(
            status.is_some_and(|s| s.success()),
            "`up` did not exit cleanly within {within:?} of SIGTERM (None = killed): {status:?}\n{}",
            self.up_output()
        );
        assert!(
            left.is_empty(),
            "still running after `up` stopped: {left:?}"
        );
    }

    /// SIGTERM to `up`, then SIGKILL after `within`; its exit status if it exited by itself.
    fn terminate_up(&mut self, within: Duration) -> Option<ExitStatus> {
        let mut up = self.up.take()?;
        signal(up.id(), "TERM");
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(st)) = up.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                let _ = up.kill();
                let _ = up.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        if self.up.is_some() {
            self.refresh();
        }
        let _ = self.terminate_up(Duration::from_secs(20));
        for p in &self.seen {
            if alive(p) {
                signal(p.pid, "KILL");
            }
        }
        if std::thread::panicking() {
            eprintln!("---- trustmesh up output ----\n{}", self.up_output());
            let logs = self.state.join("logs");
            for e in std::fs::read_dir(&logs).into_iter().flatten().flatten() {
                let body = std::fs::read_to_string(e.path()).unwrap_or_default();
                let tail: Vec<&str> = body.lines().rev().take(15).collect();
                eprintln!("---- {} (last lines) ----", e.path().display());
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1 over a plain socket.

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// A line `key: value` of a demo app's answer.
    pub fn field(&self, key: &str) -> Option<&str> {
        self.body
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(": "))
    }
}

/// Reads one response from a connection (Content-Length, chunked, or until close).
pub fn read_response(r: &mut impl BufRead) -> Result<Response, String> {
    let mut line = String::new();
    let n = r
        .read_line(&mut line)
        .map_err(|e| format!("reading status: {e}"))?;
    if n == 0 {
        return Err("connection closed before a response".into());
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP status line: {line:?}"))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line)
            .map_err(|e| format!("reading headers: {e}"))?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    let mut resp = Response {
        status,
        headers,
        body: String::new(),
    };
    let mut body = Vec::new();
    if let Some(len) = resp.header("content-length") {
        let len: usize = len.parse().map_err(|_| "bad content-length".to_owned())?;
        body.resize(len, 0);
        r.read_exact(&mut body)
            .map_err(|e| format!("reading body: {e}"))?;
    } else if resp
        .header("transfer-encoding")
        .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
    {
        loop {
            line.clear();
            r.read_line(&mut line)
                .map_err(|e| format!("reading chunk size: {e}"))?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| format!("bad chunk size {line:?}"))?;
            let mut chunk = vec![0; size + 2];
            r.read_exact(&mut chunk)
                .map_err(|e| format!("reading chunk: {e}"))?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else if status != 204 && status != 304 {
        r.read_to_end(&mut body)
            .map_err(|e| format!("reading body: {e}"))?;
    }
    resp.body = text(&body);
    Ok(resp)
}

/// One request on a fresh connection (`Connection: close`). `target` is sent as is.
pub fn request(
    to: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> Result<Response, String> {
    let tcp = TcpStream::connect_timeout(&to, Duration::from_secs(5))
        .map_err(|e| format!("connect {to}: {e}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(15)))
        .map_err(|e| e.to_string())?;
    let host = target
        .strip_prefix("http://")
        .and_then(|t| t.split('/').next())
        .map_or_else(|| to.to_string(), str::to_owned);
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("Content-Length: 0\r\nConnection: close\r\n\r\n");
    (&tcp)
        .write_all(req.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    read_response(&mut BufReader::new(&tcp))
}

pub fn get(to: SocketAddr, target: &str, headers: &[(&str, &str)]) -> Result<Response, String> {
    request(to, "GET", target, headers)
}

/// `GET URL` through a workload's outbound port (its proxy as the HTTP proxy).
pub fn via(from_ip: &str, url: &str) -> Result<Response, String> {
    get(addr(from_ip, 15001), url, &[])
}

// ---------------------------------------------------------------------------------------------
// curl and openssl.

/// What curl did: its exit code, the HTTP status it printed (if any), body and stderr.
#[derive(Debug)]
pub struct Curl {
    pub code: Option<i32>,
    pub status: Option<u16>,
    pub body: String,
    pub stderr: String,
}

/// `curl -sS --max-time 10 ARGS`, status written after the body.
pub fn curl(args: &[&str]) -> Curl {
    const MARK: &str = "\n@@status=";
    let o = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--write-out"])
        .arg(format!("{MARK}%{{http_code}}"))
        .args(args)
        .output()
        .expect("run curl (is it installed?)");
    let out = text(&o.stdout);
    let (body, code) = out.rsplit_once(MARK).unwrap_or((&out, "000"));
    Curl {
        code: o.status.code(),
        status: code.trim().parse().ok().filter(|c| *c != 0),
        body: body.to_owned(),
        stderr: text(&o.stderr),
    }
}

/// `openssl ARGS`, with `stdin` as its input.
pub fn openssl(args: &[&str], stdin: &[u8]) -> Output {
    let mut c = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run openssl (is it installed?)");
    let mut input = c.stdin.take().expect("stdin");
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let o = c.wait_with_output().expect("openssl output");
    let _ = writer.join();
    o
}

/// Runs `openssl ARGS` and asserts success.
pub fn openssl_ok(args: &[&str]) -> String {
    let o = openssl(args, b"");
    assert!(
        o.status.success(),
        "openssl {args:?}: {}{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    text(&o.stdout)
}
