//! Time and chance, injected: the wall clock the proxy reads (certificate validity, renewal
//! times, TLS verification of the control plane) and the jitter drawn for each renewal.
//!
//! Production uses [`Clock::system`] and [`Jitter::random`]. Tests run with tokio's paused
//! time and [`Clock::following_tokio`], so "12 h later" takes milliseconds and certificate
//! validity moves with the paused timer. What is not here: timers themselves (tokio's).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::time_provider::TimeProvider;
use rustls_pki_types::UnixTime;
use trustmesh_core::renewal::MAX_WORKLOAD_JITTER;

/// A source of wall-clock time.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> SystemTime + Send + Sync>);

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Clock").field(&self.now()).finish()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

impl Clock {
    /// The operating system's clock.
    pub fn system() -> Self {
        Self(Arc::new(SystemTime::now))
    }

    /// Any function of nothing to a time.
    pub fn from_fn(f: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// A clock that reads `start` now and then advances with tokio's timer (paused or not):
    /// `start + (tokio::time::Instant::now() - instant of creation)`.
    pub fn following_tokio(start: SystemTime) -> Self {
        let origin = tokio::time::Instant::now();
        Self::from_fn(move || start + origin.elapsed())
    }

    /// The current time.
    pub fn now(&self) -> SystemTime {
        (self.0)()
    }

    /// How long from now until `t` (zero if `t` is past).
    pub fn until(&self, t: SystemTime) -> Duration {
        t.duration_since(self.now()).unwrap_or(Duration::ZERO)
    }
}

/// rustls reads the validation time from here, so TLS verification agrees with the clock the
/// proxy schedules by.
impl TimeProvider for Clock {
    fn current_time(&self) -> Option<UnixTime> {
        Some(UnixTime::since_unix_epoch(
            self.now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or(Duration::ZERO),
        ))
    }
}

/// The renewal jitter, a fraction of the certificate lifetime in
/// `[0, MAX_WORKLOAD_JITTER]` (see `trustmesh_core::renewal`).
#[derive(Clone)]
pub struct Jitter(Arc<dyn Fn() -> f64 + Send + Sync>);

impl fmt::Debug for Jitter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Jitter")
    }
}

impl Default for Jitter {
    fn default() -> Self {
        Self::random()
    }
}

impl Jitter {
    /// Uniform in `[0, MAX_WORKLOAD_JITTER]`, from the crypto provider's random generator.
    pub fn random() -> Self {
        Self(Arc::new(|| {
            let mut buf = [0u8; 8];
            // Jitter only spreads a fleet's renewals; if the generator fails, no jitter is a
            // correct (if less spread) schedule.
            if trustmesh_pki::crypto_provider()
                .secure_random
                .fill(&mut buf)
                .is_err()
            {
                return 0.0;
            }
            // 53 random bits → [0, 1).
            let unit = (u64::from_le_bytes(buf) >> 11) as f64 / (1u64 << 53) as f64;
            unit * MAX_WORKLOAD_JITTER
        }))
    }

    /// Always `fraction` (tests).
    pub fn fixed(fraction: f64) -> Self {
        Self(Arc::new(move || fraction))
    }

    /// Draws one value.
    pub fn draw(&self) -> f64 {
        (self.0)()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_jitter_stays_within_the_allowed_fraction() {
        let j = Jitter::random();
        let draws: Vec<f64> = (0..1000).map(|_| j.draw()).collect();
        assert!(
            draws
                .iter()
                .all(|d| (0.0..=MAX_WORKLOAD_JITTER).contains(d))
        );
        // Not constant: a fleet must not renew in lockstep.
        assert!(draws.iter().any(|d| *d != draws[0]));
    }

    #[tokio::test(start_paused = true)]
    async fn following_tokio_advances_with_the_paused_timer() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let clock = Clock::following_tokio(start);
        assert_eq!(clock.now(), start);
        tokio::time::sleep(Duration::from_secs(12 * 3600)).await;
        assert_eq!(clock.now(), start + Duration::from_secs(12 * 3600));
        assert_eq!(
            clock.current_time(),
            Some(UnixTime::since_unix_epoch(Duration::from_secs(
                1_800_000_000 + 12 * 3600
            )))
        );
        assert_eq!(clock.until(start), Duration::ZERO);
    }
}
