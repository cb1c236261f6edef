//! `trustmesh up [DIR]`: the local mesh. Starts the control plane and, for every
//! `WorkloadEntry` of the folder, a join token, the demo app it asks for, and its proxy — each
//! a separate process of this same binary — supervises them (a process that dies is started
//! again after a backoff), shows a live view of workloads, identities, certificate expiry,
//! modes and request counts, and on Ctrl-C stops everything it started, by PID. When the
//! `prometheus` binary is installed it also runs a Prometheus on loopback that scrapes every
//! process and evaluates the shipped alert rules (`--prometheus`).
//!
//! The processes talk only through the contracts of `docs/mesh-runtime.md`; `up` adds no
//! behaviour of its own to the mesh.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::Value;
use tokio::process::{Child, Command};
use tokio::signal::unix::{SignalKind, signal};
use trustmesh_api::{CONTROL_PLANE_ADMIN_PORT, PROXY_ADMIN_PORT};
use trustmesh_core::snapshot::Workload;

use crate::StateArgs;
use crate::output::{render, table};
use crate::{http, prometheus};

/// WorkloadEntry annotation: where the app behind the proxy listens.
pub const APP_ADDRESS_ANNOTATION: &str = "trustmesh.io/app-address";
/// WorkloadEntry annotation: `up` starts a demo app for this workload.
pub const DEMO_APP_ANNOTATION: &str = "trustmesh.io/demo-app";

/// Flags of `trustmesh up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// The config folder.
    #[arg(default_value = "examples/teei")]
    pub dir: PathBuf,
    #[command(flatten)]
    pub state: StateArgs,
    /// Print the view once a second as lines instead of redrawing the screen.
    #[arg(long)]
    pub plain: bool,
    /// Stop after this long (for scripts and tests); default: until Ctrl-C.
    #[arg(long, value_parser = parse_secs)]
    pub duration: Option<Duration>,
    /// Run Prometheus beside the mesh: `auto` when the `prometheus` binary is on PATH
    /// (Debian package `prometheus`), `on` (fail if it is not), `off`.
    #[arg(long, value_enum, default_value_t = PrometheusMode::Auto)]
    pub prometheus: PrometheusMode,
    /// Where that Prometheus listens.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub prometheus_listen: SocketAddr,
    /// How often it scrapes the mesh and evaluates the alert rules.
    #[arg(long, value_parser = parse_secs, default_value = "5")]
    pub scrape_interval: Duration,
}

/// Whether `up` runs Prometheus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PrometheusMode {
    /// When it is installed.
    Auto,
    /// Always; an error when it is not installed.
    On,
    /// Never.
    Off,
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs = s.strip_suffix('s').unwrap_or(s);
    secs.parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|_| format!("{s:?}: a number of seconds, e.g. 30 or 30s"))
}

/// The app address of a workload: the annotation, else the workload address with the third
/// octet + 1 (`127.0.1.2` → `127.0.2.2`), as `docs/mesh-runtime.md` fixes it.
pub fn app_address(w: &Workload, annotations: &BTreeMap<String, String>) -> Result<IpAddr> {
    if let Some(a) = annotations.get(APP_ADDRESS_ANNOTATION) {
        return a.parse().with_context(|| {
            format!("{}/{}: {APP_ADDRESS_ANNOTATION} {a:?}", w.namespace, w.name)
        });
    }
    match w.address {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            if a != 127 || c == 255 {
                bail!(
                    "{}/{}: address {} is not a loopback address `up` can derive an app address from; set {APP_ADDRESS_ANNOTATION}",
                    w.namespace,
                    w.name,
                    w.address
                );
            }
            Ok(IpAddr::V4(Ipv4Addr::new(a, b, c + 1, d)))
        }
        IpAddr::V6(_) => bail!(
            "{}/{}: IPv6 workload addresses need {APP_ADDRESS_ANNOTATION}",
            w.namespace,
            w.name
        ),
    }
}

/// One process `up` runs.
struct Proc {
    /// What it is, e.g. `proxy production/orders`.
    label: String,
    /// Another program than this binary (Prometheus).
    program: Option<PathBuf>,
    /// How to start it (program args after the binary); re-run on restart.
    args: Vec<String>,
    /// For proxies: the workload, whose join token is made anew before each start.
    workload: Option<String>,
    child: Option<Child>,
    restarts: u32,
    next_start: Option<Instant>,
    log: PathBuf,
}

