//! The identity manager against a fake control plane over real TLS, on tokio's paused clock:
//! a day of certificate life takes milliseconds, and the clock the proxy schedules by, the
//! CA signs by and TLS verifies by is the same one.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure with its location

mod mesh_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use mesh_support::*;
use tokio::sync::watch;
use trustmesh_core::renewal::workload_renewal_time;
use trustmesh_proxy::clock::{Clock, Jitter};
use trustmesh_proxy::control::ControlPlane;
use trustmesh_proxy::identity::{IdentityManager, RotateHandle};
use trustmesh_proxy::metrics::Metrics;
use trustmesh_proxy::state::Shared;

const DAY: Duration = Duration::from_secs(24 * 3600);
const HOUR: Duration = Duration::from_secs(3600);
const TOKEN: &str = "join-token-for-orders";

struct Setup {
    cp: FakeCp,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    clock: Clock,
    rotate: RotateHandle,
    _stop: watch::Sender<bool>,
}

async fn setup(at: [u8; 4], token: Option<&str>, jitter: f64) -> Setup {
    let clock = Clock::following_tokio(SystemTime::now());
    let ca = Arc::new(TestCa::new(TD));
    let bundle = Arc::new(ca.bundle());
    let cp = FakeCp::start(
        SocketAddr::new(ip(at), 0),
        ca,
        WORKLOAD,
        "orders",
        DAY,
        clock.clone(),
        TOKEN,
    )
    .await;
    let shared = Shared::new(WORKLOAD);
    // In-memory pipes: on the paused clock, real sockets let time jump mid-exchange.
    let control = Arc::new(
        ControlPlane::new(
            cp.addr,
            bundle,
            "istio-system",
            shared.clone(),
            clock.clone(),
        )
        .with_dialer(cp.dialer()),
    );
    let rotate = RotateHandle::new();
    let metrics = Arc::new(Metrics::default());
    let manager = IdentityManager::new(
        shared.clone(),
        control,
        token.map(str::to_owned),
        clock.clone(),
        Jitter::fixed(jitter),
        rotate.clone(),
    )
    .with_metrics(metrics.clone());
    let (stop, stop_rx) = watch::channel(false);
    tokio::spawn(manager.run(stop_rx));
    Setup {
        cp,
        shared,
        metrics,
        clock,
        rotate,
        _stop: stop,
    }
}

/// Waits (on the paused clock) until the identity's serial differs from `old`.
async fn next_identity(shared: &Shared, old: Option<&str>, within: Duration) -> String {
    let mut changes = shared.subscribe();
    let wait = async {
        loop {
            if let Some(i) = shared.identity()
                && Some(i.serial.as_str()) != old
            {
                return i.serial.clone();
            }
            changes.changed().await.unwrap();
        }
    };
    tokio::time::timeout(within, wait)
        .await
        .expect("no new certificate in time")
}

