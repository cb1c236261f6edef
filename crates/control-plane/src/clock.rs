//! The wall clock, injected: certificate lifetimes, token expiry and renewal times read it
//! through [`Clock`] so tests can choose the time. Timers (sleeps) stay tokio's.

use std::fmt::Debug;
use std::time::SystemTime;

/// A source of the current time.
pub trait Clock: Send + Sync + Debug + 'static {
    /// Now.
    fn now(&self) -> SystemTime;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}
