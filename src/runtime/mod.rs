//! How recall shares the machine's CPUs between the requests it answers and its background work, as
//! one value ([`CpuPolicy`]) that the server builds and every pool, thread and database connection of
//! the projector takes its placement from. A batch command (`recall project`, `recall embed`) has nothing
//! to yield to and runs the model on every core at normal priority.
//!
//! The defaults beside a serving API, and the measurement behind each (figures in docs/performance.md):
//! - **Query threads real-time** ([`Priority::Realtime`], where permitted): a search's embedding never
//!   waits behind a projector thread that took its CPU at a `sched_yield`.
//! - **Projector model threads SCHED_IDLE** ([`Priority::Idle`]): they run only when nothing else wants
//!   the CPU, and hold nothing a request waits on.
//! - **Projector database processes at nice 10**: they hold locks, so they are deprioritised, not idled.
//! - **Background off the first CPU** ([`CpuSet::background`]): on a 2-vCPU VM a process woken by another
//!   CPU is often queued on the CPU where it last ran; when that CPU is busy it waits for the busy CPU's
//!   next scheduler tick (up to 4 ms at HZ=250) even while the other CPU is idle, whatever the busy
//!   thread's nice value or policy (seen behind a SCHED_IDLE model thread in `perf sched`). Keeping the
//!   background off one CPU leaves requests a CPU on which nothing of the projector ever runs.
//! - **Large allocations kept in the heap** ([`keep_large_allocations_in_the_heap`]), for every command
//!   that runs the model.
//!
//! `recall-bench search` measures the command and search latency idle and beside the projector with
//! these defaults (and `--query-priority normal`, `--no-yield` to compare); `recall-bench embed
//! --default-allocator` measures the allocator setting. Everything here is best effort: a failure leaves
//! the default placement and is logged.

mod os;
mod pool;

pub use pool::{ComputePool, PoolError};

/// A set of CPU numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuSet(Vec<usize>);

impl CpuSet {
    /// The CPUs this process may run on, but the first: where background work goes while requests
    /// arrive. `None` with fewer than two CPUs (nothing to leave free) or where affinity is unsupported.
    pub fn background() -> Option<CpuSet> {
        let allowed = os::allowed_cpus()?;
        Self::all_but_first(&allowed)
    }

    fn all_but_first(allowed: &[usize]) -> Option<CpuSet> {
        (allowed.len() >= 2).then(|| CpuSet(allowed[1..].to_vec()))
    }

    pub fn cpus(&self) -> &[usize] {
        &self.0
    }
}

/// How readily a thread takes a CPU that others want.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    Normal,
    /// Linux's SCHED_IDLE: the thread runs only when no other thread wants the CPU, and a waking one
    /// takes it at once. For model threads, which hold nothing a request could wait on (a database
    /// process holds locks, so it gets a nice value instead). Measured with a one-thread model run
    /// pinned beside a two-thread query of 24 word pieces (`recall-bench embed --query-pause-ms 20`),
    /// query p50: 6.6-7.1 ms alone, 10.8-11.8 beside it at nice 10, 8.4-9.0 beside it at SCHED_IDLE.
    Idle,
    /// Real-time round robin at the lowest real-time priority, where permitted (root, CAP_SYS_NICE or an
    /// RLIMIT_RTPRIO), else left normal (logged once). For the query pool: rayon's idle workers call
    /// `sched_yield` a few dozen times before sleeping, and a normal thread's yield hands its CPU to a
    /// runnable projector thread, even a SCHED_IDLE one, which then keeps it until the next scheduler
    /// tick (4 ms at HZ=250) while the query waits for that worker; a real-time thread yields only to
    /// real-time threads. Its cost: a burst of searches takes the CPUs ahead of everything at normal
    /// priority (commands included) for as long as their embeddings take, and the kernel keeps 5% of
    /// each second for the rest whatever happens (`sched_rt_runtime_us`). Measured beside a SCHED_IDLE
    /// model run as for `Idle`, the two-thread query p50: 9.1-10.8 ms normal, 6.0-6.8 real-time (5.6 alone).
    Realtime,
}

/// Where each part of the service runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuPolicy {
    /// Model threads of the query pool, and of the projector's full pool (its narrow pool has one fewer).
    pub threads: usize,
    pub query: Priority,
    pub projector_model: Priority,
    /// The nice value of the projector's database server processes (0: left alone).
    pub projector_database_niceness: i32,
    /// Where the projector's narrow pool and database processes run while requests arrive (`None`: anywhere).
    pub background_cpus: Option<CpuSet>,
}

impl CpuPolicy {
    /// Beside a serving API: the defaults above, with the query threads at `query`.
    pub fn beside_api(threads: usize, query: Priority) -> Self {
        CpuPolicy {
            threads,
            query,
            projector_model: Priority::Idle,
            projector_database_niceness: 10,
            background_cpus: CpuSet::background(),
        }
    }

    /// The pool that embeds questions.
    pub fn query_pool(&self) -> Result<ComputePool, PoolError> {
        ComputePool::new("recall-query", self.threads, self.query, None)
    }

    /// The projector's pools: every model thread, and the narrow one kept off the first CPU while
    /// requests arrive.
    pub fn projector_pools(&self) -> Result<(ComputePool, ComputePool), PoolError> {
        let all = ComputePool::new("recall-project", self.threads, self.projector_model, None)?;
        let narrow = ComputePool::new(
            "recall-narrow",
            self.threads.saturating_sub(1).max(1),
            self.projector_model,
            self.background_cpus.clone(),
        )?;
        Ok((all, narrow))
    }
}

/// The CPUs available to this process.
pub fn available_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Candle allocates a fresh buffer for every tensor operation. glibc serves buffers over 128 KiB with
/// mmap and returns them with munmap, so every operation page-faults its output in anew; profiles of the
/// straightforward path put ~30% of the time there. Keeping large blocks in the heap lets them be reused.
/// The top pad is measured, its reason inferred: the forward pass runs on pool threads, whose allocations
/// come from per-thread arenas that glibc shrinks (to fault in again) as their top frees up unless it is
/// padded. Process-wide, so the binaries call it once at start.
pub fn keep_large_allocations_in_the_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds (no wrapper crate covers it); glibc allows it at
    // any time, from any thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20);
        libc::mallopt(libc::M_TOP_PAD, 128 << 20);
    }
}

pub(crate) use os::{pin, renice};