#[tokio::test(start_paused = true)]
async fn bootstraps_with_the_token_then_renews_24h_certificates_at_12h_over_mtls() {
    let s = setup([127, 0, 50, 2], Some(TOKEN), 0.0).await;
    let first = next_identity(&s.shared, None, Duration::from_secs(30)).await;
    let id = s.shared.identity().unwrap();
    assert_eq!(id.id.as_str(), "spiffe://cluster.local/ns/prod/sa/orders");
    // "renewed at 50 % of lifetime (T=12 h)"
    assert_eq!(
        id.renewal_time,
        workload_renewal_time(id.not_before, id.not_after, 0.0)
    );
    let lifetime = id.not_after.duration_since(id.not_before).unwrap();
    assert!(lifetime >= DAY, "{lifetime:?}");
    let calls = s.cp.state.signs();
    assert_eq!(calls.len(), 1);
    assert!(
        calls[0].token && calls[0].peer.is_none(),
        "bootstrap: token, no certificate"
    );

    // Not before 12 h ...
    tokio::time::sleep(11 * HOUR + Duration::from_secs(50 * 60)).await;
    assert_eq!(s.shared.identity().unwrap().serial, first);
    assert_eq!(s.cp.state.signs().len(), 1);
    // ... but at 12 h, with the current SVID as client certificate and no token.
    let second = next_identity(&s.shared, Some(&first), 20 * 60 * Duration::from_secs(1)).await;
    let calls = s.cp.state.signs();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[1].peer.as_ref(), Some(&id.id));
    assert!(!calls[1].token);
    let renewed_after = calls[1].at.duration_since(calls[0].at).unwrap();
    assert!(
        renewed_after > 11 * HOUR + Duration::from_secs(55 * 60)
            && renewed_after < 12 * HOUR + Duration::from_secs(60),
        "{renewed_after:?}"
    );
    // And again 12 h later.
    let _third = next_identity(
        &s.shared,
        Some(&second),
        12 * HOUR + Duration::from_secs(120),
    )
    .await;
    assert_eq!(s.cp.state.signs().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn jitter_moves_renewal_earlier_within_five_percent() {
    let s = setup([127, 0, 50, 3], Some(TOKEN), 0.05).await;
    next_identity(&s.shared, None, Duration::from_secs(30)).await;
    let id = s.shared.identity().unwrap();
    let at = id.renewal_time.duration_since(id.not_before).unwrap();
    let lifetime = id.not_after.duration_since(id.not_before).unwrap();
    assert_eq!(at, lifetime.mul_f64(0.45));
}

#[tokio::test(start_paused = true)]
async fn renewal_failure_keeps_the_valid_certificate_and_retries_with_backoff() {
    let s = setup([127, 0, 50, 4], Some(TOKEN), 0.0).await;
    let first = next_identity(&s.shared, None, Duration::from_secs(30)).await;
    let id = s.shared.identity().unwrap();
    s.cp.state.fail_sign.store(true, Ordering::SeqCst);

    // Past the renewal time, failures: the certificate in use does not change, and stays
    // valid.
    let renewal_in = s.clock.until(id.renewal_time);
    tokio::time::sleep(renewal_in + Duration::from_secs(10 * 60)).await;
    let current = s.shared.identity().unwrap();
    assert_eq!(current.serial, first, "the valid certificate stays in use");
    assert!(current.not_after > s.clock.now());
    // "1s doubling to 5 min": attempts at +0, 1, 3, 7, 15, 31, 63, 127, 255, 511 s.
    let failed: Vec<_> = s.cp.state.signs().into_iter().skip(1).collect();
    assert!(
        failed
            .iter()
            .all(|c| c.result == Err(tonic::Code::Unavailable))
    );
    assert_eq!(failed.len(), 10, "{failed:?}");
    let gaps: Vec<u64> = failed
        .windows(2)
        .map(|w| w[1].at.duration_since(w[0].at).unwrap().as_secs())
        .collect();
    assert_eq!(gaps, [1, 2, 4, 8, 16, 32, 64, 128, 256], "{gaps:?}");
    // Backoff is capped at 5 min.
    tokio::time::sleep(Duration::from_secs(30 * 60)).await;
    let later: Vec<_> = s.cp.state.signs().into_iter().skip(11).collect();
    let gaps: Vec<u64> = later
        .windows(2)
        .map(|w| w[1].at.duration_since(w[0].at).unwrap().as_secs())
        .collect();
    assert!(
        !gaps.is_empty() && gaps.iter().all(|g| *g == 300),
        "{gaps:?}"
    );

    // Every failed attempt is counted; the gauges still show the certificate in use.
    let rotations = |m: &str, result| {
        let line = format!("trustmesh_certificate_rotations_total{{result=\"{result}\"}} ");
        m.lines()
            .find_map(|l| l.strip_prefix(line.as_str()))
            .unwrap()
            .to_owned()
    };
    let text = s.metrics.render();
    let attempts = s.cp.state.signs().len() - 1;
    assert_eq!(rotations(&text, "failure"), attempts.to_string());
    assert_eq!(rotations(&text, "success"), "1");
    let expiry = |m: &str| {
        m.lines()
            .find(|l| l.starts_with("trustmesh_certificate_expiration_timestamp_seconds{"))
            .unwrap()
            .to_owned()
    };
    let secs = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    assert_eq!(
        expiry(&text),
        format!(
            "trustmesh_certificate_expiration_timestamp_seconds{{spiffe_id=\"{}\"}} {}",
            id.id,
            secs(id.not_after)
        )
    );

    // The CA comes back: the next retry renews, and the schedule is 12 h again.
    s.cp.state.fail_sign.store(false, Ordering::SeqCst);
    let second = next_identity(&s.shared, Some(&first), Duration::from_secs(301)).await;
    assert_ne!(second, first);
    assert_eq!(rotations(&s.metrics.render(), "success"), "2");
    let renewed = s.shared.identity().unwrap();
    assert_eq!(
        s.clock.until(renewed.renewal_time).as_secs() / 60,
        (12 * HOUR).as_secs() / 60 - 1
    );
}

#[tokio::test(start_paused = true)]
async fn retries_speed_up_before_expiry_and_the_certificate_is_kept_until_it_expires() {
    let s = setup([127, 0, 50, 5], Some(TOKEN), 0.0).await;
    let first = next_identity(&s.shared, None, Duration::from_secs(30)).await;
    let id = s.shared.identity().unwrap();
    s.cp.state.fail_sign.store(true, Ordering::SeqCst);
    let to_expiry = s.clock.until(id.not_after);
    tokio::time::sleep(to_expiry - Duration::from_secs(1)).await;
    assert_eq!(s.shared.identity().unwrap().serial, first);
    // "capped before expiry": in the last 5 minutes the retries come faster than every 5 min.
    let last_window: Vec<_> =
        s.cp.state
            .signs()
            .into_iter()
            .filter(|c| c.at + Duration::from_secs(300) >= id.not_after && c.at < id.not_after)
            .collect();
    assert!(last_window.len() >= 4, "{last_window:?}");
}

#[tokio::test(start_paused = true)]
async fn a_rotation_request_renews_at_once() {
    let s = setup([127, 0, 50, 6], Some(TOKEN), 0.0).await;
    let first = next_identity(&s.shared, None, Duration::from_secs(30)).await;
    tokio::time::sleep(HOUR).await;
    s.rotate.rotate();
    let second = next_identity(&s.shared, Some(&first), Duration::from_secs(5)).await;
    assert_ne!(first, second);
    assert_eq!(s.cp.state.signs().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_refused_token_leaves_no_identity_and_is_retried() {
    let s = setup([127, 0, 50, 7], Some("not-the-token"), 0.0).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(s.shared.identity().is_none());
    let calls = s.cp.state.signs();
    // Attempts at 0, 1, 3, 7 s.
    assert_eq!(calls.len(), 4, "{calls:?}");
    assert!(
        calls
            .iter()
            .all(|c| c.result == Err(tonic::Code::PermissionDenied))
    );
}

#[tokio::test(start_paused = true)]
async fn without_token_or_certificate_nothing_is_sent() {
    let s = setup([127, 0, 50, 8], None, 0.0).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(s.shared.identity().is_none());
    assert!(s.cp.state.signs().is_empty());
}
