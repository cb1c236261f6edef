//! When a certificate is due for renewal.
//!
//! Two rules live here, both pure functions of the issued certificate's validity window:
//! - workload SVIDs renew at 50 % of their lifetime, minus a small jitter so that a fleet
//!   issued together does not renew together (Istio's `SECRET_GRACE_PERIOD_RATIO` 0.5 with
//!   jitter; SPIRE's agent also renews at half-life);
//! - cert-manager `Certificate`s renew by cert-manager's exact formula
//!   (`pkg/util/pki/renewaltime.go`), computed from the *issued* certificate.
//!
//! Retry, backoff and scheduling belong to the callers, not here.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Fraction of a workload certificate's lifetime after which it is renewed.
pub const WORKLOAD_RENEWAL_FRACTION: f64 = 0.5;
/// Largest jitter, as a fraction of the lifetime, subtracted from the 50 % point.
pub const MAX_WORKLOAD_JITTER: f64 = 0.05;

/// The renewal time of a workload SVID: `not_before + lifetime * (0.5 - jitter)`.
///
/// DESIGN: "Workload certificates: 24 h, renewed at 50 % of lifetime (T=12 h) with jitter".
/// `jitter` is a fraction of the lifetime, clamped to `[0, MAX_WORKLOAD_JITTER]`; the caller
/// draws it at random so that the function stays deterministic and testable.
pub fn workload_renewal_time(
    not_before: SystemTime,
    not_after: SystemTime,
    jitter: f64,
) -> SystemTime {
    let lifetime = not_after
        .duration_since(not_before)
        .unwrap_or(Duration::ZERO);
    let jitter = if jitter.is_finite() {
        jitter.clamp(0.0, MAX_WORKLOAD_JITTER)
    } else {
        0.0
    };
    not_before + lifetime.mul_f64(WORKLOAD_RENEWAL_FRACTION - jitter)
}

/// The renewal time of a cert-manager `Certificate`, by cert-manager's formula.
///
/// cert-manager `renewaltime.go`: "lifetime = NotAfter - NotBefore" of the issued certificate;
/// renewBefore is `spec.renewBefore` "if set and 0 < rb < lifetime", else
/// `lifetime * pct / 100` "if spec.renewBeforePercentage set and 0 < pct < 100", else
/// `lifetime / 3`; and "renewalTime = truncate_to_second(NotAfter - renewBefore)".
pub fn cert_manager_renewal_time(
    not_before: SystemTime,
    not_after: SystemTime,
    renew_before: Option<Duration>,
    renew_before_percentage: Option<i32>,
) -> SystemTime {
    let lifetime = not_after
        .duration_since(not_before)
        .unwrap_or(Duration::ZERO);
    let renew_before = match (renew_before, renew_before_percentage) {
        (Some(rb), _) if !rb.is_zero() && rb < lifetime => rb,
        (_, Some(pct)) if pct > 0 && pct < 100 => lifetime.mul_f64(f64::from(pct) / 100.0),
        // Go's integer Duration division, in nanoseconds.
        _ => lifetime / 3,
    };
    truncate_to_second(not_after.checked_sub(renew_before).unwrap_or(not_before))
}