impl Proc {
    /// A process of this binary (`args` after it), not started yet.
    fn new(label: String, args: Vec<String>, log: PathBuf) -> Self {
        Self {
            label,
            program: None,
            args,
            workload: None,
            child: None,
            restarts: 0,
            next_start: None,
            log,
        }
    }
}

struct Mesh {
    exe: PathBuf,
    state: PathBuf,
    config: PathBuf,
    procs: Vec<Proc>,
}

impl Mesh {
    async fn start(&mut self, i: usize) -> Result<()> {
        if let Some(w) = self.procs[i].workload.clone() {
            self.join_token(&w).await?;
        }
        let p = &mut self.procs[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p.log)
            .with_context(|| format!("opening {}", p.log.display()))?;
        let child = Command::new(p.program.as_ref().unwrap_or(&self.exe))
            .args(&p.args)
            .env("TRUSTMESH_STATE", &self.state)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", p.label))?;
        p.child = Some(child);
        p.next_start = None;
        Ok(())
    }

    /// A fresh one-time join token and bootstrap bundle for `workload` (`ns/name`).
    async fn join_token(&self, workload: &str) -> Result<()> {
        let dir = self.proxy_dir(workload);
        std::fs::create_dir_all(&dir)?;
        let out = Command::new(&self.exe)
            .args(["token", "create", workload, "--config"])
            .arg(&self.config)
            .arg("--state")
            .arg(&self.state)
            .arg("--out")
            .arg(dir.join("token"))
            .output()
            .await
            .context("running `trustmesh token create`")?;
        if !out.status.success() {
            bail!(
                "token for {workload}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    fn proxy_dir(&self, workload: &str) -> PathBuf {
        self.state.join("proxies").join(workload)
    }

    /// Restarts what died, with a backoff of 1 s doubling to 30 s.
    async fn supervise(&mut self) -> Result<()> {
        for i in 0..self.procs.len() {
            let now = Instant::now();
            let exited = match self.procs[i].child.as_mut() {
                Some(c) => c.try_wait()?.map(|s| s.to_string()),
                None => None,
            };
            if let Some(status) = exited {
                let p = &mut self.procs[i];
                p.child = None;
                p.restarts += 1;
                let backoff = Duration::from_secs(1 << p.restarts.min(5).saturating_sub(1));
                eprintln!(
                    "{} exited ({status}); restarting in {}s (log: {})",
                    p.label,
                    backoff.as_secs(),
                    p.log.display()
                );
                p.next_start = Some(now + backoff);
            }
            if self.procs[i].child.is_none()
                && self.procs[i].next_start.is_some_and(|t| t <= now)
                && let Err(e) = self.start(i).await
            {
                eprintln!("{e:#}");
                self.procs[i].next_start = Some(now + Duration::from_secs(5));
            }
        }
        Ok(())
    }

    /// SIGTERM to every child, then SIGKILL to what is left after 5 s.
    async fn stop(&mut self) {
        for p in self.procs.iter().rev() {
            let pid = p.child.as_ref().and_then(Child::id);
            if let Some(pid) = pid.and_then(|pid| rustix::process::Pid::from_raw(pid as i32)) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for p in self.procs.iter_mut().rev() {
            if let Some(c) = p.child.as_mut() {
                let left = deadline.saturating_duration_since(Instant::now());
                if tokio::time::timeout(left, c.wait()).await.is_err() {
                    let _ = c.kill().await;
                }
            }
            p.child = None;
        }
    }
}

/// Runs `trustmesh up`.
pub fn run(a: UpArgs) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(up(a))
}

async fn up(a: UpArgs) -> Result<ExitCode> {
    // Registered once, before anything starts: a signal that arrives while the loop below is
    // busy (supervising, refreshing the view) waits for the next `select!` instead of being
    // lost, and one during start-up stops the mesh instead of killing `up` past its children.
    let mut sigint = signal(SignalKind::interrupt()).context("handling SIGINT")?;
    let mut sigterm = signal(SignalKind::terminate()).context("handling SIGTERM")?;
    let loaded = trustmesh_config::load_dir(&a.dir).map_err(|e| {
        anyhow::anyhow!(
            "{} is not a valid config (see `trustmesh check`):\n{e}",
            a.dir.display()
        )
    })?;
    let snap = loaded.snapshot;
    if snap.workloads().is_empty() {
        bail!(
            "{} declares no WorkloadEntry: nothing to run",
            a.dir.display()
        );
    }
    let state = std::path::absolute(&a.state.state)?;
    let config = std::path::absolute(&a.dir)?;
    let logs = state.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let mut mesh = Mesh {
        exe: std::env::current_exe().context("finding the trustmesh binary")?,
        state: state.clone(),
        config: config.clone(),
        procs: Vec::new(),
    };
    let s = |p: &Path| p.display().to_string();
    mesh.procs.push(Proc::new(
        "control-plane".into(),
        vec![
            "control-plane".into(),
            "--config".into(),
            s(&config),
            "--state".into(),
            s(&state),
        ],
        logs.join("control-plane.log"),
    ));
    let mut apps = Vec::new();
    for w in snap.workloads() {
        let key = format!("{}/{}", w.namespace, w.name);
        let annotations = snap
            .workload_entries()
            .iter()
            .find(|e| e.metadata.name == w.name && e.metadata.namespace_str() == w.namespace)
            .map(|e| e.metadata.annotations.clone())
            .unwrap_or_default();
        let app = app_address(w, &annotations)?;
        apps.push((key.clone(), w.address, app));
        if annotations.get(DEMO_APP_ANNOTATION).map(String::as_str) == Some("true") {
            for port in w.ports.values() {
                mesh.procs.push(Proc::new(
                    format!("demo-app {key} :{port}"),
                    vec![
                        "demo-app".into(),
                        "--listen".into(),
                        SocketAddr::new(app, *port).to_string(),
                        "--name".into(),
                        key.clone(),
                    ],
                    logs.join(format!("app-{}-{}-{port}.log", w.namespace, w.name)),
                ));
            }
        }
        let dir = mesh.proxy_dir(&key);
        mesh.procs.push(Proc {
            workload: Some(key.clone()),
            ..Proc::new(
                format!("proxy {key}"),
                vec![
                    "proxy".into(),
                    "--workload".into(),
                    key.clone(),
                    "--bundle".into(),
                    s(&dir.join("bundle.json")),
                    "--token-file".into(),
                    s(&dir.join("token")),
                    "--app-address".into(),
                    app.to_string(),
                    "--workload-api-socket".into(),
                    s(&dir.join("workload-api.sock")),
                ],
                logs.join(format!("proxy-{}-{}.log", w.namespace, w.name)),
            )
        });
    }

    let prometheus = match (a.prometheus, prometheus::find()) {
        (PrometheusMode::Off, _) | (PrometheusMode::Auto, None) => None,
        (PrometheusMode::On, None) => bail!(
            "--prometheus on: no `prometheus` binary on PATH (Debian: apt-get install prometheus)"
        ),
        (_, Some(bin)) => {
            let targets: Vec<prometheus::Target> = apps
                .iter()
                .map(|(workload, address, _)| prometheus::Target {
                    workload: workload.clone(),
                    address: *address,
                })
                .collect();
            let args =
                prometheus::prepare(&state, &targets, a.scrape_interval, a.prometheus_listen)?;
            mesh.procs.push(Proc {
                program: Some(bin),
                ..Proc::new("prometheus".into(), args, logs.join("prometheus.log"))
            });
            Some(a.prometheus_listen)
        }
    };

    // The control plane first: proxies bootstrap against it.
    mesh.start(0).await?;
    let admin = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), CONTROL_PLANE_ADMIN_PORT);
    if let Err(e) = wait_healthy(admin, Duration::from_secs(30)).await {
        mesh.stop().await;
        bail!(
            "the control plane did not come up: {e:#} (log: {})",
            logs.join("control-plane.log").display()
        );
    }
    for i in 1..mesh.procs.len() {
        if let Err(e) = mesh.start(i).await {
            mesh.stop().await;
            return Err(e);
        }
    }
    println!(
        "trustmesh up: control plane on 127.0.0.1:15012 (admin :15014), {} workloads from {}; logs in {}; Ctrl-C stops everything",
        apps.len(),
        a.dir.display(),
        logs.display()
    );
    match prometheus {
        Some(listen) => println!(
            "Prometheus on http://{listen} scrapes the control plane and every proxy every {}s and evaluates the alert rules (http://{listen}/alerts); dashboard to import into Grafana: deploy/observability/grafana/mtls-security.json",
            a.scrape_interval.as_secs()
        ),
        None if a.prometheus == PrometheusMode::Auto => println!(
            "metrics: http://127.0.0.1:{CONTROL_PLANE_ADMIN_PORT}/metrics and http://<workload address>:15090/metrics (install the Debian package `prometheus` and `up` runs Prometheus too)"
        ),
        None => {}
    }

