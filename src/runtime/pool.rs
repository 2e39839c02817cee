//! Thread pools for model work. Candle's CPU kernels and recall's own run on whichever rayon pool the
//! calling code is installed in, so giving bulk projection and queries a pool each keeps a query from
//! queueing behind a projector batch; a lower priority on the bulk pool's threads lets the kernel's
//! scheduler hand the cores to the query whenever both want them.

use thiserror::Error;

use super::os;
use super::{CpuSet, Priority};

#[derive(Debug, Error)]
#[error("cannot start the {name} threads: {reason}")]
pub struct PoolError {
    name: &'static str,
    reason: String,
}

pub struct ComputePool {
    pool: rayon::ThreadPool,
}

impl ComputePool {
    /// `threads` workers named `name-N`, each at `priority` and, given `cpus`, only on those (see
    /// `crate::runtime` for why).
    pub fn new(
        name: &'static str,
        threads: usize,
        priority: Priority,
        cpus: Option<CpuSet>,
    ) -> Result<Self, PoolError> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(move |i| format!("{name}-{i}"))
            .start_handler(move |_| {
                let thread = os::current_thread();
                os::set_priority(thread, priority);
                if let Some(cpus) = &cpus {
                    os::pin(thread, cpus);
                }
            })
            .build()
            .map_err(|e| PoolError {
                name,
                reason: e.to_string(),
            })?;
        Ok(ComputePool { pool })
    }

    /// Runs `work` on this pool's threads (blocking the caller until it is done).
    pub fn install<R: Send>(&self, work: impl FnOnce() -> R + Send) -> R {
        self.pool.install(work)
    }

    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }
}
