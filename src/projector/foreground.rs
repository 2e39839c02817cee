//! Foreground traffic. While agents are sending requests, background projection leaves one core free.
//!
//! Why a core and not a priority: on the 2-vCPU development VM (and plausibly other virtual machines),
//! when every core runs busy threads, a command's PostgreSQL process woken by the completion of its WAL
//! flush waits for the next scheduler tick (4 ms at HZ=250) before it runs again, whatever the nice value
//! or scheduling policy of the busy threads. Measured with nothing but pgbench and busy loops: a
//! single-row INSERT took 0.8 ms p50 idle, 4.3 ms with two busy loops (nice 10, nice 19 or SCHED_IDLE
//! alike) and 0.6 ms with one; a 0.1 ms scheduler slice for the server's processes (`sched_setattr`)
//! changed nothing. And the free core has to be a fixed one: a process woken by another is often queued
//! on the CPU it last ran on and, when that one runs the projector, waits there for its tick even while
//! the other CPU idles (`perf sched`, even behind a SCHED_IDLE model thread), so the narrow pool and the
//! projector's database processes keep off the first CPU (`crate::runtime`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Shared between the API, which marks each request, and the projector, which asks whether requests
/// are arriving. Cloning shares the same state.
#[derive(Clone)]
pub struct Foreground {
    inner: Arc<Inner>,
}

struct Inner {
    origin: Instant,
    window: Duration,
    /// Milliseconds after `origin` of the last request, plus one; 0 means none yet.
    last: AtomicU64,
    /// Model batches that ran on the narrower pool because requests were arriving.
    yielded: AtomicU64,
}

impl Foreground {
    /// Requests count as "arriving" for `window` after each one; a zero window never yields.
    pub fn new(window: Duration) -> Self {
        Foreground {
            inner: Arc::new(Inner {
                origin: Instant::now(),
                window,
                last: AtomicU64::new(0),
                yielded: AtomicU64::new(0),
            }),
        }
    }

    /// A foreground that never asks the projector to yield (tools without an API).
    pub fn never() -> Self {
        Self::new(Duration::ZERO)
    }

    /// Marks a request now.
    pub fn touch(&self) {
        let now = self.inner.origin.elapsed().as_millis() as u64 + 1;
        self.inner.last.fetch_max(now, Ordering::Relaxed);
    }

    /// Whether a request arrived within the window.
    pub fn active(&self) -> bool {
        let last = self.inner.last.load(Ordering::Relaxed);
        if last == 0 || self.inner.window.is_zero() {
            return false;
        }
        let now = self.inner.origin.elapsed().as_millis() as u64 + 1;
        Duration::from_millis(now.saturating_sub(last)) < self.inner.window
    }

    pub(crate) fn count_yielded(&self) {
        self.inner.yielded.fetch_add(1, Ordering::Relaxed);
    }

    /// Model batches run on fewer threads so far, for metrics.
    pub fn yielded(&self) -> u64 {
        self.inner.yielded.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_within_the_window_after_a_request_only() {
        let foreground = Foreground::new(Duration::from_millis(150));
        assert!(!foreground.active(), "no request yet");
        foreground.touch();
        assert!(foreground.active());
        std::thread::sleep(Duration::from_millis(300));
        assert!(!foreground.active(), "the window has passed");
        foreground.touch();
        assert!(foreground.active());
    }

    #[test]
    fn a_zero_window_never_yields() {
        let foreground = Foreground::never();
        foreground.touch();
        assert!(!foreground.active());
    }
}