    let started = Instant::now();
    let tty = std::io::stdout().is_terminal() && !a.plain;
    let mut last = String::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = tick.tick() => {}
        }
        if a.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        mesh.supervise().await?;
        let view = render_view(&apps).await;
        if tty {
            print!("\x1b[H\x1b[2J{view}\n\nCtrl-C stops the mesh.\n");
        } else if view != last {
            println!("{view}\n");
        }
        last = view;
    }
    println!("stopping...");
    mesh.stop().await;
    println!("stopped");
    Ok(ExitCode::SUCCESS)
}

async fn wait_healthy(addr: SocketAddr, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        match http::request(addr, "GET", "/healthz", None, None, Duration::from_secs(1)).await {
            Ok(r) if r.status == 200 => return Ok(()),
            Ok(r) => {
                if Instant::now() > deadline {
                    bail!("/healthz answered {}", r.status);
                }
            }
            Err(e) => {
                if Instant::now() > deadline {
                    return Err(e);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The live view: one row per workload, from each proxy's admin endpoint.
async fn render_view(apps: &[(String, IpAddr, IpAddr)]) -> String {
    let mut t = table([
        "WORKLOAD",
        "ADDRESS",
        "APP",
        "IDENTITY",
        "READY",
        "CERT EXPIRES",
        "RENEWAL",
        "MODES",
    ]);
    for (key, addr, app) in apps {
        let admin = SocketAddr::new(*addr, PROXY_ADMIN_PORT);
        let get = |path: &'static str| {
            http::request(admin, "GET", path, None, None, Duration::from_millis(500))
        };
        let certs: Option<Value> = get("/certs").await.ok().and_then(|r| r.json().ok());
        let dump: Option<Value> = get("/config_dump").await.ok().and_then(|r| r.json().ok());
        let ready = get("/ready")
            .await
            .map(|r| r.status == 200)
            .unwrap_or(false);
        // Times to the second: `2026-11-28T13:22:05.735931478Z` → `2026-11-28T13:22:05Z`.
        let field = |v: &Option<Value>, k: &str| {
            let s = v
                .as_ref()
                .and_then(|v| v.get(k))
                .and_then(Value::as_str)
                .unwrap_or("-");
            match (s.find('.'), s.ends_with('Z')) {
                (Some(dot), true) => format!("{}Z", &s[..dot]),
                _ => s.to_owned(),
            }
        };
        let modes = dump
            .as_ref()
            .and_then(|d| d.get("modes"))
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(port, mode)| format!("{port}:{}", mode.as_str().unwrap_or("?")))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_else(|| "-".into());
        t.add_row([
            key.clone(),
            addr.to_string(),
            app.to_string(),
            field(&certs, "spiffeId"),
            if ready { "yes" } else { "no" }.to_owned(),
            field(&certs, "notAfter"),
            field(&certs, "renewalTime"),
            modes,
        ]);
    }
    render(&t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use trustmesh_core::{SpiffeId, TrustDomain};

    fn workload(addr: &str) -> Workload {
        let td = TrustDomain::new("cluster.local").unwrap();
        Workload {
            namespace: "ns".into(),
            name: "w".into(),
            address: addr.parse().unwrap(),
            labels: BTreeMap::new(),
            service_account: "sa".into(),
            network: None,
            trust_domain: td.clone(),
            identity: SpiffeId::workload(&td, "ns", "sa").unwrap(),
            ports: BTreeMap::new(),
            origin: None,
        }
    }

    #[test]
    fn app_address_follows_the_contract() {
        let none = BTreeMap::new();
        assert_eq!(
            app_address(&workload("127.0.1.2"), &none)
                .unwrap()
                .to_string(),
            "127.0.2.2"
        );
        let ann = BTreeMap::from([(APP_ADDRESS_ANNOTATION.to_owned(), "127.0.9.9".to_owned())]);
        assert_eq!(
            app_address(&workload("127.0.1.2"), &ann)
                .unwrap()
                .to_string(),
            "127.0.9.9"
        );
        assert!(app_address(&workload("10.0.0.1"), &none).is_err());
        let bad = BTreeMap::from([(APP_ADDRESS_ANNOTATION.to_owned(), "nope".to_owned())]);
        assert!(app_address(&workload("127.0.1.2"), &bad).is_err());
    }
}
