//! Thread pools for model work. Candle's CPU kernels and recall's own run on whichever rayon pool the
//! calling code is installed in, so giving bulk projection and queries a pool each keeps a query from
//! queueing behind a projector batch; a lower priority on the bulk pool's threads lets the kernel's
//! scheduler hand the cores to the query whenever both want them.

use super::EmbedError;
use crate::placement::{self, CpuSet, Priority};

pub struct ComputePool {
    pool: rayon::ThreadPool,
}

impl ComputePool {
    /// `threads` workers named `name-N`, each at the given priority.
    pub fn new(name: &'static str, threads: usize, priority: Priority) -> Result<Self, EmbedError> {
        Self::pinned(name, threads, priority, None)
    }

    /// As `new`, with every worker restricted to `cpus` when given (see `crate::placement` for why).
    pub fn pinned(
        name: &'static str,
        threads: usize,
        priority: Priority,
        cpus: Option<CpuSet>,
    ) -> Result<Self, EmbedError> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(move |i| format!("{name}-{i}"))
            .start_handler(move |_| {
                let thread = placement::current_thread();
                placement::set_priority(thread, priority);
                if let Some(cpus) = &cpus {
                    placement::pin(thread, cpus);
                }
            })
            .build()
            .map_err(|e| EmbedError::Model(candle_core::Error::Msg(format!("cannot start the {name} threads: {e}"))))?;
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
