//! What every measurement shares: its error, latency percentiles and the machine's CPU steal.

use std::time::Duration;

use thiserror::Error;

use recall::commands::CommandError;
use recall::embed::EmbedError;
use recall::projector::ProjectorError;
use recall::search::SearchError;

/// What can stop a measurement that drives the whole service.
#[derive(Debug, Error)]
pub enum BenchError {
    #[error(transparent)]
    Projector(#[from] ProjectorError),
    #[error(transparent)]
    ReadModel(#[from] recall::read_model::ReadModelError),
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error(transparent)]
    Threads(#[from] recall::runtime::PoolError),
    #[error(transparent)]
    Search(#[from] SearchError),
    #[error(transparent)]
    Embed(#[from] EmbedError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Postgres(#[from] recall::postgres::PostgresError),
    #[error("HTTP: {0}")]
    Http(String),
    #[error(transparent)]
    Server(#[from] recall::server::ServerError),
}

/// Latency percentiles of a set of samples.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Latency {
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub fn from_samples(mut samples: Vec<Duration>) -> Self {
        samples.sort();
        let at = |q: f64| {
            if samples.is_empty() {
                return 0.0;
            }
            let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
            samples[i].as_secs_f64() * 1e3
        };
        Latency {
            count: samples.len(),
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        }
    }
}

/// The machine's CPU time so far, from /proc/stat (Linux): on a virtual machine the share the host
/// took from this guest's vCPUs (steal) says how far a run's latencies are the host's and not recall's.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuTimes {
    busy: u64,
    steal: u64,
}

impl CpuTimes {
    pub(crate) fn now() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        Self::parse(stat.lines().next()?)
    }

    /// The aggregate `cpu` line: user nice system idle iowait irq softirq steal ...
    fn parse(line: &str) -> Option<Self> {
        let mut fields = line.split_whitespace();
        if fields.next()? != "cpu" {
            return None;
        }
        let values: Vec<u64> = fields.take(8).map(|f| f.parse().ok()).collect::<Option<_>>()?;
        let [user, nice, system, _idle, _iowait, irq, softirq, steal] = values.try_into().ok()?;
        Some(CpuTimes {
            busy: user + nice + system + irq + softirq,
            steal,
        })
    }

    /// Steal as a percentage of the time the guest wanted to run (its busy time plus steal) since `earlier`.
    pub(crate) fn steal_percent_since(&self, earlier: &CpuTimes) -> f64 {
        let steal = self.steal.saturating_sub(earlier.steal) as f64;
        let busy = self.busy.saturating_sub(earlier.busy) as f64;
        if busy + steal == 0.0 {
            0.0
        } else {
            100.0 * steal / (busy + steal)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steal_is_read_from_the_aggregate_cpu_line() {
        let earlier = CpuTimes::parse("cpu  100 0 50 1000 0 0 10 40 0 0").expect("parsed");
        let later = CpuTimes::parse("cpu  160 0 70 1200 0 0 20 70 0 0").expect("parsed");
        // 90 busy, 30 stolen: a quarter of the wanted time.
        assert!((later.steal_percent_since(&earlier) - 25.0).abs() < 1e-9);
        assert!(CpuTimes::parse("cpu0 1 2 3 4 5 6 7 8").is_none(), "a single CPU's line");
        assert!(CpuTimes::parse("cpu 1 2 3").is_none(), "too few fields");
    }
}