/// Truncates a time to a whole second (Go's `Time.Truncate(time.Second)` for times after 1970).
pub fn truncate_to_second(t: SystemTime) -> SystemTime {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => UNIX_EPOCH + Duration::from_secs(d.as_secs()),
        Err(_) => t,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: u64 = 3600;

    fn at(secs: u64) -> SystemTime {
        // A whole-second start, as real certificates have (X.509 times have second precision).
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn offset(start: SystemTime, t: SystemTime) -> Duration {
        t.duration_since(start).unwrap()
    }

    /// cert-manager `renewaltime_test.go` vectors, as listed in the semantics digest §5.2.
    #[test]
    fn cert_manager_formula_matches_upstream_vectors() {
        let s = at(0);
        type Case = (
            &'static str,
            Duration,
            Option<Duration>,
            Option<i32>,
            Duration,
        );
        let cases: &[Case] = &[
            (
                "3h cert → +2h",
                Duration::from_secs(3 * H),
                None,
                None,
                Duration::from_secs(2 * H),
            ),
            (
                "6 months (4380h) → +2920h",
                Duration::from_secs(4380 * H),
                None,
                None,
                Duration::from_secs(2920 * H),
            ),
            (
                "24h with renewBefore 20h → +4h",
                Duration::from_secs(24 * H),
                Some(Duration::from_secs(20 * H)),
                None,
                Duration::from_secs(4 * H),
            ),
            (
                "24h with renewBefore 25h (≥ lifetime) → default → +16h",
                Duration::from_secs(24 * H),
                Some(Duration::from_secs(25 * H)),
                None,
                Duration::from_secs(16 * H),
            ),
            (
                "730h with 30% → +511h",
                Duration::from_secs(730 * H),
                None,
                Some(30),
                Duration::from_secs(511 * H),
            ),
            (
                "24h-1s → +16h-1s (truncation)",
                Duration::from_secs(24 * H - 1),
                None,
                None,
                Duration::from_secs(16 * H - 1),
            ),
            (
                "24h3m with renewBefore 24h → +3m",
                Duration::from_secs(24 * H + 180),
                Some(Duration::from_secs(24 * H)),
                None,
                Duration::from_secs(180),
            ),
            (
                "90d default → renew at day 60",
                Duration::from_secs(2160 * H),
                None,
                None,
                Duration::from_secs(60 * 24 * H),
            ),
            (
                "24h with renewBefore 12h (the mesh's certificates) → +12h",
                Duration::from_secs(24 * H),
                Some(Duration::from_secs(12 * H)),
                None,
                Duration::from_secs(12 * H),
            ),
        ];
        for (name, lifetime, rb, pct, want) in cases {
            let got = cert_manager_renewal_time(s, s + *lifetime, *rb, *pct);
            assert_eq!(offset(s, got), *want, "{name}");
        }
    }

    /// "renewBefore ... if set and 0 < rb < lifetime": a zero renewBefore falls through to the
    /// percentage, then to lifetime/3; a percentage outside (0,100) is ignored.
    #[test]
    fn out_of_range_overrides_fall_back() {
        let s = at(0);
        let e = s + Duration::from_secs(24 * H);
        let third = Duration::from_secs(16 * H);
        assert_eq!(
            offset(
                s,
                cert_manager_renewal_time(s, e, Some(Duration::ZERO), None)
            ),
            third
        );
        assert_eq!(
            offset(
                s,
                cert_manager_renewal_time(s, e, Some(Duration::ZERO), Some(50))
            ),
            Duration::from_secs(12 * H)
        );
        assert_eq!(
            offset(s, cert_manager_renewal_time(s, e, None, Some(0))),
            third
        );
        assert_eq!(
            offset(s, cert_manager_renewal_time(s, e, None, Some(100))),
            third
        );
    }

    /// "renewalTime = truncate_to_second(NotAfter - renewBefore)" even when the certificate's
    /// bounds are not whole seconds.
    #[test]
    fn renewal_time_is_truncated_to_the_second() {
        let s = at(0) + Duration::from_millis(700);
        let got = cert_manager_renewal_time(s, s + Duration::from_secs(3 * H), None, None);
        assert_eq!(got, at(2 * H));
    }

    /// "renewed at 50 % of lifetime (T=12 h) with jitter".
    #[test]
    fn workload_certificates_renew_at_half_life_minus_jitter() {
        let s = at(0);
        let e = s + Duration::from_secs(24 * H);
        assert_eq!(
            offset(s, workload_renewal_time(s, e, 0.0)),
            Duration::from_secs(12 * H)
        );
        let jittered = offset(s, workload_renewal_time(s, e, 0.01));
        let want = Duration::from_secs(24 * H).mul_f64(0.49);
        assert!(
            jittered.abs_diff(want) < Duration::from_millis(1),
            "{jittered:?} vs {want:?}"
        );
        // Jitter is bounded: never earlier than 45 %, never later than 50 %.
        let clamped = offset(s, workload_renewal_time(s, e, 0.9));
        let want = Duration::from_secs(24 * H).mul_f64(0.45);
        assert!(
            clamped.abs_diff(want) < Duration::from_millis(1),
            "{clamped:?} vs {want:?}"
        );
        assert_eq!(
            offset(s, workload_renewal_time(s, e, -1.0)),
            Duration::from_secs(12 * H)
        );
        assert_eq!(
            offset(s, workload_renewal_time(s, e, f64::NAN)),
            Duration::from_secs(12 * H)
        );
    }

    #[test]
    fn inverted_window_does_not_panic() {
        let s = at(100);
        assert_eq!(workload_renewal_time(s, at(0), 0.0), s);
        assert_eq!(cert_manager_renewal_time(s, at(0), None, None), at(0));
    }
}
