//! "Now", injectable: every side that decides by the time (capsule confirmation windows,
//! the scheduler's due items, the read routes' "today") reads one [`Clock`], so tests can
//! move time without sleeping.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};

#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>);

impl Clock {
    /// The wall clock.
    pub fn system() -> Self {
        Clock(Arc::new(Utc::now))
    }

    /// A clock that asks `now` (tests: a fixed or settable time).
    pub fn from_fn(now: impl Fn() -> DateTime<Utc> + Send + Sync + 'static) -> Self {
        Clock(Arc::new(now))
    }

    pub fn now(&self) -> DateTime<Utc> {
        (self.0)()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Clock({})", self.now())
    }
}
