//! Prometheus beside a local mesh (`trustmesh up --prometheus`): finds the `prometheus`
//! binary (Debian package `prometheus`), writes its config into the state folder — one scrape
//! job for the control plane, one for the proxies with a target per workload, and the alert
//! rules of `deploy/observability/prometheus/alerts.yml` (built into this binary) — and says
//! how to start it on loopback. Running and supervising it is `up`'s job.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use trustmesh_api::{CONTROL_PLANE_ADMIN_PORT, PROXY_METRICS_PORT};

/// The alert rules that ship in `deploy/observability/`, loaded by the Prometheus `up` starts.
pub const ALERT_RULES: &str = include_str!("../../../deploy/observability/prometheus/alerts.yml");

/// Where `prometheus` is on `PATH`, if it is.
pub fn find() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("prometheus"))
        .find(|p| p.is_file())
}

/// One proxy Prometheus should scrape.
#[derive(Debug, Clone)]
pub struct Target {
    /// `ns/name`.
    pub workload: String,
    /// The workload (proxy) address.
    pub address: IpAddr,
}

/// `prometheus.yml` for a local mesh: the control plane and every proxy, every
/// `scrape_interval`, with `namespace` and `workload` target labels and the alert rules.
pub fn config(targets: &[Target], scrape_interval: Duration, rules_file: &Path) -> String {
    let every = format!("{}s", scrape_interval.as_secs().max(1));
    let mut y = String::new();
    let _ = writeln!(
        y,
        "# Written by `trustmesh up`; rewritten at every start.\nglobal:\n  scrape_interval: {every}\n  evaluation_interval: {every}\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: trustmesh-control-plane\n    static_configs:\n      - targets: ['127.0.0.1:{CONTROL_PLANE_ADMIN_PORT}']\n  - job_name: trustmesh-proxy\n    static_configs:",
        yaml_quote(&rules_file.display().to_string())
    );
    for t in targets {
        let (ns, name) = t.workload.split_once('/').unwrap_or(("", &t.workload));
        let _ = writeln!(
            y,
            "      - targets: ['{}']\n        labels: {{namespace: {}, workload: {}}}",
            SocketAddr::new(t.address, PROXY_METRICS_PORT),
            yaml_quote(ns),
            yaml_quote(name)
        );
    }
    y
}

/// A double-quoted YAML scalar.
fn yaml_quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Writes the config and the rules under `state/prometheus/` and returns the arguments that
/// start Prometheus on `listen` with its data there too.
pub fn prepare(
    state: &Path,
    targets: &[Target],
    scrape_interval: Duration,
    listen: SocketAddr,
) -> Result<Vec<String>> {
    let dir = state.join("prometheus");
    std::fs::create_dir_all(dir.join("data"))
        .with_context(|| format!("creating {}", dir.display()))?;
    let rules = dir.join("alerts.yml");
    trustmesh_pki::fsutil::write_atomic(&rules, ALERT_RULES.as_bytes(), 0o644)
        .with_context(|| format!("writing {}", rules.display()))?;
    let conf = dir.join("prometheus.yml");
    trustmesh_pki::fsutil::write_atomic(
        &conf,
        config(targets, scrape_interval, &rules).as_bytes(),
        0o644,
    )
    .with_context(|| format!("writing {}", conf.display()))?;
    Ok(vec![
        format!("--config.file={}", conf.display()),
        format!("--storage.tsdb.path={}", dir.join("data").display()),
        format!("--web.listen-address={listen}"),
        // A local mesh's history is for looking at now, not for keeping.
        "--storage.tsdb.retention.time=1d".into(),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_names_every_target_with_labels() {
        let y = config(
            &[
                Target {
                    workload: "production/orders".into(),
                    address: "127.0.1.3".parse().unwrap(),
                },
                Target {
                    workload: "default/reporting".into(),
                    address: "127.0.1.5".parse().unwrap(),
                },
            ],
            Duration::from_secs(2),
            Path::new("/s/prometheus/alerts.yml"),
        );
        assert!(y.contains("scrape_interval: 2s"), "{y}");
        assert!(y.contains("- \"/s/prometheus/alerts.yml\""), "{y}");
        assert!(y.contains("targets: ['127.0.0.1:15014']"), "{y}");
        assert!(
            y.contains(
                "- targets: ['127.0.1.3:15090']\n        labels: {namespace: \"production\", workload: \"orders\"}"
            ),
            "{y}"
        );
        assert!(y.contains("targets: ['127.0.1.5:15090']"), "{y}");
    }

    #[test]
    fn the_built_in_rules_are_the_shipped_ones() {
        assert!(ALERT_RULES.contains("groups:"), "{ALERT_RULES}");
    }
}
