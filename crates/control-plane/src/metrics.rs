//! The control plane's own counters and their Prometheus text exposition (format 0.0.4):
//! config reloads and rejections, the config version, connected proxies, SVIDs signed and
//! refused, join-token refusals. Each line counts something that happened; nothing is
//! estimated. The mesh-wide metric set (Istio's, cert-manager's) is another module's job.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters updated where things happen.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    /// Reloads accepted (the initial load included).
    pub reloads_accepted: AtomicU64,
    /// Reloads refused (the last good snapshot stayed).
    pub reloads_rejected: AtomicU64,
    /// SVIDs signed against a join token.
    pub signed_bootstrap: AtomicU64,
    /// SVIDs signed for a caller presenting its current SVID.
    pub signed_renewal: AtomicU64,
    /// Sign requests refused (any reason: token, identity, CSR).
    pub sign_refusals: AtomicU64,
    /// Join tokens refused (unknown, expired, used, other workload).
    pub token_refusals: AtomicU64,
    /// Config streams refused (no or wrong identity, unknown workload).
    pub stream_refusals: AtomicU64,
    /// `ProxyUpdate`s sent.
    pub updates_sent: AtomicU64,
}

/// Adds one.
pub(crate) fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// What is read at scrape time rather than counted.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Gauges {
    /// Current config version.
    pub config_version: u64,
    /// Open config streams.
    pub connected_proxies: u64,
    /// Whether the last reload was accepted.
    pub last_reload_ok: bool,
    /// Unix seconds of the last accepted reload.
    pub last_accepted_unix: u64,
}

impl Metrics {
    /// The text exposition.
    pub fn render(&self, g: Gauges) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, v) in samples {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        };
        family(
            "trustmesh_control_plane_config_reloads_total",
            "counter",
            "Config loads by result; a rejected reload keeps the last good snapshot.",
            &[
                ("{result=\"accepted\"}", get(&self.reloads_accepted)),
                ("{result=\"rejected\"}", get(&self.reloads_rejected)),
            ],
        );
        family(
            "trustmesh_control_plane_config_version",
            "gauge",
            "Version of the snapshot proxies are sent.",
            &[("", g.config_version)],
        );
        family(
            "trustmesh_control_plane_config_last_reload_successful",
            "gauge",
            "1 if the last config reload was accepted, else 0.",
            &[("", u64::from(g.last_reload_ok))],
        );
        family(
            "trustmesh_control_plane_config_last_accepted_timestamp_seconds",
            "gauge",
            "Unix time of the last accepted config load.",
            &[("", g.last_accepted_unix)],
        );
        family(
            "trustmesh_control_plane_connected_proxies",
            "gauge",
            "Open config streams.",
            &[("", g.connected_proxies)],
        );
        family(
            "trustmesh_control_plane_svids_signed_total",
            "counter",
            "Workload SVIDs signed, by how the caller authenticated.",
            &[
                ("{method=\"join_token\"}", get(&self.signed_bootstrap)),
                ("{method=\"svid\"}", get(&self.signed_renewal)),
            ],
        );
        family(
            "trustmesh_control_plane_sign_refusals_total",
            "counter",
            "Sign requests refused.",
            &[("", get(&self.sign_refusals))],
        );
        family(
            "trustmesh_control_plane_join_token_refusals_total",
            "counter",
            "Join tokens refused: unknown, expired, already used, or bound to another workload.",
            &[("", get(&self.token_refusals))],
        );
        family(
            "trustmesh_control_plane_stream_refusals_total",
            "counter",
            "Config streams refused.",
            &[("", get(&self.stream_refusals))],
        );
        family(
            "trustmesh_control_plane_proxy_updates_sent_total",
            "counter",
            "ProxyUpdate messages sent to proxies.",
            &[("", get(&self.updates_sent))],
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_help_type_and_the_counted_values() {
        let m = Metrics::default();
        inc(&m.reloads_accepted);
        inc(&m.reloads_rejected);
        inc(&m.reloads_rejected);
        inc(&m.token_refusals);
        let text = m.render(Gauges {
            config_version: 3,
            connected_proxies: 2,
            last_reload_ok: false,
            last_accepted_unix: 1_800_000_000,
        });
        for line in [
            "# TYPE trustmesh_control_plane_config_reloads_total counter",
            "trustmesh_control_plane_config_reloads_total{result=\"accepted\"} 1",
            "trustmesh_control_plane_config_reloads_total{result=\"rejected\"} 2",
            "trustmesh_control_plane_config_version 3",
            "trustmesh_control_plane_connected_proxies 2",
            "trustmesh_control_plane_config_last_reload_successful 0",
            "trustmesh_control_plane_join_token_refusals_total 1",
            "trustmesh_control_plane_svids_signed_total{method=\"svid\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        // Every sample line belongs to a family announced with HELP and TYPE.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let name = l.split(['{', ' ']).next().unwrap();
            assert!(text.contains(&format!("# HELP {name} ")), "{name}");
            assert!(text.contains(&format!("# TYPE {name} ")), "{name}");
        }
    }
}
