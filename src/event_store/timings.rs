//! Where a command's time goes, stage by stage, so that a slow tail can be placed: reading its stream,
//! waiting in the group-commit queue, waiting for a connection, the append's statements, and the
//! commit (the flush). Kept in atomics; `/metrics` renders them.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Latency buckets in seconds, from a fast append to a slow wait.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.04, 0.06, 0.1, 0.25, 1.0, 5.0,
];

#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|&b| secs <= b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
    }

    /// The counts so far, to subtract an earlier snapshot from (a benchmark's phase).
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            buckets: std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed)),
            count: self.count.load(Ordering::Relaxed),
            sum: Duration::from_nanos(self.sum_nanos.load(Ordering::Relaxed)),
        }
    }

    /// Observations so far and their total time.
    pub fn totals(&self) -> (u64, Duration) {
        let nanos = self.sum_nanos.load(Ordering::Relaxed);
        (self.count.load(Ordering::Relaxed), Duration::from_nanos(nanos))
    }

    /// The histogram's lines of the Prometheus text exposition.
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (bound, n) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += n.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {count}");
    }
}

/// A histogram's counts at one moment.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot {
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: Duration,
}

impl Snapshot {
    /// What was observed between `earlier` and this one.
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        Snapshot {
            buckets: std::array::from_fn(|i| self.buckets[i].saturating_sub(earlier.buckets[i])),
            count: self.count.saturating_sub(earlier.count),
            sum: self.sum.saturating_sub(earlier.sum),
        }
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn mean(&self) -> Duration {
        Duration::from_secs_f64(self.sum.as_secs_f64() / self.count.max(1) as f64)
    }

    /// The upper bound of the bucket holding quantile `q`, in seconds (infinite past the last bucket).
    pub fn quantile_bound(&self, q: f64) -> f64 {
        let rank = (self.count as f64 * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (bound, n) in BUCKETS.iter().zip(&self.buckets) {
            seen += n;
            if seen >= rank {
                return *bound;
            }
        }
        f64::INFINITY
    }
}

/// A command's stages. The fast append path is one autocommit statement, so its flush is inside
/// `statement`; the locked path's flush is `commit`.
#[derive(Default)]
pub struct CommandTimings {
    /// Loading the command's stream (connection wait included).
    pub read: Histogram,
    /// From the append call until the group-commit writer takes it.
    pub queue: Histogram,
    /// Waiting for a connection for the append.
    pub connect: Histogram,
    /// The append's statements (on the fast path, with its commit).
    pub statement: Histogram,
    /// The locked path's COMMIT: the flush.
    pub commit: Histogram,
}

impl CommandTimings {
    /// Each stage with its label.
    pub fn stages(&self) -> [(&'static str, &Histogram); 5] {
        [
            ("read", &self.read),
            ("queue", &self.queue),
            ("connect", &self.connect),
            ("statement", &self.statement),
            ("commit", &self.commit),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_since_another_holds_what_came_between() {
        let h = Histogram::default();
        h.observe(Duration::from_millis(30));
        let before = h.snapshot();
        for _ in 0..98 {
            h.observe(Duration::from_micros(400));
        }
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_millis(50));
        let during = h.snapshot().since(&before);
        assert_eq!(during.count(), 100);
        assert_eq!(during.quantile_bound(0.5), 0.0005);
        assert_eq!(during.quantile_bound(0.99), 0.005, "the 99th of 100 is the 3 ms one");
        assert_eq!(during.quantile_bound(1.0), 0.06);
        let mean = during.mean().as_secs_f64();
        assert!((mean - (98.0 * 0.0004 + 0.003 + 0.05) / 100.0).abs() < 1e-9, "{mean}");
        h.observe(Duration::from_secs(60));
        assert!(h.snapshot().since(&before).quantile_bound(1.0).is_infinite());
    }
}
