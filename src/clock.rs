//! Wall-clock time, injectable. Instants that must survive a restart are timestamps; the engine
//! never reads a clock, it is handed `now` by whoever drives it.

use jiff::Timestamp;

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;
}

#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}
